//! hawser's gRPC test backend: an HTTP/2 server (cleartext with prior knowledge, or TLS with
//! ALPN h2) on the `h2` crate, built static for a `FROM scratch` image by tests/common
//! (`grpc_backend_binary`). gRPC messages are opaque bytes here: the tests' clients (Python
//! `grpcio` with identity serializers) send and read them raw, so no protobuf code is needed
//! except for the two bytes of the standard health answer.
//!
//! Environment:
//!
//! ```text
//! PORT            TCP port (default 80)
//! BIND            address (default 0.0.0.0; 127.0.0.1 when run on a host)
//! NAME            identity (default: /etc/hostname trimmed, else "grpc-backend")
//! TLS_CERT        with TLS_KEY: serve TLS (PEM files) offering ALPN h2 only
//! TLS_KEY
//! WORKERS         runtime threads (default 1)
//! SIGTERM_DELAY_MS  after SIGTERM keep serving this long, then exit(0); without it SIGTERM
//!                 exits(0) at once (PID 1 would otherwise ignore it)
//! ```
//!
//! gRPC methods (every response has the header `x-backend: NAME`):
//!
//! ```text
//! /hawser.test.Echo/Unary         one message back: the request's bytes, except
//!                                 "name" -> NAME; "sleep:MS" -> waits MS ms, then
//!                                 "slept:MS"; "status:CODE:MESSAGE" -> no message, the
//!                                 status CODE with MESSAGE (Trailers-Only)
//! /hawser.test.Echo/ServerStream  request "COUNT,GAP_MS": COUNT messages "0", "1", ...,
//!                                 GAP_MS apart (the first one at once)
//! /hawser.test.Echo/ClientStream  reads every message, then answers "COUNT,BYTES"
//! /hawser.test.Echo/Bidi          each message echoed as soon as it is read
//! /hawser.test.Echo/SetHealth     "serving" or "not_serving": what Health/Check answers
//! /hawser.test.Echo/Stats         "cancelled=N connections=M": calls whose client reset the
//!                                 stream, and connections that carried a call of
//!                                 hawser.test.Echo (health checks and plain requests not counted)
//! /grpc.health.v1.Health/Check    HealthCheckResponse{status: SERVING (1) or NOT_SERVING (2)}
//! anything else gRPC              status 12 (UNIMPLEMENTED)
//! ```
//!
//! Requests that are not gRPC (no `content-type: application/grpc`): `/healthz` answers 200
//! "ok" (503 while not serving), `/echo` streams the request body back as it arrives, and
//! anything else answers 200 with body NAME.
//!
//! Once it listens it prints `grpc-backend NAME: listening on ADDR (h2c|h2)` to stderr.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// gRPC's default largest message.
const MAX_MESSAGE: usize = 4 << 20;

static NAME: OnceLock<String> = OnceLock::new();
static SERVING: AtomicBool = AtomicBool::new(true);
static CANCELLED: AtomicU64 = AtomicU64::new(0);
static ECHO_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

fn name() -> &'static str {
    NAME.get().map(String::as_str).unwrap_or("grpc-backend")
}

fn main() {
    let workers = std::env::var("WORKERS").ok().and_then(|w| w.parse().ok()).unwrap_or(1usize).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build().expect("runtime");
    rt.block_on(serve());
}

async fn serve() {
    let own = std::env::var("NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "grpc-backend".to_string());
    let _ = NAME.set(own);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "0.0.0.0".into());
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(80);
    let tls = match (std::env::var("TLS_CERT"), std::env::var("TLS_KEY")) {
        (Ok(cert), Ok(key)) => Some(tls_acceptor(&cert, &key)),
        _ => None,
    };
    let listener = TcpListener::bind((bind.as_str(), port)).await.unwrap_or_else(|e| panic!("bind {bind}:{port}: {e}"));
    eprintln!(
        "grpc-backend {}: listening on {} ({})",
        name(),
        listener.local_addr().expect("local address"),
        if tls.is_some() { "h2" } else { "h2c" }
    );
    tokio::spawn(on_sigterm());
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        connection(stream).await;
                    }
                }
                None => connection(tcp).await,
            }
        });
    }
}

async fn on_sigterm() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    term.recv().await;
    let delay = std::env::var("SIGTERM_DELAY_MS").ok().and_then(|d| d.parse().ok()).unwrap_or(0u64);
    eprintln!("grpc-backend {}: SIGTERM, exiting in {delay} ms", name());
    tokio::time::sleep(Duration::from_millis(delay)).await;
    std::process::exit(0);
}

fn tls_acceptor(cert: &str, key: &str) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("read TLS_CERT").collect::<Result<_, _>>().expect("parse TLS_CERT");
    let key = PrivateKeyDer::from_pem_file(key).expect("read TLS_KEY");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("certificate and key");
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn connection<T: AsyncRead + AsyncWrite + Unpin>(io: T) {
    let Ok(mut conn) = h2::server::Builder::new()
        .max_concurrent_streams(1000)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .handshake::<_, Bytes>(io)
        .await
    else {
        return;
    };
    let mut counted = false;
    while let Some(accepted) = conn.accept().await {
        let Ok((request, respond)) = accepted else { return };
        if !counted && request.uri().path().starts_with("/hawser.test.Echo/") {
            counted = true;
            ECHO_CONNECTIONS.fetch_add(1, Ordering::SeqCst);
        }
        tokio::spawn(async move {
            let cancelled = handle(request, respond).await.is_err();
            if cancelled {
                CANCELLED.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Err: the stream was reset (the client, or a proxy in between, gave up on the call).
async fn handle(request: Request<RecvStream>, respond: SendResponse<Bytes>) -> Result<(), h2::Error> {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    let path = request.uri().path().to_string();
    let body = request.into_body();
    if !grpc {
        return plain(&path, body, respond).await;
    }
    let mut call = Call { body, buf: BytesMut::new(), respond };
    match path.as_str() {
        "/hawser.test.Echo/Unary" => {
            let Some(msg) = call.one().await? else { return Ok(()) };
            let text = String::from_utf8_lossy(&msg).into_owned();
            if text == "name" {
                call.reply(&[Bytes::from(name().to_string())]).await
            } else if let Some(ms) = text.strip_prefix("sleep:").and_then(|m| m.parse::<u64>().ok()) {
                // Watch for a reset while sleeping, so that Stats counts a cancelled call.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    r = reset(&mut call.respond) => return Err(r),
                }
                call.reply(&[Bytes::from(format!("slept:{ms}"))]).await
            } else if let Some(rest) = text.strip_prefix("status:") {
                let (code, message) = rest.split_once(':').unwrap_or((rest, ""));
                call.fail(code.parse().unwrap_or(2), message)
            } else {
                call.reply(&[msg]).await
            }
        }
        "/hawser.test.Echo/ServerStream" => {
            let Some(msg) = call.one().await? else { return Ok(()) };
            let text = String::from_utf8_lossy(&msg).into_owned();
            let (count, gap) = text.split_once(',').unwrap_or((&text, "0"));
            let (count, gap): (u64, u64) = (count.parse().unwrap_or(1), gap.parse().unwrap_or(0));
            let mut send = call.start()?;
            for i in 0..count {
                if i > 0 && gap > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(gap)) => {}
                        r = reset_send(&mut send) => return Err(r),
                    }
                }
                send.send_data(frame(i.to_string().as_bytes()), false)?;
            }
            send.send_trailers(status_trailers(0, ""))
        }
        "/hawser.test.Echo/ClientStream" => {
            let (mut count, mut bytes) = (0u64, 0u64);
            loop {
                match call.next().await {
                    Ok(Some(msg)) => {
                        count += 1;
                        bytes += msg.len() as u64;
                    }
                    Ok(None) => break,
                    Err(Failure::Reset(e)) => return Err(e),
                    Err(Failure::Bad(why)) => return call.fail(3, &why),
                }
            }
            call.reply(&[Bytes::from(format!("{count},{bytes}"))]).await
        }
        "/hawser.test.Echo/Bidi" => {
            let mut send = call.start()?;
            loop {
                match call.next().await {
                    Ok(Some(msg)) => send.send_data(frame(&msg), false)?,
                    Ok(None) => break,
                    Err(Failure::Reset(e)) => return Err(e),
                    Err(Failure::Bad(why)) => return send.send_trailers(status_trailers(3, &why)),
                }
            }
            send.send_trailers(status_trailers(0, ""))
        }
        "/hawser.test.Echo/SetHealth" => {
            let Some(msg) = call.one().await? else { return Ok(()) };
            SERVING.store(&msg[..] != b"not_serving", Ordering::SeqCst);
            call.reply(&[msg]).await
        }
        "/hawser.test.Echo/Stats" => {
            if call.one().await?.is_none() {
                return Ok(());
            }
            let stats = format!("cancelled={} connections={}", CANCELLED.load(Ordering::SeqCst), ECHO_CONNECTIONS.load(Ordering::SeqCst));
            call.reply(&[Bytes::from(stats)]).await
        }
        "/grpc.health.v1.Health/Check" => {
            // HealthCheckRequest{service} is read and not looked at: one status for the server.
            if call.one().await?.is_none() {
                return Ok(());
            }
            // HealthCheckResponse: field 1 (status), varint: 1 = SERVING, 2 = NOT_SERVING.
            let status = if SERVING.load(Ordering::SeqCst) { 1 } else { 2 };
            call.reply(&[Bytes::from(vec![0x08, status])]).await
        }
        _ => call.fail(12, &format!("unknown method {path}")),
    }
}

/// Why reading a call's messages stopped.
enum Failure {
    Reset(h2::Error),
    Bad(String),
}

struct Call {
    body: RecvStream,
    buf: BytesMut,
    respond: SendResponse<Bytes>,
}

impl Call {
    /// The next length-prefixed message, or None at the end of the request.
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err(Failure::Bad("compressed messages are not supported".into()));
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
                if len > MAX_MESSAGE {
                    return Err(Failure::Bad(format!("message of {len} bytes is over {MAX_MESSAGE}")));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => return Err(Failure::Reset(e)),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(Failure::Bad("the request ended inside a message".into())),
            }
        }
    }

    /// A unary request's one message. Ok(None): the call was answered with an error already.
    async fn one(&mut self) -> Result<Option<Bytes>, h2::Error> {
        match self.next().await {
            Ok(Some(msg)) => Ok(Some(msg)),
            Ok(None) => self.fail(3, "no request message").map(|()| None),
            Err(Failure::Reset(e)) => Err(e),
            Err(Failure::Bad(why)) => self.fail(3, &why).map(|()| None),
        }
    }

    fn start(&mut self) -> Result<h2::SendStream<Bytes>, h2::Error> {
        self.respond.send_response(head(), false)
    }

    async fn reply(&mut self, messages: &[Bytes]) -> Result<(), h2::Error> {
        let mut send = self.start()?;
        for m in messages {
            send.send_data(frame(m), false)?;
        }
        send.send_trailers(status_trailers(0, ""))
    }

    /// A status without messages, in one HEADERS frame ("Trailers-Only").
    fn fail(&mut self, code: u32, message: &str) -> Result<(), h2::Error> {
        let mut resp = head();
        resp.headers_mut().extend(status_trailers(code, message));
        self.respond.send_response(resp, true).map(|_| ())
    }
}

async fn reset(respond: &mut SendResponse<Bytes>) -> h2::Error {
    match std::future::poll_fn(|cx| respond.poll_reset(cx)).await {
        Ok(reason) => h2::Error::from(reason),
        Err(e) => e,
    }
}

async fn reset_send(send: &mut h2::SendStream<Bytes>) -> h2::Error {
    match std::future::poll_fn(|cx| send.poll_reset(cx)).await {
        Ok(reason) => h2::Error::from(reason),
        Err(e) => e,
    }
}

fn head() -> Response<()> {
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("x-backend", name())
        .body(())
        .expect("response head")
}

fn status_trailers(code: u32, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        // gRPC's percent-encoding of grpc-message, for the bytes a header cannot hold.
        let mut enc = String::new();
        for b in message.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                enc.push(b as char);
            } else {
                enc.push_str(&format!("%{b:02X}"));
            }
        }
        t.insert("grpc-message", HeaderValue::from_str(&enc).expect("encoded message"));
    }
    t
}

fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// HTTP/2 requests that are not gRPC.
async fn plain(path: &str, mut body: RecvStream, mut respond: SendResponse<Bytes>) -> Result<(), h2::Error> {
    let response = |status: StatusCode| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "text/plain")
            .header("x-backend", name())
            .body(())
            .expect("response head")
    };
    match path {
        "/healthz" => {
            let ok = SERVING.load(Ordering::SeqCst);
            let mut send = respond.send_response(response(if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }), false)?;
            send.send_data(Bytes::from_static(if ok { b"ok" } else { b"unhealthy" }), true)
        }
        "/echo" => {
            let mut send = respond.send_response(response(StatusCode::OK), false)?;
            while let Some(chunk) = body.data().await {
                let chunk = chunk?;
                let n = chunk.len();
                send.reserve_capacity(n);
                // Wait for the client's window rather than buffering without bound.
                while send.capacity() < n {
                    match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    }
                }
                send.send_data(chunk, false)?;
                let _ = body.flow_control().release_capacity(n);
            }
            send.send_data(Bytes::new(), true)
        }
        _ => {
            let mut send = respond.send_response(response(StatusCode::OK), false)?;
            send.send_data(Bytes::from(name().to_string()), true)
        }
    }
}
