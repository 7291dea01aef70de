//! Long-lived exchanges: WebSocket (any HTTP/1.1 upgrade) and server-sent events. They are
//! quiet for minutes by design, so the proxy must not treat their silence as a dead backend.
//! (gRPC calls are not long-lived here: their own deadline sets their wait, see
//! [`crate::grpc::timeout`]; without one, `read_timeout` applies, as nginx's
//! `grpc_read_timeout`.)
//!
//! Invariants, kept by the proxy ([`crate::proxy`]):
//! - A request is long-lived ([`classify`]) when it asks for an HTTP/1.1 upgrade (`Upgrade`
//!   with the `upgrade` token in `Connection`) or accepts `text/event-stream` (what an
//!   `EventSource` sends). The request alone decides: pingora 0.9 copies the peer's
//!   `read_timeout` into the upstream session when the proxying starts, after `upstream_peer`
//!   and before any response, and no later filter can reach that session, so a response
//!   that turns out to be `101` or `text/event-stream` cannot change it.
//! - A long-lived request's upstream reads time out after the service's `stream_idle_timeout`
//!   in place of `proxy.read_timeout`. The client side keeps `clients.body_timeout` for its
//!   request body (a slow body is no stream) until the backend answers `101`: from then on the
//!   client side of the tunnel gets `stream_idle_timeout` too. Waiting for a server-sent-events
//!   client to hang up has no timeout in pingora, and needs none.
//! - An offer of `h2c` alone is no upgrade: hawser removes it before the backend sees it
//!   ([`crate::edge::framing::strip_h2c_upgrade`]).
//! - A long-lived exchange that ends in an idle timeout, on either side ([`idle_end`]), is not
//!   a backend failure for passive ejection and is never retried. One the client closes was
//!   never one (a downstream error). Connect failures, and a backend resetting or closing
//!   before its answer, count as for any request.
//! - `hawser_websocket_connections{service}` counts a tunnel from the backend's `101` that
//!   switches to `websocket` until its request ends, whichever side closes: a
//!   [`WebSocketOpen`] held in the request's context, so every path (the `logging` hook, an
//!   error, a task dropped at shutdown) takes it back exactly once.

use pingora::http::{RequestHeader, ResponseHeader};
use prometheus::IntGauge;
use pingora::{Error, ErrorType};

/// Why a request is long-lived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongLived {
    /// An HTTP/1.1 upgrade (WebSocket and the like): a tunnel once the backend answers 101.
    Upgrade,
    /// Server-sent events: a response that trickles for as long as the backend wishes.
    EventStream,
}

/// Whether `req` starts a long-lived exchange, and which kind.
pub fn classify(req: &RequestHeader) -> Option<LongLived> {
    if asks_for_upgrade(req) {
        Some(LongLived::Upgrade)
    } else if accepts_event_stream(req) {
        Some(LongLived::EventStream)
    } else {
        None
    }
}

/// An error that ends a long-lived exchange because nothing moved for `stream_idle_timeout`.
pub fn idle_end(e: &Error) -> bool {
    matches!(e.etype(), ErrorType::ReadTimedout)
}

/// Whether the backend's answer to an upgrade switches the connection to WebSocket: a `101`
/// whose `Upgrade` names `websocket` (RFC 6455 §4.2.2). Other upgrades are tunnels too, but
/// not WebSockets.
pub fn switches_to_websocket(resp: &ResponseHeader) -> bool {
    resp.status == http::StatusCode::SWITCHING_PROTOCOLS
        && resp
            .headers
            .get_all(http::header::UPGRADE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|p| p.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// One open WebSocket tunnel, counted in its service's gauge from creation until drop.
/// Holding it, rather than pairing an `inc` with a `dec` by hand, makes a leak or a double
/// decrement impossible whichever way the request ends.
#[derive(Debug)]
pub struct WebSocketOpen(IntGauge);

impl WebSocketOpen {
    pub fn new(gauge: &IntGauge) -> WebSocketOpen {
        gauge.inc();
        WebSocketOpen(gauge.clone())
    }
}

impl Drop for WebSocketOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// RFC 9110 7.8: `Upgrade` means nothing unless `Connection` lists `upgrade`; HTTP/1.0 has no
/// upgrade (and HTTP/2 none of this kind).
fn asks_for_upgrade(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && upgrade_offers(req).any(|p| !p.eq_ignore_ascii_case(b"h2c"))
        && req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade")))
}

/// The protocols a request's `Upgrade` fields offer (`websocket`, `h2c`, …), trimmed; empty
/// elements left out.
pub fn upgrade_offers(req: &RequestHeader) -> impl Iterator<Item = &[u8]> {
    req.headers
        .get_all(http::header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// An `Accept` media range `text/event-stream` (parameters allowed) that is not `q=0`.
/// Wildcards do not count: `*/*` is what every request accepts.
fn accepts_event_stream(req: &RequestHeader) -> bool {
    req.headers.get_all(http::header::ACCEPT).iter().any(|v| {
        v.as_bytes().split(|&b| b == b',').any(|range| {
            let mut parts = range.split(|&b| b == b';');
            let media = parts.next().unwrap_or_default().trim_ascii();
            media.eq_ignore_ascii_case(b"text/event-stream") && !parts.any(is_q_zero)
        })
    })
}

/// A `q=0`, `q=0.0`, … parameter: "not acceptable".
fn is_q_zero(param: &[u8]) -> bool {
    let Some((name, value)) = param.trim_ascii().split_first_chunk::<2>() else { return false };
    name.eq_ignore_ascii_case(b"q=")
        && std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<f32>().ok()) == Some(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: http::Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/stream", None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn kind(headers: &[(&str, &str)]) -> Option<LongLived> {
        classify(&req(http::Version::HTTP_11, headers))
    }

    #[test]
    fn upgrades() {
        use LongLived::Upgrade;
        assert_eq!(kind(&[("Upgrade", "websocket"), ("Connection", "Upgrade")]), Some(Upgrade));
        assert_eq!(kind(&[("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade")]), Some(Upgrade));
        assert_eq!(kind(&[("Upgrade", "foo"), ("Connection", "keep-alive"), ("Connection", "upgrade")]), Some(Upgrade));
        // curl --http2 on http:// offers h2c, which hawser removes: no tunnel will follow.
        assert_eq!(kind(&[("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings")]), None);
        assert_eq!(kind(&[("Upgrade", "h2c, websocket"), ("Connection", "upgrade")]), Some(Upgrade));
        assert_eq!(kind(&[("Upgrade", "websocket"), ("Connection", " UPGRADE ")]), Some(Upgrade));
        // Upgrade without the Connection token, or the token without Upgrade: an ordinary request.
        assert_eq!(kind(&[("Upgrade", "websocket")]), None);
        assert_eq!(kind(&[("Upgrade", "websocket"), ("Connection", "keep-alive")]), None);
        assert_eq!(kind(&[("Upgrade", "websocket"), ("Connection", "upgraded")]), None);
        assert_eq!(kind(&[("Connection", "upgrade")]), None);
        assert_eq!(kind(&[("Upgrade", " "), ("Connection", "upgrade")]), None);
        // HTTP/1.0 cannot upgrade.
        let r = req(http::Version::HTTP_10, &[("Upgrade", "websocket"), ("Connection", "upgrade")]);
        assert_eq!(classify(&r), None);
    }

    #[test]
    fn event_streams() {
        use LongLived::EventStream;
        assert_eq!(kind(&[("Accept", "text/event-stream")]), Some(EventStream));
        assert_eq!(kind(&[("Accept", "Text/Event-Stream; charset=utf-8")]), Some(EventStream));
        assert_eq!(kind(&[("Accept", "application/json, text/event-stream;q=0.5")]), Some(EventStream));
        assert_eq!(kind(&[("Accept", "text/html"), ("Accept", "text/event-stream")]), Some(EventStream));
        assert_eq!(kind(&[("Accept", "text/event-stream; q=0.001")]), Some(EventStream));
        assert_eq!(kind(&[("Accept", "text/event-stream;q=0")]), None);
        assert_eq!(kind(&[("Accept", "text/event-stream; Q=0.000")]), None);
        assert_eq!(kind(&[("Accept", "*/*")]), None);
        assert_eq!(kind(&[("Accept", "text/*")]), None);
        assert_eq!(kind(&[("Accept", "text/event-streams")]), None);
        assert_eq!(kind(&[("Content-Type", "text/event-stream")]), None);
        assert_eq!(kind(&[]), None);
        // Over HTTP/2 too: only the upstream side has a read timeout there.
        assert_eq!(classify(&req(http::Version::HTTP_2, &[("Accept", "text/event-stream")])), Some(EventStream));
        // An upgrade wins.
        let both = [("Accept", "text/event-stream"), ("Upgrade", "websocket"), ("Connection", "upgrade")];
        assert_eq!(kind(&both), Some(LongLived::Upgrade));
    }

    fn response(status: u16, upgrade: &[&str]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for u in upgrade {
            r.append_header("Upgrade", *u).unwrap();
        }
        r
    }

    #[test]
    fn websocket_switches() {
        assert!(switches_to_websocket(&response(101, &["websocket"])));
        assert!(switches_to_websocket(&response(101, &["WebSocket"])));
        assert!(switches_to_websocket(&response(101, &["foo, websocket "])));
        assert!(!switches_to_websocket(&response(101, &["h2c"])));
        assert!(!switches_to_websocket(&response(101, &[])));
        assert!(!switches_to_websocket(&response(200, &["websocket"])));
        assert!(!switches_to_websocket(&response(426, &["websocket"])));
    }

    #[test]
    fn an_open_websocket_counts_until_dropped() {
        let gauge = IntGauge::new("streams_test_websockets", "test").unwrap();
        let a = WebSocketOpen::new(&gauge);
        let b = WebSocketOpen::new(&gauge);
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert_eq!(gauge.get(), 1);
        drop(b);
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn idle_ends() {
        assert!(idle_end(&Error::new_up(ErrorType::ReadTimedout)));
        assert!(idle_end(&Error::new_down(ErrorType::ReadTimedout)));
        assert!(!idle_end(&Error::new_up(ErrorType::ConnectionClosed)));
        assert!(!idle_end(&Error::new_up(ErrorType::ConnectTimedout)));
        assert!(!idle_end(&Error::new_up(ErrorType::ReadError)));
    }
}
