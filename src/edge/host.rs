//! The host a request is routed on: a Host header value (or a request-target's authority)
//! parsed by RFC 3986 §3.2.2, narrowed to what names a web server, or refused.
//!
//! Accepted:
//! - a name of letters, digits, `-`, `_` and `.`, with no empty label, at most 253 bytes once
//!   a trailing dot is stripped. That covers DNS names, IPv4 addresses and the underscores of
//!   Docker Compose service names. The rest of RFC 3986's reg-name is refused on purpose:
//!   percent-escapes (no DNS name needs one, and decoding them would give one host two
//!   spellings), `~` and the sub-delims `! $ & ' ( ) * + , ; =` (no DNS name has them, and
//!   `,` and `;` would confuse the list syntax of `X-Forwarded-Host` and logs);
//! - an IPv6 literal `[…]` that `std` parses as an IPv6 address (no zone id, no IPvFuture);
//! - an optional `:port` of at most five digits, 0–65535. An empty port (`host:`) is
//!   tolerated, as RFC 3986 (`port = *DIGIT`) and nginx do, and means no port.
//!
//! The host comes back lower-cased and without its trailing dot, as [`RouteTable::lookup`]
//! wants it, borrowed from the input when that is already its form (the common case). Whether
//! there was a dot is kept beside it, for a caller that must not take `localhost.` for
//! `localhost` (the admin guard: an absolute name may go to DNS instead of `/etc/hosts`), and
//! [`HostPort::ip`] tells an IP literal from a name.
//!
//! [`RouteTable::lookup`]: crate::catalog::routes::RouteTable::lookup

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A parsed Host: the host to route on and the port, if one was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort<'a> {
    /// Lower-case, no trailing dot; an IPv6 literal keeps its brackets.
    pub host: Cow<'a, str>,
    pub port: Option<u16>,
    /// The name was written with a trailing dot (`example.com.`), which `host` has dropped.
    pub trailing_dot: bool,
}

impl HostPort<'_> {
    /// The address when the host is an IP literal: a dotted-quad IPv4 address (as `std`
    /// reads one: no `127.1`, no octal) or a `[…]` IPv6 one; `None` for a name.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
            None => self.host.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        }
    }
}

/// Why a Host is refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    Empty,
    /// A byte that has no place in a host name.
    BadByte(u8),
    /// Two dots in a row, or a leading dot.
    EmptyLabel,
    TooLong(usize),
    /// The text after `:` (at most a few bytes of it).
    BadPort(String),
    /// What is wrong with a `[…]` literal.
    BadIpLiteral(&'static str),
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Empty => f.write_str("the host is empty"),
            HostError::BadByte(b) if b.is_ascii_graphic() || *b == b' ' => write!(
                f,
                "{:?} is not allowed in a host name (letters, digits, '-', '_' and '.' are)",
                char::from(*b)
            ),
            HostError::BadByte(b) => {
                write!(f, "the byte 0x{b:02X} is not allowed in a host name (letters, digits, '-', '_' and '.' are)")
            }
            HostError::EmptyLabel => f.write_str("the host name has an empty label (\"..\" or a leading '.')"),
            HostError::TooLong(n) => write!(f, "the host name is {n} bytes long, more than 253"),
            HostError::BadPort(p) => write!(f, "the port {p:?} is not a number from 0 to 65535"),
            HostError::BadIpLiteral(why) => write!(f, "invalid IPv6 literal: {why}"),
        }
    }
}

impl std::error::Error for HostError {}

const MAX_NAME: usize = 253;

/// Parses a Host header value or a request-target's authority (see the module doc).
pub fn parse_host(value: &[u8]) -> Result<HostPort<'_>, HostError> {
    let (host, rest, trailing_dot) = if value.first() == Some(&b'[') {
        let end = value.iter().position(|&b| b == b']').ok_or(HostError::BadIpLiteral("no closing ']'"))?;
        let inner = std::str::from_utf8(&value[1..end]).map_err(|_| HostError::BadIpLiteral("not ASCII"))?;
        if inner.parse::<Ipv6Addr>().is_err() {
            return Err(HostError::BadIpLiteral("not an IPv6 address"));
        }
        (&value[..=end], &value[end + 1..], false)
    } else {
        let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
        let (name, rest) = value.split_at(end);
        if let Some(&b) = name.iter().find(|&&b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))) {
            return Err(HostError::BadByte(b));
        }
        let (name, trailing_dot) = match name.strip_suffix(b".") {
            Some(name) => (name, true),
            None => (name, false),
        };
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.len() > MAX_NAME {
            return Err(HostError::TooLong(name.len()));
        }
        if name.split(|&b| b == b'.').any(<[u8]>::is_empty) {
            return Err(HostError::EmptyLabel);
        }
        (name, rest, trailing_dot)
    };
    let port = parse_port(rest)?;
    // Only ASCII got this far.
    let host = std::str::from_utf8(host).map_err(|_| HostError::BadIpLiteral("not ASCII"))?;
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Ok(HostPort { host, port, trailing_dot })
}

/// `""`, `":"` (no port) or `":" 1*5DIGIT` up to 65535.
fn parse_port(rest: &[u8]) -> Result<Option<u16>, HostError> {
    let digits = match rest {
        [] | [b':'] => return Ok(None),
        [b':', digits @ ..] => digits,
        // After an IP literal, anything but ':' (`[::1]x`).
        _ => return Err(HostError::BadPort(String::from_utf8_lossy(&rest[..rest.len().min(8)]).into_owned())),
    };
    let bad = || HostError::BadPort(String::from_utf8_lossy(&digits[..digits.len().min(8)]).into_owned());
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let n = digits.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(v: &str) -> (String, Option<u16>) {
        let h = parse_host(v.as_bytes()).unwrap_or_else(|e| panic!("{v:?}: {e}"));
        (h.host.into_owned(), h.port)
    }

    #[test]
    fn names_addresses_and_ports() {
        assert_eq!(ok("api.example.com"), ("api.example.com".into(), None));
        assert_eq!(ok("Example.COM:8080"), ("example.com".into(), Some(8080)));
        assert_eq!(ok("example.com."), ("example.com".into(), None));
        assert_eq!(ok("example.com.:80"), ("example.com".into(), Some(80)));
        assert_eq!(ok("my_service-1"), ("my_service-1".into(), None));
        assert_eq!(ok("10.0.0.1:0"), ("10.0.0.1".into(), Some(0)));
        assert_eq!(ok("a:65535"), ("a".into(), Some(65535)));
        assert_eq!(ok("a:00080"), ("a".into(), Some(80)));
        assert_eq!(ok("[::1]:8080"), ("[::1]".into(), Some(8080)));
        assert_eq!(ok("[2001:DB8::1]"), ("[2001:db8::1]".into(), None));
        // An empty port is tolerated, as nginx does.
        assert_eq!(ok("a.test:"), ("a.test".into(), None));
    }

    #[test]
    fn a_trailing_dot_is_dropped_but_told() {
        assert!(parse_host(b"localhost.:80").unwrap().trailing_dot);
        assert!(parse_host(b"127.0.0.1.").unwrap().trailing_dot);
        assert!(!parse_host(b"localhost:80").unwrap().trailing_dot);
        assert!(!parse_host(b"[::1]").unwrap().trailing_dot);
    }

    #[test]
    fn ip_literals_are_told_from_names() {
        let ip = |v: &str| parse_host(v.as_bytes()).unwrap().ip();
        assert_eq!(ip("127.0.0.1:80"), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(ip("[::1]:80"), Some(IpAddr::from(Ipv6Addr::LOCALHOST)));
        assert_eq!(ip("[::FFFF:127.0.0.1]"), Some("::ffff:127.0.0.1".parse().unwrap()));
        for name in ["localhost", "127.1", "0x7f.0.0.1", "127.0.0.1.1", "1.2.3"] {
            assert_eq!(ip(name), None, "{name}");
        }
    }

    #[test]
    fn the_usual_host_is_borrowed() {
        assert!(matches!(parse_host(b"api.example.com:8080").unwrap().host, Cow::Borrowed("api.example.com")));
        assert!(matches!(parse_host(b"example.com.").unwrap().host, Cow::Borrowed("example.com")));
        assert!(matches!(parse_host(b"Example.com").unwrap().host, Cow::Owned(_)));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let err = |v: &[u8]| parse_host(v).expect_err(&String::from_utf8_lossy(v));
        assert_eq!(err(b""), HostError::Empty);
        assert_eq!(err(b"."), HostError::Empty);
        assert_eq!(err(b":80"), HostError::Empty);
        assert_eq!(err(b"evil.example/x.wild.example"), HostError::BadByte(b'/'));
        assert!(err(b"evil.example/x").to_string().contains("'/'"), "{}", err(b"evil.example/x"));
        assert_eq!(err(b"user@a.test"), HostError::BadByte(b'@'));
        assert_eq!(err(b"a b"), HostError::BadByte(b' '));
        assert_eq!(err(b"a\tb"), HostError::BadByte(b'\t'));
        assert!(err(b"a\0b").to_string().contains("0x00"), "{}", err(b"a\0b"));
        assert_eq!(err(b"a?b"), HostError::BadByte(b'?'));
        assert_eq!(err(b"a#b"), HostError::BadByte(b'#'));
        assert_eq!(err(b"a%2eb"), HostError::BadByte(b'%'));
        assert_eq!(err(b"a,b"), HostError::BadByte(b','));
        assert_eq!(err("caf\u{e9}.test".as_bytes()), HostError::BadByte(0xC3));
        assert_eq!(err(b"a..b"), HostError::EmptyLabel);
        assert_eq!(err(b".a"), HostError::EmptyLabel);
        assert_eq!(err(b"a.."), HostError::EmptyLabel);
        assert_eq!(err(format!("{}.a", "a".repeat(252)).as_bytes()), HostError::TooLong(254));
        assert_eq!(err(b"a:65536"), HostError::BadPort("65536".into()));
        assert_eq!(err(b"a:123456"), HostError::BadPort("123456".into()));
        assert_eq!(err(b"a:8x"), HostError::BadPort("8x".into()));
        assert_eq!(err(b"a:1:2"), HostError::BadPort("1:2".into()));
        assert_eq!(err(b"a:-1"), HostError::BadPort("-1".into()));
        assert_eq!(err(b"[::1"), HostError::BadIpLiteral("no closing ']'"));
        assert_eq!(err(b"[example.com]"), HostError::BadIpLiteral("not an IPv6 address"));
        assert_eq!(err(b"[fe80::1%25eth0]"), HostError::BadIpLiteral("not an IPv6 address"));
        assert!(matches!(err(b"[::1]x"), HostError::BadPort(_)));
        assert!(err(b"a:99999").to_string().contains("\"99999\""));
    }

    proptest! {
        #[test]
        fn never_panics_and_output_is_a_fixed_point(bytes in prop::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(h) = parse_host(&bytes) {
                prop_assert!(!h.host.contains(['/', '@', '?', '#', '%']), "{:?}", h);
                prop_assert!(!h.host.chars().any(|c| c.is_whitespace() || c.is_control()), "{:?}", h);
                let again = parse_host(h.host.as_bytes()).unwrap();
                prop_assert_eq!(&again.host, &h.host);
                prop_assert_eq!(again.port, None);
                prop_assert!(matches!(again.host, Cow::Borrowed(_)));
            }
        }

        #[test]
        fn host_like_input_round_trips(
            host in "[a-zA-Z0-9_.-]{0,20}|\\[[0-9a-fA-F:.]{0,20}\\]",
            port in prop::option::of("[0-9]{0,6}"),
        ) {
            let value = match &port {
                Some(p) => format!("{host}:{p}"),
                None => host.clone(),
            };
            if let Ok(h) = parse_host(value.as_bytes()) {
                prop_assert_eq!(h.host.as_ref(), host.strip_suffix('.').unwrap_or(&host).to_ascii_lowercase());
                let with_port = match h.port {
                    Some(p) => format!("{}:{p}", h.host),
                    None => h.host.to_string(),
                };
                let again = parse_host(with_port.as_bytes()).unwrap();
                prop_assert_eq!((again.host, again.port), (h.host, h.port));
            }
        }
    }
}
