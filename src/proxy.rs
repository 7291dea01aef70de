//! The request path: Host + path → service → backend, with hawser's own 404/503 answers,
//! retries on a different backend where they are safe, and the evidence (connect failures,
//! gateway errors) that passive ejection runs on.
//!
//! Retry rules, in the order they are checked:
//! - never once any response byte went to the client, and never when the request body was
//!   too large to keep for a replay;
//! - a failure before the request reached the upstream (connect refused or timed out, or a
//!   reused pooled connection found closed) is retried for every method;
//! - a failure after the request was sent is retried only for idempotent methods;
//! - at most `retries` per request, and only while the service's retry budget allows;
//! - never when a long-lived exchange (WebSocket, server-sent events) ends in its idle
//!   timeout, which is not a backend failure either (see [`crate::streams`]).

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use log::{debug, warn};
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};

use crate::access_log::{AccessLog, Entry, rfc3339_millis};
use crate::catalog::routes::normalize_host;
use crate::config::AccessLogFormat;
use crate::metrics::ServiceMetrics;
use crate::passive::BackendLive;
use crate::runtime::{Runtime, Service};
use crate::streams::{self, LongLived};

/// Bound on candidates looked at per selection: enough to walk past every disabled entry of a
/// weighted service (weights are capped at 1000, services are small).
const MAX_SELECT_ITERATIONS: usize = 4096;

pub struct HawserProxy {
    runtime: Arc<Runtime>,
    /// Metrics of requests that matched no route.
    unrouted: ServiceMetrics,
    access_log: Option<AccessLog>,
}

impl HawserProxy {
    pub fn new(runtime: Arc<Runtime>, access_log: AccessLogFormat) -> Self {
        HawserProxy { runtime, unrouted: ServiceMetrics::new(""), access_log: AccessLog::start(access_log) }
    }
}

/// Per-request state. Building it allocates nothing: most requests need no more than that.
pub struct RequestCtx {
    started: std::time::Instant,
    service: Option<Arc<Service>>,
    /// Backends already tried for this request: a retry goes elsewhere.
    tried: Tried,
    retries: u32,
    /// The backend of the current attempt.
    backend: Option<Arc<BackendLive>>,
    /// Set for WebSocket and server-sent events: `stream_idle_timeout` applies.
    long_lived: Option<LongLived>,
}

impl HawserProxy {
    /// Whether this request may take one more retry: within its own limit and the service's
    /// budget. Counts the retry when it may.
    fn take_retry(&self, ctx: &mut RequestCtx) -> bool {
        let Some(svc) = &ctx.service else { return false };
        if ctx.retries >= svc.proxy.retries {
            return false;
        }
        if !svc.retry_budget.withdraw() {
            if svc.retry_budget.should_warn() {
                warn!("service {}: retry budget exhausted: failed requests are not retried for now", svc.name);
            }
            return false;
        }
        ctx.retries += 1;
        svc.metrics.retries.inc();
        true
    }

    fn backend_failed(&self, ctx: &RequestCtx) {
        if let (Some(svc), Some(live)) = (&ctx.service, &ctx.backend) {
            self.runtime.backend_failed(svc, live);
        }
    }
}

#[async_trait]
impl ProxyHttp for HawserProxy {
    type CTX = RequestCtx;

    /// No downstream modules. pingora's default adds a response compression module, disabled,
    /// that still runs on every request; hawser passes bodies through as the backend sent them.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: std::time::Instant::now(),
            service: None,
            tried: Tried::default(),
            retries: 0,
            backend: None,
            long_lived: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let host = normalize_host(client_host(req));
        let path = req.uri.path();
        match self.runtime.route(&host, path) {
            Some(svc) => {
                svc.retry_budget.deposit();
                svc.metrics.in_flight.inc();
                ctx.long_lived = streams::classify(req);
                if ctx.long_lived.is_some() {
                    // pingora's HTTP/1 session reads with a 60 s timeout, also the client side of
                    // an upgraded connection: a quiet WebSocket client would be cut.
                    session.as_downstream_mut().set_read_timeout(Some(svc.proxy.stream_idle_timeout));
                }
                ctx.service = Some(svc);
                Ok(false)
            }
            None => {
                let body = format!("hawser: no route for host {host:?} and path {path:?}\n");
                respond(session, 404, body, &[]).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let svc = ctx.service.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no service chosen"))?;
        let tried = &ctx.tried;
        let backend = svc.lb.select_with(b"", MAX_SELECT_ITERATIONS, |b, ready| {
            ready && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
        });
        let Some(backend) = backend else {
            // 503 when nothing was ready to begin with; 502 when every ready one failed.
            let status = if ctx.tried.is_empty() { 503 } else { 502 };
            return Err(Error::explain(ErrorType::HTTPStatus(status), "no backend to select"));
        };
        let Some(addr) = backend.addr.as_inet().copied() else {
            return Err(Error::explain(ErrorType::InternalError, "backend without an IP address"));
        };
        ctx.backend = backend.ext.get::<Arc<BackendLive>>().cloned();
        ctx.tried.push(addr);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(svc.proxy.connect_timeout);
        peer.options.read_timeout =
            Some(if ctx.long_lived.is_some() { svc.proxy.stream_idle_timeout } else { svc.proxy.read_timeout });
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut pingora::http::RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // hawser is the edge: it states the client's address rather than trusting what the
        // client claims (Traefik's default for untrusted clients).
        if let Some(ip) = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()) {
            upstream.insert_header("X-Forwarded-For", ip_header_value(ip))?;
        }
        upstream.insert_header("X-Forwarded-Proto", http::HeaderValue::from_static("http"))?;
        // The client's own Host value, shared rather than copied.
        let req = session.req_header();
        let host = match req.headers.get(http::header::HOST) {
            Some(v) => Some(v.clone()),
            None => req.uri.host().and_then(|h| http::HeaderValue::from_str(h).ok()),
        };
        if let Some(host) = host.filter(|h| !h.is_empty()) {
            upstream.insert_header("X-Forwarded-Host", host)?;
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        // hawser's own 502/503 answers are decisions, not faults; they are logged where made.
        // A client that hangs up before its answer (a load generator stopping, a browser
        // navigating away) is the client's choice, not an error of hawser's; so is the idle
        // end of a WebSocket or an event stream.
        matches!(e.etype(), ErrorType::HTTPStatus(_)) || client_went_away(e) || (ctx.long_lived.is_some() && streams::idle_end(e))
    }

    /// The upstream's answer: a gateway error (502/503/504) extends the backend's failure run,
    /// anything else ends it.
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if matches!(upstream_response.status.as_u16(), 502..=504) {
            self.backend_failed(ctx);
        } else if let Some(live) = &ctx.backend {
            live.record_success();
        }
        Ok(())
    }

    /// An error after the connection was made. pingora's loop would retry whatever this marks,
    /// even after the client got response bytes, so hawser decides (see the module doc).
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        upstream_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if *e.esource() != ErrorSource::Upstream {
            // The client went away or sent garbage: nothing to retry, nothing against the backend.
            e.set_retry(false);
            return e;
        }
        if ctx.long_lived.is_some() && streams::idle_end(&e) {
            // Nothing moved for stream_idle_timeout: the stream's end, not the backend's fault.
            e.set_retry(false);
            return e;
        }
        self.backend_failed(ctx);
        // pingora marks "ReusedOnly" the failures that show a pooled connection was already
        // closed by the upstream: the request never reached the application.
        let not_delivered = upstream_reused && matches!(e.retry, RetryType::ReusedOnly);
        let replayable = !session.as_ref().retry_buffer_truncated() && session.response_written().is_none();
        let safe = replayable && (not_delivered || session.req_header().method.is_idempotent());
        let retry = safe && self.take_retry(ctx);
        if let (true, Some(svc)) = (retry, &ctx.service) {
            debug!("service {}: {e}; retrying on another backend", svc.name);
        }
        e.set_retry(retry);
        e
    }

    /// No connection: the request never left, so any method may be retried.
    fn fail_to_connect(&self, _session: &mut Session, peer: &HttpPeer, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        if let Some(live) = &ctx.backend {
            live.metrics.connect_errors.inc();
        }
        self.backend_failed(ctx);
        let retry = self.take_retry(ctx);
        if let (true, Some(svc)) = (retry, &ctx.service) {
            warn!("service {}: connect to {} failed ({e}); retrying on another backend", svc.name, peer._address);
        }
        e.set_retry(retry);
        e
    }

    /// Every request ends here: metrics, then the access log line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let elapsed = ctx.started.elapsed();
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let metrics = match &ctx.service {
            Some(svc) => {
                svc.metrics.in_flight.dec();
                &svc.metrics
            }
            None => &self.unrouted,
        };
        metrics.answered(status);
        metrics.duration.observe(elapsed.as_secs_f64());
        let Some(log) = &self.access_log else { return };
        let req = session.req_header();
        let client = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip().to_string()).unwrap_or_default();
        let upstream = ctx.backend.as_ref().map(|b| b.addr.to_string()).unwrap_or_default();
        log.record(&Entry {
            time: rfc3339_millis(std::time::SystemTime::now()),
            client: &client,
            method: req.method.as_str(),
            host: client_host(req),
            path: req.uri.path_and_query().map_or("", |p| p.as_str()),
            status,
            duration_ms: elapsed.as_secs_f64() * 1e3,
            service: ctx.service.as_ref().map_or("", |s| s.name.as_str()),
            backend: ctx.backend.as_ref().map_or("", |b| b.container_name.as_str()),
            upstream: &upstream,
            retries: ctx.retries,
            bytes: session.body_bytes_sent(),
        });
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        let service = ctx.service.as_ref().map_or("?", |s| s.name.as_str());
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ if client_went_away(e) => {
                debug!("service {service}: the client went away: {e}");
                0
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => 400,
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        // The backend's response already started: the client can only learn of the failure
        // from the connection closing before the promised length. Writing hawser's own answer
        // now would splice it into the backend's body.
        if session.response_written().is_some() {
            if ctx.long_lived.is_some() && streams::idle_end(e) {
                debug!("service {service}: long-lived exchange ended after stream_idle_timeout: {e}");
            } else {
                warn!("service {service}: response broken off after it started: {e}");
            }
            return FailToProxy { error_code: code, can_reuse_downstream: false };
        }
        let result = match code {
            0 => Ok(()),
            503 => {
                let body = format!("hawser: service {service} has no ready backend\n");
                respond(session, 503, body, &[("Retry-After", "1")]).await
            }
            502 => {
                let body = format!("hawser: no backend of service {service} could be reached\n");
                respond(session, 502, body, &[]).await
            }
            _ => session.respond_error(code).await,
        };
        if let Err(err) = result {
            warn!("could not send the {code} response: {err}");
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }
}

/// The host the client asked for, as it sent it: the Host header, else the host of an
/// absolute-form request target, else "".
fn client_host(req: &pingora::http::RequestHeader) -> &str {
    req.headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or_default()
}

/// An IP address as a header value, formatted without a temporary String.
fn ip_header_value(ip: std::net::IpAddr) -> http::HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 48]; // the longest IPv6 text form is 45 bytes
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let len = 48 - w.len();
    http::HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

/// The backends a request has tried, without an allocation for the usual single attempt.
#[derive(Default)]
struct Tried {
    first: Option<SocketAddr>,
    more: Vec<SocketAddr>,
}

impl Tried {
    fn push(&mut self, addr: SocketAddr) {
        if self.first.is_none() {
            self.first = Some(addr);
        } else {
            self.more.push(addr);
        }
    }

    fn contains(&self, addr: &SocketAddr) -> bool {
        self.first.as_ref() == Some(addr) || self.more.contains(addr)
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// The client closed or broke its connection: there is nobody to answer.
fn client_went_away(e: &Error) -> bool {
    *e.esource() == ErrorSource::Downstream
        && matches!(e.etype(), ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed)
}

/// A short plain-text response that hawser makes itself.
async fn respond(session: &mut Session, status: u16, body: String, headers: &[(&'static str, &'static str)]) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in headers {
        resp.insert_header(*name, *value)?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session.write_response_header(Box::new(resp), head_only).await?;
    if !head_only {
        session.write_response_body(Some(Bytes::from(body)), true).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_header_values() {
        assert_eq!(ip_header_value("192.168.10.200".parse().unwrap()), "192.168.10.200");
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert_eq!(ip_header_value(long.parse().unwrap()), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(ip_header_value("::1".parse().unwrap()), "::1");
    }

    #[test]
    fn tried_backends() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let mut t = Tried::default();
        assert!(t.is_empty() && !t.contains(&a));
        t.push(a);
        assert!(!t.is_empty() && t.contains(&a) && !t.contains(&b));
        t.push(b);
        t.push(c);
        assert!(t.contains(&a) && t.contains(&b) && t.contains(&c));
    }
}
