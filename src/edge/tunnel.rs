//! Tunnels (WebSocket and other HTTP/1.1 upgrades) when hawser stops or hands over (`-u`).
//!
//! At SIGTERM, or SIGQUIT after a new hawser took the listening sockets, pingora stops
//! accepting, sends HTTP/2 clients a GOAWAY, lets what is in flight run for
//! `pingora.grace_period_seconds`, then drops every connection left. A tunnel still open then
//! would end in a bare TCP close, which a WebSocket client reports as 1006 (abnormal closure).
//! So each tunnel gets `clients.tunnel_shutdown_timeout` after the signal to end by itself;
//! then hawser ends the client's side: a WebSocket gets a close frame with 1001 "going away"
//! (RFC 6455 §7.4.1), any other tunnel a plain close. The backend's side ends with it (the
//! proxy reads the end of the client's stream and closes the upstream connection).
//!
//! Invariants:
//! - Nothing changes before the shutdown signal: a tunnel's bytes pass through untouched, and
//!   [`Tunnel`] exists only for a connection whose request was switched (101) by its backend.
//! - The close frame is written only between two frames of the backend's: what hawser passes
//!   to the client after the 101's head is followed frame by frame ([`FrameScan`]), and the
//!   close waits for the end of a frame still being written. Once the close is due, a write
//!   passes only up to the end of that frame, so the close goes out after it, whatever the
//!   backend sends next.
//! - The time runs from the signal, once per process: a tunnel opened after it (an upgrade
//!   answered during the grace period) is closed at the same moment as the others.
//! - After the close frame nothing more of the backend's reaches the client (an endpoint sends
//!   no data after its close frame, §5.5.1); the client's side is then shut down (TLS
//!   close_notify, FIN) and reads see the end of the stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pingora::server::ShutdownWatch;

/// A close frame from a server (unmasked): FIN + opcode 8, two bytes of payload, the status
/// code 1001 "going away" in network order.
pub const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// What the proxy switched a connection to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    Other,
}

/// Where the end of a tunnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Passing bytes both ways.
    Open,
    /// The time after the shutdown signal passed: close at the next frame boundary.
    Due,
    /// Writing the close frame; this many of its bytes are written.
    Closing(usize),
    /// The close frame is out: flushing, then shutting the client's side down.
    ShuttingDown,
    /// Ended: reads see the end of the stream, writes are dropped.
    Closed,
}

/// The end-of-life of one tunnel (see the module's invariants).
pub struct Tunnel {
    pub kind: Kind,
    pub state: State,
    scan: FrameScan,
    /// Resolves `tunnel_shutdown_timeout` after the shutdown signal. In a mutex only so that
    /// the stream stays `Sync`: it is reached through `&mut` (`get_mut`), never locked.
    due: Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The reader to wake when a frame boundary comes while the close is due.
    reader: Option<Waker>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel").field("kind", &self.kind).field("state", &self.state).field("scan", &self.scan).finish()
    }
}

/// When the first tunnel saw the shutdown signal: the time of every tunnel runs from it.
static SIGNALLED: OnceLock<tokio::time::Instant> = OnceLock::new();

impl Tunnel {
    /// A tunnel whose next written bytes are its 101's head, to end `after` the signal on
    /// `shutdown`.
    pub fn new(kind: Kind, shutdown: ShutdownWatch, after: Duration) -> Tunnel {
        Tunnel::signalled_at(kind, shutdown, after, &SIGNALLED)
    }

    /// [`Tunnel::new`] with the process's signal time kept in `signalled` (tests keep their own).
    fn signalled_at(kind: Kind, mut shutdown: ShutdownWatch, after: Duration, signalled: &'static OnceLock<tokio::time::Instant>) -> Tunnel {
        let due = async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    // No signal can come any more: never due.
                    std::future::pending::<()>().await;
                }
            }
            let signalled = *signalled.get_or_init(tokio::time::Instant::now);
            tokio::time::sleep_until(signalled + after).await;
        };
        Tunnel { kind, state: State::Open, scan: FrameScan::default(), due: Mutex::new(Box::pin(due)), reader: None }
    }

    /// Polled with every pending read of the client's side: whether the close is due now.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
        if self.state != State::Open {
            return true;
        }
        let due = self.due.get_mut().unwrap_or_else(|p| p.into_inner());
        if due.as_mut().poll(cx).is_ready() {
            self.state = State::Due;
            return true;
        }
        false
    }

    /// Whether the close may be written now: every frame begun was written whole (a tunnel
    /// that is no WebSocket has no frames to wait for).
    pub fn at_boundary(&self) -> bool {
        self.kind == Kind::Other || self.scan.at_boundary()
    }

    /// How many of the next bytes may pass: all (`None`) until the close is due, then only up
    /// to the end of the frame being written; `Some(0)`: none, the backend's bytes are dropped.
    pub fn write_limit(&self) -> Option<usize> {
        match self.state {
            State::Open => None,
            State::Due if self.kind == Kind::Other => Some(0),
            State::Due => self.scan.to_boundary(),
            _ => Some(0),
        }
    }

    /// `n` bytes went to the client. Wakes the reader when they completed a frame and the
    /// close is due.
    pub fn written(&mut self, bytes: &[u8]) {
        self.scan.feed(bytes);
        if self.state == State::Due
            && self.at_boundary()
            && let Some(reader) = self.reader.take()
        {
            reader.wake();
        }
    }

    /// The reader waits for a frame boundary.
    pub fn wait_boundary(&mut self, cx: &Context<'_>) {
        self.reader = Some(cx.waker().clone());
    }
}

/// Follows the bytes written to the client after a 101: first the rest of the response head
/// (up to its blank line), then WebSocket frames (RFC 6455 §5.2), header by header, skipping
/// payloads.
#[derive(Debug, Default)]
pub struct FrameScan {
    /// The head has ended (its `\r\n\r\n` passed).
    in_frames: bool,
    /// How much of `\r\n\r\n` the head's last bytes matched.
    head_match: u8,
    header: [u8; 14],
    /// Bytes of the current frame header seen.
    have: u8,
    /// Payload bytes of the current frame still to pass.
    payload_left: u64,
}

impl FrameScan {
    pub fn at_boundary(&self) -> bool {
        self.in_frames && self.have == 0 && self.payload_left == 0
    }

    /// How many bytes are left to the end of the current frame: the rest of its payload, or,
    /// inside its header, one byte at a time until the header tells the length. `None` while
    /// the response head has not ended.
    pub fn to_boundary(&self) -> Option<usize> {
        if !self.in_frames {
            None
        } else if self.have > 0 {
            Some(1)
        } else {
            Some(usize::try_from(self.payload_left).unwrap_or(usize::MAX))
        }
    }

    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !self.in_frames {
            let Some((&b, rest)) = bytes.split_first() else { return };
            bytes = rest;
            const END: &[u8; 4] = b"\r\n\r\n";
            self.head_match = if b == END[self.head_match as usize] {
                self.head_match + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            self.in_frames = self.head_match == 4;
        }
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.header[self.have as usize] = bytes[0];
            self.have += 1;
            bytes = &bytes[1..];
            if let Some(payload) = self.header_done() {
                self.have = 0;
                self.payload_left = payload;
            }
        }
    }

    /// The payload length once the whole frame header has been seen.
    fn header_done(&self) -> Option<u64> {
        if self.have < 2 {
            return None;
        }
        let len7 = self.header[1] & 0x7f;
        let masked = self.header[1] & 0x80 != 0;
        let ext = match len7 {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let need = 2 + ext + if masked { 4 } else { 0 };
        if self.have < need {
            return None;
        }
        Some(match ext {
            0 => u64::from(len7),
            2 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            _ => u64::from_be_bytes(self.header[2..10].try_into().expect("8 bytes")),
        })
    }
}

/// How long tunnels may go on after the shutdown signal when `clients.tunnel_shutdown_timeout`
/// is not set: all of pingora's grace period but its last second, in which the close frames
/// go out before pingora drops the connections.
pub fn default_timeout(grace_period_seconds: u64) -> Duration {
    Duration::from_secs(grace_period_seconds.saturating_sub(1))
}

/// `poll_read`'s view: drive the close of `tunnel` on `inner` once it is due. `Ready(())`: the
/// tunnel is closed, the read sees the end of the stream. `Pending`: wait (the waker is
/// registered with the timer, the frame scan or the socket).
pub fn poll_close<S: tokio::io::AsyncWrite + Unpin>(tunnel: &mut Tunnel, inner: &mut S, cx: &mut Context<'_>) -> Poll<()> {
    use std::task::ready;
    loop {
        match tunnel.state {
            State::Open => return Poll::Pending,
            State::Due if !tunnel.at_boundary() => {
                tunnel.wait_boundary(cx);
                return Poll::Pending;
            }
            State::Due => {
                tunnel.state = if tunnel.kind == Kind::WebSocket { State::Closing(0) } else { State::ShuttingDown };
            }
            State::Closing(done) => {
                match ready!(Pin::new(&mut *inner).poll_write(cx, &CLOSE_GOING_AWAY[done..])) {
                    Ok(0) | Err(_) => tunnel.state = State::Closed,
                    Ok(n) if done + n >= CLOSE_GOING_AWAY.len() => tunnel.state = State::ShuttingDown,
                    Ok(n) => tunnel.state = State::Closing(done + n),
                }
            }
            State::ShuttingDown => {
                // Errors end it all the same: the client is gone.
                let _ = ready!(Pin::new(&mut *inner).poll_flush(cx));
                let _ = ready!(Pin::new(&mut *inner).poll_shutdown(cx));
                tunnel.state = State::Closed;
            }
            State::Closed => return Poll::Ready(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let mask = if masked { 0x80 } else { 0 };
        match payload_len {
            0..=125 => f.push(mask | payload_len as u8),
            126..=0xffff => {
                f.push(mask | 126);
                f.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask | 127);
                f.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload_len));
        f
    }

    #[test]
    fn frames_are_followed_after_the_head_whatever_the_split() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        let frames = [frame(1, 5, false), frame(2, 300, false), frame(2, 70_000, false), frame(9, 0, false), frame(1, 3, true)];
        let mut all = head.clone();
        let mut boundaries = vec![all.len()];
        for f in &frames {
            all.extend_from_slice(f);
            boundaries.push(all.len());
        }
        // Every way of cutting the stream in two writes, and byte by byte at the start.
        for cut in (0..all.len()).step_by(97).chain(0..200) {
            let mut scan = FrameScan::default();
            scan.feed(&all[..cut]);
            assert_eq!(scan.at_boundary(), boundaries.contains(&cut), "cut at {cut}");
            scan.feed(&all[cut..]);
            assert!(scan.at_boundary(), "cut at {cut}: the end is a boundary");
        }
        let mut scan = FrameScan::default();
        for (i, b) in all.iter().enumerate() {
            scan.feed(std::slice::from_ref(b));
            assert_eq!(scan.at_boundary(), boundaries.contains(&(i + 1)), "byte {i}");
        }
    }

    #[test]
    fn the_distance_to_the_next_boundary() {
        let mut scan = FrameScan::default();
        assert_eq!(scan.to_boundary(), None);
        scan.feed(b"HTTP/1.1 101 x\r\n\r\n");
        assert_eq!(scan.to_boundary(), Some(0));
        let f = frame(2, 300, false);
        scan.feed(&f[..1]);
        assert_eq!(scan.to_boundary(), Some(1), "inside the header: a byte at a time");
        scan.feed(&f[1..4]);
        assert_eq!(scan.to_boundary(), Some(300));
        scan.feed(&f[4..100]);
        assert_eq!(scan.to_boundary(), Some(f.len() - 100));
    }

    #[test]
    fn the_head_ends_only_at_its_blank_line() {
        let mut scan = FrameScan::default();
        scan.feed(b"HTTP/1.1 101 x\r\nA: \r\r\n");
        assert!(!scan.at_boundary());
        scan.feed(b"\r");
        assert!(!scan.at_boundary());
        scan.feed(b"\n");
        assert!(scan.at_boundary());
    }

    #[tokio::test]
    async fn the_close_waits_for_the_signal_then_the_time_then_a_boundary() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        static SIGNALLED: OnceLock<tokio::time::Instant> = OnceLock::new();
        let mut t = Tunnel::signalled_at(Kind::WebSocket, rx, Duration::from_millis(50), &SIGNALLED);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(!t.poll_due(&mut cx));
        t.written(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        let half = frame(1, 10, false);
        t.written(&half[..4]);
        tx.send(true).unwrap();
        assert!(!t.poll_due(&mut cx), "not before the time after the signal");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(t.poll_due(&mut cx));
        assert_eq!(t.state, State::Due);
        assert_eq!(t.write_limit(), Some(half.len() - 4), "the frame being written is finished first, and nothing after it");
        let mut out: Vec<u8> = Vec::new();
        assert_eq!(poll_close(&mut t, &mut out, &mut cx), Poll::Pending);
        t.written(&half[4..]);
        assert_eq!(t.write_limit(), Some(0), "nothing after the frame that was being written");
        assert_eq!(poll_close(&mut t, &mut out, &mut cx), Poll::Ready(()));
        assert_eq!(out, CLOSE_GOING_AWAY);
        assert_eq!(t.state, State::Closed);
    }

    #[tokio::test]
    async fn other_tunnels_close_without_a_frame() {
        let (_tx, rx) = tokio::sync::watch::channel(true);
        static SIGNALLED: OnceLock<tokio::time::Instant> = OnceLock::new();
        let mut t = Tunnel::signalled_at(Kind::Other, rx, Duration::ZERO, &SIGNALLED);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Due once the runtime's timer has seen its (zero) time pass.
        let _ = t.poll_due(&mut cx);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(t.poll_due(&mut cx));
        let mut out: Vec<u8> = Vec::new();
        assert_eq!(poll_close(&mut t, &mut out, &mut cx), Poll::Ready(()));
        assert!(out.is_empty());
        assert_eq!(default_timeout(5), Duration::from_secs(4));
        assert_eq!(default_timeout(0), Duration::ZERO);
    }
}
