//! Client connections before and between requests: protocol choice, head and keep-alive
//! deadlines, the connection cap.
//!
//! pingora's own accept path waits, without a deadline, for 24 bytes of a possible HTTP/2
//! preface when h2c is on (a complete 18-byte `GET / HTTP/1.0` request is never answered),
//! bounds only each single read of a request head (a client trickling a byte a minute holds
//! its connection forever) and keeps an idle HTTP/1.1 connection open forever. hawser puts
//! [`EdgeApp`] in front of pingora's proxy application and wraps every client stream in an
//! [`EdgeStream`] that owns these deadlines.
//!
//! Invariants:
//! - The protocol is chosen from the first bytes as soon as they differ from the HTTP/2
//!   preface: an HTTP/1.x request is never kept waiting for bytes that cannot come.
//! - While a request head is awaited the connection has a deadline: `keepalive_timeout`
//!   until the first byte of a head on a kept-alive connection, then `header_timeout` for the
//!   whole head (`header_timeout` from accept for a new connection). When it passes, reads
//!   fail and pingora closes the connection. Between a head and the end of its answer hawser
//!   adds no deadline of its own (body reads have `clients.body_timeout`, set per read by
//!   the proxy). An HTTP/2 connection has none after its preface; pingora closes it after
//!   `keepalive_timeout` without a stream.
//! - The first head of a connection is checked by [`framing::check_head`] on the bytes as they
//!   arrived, before pingora parses (and may rewrite) it; later heads are checked by the proxy,
//!   and measured here as they pass: one that grows past `max_header_size` without ending
//!   fails the read, so pingora (which would buffer 1 MiB) closes the connection.
//! - A refused first head is answered, then the close lingers (what the client sent after it
//!   is read and dropped, bounded in bytes and time) so that the answer is not lost to a reset.
//! - The phases are driven by the proxy: [`head_read`] when a request head was parsed,
//!   [`request_done`] when its answer ended. A stream that is not an [`EdgeStream`] (there
//!   is none today) is left alone.
//! - At most `max_connections` client connections are open; one more is closed at once,
//!   without touching the others.
//! - Bytes read to choose the protocol are replayed, in order, before the socket is read
//!   again: pingora sees exactly what the client sent.
//! - A connection its backend switched to a tunnel ([`tunnel_opened`]) is ended cleanly when
//!   hawser stops or hands over, as [`super::tunnel`] says; before that, its bytes pass as
//!   they are.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use async_trait::async_trait;
use log::debug;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use pingora::protocols::raw_connect::ProxyDigest;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::framing::{self, HeadLimits, Reject};
use super::tunnel::{self, Tunnel};
use crate::config::ClientPolicy;
use crate::metrics::{ClientClose, metrics};
use crate::proxy::HawserProxy;
use crate::tls::HandshakeError;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// pingora's proxy application behind hawser's connection handling.
pub struct EdgeApp {
    proxy: Arc<HttpProxy<HawserProxy>>,
    h2c: bool,
    timeouts: Timeouts,
    limits: HeadLimits,
    max_connections: usize,
    /// Shared by the cleartext and TLS listeners: one cap for all client connections.
    open: Arc<AtomicUsize>,
    closed: [IntCounter; 4],
    /// For the TLS listeners: the handshake is done here, inside the cap and the deadline.
    tls: Option<EdgeTls>,
}

struct EdgeTls {
    acceptor: Arc<pingora::listeners::tls::Acceptor>,
    errors: [IntCounter; 4],
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header: Duration,
    keepalive: Duration,
    /// How long a tunnel may go on after the shutdown signal.
    tunnel_shutdown: Duration,
}

impl EdgeApp {
    /// `proxy` is pingora's application, already configured (server options, h2 idle
    /// timeout); `max_connections` is the resolved cap (see [`connection_budget`]).
    pub fn new(proxy: HttpProxy<HawserProxy>, h2c: bool, clients: &ClientPolicy, max_connections: usize) -> EdgeApp {
        EdgeApp {
            proxy: Arc::new(proxy),
            h2c,
            timeouts: Timeouts {
                header: clients.header_timeout,
                keepalive: clients.keepalive_timeout,
                tunnel_shutdown: clients.tunnel_shutdown_timeout,
            },
            limits: HeadLimits::from(clients),
            max_connections,
            open: Arc::new(AtomicUsize::new(0)),
            closed: ClientClose::ALL.map(|r| metrics().client_closed(r)),
            tls: None,
        }
    }

    /// The same application for TLS listeners: same proxy, same connection cap; each
    /// connection's handshake is done with `acceptor` first.
    pub fn tls_twin(&self, acceptor: Arc<pingora::listeners::tls::Acceptor>) -> EdgeApp {
        EdgeApp {
            proxy: Arc::clone(&self.proxy),
            h2c: false,
            timeouts: self.timeouts,
            limits: self.limits,
            max_connections: self.max_connections,
            open: Arc::clone(&self.open),
            closed: self.closed.clone(),
            tls: Some(EdgeTls { acceptor, errors: HandshakeError::ALL.map(|r| metrics().tls_handshake_error(r)) }),
        }
    }

    /// The TLS handshake, within `clients.header_timeout` from accept (a client that opens a
    /// connection and sends no ClientHello is closed like one that sends no request).
    async fn handshake(&self, tls: &EdgeTls, stream: Stream) -> Option<Stream> {
        // The listener hands over its TCP stream boxed; the acceptor needs the concrete type.
        let tcp = match stream.into_any().downcast::<pingora::protocols::l4::stream::Stream>() {
            Ok(tcp) => *tcp,
            Err(_) => {
                log::error!("TLS listener: not a TCP stream; connection closed");
                return None;
            }
        };
        match tokio::time::timeout(self.timeouts.header, tls.acceptor.tls_handshake(tcp)).await {
            Ok(Ok(tls_stream)) => Some(Box::new(tls_stream)),
            Ok(Err(e)) => {
                let why = HandshakeError::classify(&e);
                debug!("TLS handshake failed ({}): {e}", why.as_str());
                tls.errors[why as usize].inc();
                None
            }
            Err(_) => {
                tls.errors[HandshakeError::Timeout as usize].inc();
                self.count_close(ClientClose::HeaderTimeout);
                None
            }
        }
    }

    fn count_close(&self, why: ClientClose) {
        self.closed[why as usize].inc();
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let Some(_slot) = Slot::take(self) else {
            // Dropping the stream closes it; the connections already open are untouched.
            self.count_close(ClientClose::OverLimit);
            return None;
        };
        let stream = match &self.tls {
            None => stream,
            Some(tls) => self.handshake(tls, stream).await?,
        };
        let h2 = stream.selected_alpn_proto() == Some(pingora::protocols::ALPN::H2);
        let mut stream = EdgeStream::new(stream, self.timeouts, self.limits.max_header_size, shutdown.clone());
        let chosen = if h2 {
            // HTTP/2 by ALPN: pingora's HTTP/2 connection has its own idle timeout.
            stream.clock.phase.store(BUSY, Ordering::Release);
            Ok(())
        } else {
            stream.choose_protocol(self.h2c, &self.limits).await
        };
        match chosen {
            Ok(()) => {}
            Err(Unusable::Refused(reject)) => {
                self.count_close(ClientClose::Refused);
                stream.refuse(reject).await;
                return None;
            }
            Err(Unusable::TimedOut) => {
                self.count_close(ClientClose::HeaderTimeout);
                return None;
            }
            Err(Unusable::Gone) => return None,
        }
        let clock = Arc::clone(&stream.clock);
        let reused = self.proxy.process_new(Box::new(stream), shutdown).await;
        if let Some(why) = clock.expired() {
            self.count_close(why);
        }
        reused
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await;
    }
}

/// One of the `max_connections` places, held for the life of a connection.
struct Slot<'a>(&'a EdgeApp);

impl<'a> Slot<'a> {
    fn take(app: &'a EdgeApp) -> Option<Slot<'a>> {
        let prev = app.open.fetch_add(1, Ordering::AcqRel);
        if prev >= app.max_connections {
            app.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics().client_connections.inc();
        Some(Slot(app))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        metrics().client_connections.dec();
    }
}

/// How many client connections hawser accepts at once when `clients.max_connections` is
/// `auto`: as HAProxy derives `maxconn` from the descriptor limit, half of what is left
/// after a reserve (each client connection may need one to a backend; the reserve is for
/// the Docker socket, health checks, the admin API and logs).
pub fn connection_budget(descriptor_limit: u64) -> usize {
    const RESERVE: u64 = 256;
    let budget = descriptor_limit.saturating_sub(RESERVE) / 2;
    usize::try_from(budget.max(64)).unwrap_or(usize::MAX)
}

/// Raises the soft descriptor limit to the hard one, as nginx's `worker_rlimit_nofile` and
/// HAProxy do, and returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Ok(lim.rlim_cur as u64);
        }
        lim = raised;
    }
    Ok(lim.rlim_cur as u64)
}

/// Where a connection is in its request cycle, shared between its stream and the proxy.
#[derive(Debug)]
pub struct HeadClock {
    phase: AtomicU8,
    /// The connection's first head passed [`framing::check_head`] as it arrived.
    first_head_checked: AtomicBool,
    /// Counts the answers ended on this connection: a new head is awaited after each.
    generation: AtomicU32,
    /// Milliseconds after `epoch` at which the current wait ends (phases with a deadline).
    deadline_ms: AtomicU64,
    /// The backend switched the connection: [`NO_TUNNEL`], [`WEBSOCKET`] or [`OTHER_TUNNEL`].
    tunnel: AtomicU8,
    epoch: Instant,
    timeouts: Timeouts,
}

/// Waiting for the first byte of a head on a kept-alive connection.
const IDLE: u8 = 0;
/// Waiting for the rest of a head.
const HEAD: u8 = 1;
/// A request is being handled, or the connection speaks HTTP/2: no deadline of ours.
const BUSY: u8 = 2;
/// A deadline passed: every read fails.
const EXPIRED_IDLE: u8 = 3;
const EXPIRED_HEAD: u8 = 4;
/// A later head broke a limit: every read fails.
const REFUSED: u8 = 5;

const NO_TUNNEL: u8 = 0;
const WEBSOCKET: u8 = 1;
const OTHER_TUNNEL: u8 = 2;

impl HeadClock {
    fn new(timeouts: Timeouts) -> HeadClock {
        let clock = HeadClock {
            phase: AtomicU8::new(HEAD),
            first_head_checked: AtomicBool::new(false),
            generation: AtomicU32::new(0),
            deadline_ms: AtomicU64::new(0),
            tunnel: AtomicU8::new(NO_TUNNEL),
            epoch: Instant::now(),
            timeouts,
        };
        clock.wait(HEAD, timeouts.header);
        clock
    }

    fn wait(&self, phase: u8, within: Duration) {
        let at = self.epoch.elapsed().saturating_add(within).as_millis();
        self.deadline_ms.store(u64::try_from(at).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Release);
    }

    /// The deadline of the current phase, if it has one.
    fn deadline(&self) -> Option<Instant> {
        match self.phase.load(Ordering::Acquire) {
            IDLE | HEAD => Some(self.epoch + Duration::from_millis(self.deadline_ms.load(Ordering::Relaxed))),
            _ => None,
        }
    }

    /// Bytes arrived: a head on a kept-alive connection has started.
    fn bytes_arrived(&self) {
        if self.phase.load(Ordering::Acquire) == IDLE {
            self.wait(HEAD, self.timeouts.header);
        }
    }

    fn expire(&self) -> ClientClose {
        match self.phase.swap(EXPIRED_HEAD, Ordering::AcqRel) {
            IDLE | EXPIRED_IDLE => {
                self.phase.store(EXPIRED_IDLE, Ordering::Release);
                ClientClose::KeepaliveTimeout
            }
            _ => ClientClose::HeaderTimeout,
        }
    }

    /// Why the connection was closed by a deadline or a limit, if it was.
    fn expired(&self) -> Option<ClientClose> {
        match self.phase.load(Ordering::Acquire) {
            EXPIRED_IDLE => Some(ClientClose::KeepaliveTimeout),
            EXPIRED_HEAD => Some(ClientClose::HeaderTimeout),
            REFUSED => Some(ClientClose::Refused),
            _ => None,
        }
    }
}

/// The proxy parsed a request head on this connection: its deadline is lifted. Whether that
/// head still needs [`framing::check_head`] (the first head of a connection was checked as it
/// arrived).
pub fn head_read(stream: Option<&Stream>) -> bool {
    match clock_of(stream) {
        Some(clock) => {
            clock.phase.store(BUSY, Ordering::Release);
            !clock.first_head_checked.swap(false, Ordering::AcqRel)
        }
        None => true,
    }
}

/// The answer to a request ended: the next head must start within `keepalive_timeout`.
pub fn request_done(stream: Option<&Stream>) {
    if let Some(clock) = clock_of(stream) {
        clock.generation.fetch_add(1, Ordering::AcqRel);
        clock.wait(IDLE, clock.timeouts.keepalive);
    }
}

/// The backend answered 101: what follows the response head on this connection is a tunnel
/// (a WebSocket's frames when `websocket`), to be ended cleanly at shutdown.
pub fn tunnel_opened(stream: Option<&Stream>, websocket: bool) {
    if let Some(clock) = clock_of(stream) {
        clock.tunnel.store(if websocket { WEBSOCKET } else { OTHER_TUNNEL }, Ordering::Release);
    }
}

fn clock_of(stream: Option<&Stream>) -> Option<&HeadClock> {
    stream?.as_any().downcast_ref::<EdgeStream>().map(|s| &*s.clock)
}

/// Why a connection could not be handed to pingora.
enum Unusable {
    /// Its first bytes are refused with this answer.
    Refused(Reject),
    TimedOut,
    /// Closed, or broken, before a protocol could be chosen.
    Gone,
}

/// A client stream with hawser's deadlines, and the bytes read to choose the protocol.
#[derive(Debug)]
pub struct EdgeStream {
    inner: Stream,
    replay: Vec<u8>,
    replayed: usize,
    clock: Arc<HeadClock>,
    timer: Option<Pin<Box<Sleep>>>,
    /// The head being read on a kept-alive connection, measured as it passes.
    scan: HeadScan,
    max_header_size: usize,
    /// pingora's shutdown signal, for a tunnel's end.
    shutdown: ShutdownWatch,
    /// Made when the connection becomes a tunnel (boxed: most connections never do).
    tunnel: Option<Box<Tunnel>>,
}

/// How much of a later request head has been read (pingora would buffer up to 1 MiB of it).
#[derive(Debug, Default)]
struct HeadScan {
    /// The clock's [`HeadClock::generation`] this scan belongs to.
    generation: u32,
    bytes: usize,
    /// The last two bytes seen, for a blank line split across reads.
    tail: [u8; 2],
    ended: bool,
}

impl EdgeStream {
    fn new(inner: Stream, timeouts: Timeouts, max_header_size: usize, shutdown: ShutdownWatch) -> EdgeStream {
        EdgeStream {
            inner,
            replay: Vec::new(),
            replayed: 0,
            clock: Arc::new(HeadClock::new(timeouts)),
            timer: None,
            scan: HeadScan::default(),
            max_header_size,
            shutdown,
            tunnel: None,
        }
    }

    /// The tunnel, made on the first write after the proxy marked the connection (the 101's
    /// head is the first thing written after that).
    fn tunnel(&mut self) -> Option<&mut Tunnel> {
        if self.tunnel.is_none() {
            let kind = match self.clock.tunnel.load(Ordering::Acquire) {
                WEBSOCKET => tunnel::Kind::WebSocket,
                OTHER_TUNNEL => tunnel::Kind::Other,
                _ => return None,
            };
            self.tunnel = Some(Box::new(Tunnel::new(kind, self.shutdown.clone(), self.clock.timeouts.tunnel_shutdown)));
        }
        self.tunnel.as_deref_mut()
    }

    fn poll_write_tunnel(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let Some(tunnel) = self.tunnel.as_deref_mut() else {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        };
        let limit = tunnel.write_limit();
        if limit == Some(0) {
            // Closing: the backend's bytes after the close frame are dropped.
            return Poll::Ready(Ok(buf.len()));
        }
        // The close is due: only the rest of the frame being written passes, then the close.
        let buf = &buf[..limit.map_or(buf.len(), |l| l.min(buf.len()))];
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        tunnel.written(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    /// Measures `new` bytes read while a head is awaited; refuses a head that passes
    /// `max_header_size` without ending. The first head of a connection was checked whole by
    /// [`EdgeStream::choose_protocol`]; this bounds the later ones, which pingora reads itself.
    fn measure_head(&mut self, new: &[u8]) -> io::Result<()> {
        if !matches!(self.clock.phase.load(Ordering::Acquire), IDLE | HEAD) {
            return Ok(());
        }
        let generation = self.clock.generation.load(Ordering::Acquire);
        if generation != self.scan.generation {
            self.scan = HeadScan { generation, ..HeadScan::default() };
        }
        if self.scan.ended || new.is_empty() {
            return Ok(());
        }
        if framing::find_head_end(self.scan.tail, new).is_some() {
            self.scan.ended = true;
            return Ok(());
        }
        self.scan.bytes += new.len();
        self.scan.tail = match new {
            [.., a, b] => [*a, *b],
            [b] => [self.scan.tail[1], *b],
            [] => self.scan.tail,
        };
        if self.scan.bytes > self.max_header_size {
            self.clock.phase.store(REFUSED, Ordering::Release);
            debug!("client connection closed: a request head larger than clients.max_header_size");
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head larger than clients.max_header_size"));
        }
        Ok(())
    }

    /// Reads until the protocol is known: the HTTP/2 preface (with `h2c`), or for HTTP/1.x
    /// a complete head, refused early when its first bytes already break a limit or cannot
    /// be HTTP.
    async fn choose_protocol(&mut self, h2c: bool, limits: &HeadLimits) -> Result<(), Unusable> {
        use tokio::io::AsyncReadExt;
        loop {
            // Read straight into the replay buffer: a connection that stalls holds only the
            // bytes it sent (no fixed read buffer in this future, which lives as long).
            if self.replay.capacity() - self.replay.len() < 128 {
                self.replay.reserve(if self.replay.is_empty() { 256 } else { self.replay.len() });
            }
            let read = self.inner.read_buf(&mut self.replay);
            let read = match self.clock.deadline() {
                Some(deadline) => tokio::time::timeout_at(deadline, read).await.map_err(|_| Unusable::TimedOut)?,
                None => read.await,
            };
            if matches!(read, Ok(0) | Err(_)) {
                return Err(Unusable::Gone);
            }
            let seen = &self.replay[..];
            if h2c {
                let common = seen.len().min(H2_PREFACE.len());
                if seen[..common] == H2_PREFACE[..common] {
                    if common == H2_PREFACE.len() {
                        // pingora's HTTP/2 connection has its own idle timeout.
                        self.clock.phase.store(BUSY, Ordering::Release);
                        return Ok(());
                    }
                    continue;
                }
            }
            framing::check_partial(seen, limits).map_err(Unusable::Refused)?;
            if let Some(end) = framing::head_end(seen) {
                // Checked here, on the bytes as sent: pingora rewrites a request line it
                // cannot parse (spaces in the target become %20) before the proxy sees it.
                framing::check_head(&seen[..end], limits).map_err(Unusable::Refused)?;
                self.clock.first_head_checked.store(true, Ordering::Release);
                return Ok(());
            }
        }
    }

    /// Answers a refused first request and closes: nothing more is read from this client.
    /// The close lingers, as nginx's does: bytes the client sent after the refused head
    /// (its body, pipelined requests) are read and dropped for a moment, so that the kernel
    /// does not answer them with a reset that could destroy the answer before it is read.
    async fn refuse(&mut self, reject: Reject) {
        use tokio::io::AsyncReadExt;
        debug!("client connection refused: {} ({})", reject.status, reject.reason);
        let body = reject.body();
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            reject.status,
            reject.phrase(),
            body.len()
        );
        let answer = async {
            self.inner.write_all(head.as_bytes()).await?;
            self.inner.write_all(body.as_bytes()).await?;
            self.inner.flush().await?;
            self.inner.shutdown().await
        };
        // A client that does not read its answer does not hold the connection either.
        if !matches!(tokio::time::timeout(LINGER, answer).await, Ok(Ok(()))) {
            return;
        }
        // On the heap: a buffer in this future would be part of every connection's future.
        let mut sink = vec![0u8; 1024];
        let mut left = LINGER_BYTES;
        let drain = async {
            while left > 0 {
                match self.inner.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

/// How long a refused connection's answer may take to write, and how long its close lingers.
const LINGER: Duration = Duration::from_secs(2);
/// At most this much of what a refused client sent after its head is read and dropped.
const LINGER_BYTES: usize = 64 * 1024;

impl AsyncRead for EdgeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replayed);
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            if this.replayed == this.replay.len() {
                this.replay = Vec::new();
                this.replayed = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.clock.expired().is_some() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client deadline passed")));
        }
        if let Some(t) = this.tunnel.as_deref_mut()
            && t.state != tunnel::State::Open
        {
            // Ending: the read sees the end of the stream once the close is out.
            ready!(tunnel::poll_close(t, &mut this.inner, cx));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.bytes_arrived();
                    this.measure_head(&buf.filled()[before..])?;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(t) = this.tunnel.as_deref_mut()
                    && t.poll_due(cx)
                {
                    ready!(tunnel::poll_close(t, &mut this.inner, cx));
                    return Poll::Ready(Ok(()));
                }
                let Some(deadline) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                // Every answer moves the deadline later; re-arming the timer for each would
                // cost a timer-wheel update per request. An armed timer that fires early is
                // re-armed then; only an earlier deadline re-arms it at once.
                loop {
                    if timer.deadline() > deadline {
                        timer.as_mut().reset(deadline);
                    }
                    ready!(timer.as_mut().poll(cx));
                    if Instant::now() >= deadline {
                        break;
                    }
                    timer.as_mut().reset(deadline);
                }
                let why = this.clock.expire();
                debug!("client connection closed: {}", why.as_str());
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why.as_str())))
            }
        }
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tunnel().is_some() {
            return this.poll_write_tunnel(cx, buf);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.tunnel().is_some() {
            // A tunnel's bytes are followed write by write: one slice at a time.
            let buf = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
            return this.poll_write_tunnel(cx, buf);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(t) = this.tunnel.as_deref_mut() {
            match t.state {
                // A close frame begun is finished (a truncated one would be a protocol error
                // for the client), and one due at a boundary is sent: the tunnel ends anyway.
                tunnel::State::Closing(_) | tunnel::State::ShuttingDown | tunnel::State::Closed => {
                    ready!(tunnel::poll_close(t, &mut this.inner, cx));
                    return Poll::Ready(Ok(()));
                }
                tunnel::State::Due if t.at_boundary() => {
                    ready!(tunnel::poll_close(t, &mut this.inner, cx));
                    return Poll::Ready(Ok(()));
                }
                tunnel::State::Open | tunnel::State::Due => {}
            }
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for EdgeStream {
    async fn shutdown(&mut self) {
        if self.tunnel.as_ref().is_some_and(|t| t.state == tunnel::State::Closed) {
            return;
        }
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for EdgeStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for EdgeStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for EdgeStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for EdgeStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for EdgeStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for EdgeStream {
    /// pingora peeks for the HTTP/2 preface. [`EdgeStream::choose_protocol`] has already
    /// read either the whole preface or bytes that differ from it: answer from those,
    /// without waiting for more.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let have = &self.replay[self.replayed..];
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        buf[n..].fill(0);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets() {
        assert_eq!(connection_budget(1024), 384);
        assert_eq!(connection_budget(1_048_576), 524_160);
        assert_eq!(connection_budget(100), 64);
    }

    #[test]
    fn descriptor_limit_is_raised_to_the_hard_limit() {
        let now = raise_descriptor_limit().unwrap();
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(now, lim.rlim_cur as u64);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }

    #[tokio::test(start_paused = true)]
    async fn clock_phases() {
        let t = Timeouts { header: Duration::from_secs(60), keepalive: Duration::from_secs(75), tunnel_shutdown: Duration::from_secs(4) };
        let clock = HeadClock::new(t);
        let start = Instant::now();
        assert_eq!(clock.deadline().unwrap().duration_since(start).as_secs(), 60);
        clock.phase.store(BUSY, Ordering::Release);
        assert_eq!(clock.deadline(), None);
        tokio::time::advance(Duration::from_secs(100)).await;
        clock.wait(IDLE, t.keepalive);
        assert_eq!(clock.deadline().unwrap().duration_since(start).as_secs(), 175);
        clock.bytes_arrived();
        assert_eq!(clock.deadline().unwrap().duration_since(start).as_secs(), 160);
        assert_eq!(clock.expire(), ClientClose::HeaderTimeout);
        assert_eq!(clock.expired(), Some(ClientClose::HeaderTimeout));
        clock.wait(IDLE, t.keepalive);
        assert_eq!(clock.expire(), ClientClose::KeepaliveTimeout);
        assert_eq!(clock.expired(), Some(ClientClose::KeepaliveTimeout));
    }
}
