//! A hold on the backend's answer to an HTTP/1.1 upgrade request (WebSocket) until pingora
//! is ready for it: hawser's way around cloudflare/pingora#946, which tears a tunnel down
//! right after its `101` (the client sees the 101, then the connection's end).
//!
//! pingora 0.9's HTTP/1 upstream half reads the backend's answer and the client's request
//! body in one `select!`, in random order. A bodyless upgrade request has its end of body
//! queued before the backend can answer; when the `101` is read first, that queued end is
//! then taken for the end of the tunnel's client side, and the tunnel is closed. On a loaded
//! 2-core machine this ended 21 of 800 tunnels (`tests/streams.rs`).
//!
//! So hawser gives every bodyless HTTP/1.1 upgrade request to an `http`/`https` backend a
//! connection of its own ([`Hold::peer`]): dialled by [`HeldConnect`], whose socket reads go
//! through the request's [`Hold`]:
//! - [`Hold::arm`] (from `connected_to_upstream`, after any TLS handshake and before the
//!   request head is written) makes reads wait;
//! - [`Hold::release`] (from `request_body_filter` with the end of the request body, in the
//!   same poll in which pingora queues that end) lets them go, after one more yield, so that
//!   pingora's `select!` takes the queued end before it can read the answer;
//! - from then on reads pass straight through: the tunnel's bytes pay nothing.
//!
//! Invariants:
//! - Only a connection dialled for a held request has a hold; every other request and
//!   connection is untouched. A hold never armed (a reused connection, a failed handshake)
//!   never delays a read.
//! - A read waits only between arm and release, which are the same request's two steps; the
//!   wait is inside pingora's read timeout for the answer, and ends with the request.
//! - A held request never takes a pooled connection, and a held connection never serves
//!   another request: held peers have a pool group of their own, so no ordinary connection
//!   matches them; a held connection that pingora pools after a refused upgrade (keep-alive)
//!   expires at the pool's next timer tick (idle time zero), and until then pingora's reuse
//!   check drops it, since a virtual socket has no descriptor to match the peer against. Each
//!   held request gets a fresh connection with its own hold.
//! - Release does not depend on arm having come first: both are flags, so no order of the
//!   two can leave a read waiting for good.
//! - The one yield is spent only while the task has co-operative budget left, so the queued
//!   end of body cannot be passed over by a `recv` that tokio's budget turned into Pending.
//!
//! Not held: an upgrade request with a body (a WebSocket handshake is a GET without one),
//! where the race remains when the 101 is read before the body's last piece.
//! The connector ignores peer options hawser does not set (bind address, receive buffer,
//! DSCP, TCP fast open, socket tweaks); TCP keep-alive and no-delay are applied.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::task::AtomicWaker;
use pingora::connectors::L4Connect;
use pingora::prelude::HttpPeer;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Mixed into a held peer's group key, so that pingora's pool keeps held connections apart.
const HELD_GROUP: u64 = 0x6877_686f_6c64_0101;

const ARMED: u8 = 1;
const RELEASED: u8 = 2;
/// The one yield after release was made.
const PASSED: u8 = 4;

/// One held request's gate between its connection's reads and pingora.
#[derive(Default)]
pub struct Hold {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hold({:#b})", self.state.load(Ordering::Acquire))
    }
}

impl Hold {
    /// Turns `peer` into one whose connection is dialled fresh and held by a new hold,
    /// returned. `connect_timeout` bounds the TCP connect (pingora's own timeout does not
    /// cover a custom connector).
    pub fn peer(peer: &mut HttpPeer, connect_timeout: Duration) -> Arc<Hold> {
        let hold = Arc::new(Hold::default());
        peer.group_key ^= HELD_GROUP;
        // Released to the pool only after a refused upgrade; gone again at once.
        peer.options.idle_timeout = Some(Duration::ZERO);
        peer.options.custom_l4 = Some(Arc::new(HeldConnect { hold: Arc::clone(&hold), timeout: connect_timeout }));
        hold
    }

    /// From now on reads wait for [`Hold::release`].
    pub fn arm(&self) {
        self.state.fetch_or(ARMED, Ordering::AcqRel);
    }

    /// The request's end of body is queued: reads may go, after one yield.
    pub fn release(&self) {
        if self.state.fetch_or(RELEASED, Ordering::AcqRel) & RELEASED == 0 {
            self.waker.wake();
        }
    }

    /// Ready when a read may go to the socket.
    fn poll_pass(&self, cx: &mut Context<'_>) -> Poll<()> {
        let state = self.state.load(Ordering::Acquire);
        if state & ARMED == 0 || state & PASSED != 0 {
            return Poll::Ready(());
        }
        if state & RELEASED == 0 {
            self.waker.register(cx.waker());
            // A release between the load and the registration woke nobody: look again.
            if self.state.load(Ordering::Acquire) & RELEASED == 0 {
                return Poll::Pending;
            }
        }
        // Released: yield once, so the queued end of body is taken before the answer. The
        // yield counts only when the `recv` that follows it can run (has budget).
        if tokio::task::coop::has_budget_remaining() {
            self.state.fetch_or(PASSED, Ordering::AcqRel);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// pingora's custom L4 connector for held peers: a plain TCP connect within the timeout,
/// wrapped so that its reads ask the hold.
struct HeldConnect {
    hold: Arc<Hold>,
    timeout: Duration,
}

impl fmt::Debug for HeldConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeldConnect({:?}, {:?})", self.hold, self.timeout)
    }
}

#[async_trait]
impl L4Connect for HeldConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let Some(inet) = addr.as_inet() else {
            return Err(Error::explain(ErrorType::InternalError, "a held connection needs an IP address"));
        };
        let tcp = match tokio::time::timeout(self.timeout, pingora::protocols::l4::ext::connect(inet, None)).await {
            Ok(tcp) => tcp?,
            Err(_) => {
                let why = format!("timeout {:?} connecting to server {inet}", self.timeout);
                return Err(Error::explain(ErrorType::ConnectTimedout, why));
            }
        };
        let socket = HeldSocket { tcp, hold: Arc::clone(&self.hold) };
        Ok(VirtualSocketStream::new(Box::new(socket)).into())
    }
}

/// A backend connection whose reads wait for its hold.
#[derive(Debug)]
struct HeldSocket {
    tcp: TcpStream,
    hold: Arc<Hold>,
}

impl VirtualSocket for HeldSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            VirtualSockOpt::KeepAlive(ka) => pingora::protocols::l4::ext::set_tcp_keepalive(&self.tcp, &ka).map_err(io::Error::other),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for HeldSocket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.hold.poll_pass(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeldSocket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, std::task::Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&c), std::task::Waker::from(c))
    }

    #[test]
    fn an_unarmed_hold_never_delays() {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let hold = Hold::default();
        assert!(hold.poll_pass(&mut cx).is_ready());
        hold.release();
        assert!(hold.poll_pass(&mut cx).is_ready(), "a release without arm holds nothing");
    }

    #[test]
    fn armed_reads_wait_for_release_then_yield_once() {
        let (woken, w) = waker();
        let mut cx = Context::from_waker(&w);
        let hold = Hold::default();
        hold.arm();
        assert!(hold.poll_pass(&mut cx).is_pending());
        assert!(hold.poll_pass(&mut cx).is_pending(), "still armed");
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        hold.release();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "release wakes the waiting read");
        assert!(hold.poll_pass(&mut cx).is_pending(), "one yield after release");
        assert_eq!(woken.0.load(Ordering::SeqCst), 2, "the yield wakes itself");
        assert!(hold.poll_pass(&mut cx).is_ready());
        assert!(hold.poll_pass(&mut cx).is_ready(), "and stays open");
    }

    #[test]
    fn release_before_arm_leaves_no_read_waiting() {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        let hold = Hold::default();
        hold.release();
        hold.arm();
        assert!(hold.poll_pass(&mut cx).is_pending(), "the one yield");
        assert!(hold.poll_pass(&mut cx).is_ready());
    }

    #[test]
    fn held_peers_are_pooled_apart_and_not_kept() {
        let addr: std::net::SocketAddr = "10.0.0.1:80".parse().unwrap();
        let plain = HttpPeer::new(addr, false, String::new());
        let mut held = plain.clone();
        let _hold = Hold::peer(&mut held, Duration::from_secs(1));
        use pingora::upstreams::peer::Peer;
        assert_ne!(plain.reuse_hash(), held.reuse_hash());
        assert_eq!(held.options.idle_timeout, Some(Duration::ZERO));
        assert!(held.options.custom_l4.is_some());
    }
}
