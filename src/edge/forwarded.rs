//! Forwarding headers: what a backend is told about the client (`X-Forwarded-For`,
//! `X-Real-IP`, `X-Forwarded-Proto`, `-Host`, `-Port`, and `Forwarded`).
//!
//! A backend believes these headers (for logs, rate limits, redirects, "is this request
//! secure?"), so a client must not be able to write them. Rules, by peer:
//! - an untrusted peer (anyone outside `clients.trusted_proxies`, the default): every
//!   `Forwarded`, `X-Real-IP` and `X-Forwarded-*` it sent is removed, and hawser states its
//!   own: `X-Forwarded-For` and `X-Real-IP` the peer's address, `X-Forwarded-Proto` the
//!   scheme the client used, `X-Forwarded-Host` the host the request was routed on (none when
//!   the request named no host: never the client's), `X-Forwarded-Port` the local port the
//!   client connected to, and `Forwarded` one element saying the same (RFC 7239:
//!   `for=192.0.2.7;proto=http;host=a.test`);
//! - a trusted peer (a proxy in front of hawser): hawser's hop is appended to the chains it
//!   sent, the peer's address to its `X-Forwarded-For` (as nginx's
//!   `$proxy_add_x_forwarded_for`) and hawser's element to its `Forwarded`, so that the two
//!   chains name the same hops; its `X-Real-IP`, `X-Forwarded-Proto`, `-Host`, `-Port` and
//!   `-Prefix` are kept, and the ones it did not send are set as for an untrusted peer.
//!
//! [`edits`] decides (pure: peer, trusted list, incoming headers in; edits out), [`apply`]
//! carries the decision out on the request that goes upstream.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

pub const X_FORWARDED_FOR: &str = "X-Forwarded-For";
pub const X_REAL_IP: &str = "X-Real-IP";
pub const X_FORWARDED_PROTO: &str = "X-Forwarded-Proto";
pub const X_FORWARDED_HOST: &str = "X-Forwarded-Host";
pub const X_FORWARDED_PORT: &str = "X-Forwarded-Port";
pub const FORWARDED: &str = "Forwarded";
/// Every header whose name starts with this (lower-case, as `http` stores names) is the
/// client's claim about a proxy hop.
const X_FORWARDED_PREFIX: &str = "x-forwarded-";

/// What hawser knows about a request, to state to its backend.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The address the connection came from.
    pub peer: Option<IpAddr>,
    /// The host the request was routed on; `None` when the request named none.
    pub host: Option<HeaderValue>,
    /// The local port the client connected to.
    pub port: Option<u16>,
    /// The scheme the client spoke to hawser: `http` (`https` once TLS ends here).
    pub proto: &'static str,
}

/// The changes to make to the upstream request's headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Edits {
    /// First remove every `Forwarded`, `X-Real-IP` and `X-Forwarded-*` the client sent.
    pub strip: bool,
    /// Each `Some` replaces whatever is there.
    pub forwarded_for: Option<HeaderValue>,
    /// RFC 7239 `Forwarded`.
    pub forwarded: Option<HeaderValue>,
    pub real_ip: Option<HeaderValue>,
    pub proto: Option<HeaderValue>,
    pub host: Option<HeaderValue>,
    pub port: Option<HeaderValue>,
}

/// Whether `peer` is one of the proxies whose forwarding headers are believed.
/// An IPv4 peer seen on a dual-stack socket (`::ffff:10.0.0.1`) counts as its IPv4 address.
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|net| net.contains(&peer))
}

/// Decides the forwarding headers of one request (see the module doc).
pub fn edits(facts: Facts, trusted: &[IpNet], incoming: &HeaderMap) -> Edits {
    let peer = facts.peer.map(|ip| ip.to_canonical());
    let peer_value = peer.map(ip_header_value);
    let trusted = peer.is_some_and(|ip| is_trusted(ip, trusted));
    // From a trusted peer, a header it sent is kept (no edit); else hawser's own value.
    let own = |name: &str, value: Option<HeaderValue>| if trusted && incoming.contains_key(name) { None } else { value };
    let element = forwarded_element(peer, facts.proto, facts.host.as_ref());
    Edits {
        strip: !trusted,
        forwarded_for: if trusted {
            appended(incoming, X_FORWARDED_FOR, peer_value.as_ref().map(HeaderValue::as_bytes))
        } else {
            peer_value.clone()
        },
        forwarded: if trusted {
            appended(incoming, FORWARDED, Some(&element))
        } else {
            HeaderValue::from_bytes(&element).ok()
        },
        real_ip: own(X_REAL_IP, peer_value),
        proto: own(X_FORWARDED_PROTO, Some(HeaderValue::from_static(facts.proto))),
        host: own(X_FORWARDED_HOST, facts.host),
        port: own(X_FORWARDED_PORT, facts.port.map(HeaderValue::from)),
    }
}

/// A trusted proxy's list header (all its lines, in order) with hawser's `own` item appended.
fn appended(incoming: &HeaderMap, name: &str, own: Option<&[u8]>) -> Option<HeaderValue> {
    let mut list: Vec<u8> = Vec::new();
    let sent = incoming.get_all(name).iter().map(|v| v.as_bytes().trim_ascii());
    for item in sent.chain(own).filter(|v| !v.is_empty()) {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(item);
    }
    // Every part was a valid header value and ", " is one too; an empty list sets nothing.
    HeaderValue::from_bytes(&list).ok().filter(|v| !v.is_empty())
}

/// hawser's own `Forwarded` element (RFC 7239 §4): `for` the peer (an IPv6 address quoted and
/// bracketed, §6), `proto`, and `host` when the routed host is a valid token or
/// quoted-string (it always is once [`parse_host`](crate::edge::host::parse_host) accepted
/// it: a name is a token, an IPv6 literal is quoted). No `for` without a peer address, as
/// there is no `X-Forwarded-For` then either.
fn forwarded_element(peer: Option<IpAddr>, proto: &str, host: Option<&HeaderValue>) -> Vec<u8> {
    use std::io::Write as _;
    let mut element = Vec::with_capacity(96);
    match peer {
        Some(IpAddr::V4(ip)) => _ = write!(element, "for={ip};"),
        Some(IpAddr::V6(ip)) => _ = write!(element, "for=\"[{ip}]\";"),
        None => {}
    }
    element.extend_from_slice(b"proto=");
    element.extend_from_slice(proto.as_bytes());
    if let Some(host) = host.map(HeaderValue::as_bytes).filter(|h| !h.is_empty()) {
        if host.iter().all(|&b| is_tchar(b)) {
            element.extend_from_slice(b";host=");
            element.extend_from_slice(host);
        } else if host.iter().all(|&b| is_qdtext(b)) {
            element.extend_from_slice(b";host=\"");
            element.extend_from_slice(host);
            element.push(b'"');
        }
    }
    element
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.6.4 `qdtext`: a quoted-string without escapes, which hawser never needs.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

/// Carries out `edits` on the request that goes upstream.
pub fn apply(edits: Edits, upstream: &mut RequestHeader) -> pingora::Result<()> {
    if edits.strip {
        upstream.remove_header(FORWARDED);
        upstream.remove_header(X_REAL_IP);
        // Usually there is none, and then this looks once and allocates nothing.
        while let Some(name) = upstream.headers.keys().find(|n| n.as_str().starts_with(X_FORWARDED_PREFIX)).cloned() {
            upstream.remove_header(&name);
        }
    }
    for (name, value) in [
        (X_FORWARDED_FOR, edits.forwarded_for),
        (X_REAL_IP, edits.real_ip),
        (X_FORWARDED_PROTO, edits.proto),
        (X_FORWARDED_HOST, edits.host),
        (X_FORWARDED_PORT, edits.port),
        (FORWARDED, edits.forwarded),
    ] {
        if let Some(value) = value {
            upstream.insert_header(name, value)?;
        }
    }
    Ok(())
}

/// An IP address as a header value, formatted without a temporary String.
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 48]; // the longest IPv6 text form is 45 bytes
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let len = 48 - w.len();
    HeaderValue::from_bytes(&buf[..len]).expect("an IP address is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(peer: &str) -> Facts {
        Facts {
            peer: Some(peer.parse().unwrap()),
            host: Some(HeaderValue::from_static("a.test")),
            port: Some(8080),
            proto: "http",
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    const CLAIMS: &[(&str, &str)] = &[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-port", "443"),
        ("x-forwarded-prefix", "/admin"),
        ("forwarded", "for=6.6.6.6;proto=https"),
    ];

    fn ours(peer: &'static str) -> Edits {
        Edits {
            strip: true,
            forwarded_for: Some(HeaderValue::from_static(peer)),
            forwarded: HeaderValue::from_bytes(format!("for={peer};proto=http;host=a.test").as_bytes()).ok(),
            real_ip: Some(HeaderValue::from_static(peer)),
            proto: Some(HeaderValue::from_static("http")),
            host: Some(HeaderValue::from_static("a.test")),
            port: Some(HeaderValue::from_static("8080")),
        }
    }

    #[test]
    fn an_untrusted_peer_gets_hawsers_own_headers() {
        let e = edits(facts("192.0.2.7"), &[], &headers(CLAIMS));
        assert_eq!(e, ours("192.0.2.7"));
        // Trusting someone else changes nothing for this peer.
        assert_eq!(edits(facts("192.0.2.7"), &nets(&["10.0.0.0/8"]), &headers(CLAIMS)), ours("192.0.2.7"));
        assert_eq!(edits(facts("192.0.2.7"), &[], &HeaderMap::new()), ours("192.0.2.7"));
        // A request without a host: no X-Forwarded-Host at all, the client's is stripped.
        let e = edits(Facts { host: None, ..facts("192.0.2.7") }, &[], &headers(CLAIMS));
        assert!(e.strip && e.host.is_none());
    }

    #[test]
    fn a_trusted_peer_is_appended_to_and_its_headers_kept() {
        let trusted = nets(&["10.0.0.0/8", "::1/128"]);
        let e = edits(facts("10.1.2.3"), &trusted, &headers(CLAIMS));
        assert_eq!(
            e,
            Edits {
                strip: false,
                forwarded_for: Some(HeaderValue::from_static("6.6.6.6, 10.1.2.3")),
                forwarded: Some(HeaderValue::from_static("for=6.6.6.6;proto=https, for=10.1.2.3;proto=http;host=a.test")),
                ..Edits::default()
            }
        );
        // Several X-Forwarded-For lines are one list.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3")]);
        let e = edits(facts("10.1.2.3"), &trusted, &h);
        assert_eq!(e.forwarded_for.unwrap(), "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
        // What the proxy did not send, hawser sets.
        let e = edits(facts("10.1.2.3"), &trusted, &HeaderMap::new());
        assert_eq!(e, Edits { strip: false, ..ours("10.1.2.3") });
        let e = edits(facts("::1"), &trusted, &headers(&[("x-forwarded-proto", "https")]));
        assert_eq!((e.proto, e.forwarded_for.unwrap()), (None, HeaderValue::from_static("::1")));
        // Several Forwarded lines are one list too; an empty one adds nothing.
        let h = headers(&[("forwarded", "for=1.1.1.1"), ("forwarded", ""), ("forwarded", " for=2.2.2.2;proto=https ")]);
        let e = edits(facts("10.1.2.3"), &trusted, &h);
        assert_eq!(e.forwarded.unwrap(), "for=1.1.1.1, for=2.2.2.2;proto=https, for=10.1.2.3;proto=http;host=a.test");
    }

    #[test]
    fn forwarded_elements_follow_rfc_7239() {
        let element = |peer: Option<&str>, host: Option<&'static str>| {
            let host = host.map(HeaderValue::from_static);
            String::from_utf8(forwarded_element(peer.map(|p| p.parse().unwrap()), "http", host.as_ref())).unwrap()
        };
        assert_eq!(element(Some("192.0.2.7"), Some("a.test")), "for=192.0.2.7;proto=http;host=a.test");
        // An IPv6 address is quoted and bracketed, and so is an IPv6 host (':' is not a tchar).
        assert_eq!(element(Some("2001:db8::1"), Some("[::1]")), "for=\"[2001:db8::1]\";proto=http;host=\"[::1]\"");
        assert_eq!(element(Some("::1"), Some("my_service-1")), "for=\"[::1]\";proto=http;host=my_service-1");
        // No peer, no host: what is known is still said.
        assert_eq!(element(None, None), "proto=http");
        assert_eq!(element(Some("10.0.0.1"), Some("")), "for=10.0.0.1;proto=http");
        // A host that is neither a token nor a plain quoted-string is left out, not escaped.
        assert_eq!(element(Some("10.0.0.1"), Some("a\"b")), "for=10.0.0.1;proto=http");
        assert_eq!(element(Some("10.0.0.1"), Some("a\\b")), "for=10.0.0.1;proto=http");
        // The value edits() makes is a valid header value for every peer.
        let e = edits(facts("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"), &[], &HeaderMap::new());
        assert_eq!(e.forwarded.unwrap(), "for=\"[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]\";proto=http;host=a.test");
    }

    #[test]
    fn an_ipv4_peer_on_a_dual_stack_socket_is_its_ipv4_address() {
        let e = edits(facts("::ffff:10.1.2.3"), &nets(&["10.0.0.0/8"]), &HeaderMap::new());
        assert!(!e.strip);
        assert_eq!(e.forwarded_for.unwrap(), "10.1.2.3");
        assert_eq!(e.forwarded.unwrap(), "for=10.1.2.3;proto=http;host=a.test");
        let e = edits(facts("::ffff:192.0.2.1"), &[], &HeaderMap::new());
        assert_eq!(e.real_ip.unwrap(), "192.0.2.1");
    }

    #[test]
    fn without_a_peer_address_nothing_is_trusted_nor_claimed() {
        let e = edits(Facts { peer: None, ..facts("10.1.2.3") }, &nets(&["0.0.0.0/0"]), &headers(CLAIMS));
        assert!(e.strip);
        assert_eq!((e.forwarded_for, e.real_ip), (None, None));
        assert_eq!(e.forwarded.unwrap(), "proto=http;host=a.test");
    }

    #[test]
    fn apply_removes_every_claim_and_sets_hawsers_own() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in CLAIMS.iter().chain(&[("X-Forwarded-Server", "evil"), ("x-forwarded-ssl", "on"), ("accept", "*/*")]) {
            req.append_header(*k, *v).unwrap();
        }
        apply(ours("192.0.2.7"), &mut req).unwrap();
        let mut got: Vec<(String, String)> =
            req.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string())).collect();
        got.sort();
        let want = [
            ("accept", "*/*"),
            ("forwarded", "for=192.0.2.7;proto=http;host=a.test"),
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-host", "a.test"),
            ("x-forwarded-port", "8080"),
            ("x-forwarded-proto", "http"),
            ("x-real-ip", "192.0.2.7"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
    }

    #[test]
    fn ip_header_values() {
        assert_eq!(ip_header_value("192.168.10.200".parse().unwrap()), "192.168.10.200");
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255";
        assert_eq!(ip_header_value(long.parse().unwrap()), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(ip_header_value("::1".parse().unwrap()), "::1");
    }
}
