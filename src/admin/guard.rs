//! Who may talk to the admin API: the rules that keep a web page the operator happens to have
//! open from reading or changing it.
//!
//! The admin API is plain HTTP on loopback, so a browser on the same machine reaches it, and
//! two browser attacks work against it unless refused here:
//!
//! - **DNS rebinding.** A page from `evil.example` makes its own name resolve to 127.0.0.1 and
//!   then reads `http://evil.example:9900/api/services` — same origin as far as the browser is
//!   concerned. The request still carries `Host: evil.example:9900`, which is how it is told
//!   apart.
//! - **Cross-site request forgery.** Any page may send a "simple" POST cross-origin
//!   (`fetch(url, {method: 'POST', mode: 'no-cors'})`, or a form): the browser does not let
//!   the page read the answer, but the drain has happened.
//!
//! Invariants ([`Guard::check`]):
//!
//! 1. Without `admin.token`, a request is served only when every host it names (each `Host`
//!    header, and the authority of an absolute-form target) is `localhost`, a loopback IP
//!    literal (127.0.0.0/8, `[::1]`) or the IP of `admin.listen`, with any port or none. A
//!    browser only sends such a Host when it connected to that address itself, so a rebinding
//!    page never can. The port is not compared: an SSH tunnel (`ssh -L 8000:127.0.0.1:9900`)
//!    or a Docker port mapping changes it and is no attack. Subdomains of `localhost` are not
//!    accepted: browsers pin them to loopback but not every resolver does, and nobody needs
//!    them to reach this API; nor is `localhost.`, which a resolver may send to DNS. Hosts
//!    are read by [`parse_host`], as for routing, with that one rule stricter.
//! 2. A request that names no host at all (HTTP/1.0 without `Host`) is served only to a
//!    loopback peer. No browser sends one; old scripts and `nc` do.
//! 3. With `admin.token` set, (1) and (2) are skipped: the Bearer token is what a rebinding
//!    page lacks, and a token is required to listen off loopback, where the Host a client
//!    uses can be anything (a DNS name of the machine, a published port).
//! 4. Every request that may change state (any method but GET and HEAD), token or not, is
//!    refused when it shows that a browser sent it from another origin: `Sec-Fetch-Site`
//!    present and neither `same-origin` nor `none` (a typed URL or bookmark), or `Origin`
//!    present and not `http://` + the request's own `Host` (`Origin: null` included). With a
//!    token this is defence in depth only: a page cannot add `Authorization` cross-origin
//!    without a CORS preflight, which the admin API never grants. Clients that are not
//!    browsers (curl, `hawser explain`) send neither header and are not affected.
//!
//! Everything here is a pure function of the request head and the peer's address: no I/O, no
//! panics on any input; anything that does not parse is refused.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::Method;
use pingora::http::authority::{RawTargetAuthority, raw_target_authority};

use crate::edge::host::parse_host;

/// What the guard knows of the admin listener.
#[derive(Debug, Clone)]
pub struct Guard {
    listen: SocketAddr,
    token_set: bool,
}

/// The parts of a request the guard decides on, as received (bytes: header values need not be
/// UTF-8).
#[derive(Debug, Default)]
pub struct RequestFacts<'a> {
    pub method: Method,
    /// Every `Host` header value, and the authority of an absolute-form request target (empty
    /// when the target is ambiguous).
    pub hosts: Vec<&'a [u8]>,
    /// The `Host` header the browser's origin is compared with (the first one).
    pub host_header: Option<&'a [u8]>,
    /// Every `Origin` header value.
    pub origins: Vec<&'a [u8]>,
    /// Every `Sec-Fetch-Site` header value.
    pub fetch_sites: Vec<&'a [u8]>,
    /// The peer is on loopback; false when unknown.
    pub peer_loopback: bool,
}

impl<'a> RequestFacts<'a> {
    pub fn of(req: &'a pingora::http::RequestHeader, peer: Option<IpAddr>) -> RequestFacts<'a> {
        let all = |name: http::header::HeaderName| -> Vec<&'a [u8]> {
            req.headers.get_all(name).iter().map(|v| v.as_bytes()).collect()
        };
        let mut hosts = all(http::header::HOST);
        // pingora keeps an absolute-form target's authority in the raw target only.
        match raw_target_authority(req.raw_path()) {
            RawTargetAuthority::None => {}
            RawTargetAuthority::Absolute { authority, .. } => hosts.push(authority),
            // Parsers could disagree on the host it names: as good as a foreign one.
            RawTargetAuthority::AmbiguousAuthority => hosts.push(b""),
        }
        if let Some(authority) = req.uri.authority() {
            hosts.push(authority.as_str().as_bytes());
        }
        RequestFacts {
            method: req.method.clone(),
            hosts,
            host_header: req.headers.get(http::header::HOST).map(|v| v.as_bytes()),
            origins: all(http::header::ORIGIN),
            fetch_sites: req.headers.get_all("sec-fetch-site").iter().map(|v| v.as_bytes()).collect(),
            peer_loopback: peer.is_some_and(|ip| ip.to_canonical().is_loopback()),
        }
    }
}

/// Why a request was refused (403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A host that is not this address nor loopback: what DNS rebinding looks like.
    ForeignHost,
    /// No host named, from a peer that is not on loopback.
    NoHost,
    /// A state-changing request a browser sent from another origin.
    CrossOrigin,
}

impl Refusal {
    /// The short text answer: what was refused and what to do instead.
    pub fn message(self, listen: SocketAddr) -> String {
        match self {
            Refusal::ForeignHost => format!(
                "hawser admin: refused: the Host header names neither this address nor localhost (protection against DNS rebinding); use http://{listen}/ or set admin.token\n"
            ),
            Refusal::NoHost => "hawser admin: refused: a request without a Host header is only served to a loopback client\n".to_string(),
            Refusal::CrossOrigin => "hawser admin: refused: a state-changing request sent by a browser from another origin (protection against cross-site request forgery); use curl or hawser explain, or the admin page itself\n".to_string(),
        }
    }
}

impl Guard {
    pub fn new(listen: SocketAddr, token_set: bool) -> Guard {
        Guard { listen, token_set }
    }

    /// Whether to serve a request; see the module doc for the rules.
    pub fn check(&self, req: &RequestFacts<'_>) -> Result<(), Refusal> {
        if !self.token_set {
            if req.hosts.is_empty() && !req.peer_loopback {
                return Err(Refusal::NoHost);
            }
            if !req.hosts.iter().all(|h| self.is_own_host(h)) {
                return Err(Refusal::ForeignHost);
            }
        }
        if !matches!(req.method, Method::GET | Method::HEAD) {
            let site_ok = |v: &&[u8]| {
                let v = v.trim_ascii();
                v.eq_ignore_ascii_case(b"same-origin") || v.eq_ignore_ascii_case(b"none")
            };
            if !req.fetch_sites.iter().all(site_ok) {
                return Err(Refusal::CrossOrigin);
            }
            if !req.origins.is_empty() {
                let own = req.host_header.and_then(parse_authority);
                let same = |o: &&[u8]| own.as_ref().is_some_and(|own| origin_authority(o).as_ref() == Some(own));
                if !req.origins.iter().all(same) {
                    return Err(Refusal::CrossOrigin);
                }
            }
        }
        Ok(())
    }

    fn is_own_host(&self, host: &[u8]) -> bool {
        match parse_authority(host) {
            Some((Name::Ip(ip), _)) => {
                let ip = ip.to_canonical();
                ip.is_loopback() || ip == self.listen.ip().to_canonical()
            }
            Some((Name::Reg(name), _)) => name == "localhost",
            None => false,
        }
    }
}

/// A host as the guard compares it: an IP literal by address (`[::1]` and `[0::1]` are one
/// host), a name by its lower-cased text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name<'a> {
    Ip(IpAddr),
    Reg(Cow<'a, str>),
}

/// `host[:port]` → (host, port with 80 for none), read by [`parse_host`], the parser requests
/// are routed by, so that the guard and routing never disagree on what a Host names. `None`
/// for anything it refuses (an empty host, a bad port, userinfo, a bare IPv6 address,
/// characters a host cannot have), and, stricter than routing, for a name with a trailing dot:
/// `localhost.` is an absolute DNS name, which a resolver may look up in DNS rather than
/// answer from `/etc/hosts`. The surrounding whitespace of a header value is not the host's.
fn parse_authority(raw: &[u8]) -> Option<(Name<'_>, u16)> {
    let parsed = parse_host(raw.trim_ascii()).ok()?;
    if parsed.trailing_dot {
        return None;
    }
    let name = match parsed.ip() {
        Some(ip) => Name::Ip(ip),
        None => Name::Reg(parsed.host),
    };
    Some((name, parsed.port.unwrap_or(80)))
}

/// The authority of an `http://` origin; `None` for `null`, other schemes, or a path.
fn origin_authority(origin: &[u8]) -> Option<(Name<'_>, u16)> {
    let origin = origin.trim_ascii();
    let scheme = origin.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"http://") {
        return None;
    }
    parse_authority(&origin[7..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: &str = "127.0.0.1:9900";

    fn guard(token: bool) -> Guard {
        Guard::new(LISTEN.parse().unwrap(), token)
    }

    fn get<'a>(host: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            method: Method::GET,
            hosts: vec![host.as_bytes()],
            host_header: Some(host.as_bytes()),
            peer_loopback: true,
            ..RequestFacts::default()
        }
    }

    fn post<'a>(host: &'a str, origin: Option<&'a str>, site: Option<&'a str>) -> RequestFacts<'a> {
        RequestFacts {
            method: Method::POST,
            origins: origin.map(str::as_bytes).into_iter().collect(),
            fetch_sites: site.map(str::as_bytes).into_iter().collect(),
            ..get(host)
        }
    }

    #[test]
    fn loopback_hosts_pass_without_a_token() {
        let g = guard(false);
        for host in [
            "127.0.0.1:9900",
            "127.0.0.1",
            "localhost:9900",
            "LocalHost",
            "localhost:8000",
            "127.0.0.2:9900",
            "[::1]:9900",
            "[::1]",
            "[::ffff:127.0.0.1]:9900",
            " 127.0.0.1:9900 ",
        ] {
            assert_eq!(g.check(&get(host)), Ok(()), "{host}");
        }
    }

    #[test]
    fn other_hosts_are_refused_without_a_token() {
        let g = guard(false);
        for host in [
            "evil.example:9900",
            "evil.example",
            "evil.localhost:9900",
            "localhost.:9900",
            "localhost.evil.example",
            "10.0.0.1:9900",
            "",
            ":9900",
            "127.0.0.1:99999",
            "127.0.0.1:port",
            "user@127.0.0.1:9900",
            "::1",
            "[::1",
            "[::1]x",
            "[zz]:9900",
            "127.0.0.1/x",
            "localhost\0",
        ] {
            assert_eq!(g.check(&get(host)), Err(Refusal::ForeignHost), "{host:?}");
        }
        // Not UTF-8.
        let bad = [0xff_u8, b'a'];
        let f = RequestFacts { hosts: vec![&bad], host_header: Some(&bad), ..get("") };
        assert_eq!(g.check(&f), Err(Refusal::ForeignHost));
        // Every host named must pass: a good Host does not cover a foreign absolute target.
        let f = RequestFacts { hosts: vec![b"127.0.0.1:9900", b"evil.example"], ..get("127.0.0.1:9900") };
        assert_eq!(g.check(&f), Err(Refusal::ForeignHost));
    }

    #[test]
    fn hosts_are_read_as_routing_reads_them_but_a_trailing_dot_is_refused() {
        let g = guard(false);
        // Routing takes these for 127.0.0.1 / localhost; the guard does not.
        for host in ["127.0.0.1.:9900", "localhost.", "LOCALHOST.:80"] {
            assert_eq!(g.check(&get(host)), Err(Refusal::ForeignHost), "{host:?}");
        }
        // Routing refuses these, so the guard does too (it used to let an over-long port by).
        for host in ["127.0.0.1:000080", "localhost..", "[::1]:1:2"] {
            assert_eq!(g.check(&get(host)), Err(Refusal::ForeignHost), "{host:?}");
        }
        // An IPv6 literal is compared by address, not spelling.
        assert_eq!(g.check(&post("[::1]:9900", Some("http://[0:0::1]:9900"), None)), Ok(()));
    }

    #[test]
    fn the_listen_ip_itself_passes() {
        let g = Guard::new("127.0.0.5:9900".parse().unwrap(), false);
        assert_eq!(g.check(&get("127.0.0.5:9900")), Ok(()));
        // A non-loopback listen address needs a token (config); were it allowed, its IP is its own.
        let g = Guard::new("192.0.2.7:9900".parse().unwrap(), false);
        assert_eq!(g.check(&get("192.0.2.7:9900")), Ok(()));
        assert_eq!(g.check(&get("192.0.2.8:9900")), Err(Refusal::ForeignHost));
    }

    #[test]
    fn no_host_only_from_loopback() {
        let g = guard(false);
        let f = RequestFacts { method: Method::GET, peer_loopback: true, ..RequestFacts::default() };
        assert_eq!(g.check(&f), Ok(()));
        let f = RequestFacts { method: Method::GET, peer_loopback: false, ..RequestFacts::default() };
        assert_eq!(g.check(&f), Err(Refusal::NoHost));
        assert_eq!(guard(true).check(&f), Ok(()));
    }

    #[test]
    fn a_token_skips_the_host_check() {
        assert_eq!(guard(true).check(&get("evil.example:9900")), Ok(()));
        assert_eq!(guard(true).check(&get("hawser.internal:9900")), Ok(()));
    }

    #[test]
    fn cross_origin_posts_are_refused_token_or_not() {
        for g in [guard(false), guard(true)] {
            let host = "127.0.0.1:9900";
            for (origin, site) in [
                (Some("http://evil.example"), None),
                (Some("null"), None),
                (Some("http://127.0.0.1:8000"), None),
                (Some("https://127.0.0.1:9900"), None),
                (Some("http://localhost:9900"), None),
                (Some("http://127.0.0.1:9900/x"), None),
                (Some(""), None),
                (None, Some("cross-site")),
                (None, Some("same-site")),
                (None, Some("bogus")),
                (Some("http://127.0.0.1:9900"), Some("same-site")),
            ] {
                assert_eq!(g.check(&post(host, origin, site)), Err(Refusal::CrossOrigin), "{origin:?} {site:?}");
            }
            // An Origin cannot be compared without a Host.
            let f = RequestFacts { hosts: vec![], host_header: None, ..post("", Some("http://127.0.0.1:9900"), None) };
            assert!(g.check(&f).is_err());
        }
    }

    #[test]
    fn same_origin_and_header_less_posts_pass() {
        let g = guard(false);
        for (host, origin, site) in [
            ("127.0.0.1:9900", None, None),
            ("127.0.0.1:9900", Some("http://127.0.0.1:9900"), Some("same-origin")),
            ("127.0.0.1:9900", Some("HTTP://127.0.0.1:9900"), None),
            ("127.0.0.1:9900", None, Some("none")),
            ("localhost:9900", Some("http://LOCALHOST:9900"), Some("Same-Origin")),
            ("[::1]:9900", Some("http://[::1]:9900"), None),
            // Default port either side.
            ("localhost", Some("http://localhost:80"), None),
            ("localhost:80", Some("http://localhost"), None),
        ] {
            assert_eq!(g.check(&post(host, origin, site)), Ok(()), "{host} {origin:?} {site:?}");
        }
        // GET and HEAD are not checked for origin: reading needs the same-origin policy's
        // consent anyway, and the status page's own links must work.
        let f = RequestFacts { method: Method::GET, ..post("127.0.0.1:9900", Some("http://evil.example"), Some("cross-site")) };
        assert_eq!(g.check(&f), Ok(()));
    }

    #[test]
    fn request_facts_include_an_absolute_target() {
        let g = guard(false);
        let req = |target: &str, host: Option<&str>| {
            let mut r = pingora::http::RequestHeader::build("GET", target.as_bytes(), None).unwrap();
            if let Some(h) = host {
                r.insert_header("Host", h).unwrap();
            }
            r
        };
        let peer = Some(IpAddr::from([127, 0, 0, 1]));
        let r = req("http://evil.example:9900/api/services", None);
        assert_eq!(g.check(&RequestFacts::of(&r, peer)), Err(Refusal::ForeignHost));
        let r = req("http://127.0.0.1:9900/api/services", Some("127.0.0.1:9900"));
        assert_eq!(g.check(&RequestFacts::of(&r, peer)), Ok(()));
        let r = req("/api/services", None);
        assert_eq!(g.check(&RequestFacts::of(&r, peer)), Ok(()));
        assert_eq!(g.check(&RequestFacts::of(&r, Some(IpAddr::from([192, 0, 2, 1])))), Err(Refusal::NoHost));
        assert_eq!(g.check(&RequestFacts::of(&r, None)), Err(Refusal::NoHost));
    }

    #[test]
    fn refusals_say_why() {
        let listen: SocketAddr = LISTEN.parse().unwrap();
        assert!(Refusal::ForeignHost.message(listen).contains("DNS rebinding"));
        assert!(Refusal::ForeignHost.message(listen).contains("http://127.0.0.1:9900/"));
        assert!(Refusal::CrossOrigin.message(listen).contains("cross-site request forgery"));
        assert!(Refusal::NoHost.message(listen).contains("Host"));
    }
}
