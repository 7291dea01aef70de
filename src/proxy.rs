//! The request path: Host + path → service → backend, with hawser's own 404/503 answers
//! (in gRPC's form to gRPC calls, see [`crate::grpc`]),
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

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use log::{debug, warn};
use pingora::http::authority::raw_target_authority;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result, RetryType};

use crate::access_log::{AccessLog, Entry, rfc3339_millis};
use crate::config::{AccessLogFormat, ClientPolicy};
use crate::edge::conn;
use crate::edge::forwarded::{self, Facts};
use crate::edge::framing::{self, HeadLimits, Reject};
use crate::edge::host::{HostPort, parse_host};
use crate::edge::https::HttpsEdge;
use crate::edge::path::normalize;
use crate::grpc;
use crate::tls::challenge;
use crate::metrics::ServiceMetrics;
use crate::passive::BackendLive;
use crate::runtime::{Runtime, Service};
use crate::streams::{self, LongLived};
use crate::upstream::hold::Hold;
use pingora::protocols::http::v1::common::is_expect_continue_req;

/// Bound on candidates looked at per selection: enough to walk past every disabled entry of a
/// weighted service (weights are capped at 1000, services are small).
const MAX_SELECT_ITERATIONS: usize = 4096;

pub struct HawserProxy {
    runtime: Arc<Runtime>,
    /// Metrics of requests that matched no route.
    unrouted: ServiceMetrics,
    access_log: Option<AccessLog>,
    limits: HeadLimits,
    body_timeout: std::time::Duration,
    send_timeout: std::time::Duration,
    /// Connections closed after hawser refused a request on them.
    refused: prometheus::IntCounter,
    /// `clients.trusted_proxies`: peers whose forwarding headers are believed.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Challenges and redirects, when hawser has TLS listeners.
    https: Option<HttpsEdge>,
}

impl HawserProxy {
    pub fn new(runtime: Arc<Runtime>, access_log: AccessLogFormat, clients: &ClientPolicy) -> Self {
        HawserProxy {
            runtime,
            unrouted: ServiceMetrics::new(""),
            access_log: AccessLog::start(access_log),
            limits: HeadLimits::from(clients),
            body_timeout: clients.body_timeout,
            send_timeout: clients.send_timeout,
            refused: crate::metrics::metrics().client_closed(crate::metrics::ClientClose::Refused),
            trusted_proxies: clients.trusted_proxies.clone(),
            https: None,
        }
    }

    /// With TLS listeners: answers ACME challenges, redirects to and marks HTTPS.
    pub fn with_https(mut self, https: HttpsEdge) -> Self {
        self.https = Some(https);
        self
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
    /// The request was refused by hawser (its head, or its body's size): the answer says why.
    refused: Option<Reject>,
    /// The host the request was routed on, as `X-Forwarded-Host` and `Forwarded` state it
    /// (the client's Host bytes, shared, when they are already that).
    routed_host: Option<http::HeaderValue>,
    /// The request-target the backend gets when it is not the client's: the normalised path
    /// (and the query as sent), in origin-form. `None`, allocating nothing, when the client's
    /// target was already that.
    upstream_target: Option<String>,
    /// Set for WebSocket and server-sent events: `stream_idle_timeout` applies.
    long_lived: Option<LongLived>,
    /// A gRPC call's deadline, from its `grpc-timeout`, on a service spoken to in HTTP/2 (see
    /// [`grpc_read_timeout`]).
    deadline: Option<std::time::Instant>,
    /// The backend switched this request to WebSocket: counted open until the request ends.
    websocket: Option<streams::WebSocketOpen>,
    /// The request came over TLS.
    tls: bool,
    /// The status hawser's own answer to a gRPC call stands for (its 404, 503…): metrics and
    /// the access log count it, not the 200 that gRPC's form puts on the wire, so that a
    /// missing route or backend reads the same whichever protocol the client spoke.
    grpc_answered: Option<u16>,
    /// The hold on this attempt's backend connection: a bodyless HTTP/1.1 upgrade request
    /// (see [`crate::upstream::hold`]).
    hold: Option<Arc<Hold>>,
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
            refused: None,
            routed_host: None,
            upstream_target: None,
            long_lived: None,
            deadline: None,
            websocket: None,
            tls: false,
            grpc_answered: None,
            hold: None,
        }
    }

    /// The first look at a request: its head as received must have one reading only (see
    /// [`framing`]), and the connection's head deadline ends here.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let downstream = session.as_downstream_mut();
        let unchecked = conn::head_read(downstream.stream());
        // nginx's client_body_timeout: the longest pause between two reads of the body.
        downstream.set_read_timeout(Some(self.body_timeout));
        // nginx's send_timeout: a client that stops reading does not hold its answer forever.
        downstream.set_write_timeout(Some(self.send_timeout));
        // RFC 9112 §9.3.2: requests pipelined on a connection are answered in order. pingora
        // drops them unless asked. Not behind an upgrade: what a client sends after it is
        // tunnel data, which pingora would otherwise keep as the start of a next request.
        let upgrade = downstream.is_upgrade_req();
        downstream.set_pipelining_enabled(!upgrade);
        ctx.tls = downstream.digest().is_some_and(|d| d.ssl_digest.is_some());
        if let Some(h1) = downstream.as_http1().filter(|_| unchecked)
            && let Err(reject) = framing::check_head(&h1.get_headers_raw_bytes(), &self.limits)
        {
            return Err(refuse(ctx, reject));
        }
        Ok(())
    }

    /// Routing: on the Host as [`parse_host`] reads it and the path as [`normalize`] gives
    /// it, or a 400 saying what was wrong.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header();
        let target = match RoutingTarget::read(req) {
            Ok(target) => target,
            Err(why) => return Err(refuse(ctx, Reject::new(400, why))),
        };
        let host = target.host.as_ref().map_or("", |h| &h.host);
        if let Some(https) = self.https.as_ref().filter(|_| !ctx.tls)
            && target.path.starts_with(challenge::PREFIX)
            && let Some(answer) = https.challenges.answer(&target.path).await
        {
            debug!("ACME challenge answered for {host:?}");
            respond_typed::<&str>(session, 200, answer, "application/octet-stream", &[]).await?;
            return Ok(true);
        }
        match self.runtime.route(host, &target.path) {
            Some(svc) if !ctx.tls && self.https.is_some() && svc.site.load().redirect => {
                if host.is_empty() {
                    // HTTP/1.0 without Host on an any-host route: no name to send it to.
                    return Err(refuse(ctx, Reject::new(400, "this site is served over HTTPS only, and the request names no Host")));
                }
                let https = self.https.as_ref().expect("checked");
                let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
                let location = https.redirect_location(host, pq);
                let body = format!("hawser: this site is served over HTTPS: {location}\n");
                respond_typed(session, 308, body, "text/plain; charset=utf-8", &[("Location", location)]).await?;
                Ok(true)
            }
            Some(svc) => {
                svc.retry_budget.deposit();
                svc.metrics.in_flight.inc();
                ctx.long_lived = streams::classify(req);
                // Only where gRPC can work: a client cannot stretch an HTTP/1.1 request's
                // timeouts by calling it gRPC.
                if svc.upstream.load().scheme.is_h2() && grpc::is_grpc(req) {
                    ctx.deadline = grpc::timeout(req).and_then(|t| ctx.started.checked_add(t));
                }
                ctx.upstream_target = target.upstream_target(req);
                ctx.routed_host = target.host_value();
                // An upgrade without a body has nothing for clients.body_timeout to time: the
                // next bytes from its client are tunnel data, read with the session's read
                // timeout as soon as the backend's 101 passes (see upstream_response_filter).
                if ctx.long_lived == Some(LongLived::Upgrade) && session.as_downstream_mut().is_body_empty() {
                    session.as_downstream_mut().set_read_timeout(Some(svc.proxy.stream_idle_timeout));
                }
                ctx.service = Some(svc);
                Ok(false)
            }
            None => {
                let body = format!("hawser: no route for host {host:?} and path {:?}\n", target.path);
                answer(session, ctx, 404, body, &[]).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        let svc = ctx.service.as_ref().ok_or_else(|| Error::explain(ErrorType::InternalError, "no service chosen"))?;
        let tried = &ctx.tried;
        // An ejected backend is passed over at once: the ejection's new selector is published
        // by the service's updater task a moment later (seen: a request 0.5 ms after it).
        let backend = svc.lb.select_with(b"", MAX_SELECT_ITERATIONS, |b, ready| {
            ready
                && b.addr.as_inet().is_some_and(|a| !tried.contains(a))
                && !b.ext.get::<Arc<BackendLive>>().is_some_and(|l| l.is_ejected())
        });
        let Some(backend) = backend else {
            // 503 when nothing was ready to begin with; 502 when every ready one failed.
            let status = if ctx.tried.is_empty() { 503 } else { 502 };
            return Err(Error::explain(ErrorType::HTTPStatus(status), "no backend to select"));
        };
        let Some(addr) = backend.addr.as_inet().copied() else {
            return Err(Error::explain(ErrorType::InternalError, "backend without an IP address"));
        };
        // A gRPC call whose deadline passed (a retry after a slow failure) is not sent again.
        let now = std::time::Instant::now();
        if ctx.deadline.is_some_and(|d| d <= now) {
            return Err(Error::explain(ErrorType::HTTPStatus(504), "the gRPC call's deadline passed"));
        }
        ctx.backend = backend.ext.get::<Arc<BackendLive>>().cloned();
        ctx.tried.push(addr);
        // Cleartext, or TLS with the name and roots the service's settings give (never an
        // empty SNI, which would turn verification off): see crate::upstream.
        let host = ctx.routed_host.as_ref().and_then(|h| h.to_str().ok());
        let upstream = svc.upstream.load();
        let mut peer = upstream.peer(addr, host);
        peer.options.connection_timeout = Some(svc.proxy.connect_timeout);
        let read_timeout = match (ctx.long_lived, ctx.deadline) {
            (_, Some(deadline)) => grpc_read_timeout(deadline - now, svc.proxy.stream_idle_timeout),
            (Some(_), None) => svc.proxy.stream_idle_timeout,
            (None, None) => svc.proxy.read_timeout,
        };
        peer.options.read_timeout = Some(read_timeout);
        if upstream.scheme.is_h2() {
            peer.options.max_h2_streams = svc.proxy.h2_streams_per_connection as usize;
            peer.options.h2_ping_interval = svc.proxy.h2_ping_interval;
        }
        // A bodyless HTTP/1.1 upgrade (pingora's own predicate) to a backend spoken to in
        // HTTP/1.1 gets a held connection; checked in the order that costs least.
        let downstream = session.as_downstream_mut();
        let held = downstream.is_upgrade_req() && !upstream.scheme.is_h2() && downstream.is_body_empty();
        ctx.hold = held.then(|| Hold::peer(&mut peer, svc.proxy.connect_timeout));
        Ok(Box::new(peer))
    }

    /// A held request's connection is up (its TLS handshake done) and its head not yet
    /// written: from here its reads wait for the request's end of body (see
    /// [`crate::upstream::hold`]).
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !reused && let Some(hold) = &ctx.hold {
            hold.arm();
        }
        Ok(())
    }

    /// The request as the backend gets it: the normalised target when it differs from the
    /// client's, and the forwarding headers [`forwarded`] decides.
    ///
    /// The target is rewritten here, on the upstream copy, rather than on the client's request
    /// before routing, so that the access log keeps what the client sent.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Expectations are hawser's to meet (see proxy_upstream_filter); RFC 9110 §10.1.1 has
        // HTTP/1.0 ones ignored.
        upstream.remove_header(&http::header::EXPECT);
        framing::strip_h2c_upgrade(upstream);
        let req = session.req_header();
        if let Some(target) = &ctx.upstream_target {
            upstream.set_raw_path(target.as_bytes())?;
            // An absolute-form request without a Host header (HTTP/1.0): origin-form needs the
            // target's authority as Host, which pingora would otherwise have derived from it.
            if !upstream.headers.contains_key(http::header::HOST)
                && let Some(authority) = raw_target_authority(req.raw_path()).authority()
                && let Ok(host) = http::HeaderValue::from_bytes(authority)
            {
                upstream.insert_header(http::header::HOST, host)?;
            }
        }
        let facts = Facts {
            peer: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
            host: ctx.routed_host.clone(),
            port: session.server_addr().and_then(|a| a.as_inet()).map(|a| a.port()),
            proto: if ctx.tls { "https" } else { "http" },
        };
        forwarded::apply(forwarded::edits(facts, &self.trusted_proxies, &req.headers), upstream)
    }

    /// A declared body over the service's `max_body_size` is refused before anything is sent
    /// upstream (nginx's client_max_body_size, 413).
    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let max = ctx.service.as_ref().and_then(|s| s.proxy.max_body_size);
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(max), Some(declared)) = (max, declared)
            && declared > max
        {
            return Err(refuse(ctx, TOO_LARGE));
        }
        // nginx answers `Expect: 100-continue` itself once it wants the body; so does hawser,
        // now that the request is routed and within its limits. The backend is not asked
        // (see upstream_request_filter), so no second 100 reaches the client.
        if is_expect_continue_req(session.req_header()) && !session.as_downstream_mut().is_body_empty() {
            session.as_downstream_mut().write_continue_response().await?;
        }
        Ok(true)
    }

    /// A body without a declared length (chunked) is measured as it is read from the client
    /// (a retry's replay of the kept body is not read again); past the limit the request is
    /// cut and, if no answer started yet, answered 413. The bytes of an upgraded tunnel are
    /// no request body.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if end_of_stream && let Some(hold) = &ctx.hold {
            hold.release();
        }
        let Some(max) = ctx.service.as_ref().and_then(|s| s.proxy.max_body_size) else { return Ok(()) };
        let downstream = session.as_downstream();
        if !downstream.was_upgraded() && downstream.body_bytes_read() as u64 > max {
            return Err(refuse(ctx, TOO_LARGE));
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        // hawser's own 502/503 answers are decisions, not faults; they are logged where made.
        // A client that hangs up before its answer (a load generator stopping, a browser
        // navigating away) is the client's choice, not an error of hawser's; so is the idle
        // end of a WebSocket or an event stream.
        matches!(e.etype(), ErrorType::HTTPStatus(_))
            || client_went_away(e)
            || (ctx.long_lived.is_some() && streams::idle_end(e))
            || deadline_passed(ctx, e)
    }

    /// The upstream's answer: a gateway error (502/503/504) extends the backend's failure run,
    /// anything else ends it.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if upstream_response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && let (Some(LongLived::Upgrade), Some(svc)) = (ctx.long_lived, &ctx.service)
        {
            // A tunnel now: its client side is read with the session's read timeout, until
            // here clients.body_timeout, and a quiet WebSocket client is no stalled body.
            session.as_downstream_mut().set_read_timeout(Some(svc.proxy.stream_idle_timeout));
            let websocket = streams::switches_to_websocket(upstream_response);
            if ctx.websocket.is_none() && websocket {
                ctx.websocket = Some(streams::WebSocketOpen::new(&svc.metrics.websockets));
            }
            // Ended cleanly, with a close frame for a WebSocket, when hawser stops.
            conn::tunnel_opened(session.as_downstream().stream(), websocket);
        }
        if ctx.tls
            && let Some(svc) = &ctx.service
            && let Some(hsts) = &svc.site.load().hsts
        {
            upstream_response.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts.as_str())?;
        }
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
        if deadline_passed(ctx, &e) {
            // The client's deadline, not the backend's fault: a client must not eject backends
            // by asking for short deadlines.
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

    /// No connection: the request never left, so any method may be retried. A failed TLS
    /// handshake (a certificate that does not verify, a backend that does not speak TLS) is
    /// such a failure too, and is always logged: it is a configuration to fix, not a blip.
    fn fail_to_connect(&self, _session: &mut Session, peer: &HttpPeer, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        if let Some(live) = &ctx.backend {
            live.metrics.connect_errors.inc();
        }
        self.backend_failed(ctx);
        let retry = self.take_retry(ctx);
        let then = if retry { "; retrying on another backend" } else { "" };
        if let Some(svc) = &ctx.service {
            if crate::upstream::is_tls_error(&e) {
                let backend = ctx.backend.as_ref().map_or("?", |b| b.container_name.as_str());
                let level = if ctx.backend.as_ref().is_none_or(|b| b.first_tls_failure()) {
                    log::Level::Warn
                } else {
                    log::Level::Debug
                };
                log::log!(
                    level,
                    "service {}: backend {backend} ({}): {}{then}",
                    svc.name,
                    peer._address,
                    crate::upstream::describe_connect_error(&e)
                );
            } else if retry {
                warn!("service {}: connect to {} failed ({e}){then}", svc.name, peer._address);
            }
        }
        e.set_retry(retry);
        e
    }

    /// Every request ends here: metrics, then the access log line. pingora calls it for an
    /// upgraded tunnel too, once either side has closed it.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        conn::request_done(session.as_downstream().stream());
        // The tunnel is over: out of the gauge now rather than when pingora drops the context.
        ctx.websocket = None;
        // A body left unread (answered before it was read: a 404, a refusal, a backend's
        // early 401) would be drained by pingora on the clock of the next request head; close
        // instead, as for any request hawser stops reading.
        if !session.as_downstream_mut().is_body_done() {
            session.set_keepalive(None);
        }
        let elapsed = ctx.started.elapsed();
        let status = ctx.grpc_answered.or_else(|| session.response_written().map(|r| r.status.as_u16())).unwrap_or(0);
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
        if session.response_written().is_none()
            && let Some(reject) = ctx.refused.take()
        {
            // Nothing more is read from a client whose request hawser refused.
            debug!("refused a request from {:?}: {} {}", session.client_addr(), reject.status, reject.reason);
            self.refused.inc();
            session.set_keepalive(None);
            if let Err(err) = answer(session, ctx, reject.status, reject.body(), &[("Connection", "close")]).await {
                debug!("could not send the {} response: {err}", reject.status);
            }
            return FailToProxy { error_code: reject.status, can_reuse_downstream: false };
        }
        let service = ctx.service.as_ref().map_or("?", |s| s.name.as_str());
        let code = match e.etype() {
            _ if deadline_passed(ctx, e) => 504,
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
            504 if ctx.deadline.is_some() => {
                let body = format!("hawser: the call's deadline (grpc-timeout) passed before service {service} answered\n");
                answer(session, ctx, 504, body, &[]).await
            }
            503 => {
                let body = format!("hawser: service {service} has no ready backend\n");
                answer(session, ctx, 503, body, &[("Retry-After", "1")]).await
            }
            502 => {
                let body = format!("hawser: no backend of service {service} could be reached\n");
                answer(session, ctx, 502, body, &[]).await
            }
            _ if grpc::is_grpc(session.req_header()) => {
                let reason = http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("error");
                answer(session, ctx, code, format!("hawser: {code} {reason} (service {service})"), &[]).await
            }
            _ => session.respond_error(code).await,
        };
        if let Err(err) = result {
            warn!("could not send the {code} response: {err}");
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }
}


const TOO_LARGE: Reject =
    Reject { status: 413, reason: std::borrow::Cow::Borrowed("the request body is larger than the service's max_body_size") };

/// Records why hawser refuses this request and makes the error that ends it: the client's
/// doing, so neither retried nor held against a backend.
fn refuse(ctx: &mut RequestCtx, reject: Reject) -> Box<Error> {
    let mut e = Error::explain(ErrorType::HTTPStatus(reject.status), reject.reason.to_string());
    e.as_down();
    ctx.refused = Some(reject);
    e
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

/// What a request is routed on, read from its head.
struct RoutingTarget<'r> {
    /// `None` only for a request that may name no host (HTTP/1.0 without Host).
    host: Option<HostPort<'r>>,
    /// The Host header the host came from, if it did.
    header: Option<&'r http::HeaderValue>,
    path: Cow<'r, str>,
    /// The request-target is in absolute-form (`GET http://host/path`).
    absolute: bool,
}

impl<'r> RoutingTarget<'r> {
    /// Reads the host and path, or says why the request is a 400.
    fn read(req: &'r RequestHeader) -> std::result::Result<Self, String> {
        let (host, header) = request_host(req)?.map_or((None, None), |(host, header)| (Some(host), header));
        if !req.raw_path_is_utf8() {
            return Err("the request target is not valid UTF-8: percent-encode its non-ASCII bytes".into());
        }
        let absolute = raw_target_authority(req.raw_path()).authority().is_some();
        // The path as the client sent it: pingora's parsed URI may differ from it (it rewrites
        // a request line it cannot parse, and falls back to "/" for a target it cannot read).
        let raw = std::str::from_utf8(req.raw_path()).unwrap_or_default();
        let sent = if absolute { req.uri.path() } else { raw.split('?').next().unwrap_or_default() };
        let path = normalize(sent).map_err(|e| e.to_string())?;
        Ok(RoutingTarget { host, header, path, absolute })
    }

    /// The routed host as a header value: the client's Host bytes, shared rather than copied,
    /// when they are the host as routed (no port, no upper case, no trailing dot).
    fn host_value(&self) -> Option<http::HeaderValue> {
        let host = self.host.as_ref()?;
        match (self.header, &host.host) {
            (Some(value), Cow::Borrowed(h)) if value.len() == h.len() => Some(value.clone()),
            _ => http::HeaderValue::from_str(&host.host).ok(),
        }
    }

    /// The origin-form target for the backend when it is not the client's own.
    fn upstream_target(&self, req: &RequestHeader) -> Option<String> {
        if !self.absolute && matches!(self.path, Cow::Borrowed(_)) {
            return None;
        }
        let query = req.uri.query();
        let mut target = String::with_capacity(self.path.len() + query.map_or(0, |q| q.len() + 1));
        target.push_str(&self.path);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        Some(target)
    }
}

/// The host a request names, parsed, with the Host header it came from (if it did), or why
/// the request is a 400. The authority of the request-target wins over Host (RFC 9112
/// §3.2.2): HTTP/2's `:authority`, which pingora keeps in the URI, and an HTTP/1
/// absolute-form target's, which it keeps in the raw target (and has checked equal to Host).
fn request_host(req: &RequestHeader) -> std::result::Result<Option<(HostPort<'_>, Option<&http::HeaderValue>)>, String> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let (header, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err("more than one Host header".into());
    }
    if header.is_none() && req.version == http::Version::HTTP_11 {
        return Err("an HTTP/1.1 request needs a Host header".into());
    }
    let authority = req.uri.authority().map(|a| a.as_str().as_bytes());
    let authority = authority.or_else(|| raw_target_authority(req.raw_path()).authority());
    match (authority, header) {
        (Some(a), _) => match parse_host(a) {
            Ok(host) => Ok(Some((host, None))),
            Err(e) => Err(format!("invalid authority {} in the request target: {e}", shown(a))),
        },
        (None, Some(h)) => match parse_host(h.as_bytes()) {
            Ok(host) => Ok(Some((host, Some(h)))),
            Err(e) => Err(format!("invalid Host header {}: {e}", shown(h.as_bytes()))),
        },
        (None, None) => Ok(None),
    }
}

/// A client's bytes for a message: escaped, and cut short if long.
fn shown(bytes: &[u8]) -> String {
    const MAX: usize = 100;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]);
    if bytes.len() > MAX { format!("{text:?}…") } else { format!("{text:?}") }
}

/// hawser's 400: what was wrong, and the connection closes after it: nothing more is read
/// from a client that sent garbage, as its next bytes could mean anything.
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

/// How long a gRPC call with `left` of its deadline waits for each read from the backend: its
/// deadline plus a margin (10 %, at least 1 s), within `stream_idle_timeout`.
///
/// The margin lets the client (which cancels at its deadline) or the backend (which gets the
/// `grpc-timeout` and enforces it) end the call first. hawser's own timeout fires only when
/// neither did, and it costs more than a stream: pingora takes an upstream HTTP/2 connection
/// out of use after a read timeout on it, so a timeout at the bare deadline would let any
/// client force a new backend connection per call by asking for tiny deadlines.
fn grpc_read_timeout(left: std::time::Duration, stream_idle_timeout: std::time::Duration) -> std::time::Duration {
    let margin = (left / 10).max(std::time::Duration::from_secs(1));
    left.saturating_add(margin).min(stream_idle_timeout)
}

/// A gRPC call that ended because its deadline passed: the upstream read that timed out was
/// bounded by it, or a retry found it gone.
fn deadline_passed(ctx: &RequestCtx, e: &Error) -> bool {
    ctx.deadline.is_some_and(|d| d <= std::time::Instant::now())
        && (matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::HTTPStatus(504)))
}

/// The client ended the exchange: closed its connection, or (HTTP/2) reset its stream or lost
/// its connection, as gRPC clients do to cancel a call. There is no one to answer, and it is no
/// fault of hawser's. Other HTTP/2 errors (pingora's own misuse of a stream, a client's
/// malformed requests) are not this: they are still logged.
fn client_went_away(e: &Error) -> bool {
    if *e.esource() != ErrorSource::Downstream {
        return false;
    }
    match e.etype() {
        ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => true,
        ErrorType::H2Error => {
            // Down the chain of causes (pingora keeps its own as `Box<Error>`): pingora's error
            // when the client reset the stream while its answer was awaited (it keeps only the
            // reason, in words), or h2's.
            let mut next: Option<&Error> = Some(e);
            while let Some(p) = next {
                if p.context.as_ref().is_some_and(|t| t.as_str().starts_with("Client closed H2")) {
                    return true;
                }
                let Some(cause) = p.cause.as_deref() else { return false };
                if let Some(h2) = cause.downcast_ref::<h2::Error>() {
                    return h2.is_reset() || h2.is_io() || h2.is_go_away() || h2.reason() == Some(h2::Reason::CANCEL);
                }
                next = cause.downcast_ref::<Box<Error>>().map(|b| &**b).or_else(|| cause.downcast_ref::<Error>());
            }
            false
        }
        _ => false,
    }
}

/// hawser's own answer to a request it does not pass on: [`respond`]'s plain text, or for a
/// gRPC call the same status and message in gRPC's form (see [`grpc`]).
async fn answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    body: String,
    headers: &[(&'static str, &'static str)],
) -> Result<()> {
    if !grpc::is_grpc(session.req_header()) {
        return respond(session, status, body, headers).await;
    }
    ctx.grpc_answered = Some(status);
    let code = if status == 504 && ctx.deadline.is_some() { grpc::Code::DeadlineExceeded } else { grpc::code_for(status) };
    let resp = Box::new(grpc::answer(code, &body)?);
    match session.as_downstream_mut() {
        // "Trailers-Only": grpc-status in the one HEADERS frame, which ends the stream. The
        // proxy session's write_response_header does not pass its end_of_stream on to an H2
        // stream (it would send an empty DATA frame to end it), hence the downstream's own.
        // hawser has no downstream modules that writing past the proxy session would skip.
        ServerSession::H2(h2) => h2.write_response_header(resp, true),
        _ => {
            session.write_response_header(resp, false).await?;
            session.write_response_body(None, true).await
        }
    }
}

/// A short plain-text response that hawser makes itself.
async fn respond(session: &mut Session, status: u16, body: String, headers: &[(&'static str, &'static str)]) -> Result<()> {
    respond_typed(session, status, body, "text/plain; charset=utf-8", headers).await
}

/// [`respond`] with any content type and header values (made at run time, e.g. `Location`).
async fn respond_typed<V: TryInto<http::HeaderValue> + Clone>(
    session: &mut Session,
    status: u16,
    body: String,
    content_type: &'static str,
    headers: &[(&'static str, V)],
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    for (name, value) in headers {
        resp.insert_header(*name, value.clone())?;
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

    fn request(target: &str, version: http::Version, hosts: &[&'static str]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        req.set_version(version);
        for h in hosts {
            req.append_header("Host", *h).unwrap();
        }
        req
    }

    fn routing(req: &RequestHeader) -> std::result::Result<(String, String, Option<String>), String> {
        let t = RoutingTarget::read(req)?;
        let host = t.host.as_ref().map_or(String::new(), |h| h.host.to_string());
        Ok((host, t.path.to_string(), t.upstream_target(req)))
    }

    #[test]
    fn the_host_comes_from_the_target_or_a_single_host_header() {
        use http::Version;
        let ok = |req: &RequestHeader| routing(req).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok(&request("/a", Version::HTTP_11, &["A.test:8080"])), ("a.test".into(), "/a".into(), None));
        let e = routing(&request("/", Version::HTTP_11, &[])).unwrap_err();
        assert_eq!(e, "an HTTP/1.1 request needs a Host header");
        assert_eq!(routing(&request("/", Version::HTTP_11, &["a.test", "b.test"])).unwrap_err(), "more than one Host header");
        let e = routing(&request("/", Version::HTTP_11, &["a.test/b"])).unwrap_err();
        assert!(e.starts_with("invalid Host header \"a.test/b\": "), "{e}");
        // HTTP/1.0 may name no host.
        assert_eq!(ok(&request("/", Version::HTTP_10, &[])), (String::new(), "/".into(), None));
        // An absolute-form target's authority is the host, and the backend gets origin-form.
        let req = request("http://Abs.test:81/x/../y?q=1", Version::HTTP_10, &[]);
        assert_eq!(ok(&req), ("abs.test".into(), "/y".into(), Some("/y?q=1".into())));
        let req = request("http://abs.test/y?q", Version::HTTP_11, &["abs.test"]);
        assert_eq!(ok(&req), ("abs.test".into(), "/y".into(), Some("/y?q".into())));
        let e = routing(&request("http://a_b%2F/", Version::HTTP_10, &[])).unwrap_err();
        assert!(e.starts_with("invalid authority \"a_b%2F\" in the request target: "), "{e}");
    }

    #[test]
    fn the_backend_gets_the_normalised_path_and_the_query_as_sent() {
        let req = request("/api/%2e%2e//b/?x=%2e%2e/&y", http::Version::HTTP_11, &["a.test"]);
        assert_eq!(routing(&req).unwrap(), ("a.test".into(), "/b/".into(), Some("/b/?x=%2e%2e/&y".into())));
        let req = request("/api/..%2Fb", http::Version::HTTP_11, &["a.test"]);
        assert!(routing(&req).unwrap_err().contains("\"..%2Fb\""));
        // Bytes that are not UTF-8 are refused rather than routed on a lossy copy.
        let mut req = request("/", http::Version::HTTP_11, &["a.test"]);
        req.set_raw_path(b"/caf\xe9").unwrap();
        assert!(routing(&req).unwrap_err().contains("not valid UTF-8"));
    }

    /// The host value a request gets once routed; `None` when it names none or cannot be.
    fn routed_host_value(req: &RequestHeader) -> Option<http::HeaderValue> {
        RoutingTarget::read(req).ok()?.host_value()
    }

    #[test]
    fn the_forwarded_host_is_the_routed_one_shared_when_it_can_be() {
        let req = request("/", http::Version::HTTP_11, &["a.test"]);
        let v = routed_host_value(&req).unwrap();
        assert_eq!(v, "a.test");
        assert_eq!(v.as_bytes().as_ptr(), req.headers[http::header::HOST].as_bytes().as_ptr(), "shared, not copied");
        assert_eq!(routed_host_value(&request("/", http::Version::HTTP_11, &["A.test.:80"])).unwrap(), "a.test");
        assert_eq!(routed_host_value(&request("/", http::Version::HTTP_10, &[])), None);
        assert_eq!(routed_host_value(&request("/", http::Version::HTTP_11, &["a/b"])), None);
    }

    #[test]
    fn a_client_resetting_its_stream_went_away() {
        let reset = Error::explain(ErrorType::H2Error, "Client closed H2, reason: stream no longer needed").into_down();
        assert!(client_went_away(&reset.more_context("Peer: addr: 10.0.0.1:80")));
        let io = Error::because(ErrorType::H2Error, "downstream error while idling", h2::Error::from(h2::Reason::CANCEL)).into_down();
        assert!(client_went_away(&io.more_context("Peer: x")));
        let misuse = Error::explain(ErrorType::H2Error, "try to send body before header is sent").into_down();
        assert!(!client_went_away(&misuse.more_context("Peer: x")));
        let upstream = Error::explain(ErrorType::H2Error, "Client closed H2, reason: x").into_up();
        assert!(!client_went_away(&upstream));
    }

    #[test]
    fn a_grpc_call_waits_for_its_deadline_and_a_margin() {
        use std::time::Duration;
        let hour = Duration::from_secs(3600);
        assert_eq!(grpc_read_timeout(Duration::from_millis(5), hour), Duration::from_millis(1005), "at least 1 s more");
        assert_eq!(grpc_read_timeout(Duration::from_secs(60), hour), Duration::from_secs(66), "10 % more");
        assert_eq!(grpc_read_timeout(Duration::from_secs(99_999_999 * 3600), hour), hour, "within stream_idle_timeout");
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
