//! Active health checks, run as a pingora background service.
//!
//! hawser schedules probes itself rather than through pingora's `HealthCheck` loop because it
//! needs per-backend schedules: a new backend is probed every 10 ms for its first 2 s, so it
//! goes live within about 10 ms of listening (see `starting_delay`), and it gets no traffic
//! before its first probe passes (pingora starts new backends healthy). Results go to the
//! runtime, which folds them into the service's enablement map, with the reason of the last
//! failure for the admin API.
//!
//! A TLS backend (`scheme: https`) is probed over TLS, through pingora's own connector and
//! the peer [`crate::upstream::Dial`] builds for requests: same SNI, same verification, same
//! roots. A TCP check of such a backend is a full TLS handshake.
//!
//! An HTTP/2 backend (`scheme: h2c` or `h2`) is probed in HTTP/2 ([`exchange_h2`]), the only
//! protocol it may speak: an HTTP check is a GET, a gRPC check the standard
//! `grpc.health.v1.Health/Check` call, which passes only on `grpc-status: 0` and the status
//! `SERVING`. Answers are read up to 4 KiB.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use log::debug;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::server::ShutdownWatch;
use pingora::server::configuration::ServerConf;
use pingora::services::background::BackgroundService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::catalog::Probe;
use crate::runtime::{ProbeKey, ProbeStatus, ProbeTarget, Runtime, TargetChange};

/// Delay between probes of a backend that has not passed yet, during [`FAST_WINDOW`].
const FAST_RETRY: Duration = Duration::from_millis(10);
/// How long a starting backend is probed every [`FAST_RETRY`].
const FAST_WINDOW: Duration = Duration::from_secs(2);

/// The delay before the next probe of a backend that has not passed yet, `waited` after its
/// first probe (about when its container started).
///
/// Most services listen within a second or two of their start, and each probe of a port that
/// nobody listens on yet costs one refused connect; so: every [`FAST_RETRY`] during
/// [`FAST_WINDOW`] (a backend goes live at most that long after it listens), then a tenth of
/// the time waited so far (a slow starter is found at most about 10 % late), never less often
/// than the interval. A container that never gets ready costs 200 probes in its first 2 s
/// (refused connects: well under a millisecond of CPU each), 25 more up to 20 s, then one per
/// interval.
fn starting_delay(waited: Duration, interval: Duration) -> Duration {
    let delay = if waited < FAST_WINDOW { FAST_RETRY } else { (waited / 10).max(FAST_RETRY) };
    delay.min(interval)
}

pub struct HealthChecks {
    runtime: Arc<Runtime>,
}

impl HealthChecks {
    /// `server` is pingora's configuration, whose `ca_file` (else the system's roots) the
    /// proxy's connector trusts: TLS probes trust the same.
    pub fn new(runtime: Arc<Runtime>, server: &ServerConf) -> Self {
        let _ = CONNECTOR.set(TransportConnector::new(Some(ConnectorOptions::from_server_conf(server))));
        HealthChecks { runtime }
    }
}

/// One connector for every TLS probe, as the proxy has one for every request. Set by
/// [`HealthChecks::new`]; pingora's defaults if a probe runs before (unit tests).
static CONNECTOR: OnceLock<TransportConnector> = OnceLock::new();

fn connector() -> &'static TransportConnector {
    CONNECTOR.get_or_init(|| TransportConnector::new(None))
}

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut changes) = self.runtime.take_probe_changes() else {
            log::error!("health: the probe feed was already taken; no health checks run");
            return;
        };
        // One task per target; changes arrive one by one, so an event costs O(1) here.
        let mut running: HashMap<ProbeKey, JoinHandle<()>> = HashMap::new();
        loop {
            let change = tokio::select! {
                change = changes.recv() => match change {
                    Some(c) => c,
                    None => break,
                },
                _ = shutdown.changed() => break,
            };
            match change {
                TargetChange::Add(t) => {
                    let task = tokio::spawn(probe_loop(Arc::clone(&self.runtime), t.clone()));
                    if let Some(old) = running.insert(t.key(), task) {
                        old.abort();
                    }
                }
                TargetChange::Remove(key) => {
                    if let Some(task) = running.remove(&key) {
                        debug!("health: stop probing {} ({})", key.0, key.1);
                        task.abort();
                    }
                }
            }
        }
        for (_, task) in running {
            task.abort();
        }
    }
}

/// Probes one backend for as long as it is a target. rise/fall apply once it has been ready.
async fn probe_loop(runtime: Arc<Runtime>, target: ProbeTarget) {
    let policy = &target.policy;
    let mut status = ProbeStatus::Starting;
    let (mut passes, mut failures) = (0u32, 0u32);
    let first = tokio::time::Instant::now();
    let mut last_failure: Option<ProbeFailure> = None;
    loop {
        let started = tokio::time::Instant::now();
        let failure = probe_once(&target).await.err();
        let ok = failure.is_none();
        // Before the state change, so that its log line can say why.
        if failure != last_failure {
            runtime.probe_failure(&target, failure.as_ref());
            last_failure = failure;
        }
        if ok {
            passes += 1;
            failures = 0;
        } else {
            failures += 1;
            passes = 0;
        }
        let next = match status {
            ProbeStatus::Starting if ok => ProbeStatus::Ready,
            ProbeStatus::Ready if failures >= policy.fall => ProbeStatus::Unhealthy,
            ProbeStatus::Unhealthy if passes >= policy.rise => ProbeStatus::Ready,
            s => s,
        };
        if next != status {
            status = next;
            runtime.probe_changed(&target, status);
        }
        // While starting, the delay counts from the start of each probe, so that a slow refusal
        // does not stretch the schedule; once ready, `interval` separates the probes.
        if status == ProbeStatus::Starting {
            tokio::time::sleep_until(started + starting_delay(started - first, policy.interval)).await;
        } else {
            tokio::time::sleep(policy.interval).await;
        }
    }
}

/// Why a probe failed, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub why: String,
    /// The TLS handshake failed (a certificate that does not verify, a backend that does not
    /// speak TLS): a configuration to fix rather than a backend still starting.
    pub tls: bool,
}

impl ProbeFailure {
    fn other(why: String) -> ProbeFailure {
        ProbeFailure { why, tls: false }
    }
}

/// One probe within the policy's timeout, or why it failed. HTTP passes on a 2xx or 3xx status.
pub async fn probe_once(target: &ProbeTarget) -> Result<(), ProbeFailure> {
    let attempt = async {
        if target.dial.is_tls() {
            let mut peer = target.dial.peer(target.addr, None);
            peer.options.connection_timeout = Some(target.policy.timeout);
            let stream = connector().new_stream(&peer).await.map_err(|e| ProbeFailure {
                why: crate::upstream::describe_connect_error(&e),
                tls: crate::upstream::is_tls_error(&e),
            })?;
            if target.dial.scheme == crate::config::Scheme::H2
                && target.probe != Probe::Tcp
                && stream.selected_alpn_proto() != Some(pingora::protocols::ALPN::H2)
            {
                // pingora would speak HTTP/1.1 to it: say so rather than pass the probe in h2.
                return Err(ProbeFailure::other("the backend did not choose HTTP/2 in the TLS handshake (ALPN h2); scheme h2 needs it".into()));
            }
            exchange_any(stream, target).await.map_err(ProbeFailure::other)
        } else {
            let stream = TcpStream::connect(target.addr).await.map_err(|e| ProbeFailure::other(format!("cannot connect: {e}")))?;
            exchange_any(stream, target).await.map_err(ProbeFailure::other)
        }
    };
    match tokio::time::timeout(target.policy.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure::other(format!("no answer within {:?}", target.policy.timeout))),
    }
}

/// The probe's exchange in the protocol the service's scheme speaks.
async fn exchange_any<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, target: &ProbeTarget) -> Result<(), String> {
    if target.dial.scheme.is_h2() && target.probe != Probe::Tcp {
        exchange_h2(stream, target).await
    } else {
        exchange(stream, target).await
    }
}

/// The largest answer body an HTTP/2 probe reads.
const MAX_PROBE_BODY: usize = 4096;
/// The largest header list an HTTP/2 probe accepts.
const MAX_PROBE_HEADERS: u32 = 16 * 1024;

/// An HTTP/2 probe on a connected stream (see the module doc).
async fn exchange_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, target: &ProbeTarget) -> Result<(), String> {
    // A hostile backend could otherwise make each probe hold 16 MiB of headers (h2's default).
    let (client, connection) = h2::client::Builder::new()
        .max_header_list_size(MAX_PROBE_HEADERS)
        .handshake::<_, bytes::Bytes>(stream)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    // The connection's driver ends with this probe, whichever way it ends.
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let mut client = client.ready().await.map_err(|e| format!("HTTP/2 connection failed: {e}"))?;
    let grpc = target.probe == Probe::Grpc;
    let path = match &target.probe {
        Probe::Http { path } => path.as_str(),
        _ => GRPC_HEALTH_CHECK,
    };
    let scheme = if target.dial.is_tls() { "https" } else { "http" };
    let uri = http::Uri::builder()
        .scheme(scheme)
        .authority(target.host.as_str())
        .path_and_query(path)
        .build()
        .map_err(|e| format!("cannot make the request for {:?}{path:?}: {e}", target.host))?;
    let mut request = http::Request::builder()
        .method(if grpc { http::Method::POST } else { http::Method::GET })
        .uri(uri)
        .header(http::header::USER_AGENT, "hawser-health-check");
    if grpc {
        request = request.header(http::header::CONTENT_TYPE, "application/grpc").header(http::header::TE, "trailers");
    }
    let request = request.body(()).map_err(|e| format!("cannot make the request: {e}"))?;
    let (response, mut send) = client.send_request(request, !grpc).map_err(|e| format!("cannot send the request: {e}"))?;
    if grpc {
        // One empty HealthCheckRequest (service ""): the server's own health.
        send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).map_err(|e| format!("cannot send the request: {e}"))?;
    }
    let response = response.await.map_err(|e| format!("no answer: {e}"))?;
    let status = response.status();
    if !grpc {
        return if (200..=399).contains(&status.as_u16()) { Ok(()) } else { Err(format!("answered HTTP/2 {status}")) };
    }
    if status != http::StatusCode::OK {
        return Err(format!("answered HTTP/2 {status} to the gRPC health check"));
    }
    // Trailers-Only: the status came with the headers, and there is no message.
    if let Some(failed) = grpc_failure(response.headers()) {
        return Err(failed);
    }
    if response.headers().contains_key("grpc-status") {
        return Err("the gRPC health answer has status OK but no HealthCheckResponse".into());
    }
    let mut body = response.into_body();
    let mut message = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| format!("cannot read the answer: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if message.len() + chunk.len() > MAX_PROBE_BODY {
            return Err(format!("the gRPC health answer is over {MAX_PROBE_BODY} bytes"));
        }
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(|e| format!("cannot read the answer's trailers: {e}"))?;
    match trailers.as_ref().and_then(grpc_failure) {
        Some(failed) => Err(failed),
        None if trailers.as_ref().is_none_or(|t| !t.contains_key("grpc-status")) => Err("the gRPC health answer has no grpc-status".into()),
        None => serving(&message),
    }
}

const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A `grpc-status` other than 0 in `headers`, told with its `grpc-message` (shown escaped
/// and short: the backend's bytes reach logs and the admin API).
fn grpc_failure(headers: &http::HeaderMap) -> Option<String> {
    let status = headers.get("grpc-status")?;
    if status.as_bytes() == b"0" {
        return None;
    }
    let message = headers.get("grpc-message").map(|m| String::from_utf8_lossy(&m.as_bytes()[..m.len().min(80)]).into_owned());
    Some(match message {
        Some(m) if !m.is_empty() => format!("gRPC health check failed: grpc-status {:?}, {m:?}", String::from_utf8_lossy(status.as_bytes())),
        _ => format!("gRPC health check failed: grpc-status {:?}", String::from_utf8_lossy(status.as_bytes())),
    })
}

/// Whether a gRPC health answer (one length-prefixed `HealthCheckResponse`) says SERVING.
fn serving(message: &[u8]) -> Result<(), String> {
    let Some((head, body)) = message.split_at_checked(5) else {
        return Err("the gRPC health answer has no message".into());
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if head[0] != 0 || len != body.len() {
        return Err("the gRPC health answer is not one uncompressed message".into());
    }
    match health_status(body) {
        Some(1) => Ok(()),
        Some(2) => Err("gRPC health: NOT_SERVING".into()),
        Some(3) => Err("gRPC health: SERVICE_UNKNOWN".into()),
        // proto3 leaves a zero field out: no status field is UNKNOWN (0).
        Some(0) | None => Err("gRPC health: UNKNOWN".into()),
        Some(n) => Err(format!("gRPC health: unknown status {n}")),
    }
}

/// Field 1 (`status`, a varint) of a `HealthCheckResponse`; other fields are skipped.
/// `None` when absent or when the message does not parse.
fn health_status(mut msg: &[u8]) -> Option<u64> {
    fn varint(msg: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = msg.split_first()?;
            *msg = rest;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut status = None;
    while !msg.is_empty() {
        let key = varint(&mut msg)?;
        let skip = match key & 7 {
            0 => {
                let v = varint(&mut msg)?;
                if key >> 3 == 1 {
                    status = Some(v);
                }
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut msg)?).ok()?,
            5 => 4,
            _ => return None,
        };
        msg = msg.get(skip..)?;
    }
    status
}

/// The probe's request and the status line of its answer, on a connected stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, target: &ProbeTarget) -> Result<(), String> {
    let Probe::Http { path } = &target.probe else {
        // Connected (and, over TLS, handshaken and verified): that was the check.
        let _ = stream.shutdown().await;
        return Ok(());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hawser-health-check\r\nConnection: close\r\n\r\n",
        target.host
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("cannot send the request: {e}"))?;
    // The status line fits in the first read in practice; read until it is complete.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if status_ok(&buf) {
        return Ok(());
    }
    // The backend's bytes, shown escaped and short: they reach logs and the admin API.
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(&line[..line.len().min(80)]);
    Err(format!("answered {:?}", line.trim_end()))
}

fn status_ok(response: &[u8]) -> bool {
    let line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let version_ok = parts.next().is_some_and(|v| v.starts_with(b"HTTP/1."));
    let code = parts.next().and_then(|c| std::str::from_utf8(c).ok()).and_then(|c| c.trim().parse::<u16>().ok());
    version_ok && matches!(code, Some(200..=399))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthPolicy;
    use tokio::net::TcpListener;

    #[test]
    fn a_starting_backend_is_probed_every_10_ms_for_2_s_then_less_often() {
        let interval = Duration::from_secs(2);
        let ms = Duration::from_millis;
        assert_eq!(starting_delay(ms(0), interval), ms(10));
        assert_eq!(starting_delay(ms(1999), interval), ms(10));
        assert_eq!(starting_delay(ms(2000), interval), ms(200));
        assert_eq!(starting_delay(ms(10_000), interval), ms(1000));
        assert_eq!(starting_delay(ms(60_000), interval), interval);
        // Never less often than the interval, however short it is.
        assert_eq!(starting_delay(ms(0), ms(5)), ms(5));
        assert_eq!(starting_delay(ms(5000), ms(100)), ms(100));
    }

    #[test]
    fn a_backend_that_never_gets_ready_costs_a_bounded_number_of_probes() {
        let interval = Duration::from_secs(2);
        let (mut at, mut probes, mut longest) = (Duration::ZERO, 0u32, Duration::ZERO);
        let mut last = Duration::ZERO;
        while at < Duration::from_secs(60) {
            probes += 1;
            let next = at + starting_delay(at, interval);
            if at < FAST_WINDOW {
                longest = longest.max(next - at);
            }
            assert!(next - at >= last, "the delays never shrink");
            last = next - at;
            at = next;
        }
        assert_eq!(longest, FAST_RETRY, "within the window a listening backend waits at most 10 ms");
        // 200 in the first 2 s, about 25 up to 20 s, then one per 2 s.
        assert!((240..=250).contains(&probes), "{probes} probes in a minute");
    }

    #[test]
    fn grpc_health_answers() {
        assert_eq!(serving(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(()));
        assert_eq!(serving(&[0, 0, 0, 0, 2, 0x08, 2]), Err("gRPC health: NOT_SERVING".into()));
        assert_eq!(serving(&[0, 0, 0, 0, 0]), Err("gRPC health: UNKNOWN".into()));
        // Unknown fields before the status are skipped.
        assert_eq!(serving(&[0, 0, 0, 0, 6, 0x12, 2, b'h', b'i', 0x08, 1]), Ok(()));
        assert!(serving(&[0, 0, 0, 0, 9, 0x08, 1]).is_err(), "length mismatch");
        assert!(serving(&[1, 0, 0, 0, 2, 0x08, 1]).is_err(), "compressed");
        assert!(serving(&[0, 0, 0]).is_err());
        assert_eq!(health_status(&[0x08, 0xff]), None, "truncated varint");
        assert_eq!(health_status(&[0x12, 0x7f]), None, "field longer than the message");
        assert_eq!(health_status(&[0x0b]), None, "group wire type");
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_failure(&headers), None);
        headers.insert("grpc-status", "14".parse().unwrap());
        headers.insert("grpc-message", "down\r\nX-Evil: 1".parse().unwrap_or(http::HeaderValue::from_static("down")));
        assert!(grpc_failure(&headers).unwrap().starts_with("gRPC health check failed: grpc-status \"14\""));
    }

    #[test]
    fn status_lines() {
        assert!(status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_ok(b"HTTP/1.0 302 Found\r\n"));
        assert!(!status_ok(b"HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(!status_ok(b"garbage"));
        assert!(!status_ok(b""));
    }

    fn target(addr: std::net::SocketAddr, probe: Probe) -> ProbeTarget {
        ProbeTarget {
            container_id: "c".into(),
            container_name: "c".into(),
            service: "s".into(),
            addr,
            probe,
            policy: HealthPolicy { timeout: Duration::from_millis(500), ..HealthPolicy::default() },
            host: "s.test".into(),
            dial: Arc::default(),
        }
    }

    #[tokio::test]
    async fn probes_real_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "500 Internal Server Error"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).contains("Host: s.test"));
                s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await.unwrap();
            }
        });
        let http = target(addr, Probe::Http { path: "/healthz".into() });
        assert_eq!(probe_once(&http).await, Ok(()));
        assert_eq!(probe_once(&http).await, Err(ProbeFailure::other("answered \"HTTP/1.1 500 Internal Server Error\"".into())));
        server.await.unwrap();
        // Nothing listens there any more.
        let e = probe_once(&target(addr, Probe::Tcp)).await.unwrap_err();
        assert!(e.why.starts_with("cannot connect: ") && !e.tls, "{e:?}");
    }
}
