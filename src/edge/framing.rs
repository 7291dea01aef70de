//! Strict reading of an HTTP/1 request head, before pingora's lenient parser decides anything.
//!
//! pingora (like most servers) accepts heads that other parsers read differently: bare LF line
//! ends, a Content-Length beside a Transfer-Encoding (it drops the Content-Length), repeated or
//! obfuscated Transfer-Encodings, whitespace before a colon. A backend or a proxy behind hawser
//! that reads such a head otherwise is how requests are smuggled (RFC 9112 §11.2). hawser
//! therefore accepts only heads with exactly one reading, and answers anything else with a
//! 4xx and a closed connection.
//!
//! Invariants:
//! - [`check_head`] accepts a head only if: every line ends in CRLF; at most one Host; the request line is
//!   `token SP target SP HTTP/1.0|HTTP/1.1`; no field line is folded (obs-fold), has
//!   whitespace before its colon, an empty or non-token name, or a control byte (NUL, CR, LF,
//!   …; HTAB allowed) in its value; there is at most one Content-Length, of digits only; at
//!   most one Transfer-Encoding, whose value is exactly `chunked`, never beside a
//!   Content-Length and never in HTTP/1.0. Every refusal is a 400.
//! - Size limits answer with their own status: 431 for the head or the number of fields,
//!   414 for the request target.
//! - [`check_partial`] looks at a head still arriving and refuses as early as the bytes allow
//!   (a request line that cannot be HTTP, a head over its size), so that garbage and
//!   oversize heads are not waited for. It never refuses a prefix of a head that
//!   [`check_head`] would accept.
//! - Nothing here allocates or panics, whatever the bytes.

use crate::config::ClientPolicy;

/// Why hawser refuses a request itself, and the status to answer with. Every such answer,
/// wherever it is made, is [`Reject::body`] with `Connection: close`, and the connection is
/// closed after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: std::borrow::Cow<'static, str>,
}

impl Reject {
    pub fn new(status: u16, reason: impl Into<std::borrow::Cow<'static, str>>) -> Reject {
        Reject { status, reason: reason.into() }
    }

    /// The status line's reason phrase ("Bad Request").
    pub fn phrase(&self) -> &'static str {
        http::StatusCode::from_u16(self.status).ok().and_then(|s| s.canonical_reason()).unwrap_or("")
    }

    /// The plain-text answer: `hawser: bad request: <reason>`.
    pub fn body(&self) -> String {
        format!("hawser: {}: {}\n", self.phrase().to_ascii_lowercase(), self.reason)
    }
}

const fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason: std::borrow::Cow::Borrowed(reason) }
}

/// The limits [`check_head`] applies, from `clients:` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_header_size: usize,
    pub max_headers: usize,
    pub max_uri_length: usize,
}

impl From<&ClientPolicy> for HeadLimits {
    fn from(c: &ClientPolicy) -> Self {
        HeadLimits { max_header_size: c.max_header_size, max_headers: c.max_headers, max_uri_length: c.max_uri_length }
    }
}

/// No registered HTTP method is longer than 16 bytes (BASELINE-CONTROL).
const MAX_METHOD: usize = 32;

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where the head ends: the index just past its blank line, if it has arrived. A bare-LF
/// blank line counts as an end too, so that such a head is refused rather than waited for.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

/// RFC 9112 §2.2: empty lines before a request line are ignored (old clients send a CRLF
/// after a request body).
fn skip_empty_lines(mut buf: &[u8]) -> &[u8] {
    while let [b'\r', b'\n', rest @ ..] = buf {
        buf = rest;
    }
    buf
}

/// Where a head ends in `chunk`, the next bytes of a stream whose two bytes before were
/// `prev`: the index just past the blank line (CRLF CRLF, or a bare-LF one, which
/// [`check_head`] then refuses). For heads read in pieces, without keeping them.
pub fn find_head_end(prev: [u8; 2], chunk: &[u8]) -> Option<usize> {
    // The stream as prev[0], prev[1], chunk[0], …: byte v of it.
    let byte = |v: usize| if v < 2 { prev[v] } else { chunk[v - 2] };
    let mut from = 0;
    while let Some(k) = chunk[from..].iter().position(|&b| b == b'\n') {
        let v = from + k + 2;
        if byte(v - 1) == b'\n' || (byte(v - 1) == b'\r' && byte(v - 2) == b'\n') {
            return Some(from + k + 1);
        }
        from += k + 1;
    }
    None
}

/// A head still arriving: refuses what can already be seen to be wrong or too large.
pub fn check_partial(buf: &[u8], limits: &HeadLimits) -> Result<(), Reject> {
    let buf = match skip_empty_lines(buf) {
        [b'\r'] => return Ok(()),
        rest => rest,
    };
    let line_end = buf.iter().position(|&b| b == b'\n');
    if line_end == Some(0) {
        return Err(reject(400, "a line of the request head ends in a bare LF"));
    }
    let line = &buf[..line_end.unwrap_or(buf.len())];
    // The method: tokens up to the first space. A TLS ClientHello or other binary garbage
    // fails at its first byte.
    let method_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    if !line[..method_len].iter().all(|&b| is_tchar(b)) || (method_len == 0 && !line.is_empty()) {
        return Err(reject(400, "the request line does not start with a method"));
    }
    // The request target, as far as it has come.
    if method_len < line.len() {
        let rest = &line[method_len + 1..];
        let target_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if target_len > limits.max_uri_length {
            return Err(reject(414, "the request target is longer than clients.max_uri_length"));
        }
    } else if line_end.is_none() && method_len > MAX_METHOD {
        return Err(reject(400, "the method is longer than any HTTP method"));
    }
    if buf.len() > limits.max_header_size && head_end(buf).is_none_or(|end| end > limits.max_header_size) {
        return Err(reject(431, "the request head is larger than clients.max_header_size"));
    }
    Ok(())
}

/// A complete request head (request line, fields, blank line), as received.
pub fn check_head(head: &[u8], limits: &HeadLimits) -> Result<(), Reject> {
    if head.len() > limits.max_header_size {
        return Err(reject(431, "the request head is larger than clients.max_header_size"));
    }
    let mut lines = Lines { rest: skip_empty_lines(head) };
    let request_line = match lines.next() {
        Some(Ok(line)) => line,
        Some(Err(r)) => return Err(r),
        None => return Err(reject(400, "empty request")),
    };
    let http10 = check_request_line(request_line, limits)?;

    let mut fields = 0usize;
    let mut content_length = 0u32;
    let mut transfer_encoding = 0u32;
    let mut hosts = 0u32;
    let mut ended = false;
    for line in lines.by_ref() {
        let line = line?;
        if line.is_empty() {
            ended = true;
            break;
        }
        fields += 1;
        if fields > limits.max_headers {
            return Err(reject(431, "the request has more header fields than clients.max_headers"));
        }
        if matches!(line[0], b' ' | b'\t') {
            return Err(reject(400, "obsolete line folding in a header field"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(reject(400, "a header line without a colon"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(reject(400, "an invalid header field name (or whitespace before its colon)"));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(reject(400, "a control character in a header field value"));
        }
        let value = trim_ows(value);
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if hosts > 1 {
                // Which one a backend or a cache reads is anyone's guess (RFC 9112 §3.2: 400).
                return Err(reject(400, "more than one Host"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_length += 1;
            if content_length > 1 {
                return Err(reject(400, "more than one Content-Length"));
            }
            if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
                return Err(reject(400, "a Content-Length that is not a plain decimal number"));
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding += 1;
            if transfer_encoding > 1 {
                return Err(reject(400, "more than one Transfer-Encoding"));
            }
            if !value.eq_ignore_ascii_case(b"chunked") {
                // Other codings, lists and obfuscations ("chunked, identity", "xchunked",
                // quoted) are where parsers disagree; HAProxy refuses them too.
                return Err(reject(400, "a Transfer-Encoding other than exactly chunked"));
            }
        }
    }
    if !ended || !lines.rest.is_empty() {
        return Err(reject(400, "the request head does not end with an empty line"));
    }
    if transfer_encoding > 0 && content_length > 0 {
        return Err(reject(400, "both Content-Length and Transfer-Encoding"));
    }
    if transfer_encoding > 0 && http10 {
        return Err(reject(400, "Transfer-Encoding in an HTTP/1.0 request"));
    }
    Ok(())
}

/// `method SP request-target SP HTTP-version`; whether the version is 1.0.
fn check_request_line(line: &[u8], limits: &HeadLimits) -> Result<bool, Reject> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(reject(400, "the request line is not `method target version` with single spaces"));
    };
    if method.is_empty() || method.len() > MAX_METHOD || !method.iter().all(|&b| is_tchar(b)) {
        return Err(reject(400, "an invalid method"));
    }
    if target.len() > limits.max_uri_length {
        return Err(reject(414, "the request target is longer than clients.max_uri_length"));
    }
    if target.is_empty() || target.iter().any(|&b| b < 0x21 || b == 0x7f) {
        return Err(reject(400, "an empty request target, or one with a control character"));
    }
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        _ => Err(reject(400, "an HTTP version other than HTTP/1.0 or HTTP/1.1")),
    }
}

/// Removes a request's offer to switch to cleartext HTTP/2 (`Upgrade: h2c`), before it goes
/// to a backend. A backend that accepted it would carry any number of HTTP/2 requests in the
/// upgraded tunnel, none of them seen, routed or checked by hawser ("h2c smuggling"). Other
/// upgrades (WebSocket) keep their `Upgrade` header; `curl --http2` on http:// offers h2c and
/// simply gets HTTP/1.1.
pub fn strip_h2c_upgrade(req: &mut pingora::http::RequestHeader) {
    if crate::streams::upgrade_offers(req).any(|p| p.eq_ignore_ascii_case(b"h2c")) {
        req.remove_header(&http::header::UPGRADE);
        req.remove_header("HTTP2-Settings");
    }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// CRLF-terminated lines; a bare LF or a CR elsewhere is an error.
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<&'a [u8], Reject>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(lf) = self.rest.iter().position(|&b| b == b'\n') else {
            self.rest = &[];
            return Some(Err(reject(400, "the request head does not end with an empty line")));
        };
        let line = &self.rest[..lf];
        self.rest = &self.rest[lf + 1..];
        match line {
            [body @ .., b'\r'] if !body.contains(&b'\r') => Some(Ok(body)),
            [.., b'\r'] => Some(Err(reject(400, "a CR inside a line of the request head"))),
            _ => Some(Err(reject(400, "a line of the request head ends in a bare LF"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits { max_header_size: 1024, max_headers: 10, max_uri_length: 64 };

    fn check(head: &str) -> Result<(), u16> {
        check_head(head.as_bytes(), &LIMITS).map_err(|r| r.status)
    }

    #[test]
    fn refusals_read_the_same_everywhere() {
        let r = check_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &LIMITS).unwrap_err();
        assert_eq!(r.body(), "hawser: bad request: more than one Host\n");
        assert_eq!(Reject::new(431, "x").body(), "hawser: request header fields too large: x\n");
    }

    #[test]
    fn ordinary_heads_pass() {
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        assert_eq!(check("GET / HTTP/1.0\r\n\r\n"), Ok(()));
        assert_eq!(check("\r\nGET / HTTP/1.0\r\n\r\n"), Ok(()));
        assert_eq!(check("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"), Ok(()));
        assert_eq!(check("POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked \r\n\r\n"), Ok(()));
        assert_eq!(check("GET / HTTP/1.1\r\nHost: a\r\nX-Tab: a\tb\r\nEmpty:\r\n\r\n"), Ok(()));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for (head, status) in [
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked,\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n chunked\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            ("GET / HTTP/1.1\nHost: a\n\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX\0: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\n: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1 \r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 400),
            ("GET / HTTP/1.2\r\n\r\n", 400),
            ("GET /\r\n\r\n", 400),
            ("G\u{1}T / HTTP/1.1\r\n\r\n", 400),
            ("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA / HTTP/1.1\r\n\r\n", 400),
            ("GET /a\u{7f} HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400),
        ] {
            assert_eq!(check(head), Err(status), "{head:?}");
        }
    }

    #[test]
    fn limits_answer_431_and_414() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64));
        assert_eq!(check(&long_target), Err(414));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(11));
        assert_eq!(check(&many), Err(431));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(1024));
        assert_eq!(check(&big), Err(431));
        assert_eq!(check_partial(big.as_bytes(), &LIMITS).map_err(|r| r.status), Err(431));
    }

    #[test]
    fn partial_heads() {
        let ok = |s: &str| check_partial(s.as_bytes(), &LIMITS).map_err(|r| r.status);
        assert_eq!(ok(""), Ok(()));
        assert_eq!(ok("GE"), Ok(()));
        assert_eq!(ok("GET /abc"), Ok(()));
        assert_eq!(ok("GET / HTTP/1.1\r\nHost: x"), Ok(()));
        assert_eq!(ok("\r"), Ok(()));
        assert_eq!(ok("\r\nGET"), Ok(()));
        assert_eq!(ok("\n"), Err(400));
        assert_eq!(ok("\u{16}\u{3}\u{1}\u{2}"), Err(400));
        assert_eq!(ok(" GET / HTTP/1.1"), Err(400));
        assert_eq!(ok(&format!("GET /{}", "a".repeat(64))), Err(414));
        assert_eq!(ok(&"A".repeat(40)), Err(400));
    }

    #[test]
    fn head_ends_across_reads() {
        let whole = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        for cut in 0..whole.len() {
            let (a, b) = whole.split_at(cut);
            let mut prev = [0u8; 2];
            let found = match find_head_end(prev, a) {
                Some(i) => Some(i),
                None => {
                    for &byte in a {
                        prev = [prev[1], byte];
                    }
                    find_head_end(prev, b).map(|i| cut + i)
                }
            };
            assert_eq!(found, Some(27), "cut at {cut}");
        }
        assert_eq!(find_head_end([b'\n', b'\r'], b"\nX"), Some(1));
        assert_eq!(find_head_end([0, b'\n'], b"\n"), Some(1));
        assert_eq!(find_head_end([0, 0], b"a\r\nb"), None);
    }

    #[test]
    fn head_ends() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nx"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn h2c_upgrade_offers_are_removed() {
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("Upgrade", "h2c").unwrap();
        req.insert_header("HTTP2-Settings", "AAMAAABkAAQAoAAAAAIAAAAA").unwrap();
        req.insert_header("Connection", "Upgrade, HTTP2-Settings").unwrap();
        strip_h2c_upgrade(&mut req);
        assert!(req.headers.get("upgrade").is_none() && req.headers.get("http2-settings").is_none());
        let mut ws = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        ws.insert_header("Upgrade", "websocket").unwrap();
        strip_h2c_upgrade(&mut ws);
        assert_eq!(ws.headers.get("upgrade").unwrap(), "websocket");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = check_head(&bytes, &LIMITS);
                let _ = check_partial(&bytes, &LIMITS);
                let _ = head_end(&bytes);
            }

            /// Every prefix of an accepted head is accepted by the partial check: a valid
            /// request is never refused because it arrived in pieces.
            #[test]
            fn prefixes_of_valid_heads_pass(
                method in "[A-Z]{1,10}",
                path in "/[a-zA-Z0-9._~/%-]{0,40}",
                fields in proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,30}"), 0..8),
                cut in 0usize..400,
            ) {
                let mut head = format!("{method} {path} HTTP/1.1\r\n");
                for (n, v) in &fields {
                    head.push_str(&format!("{n}: {}\r\n", v.trim()));
                }
                head.push_str("\r\n");
                if check_head(head.as_bytes(), &LIMITS).is_ok() {
                    let cut = cut.min(head.len());
                    prop_assert!(check_partial(&head.as_bytes()[..cut], &LIMITS).is_ok(), "{head:?} cut at {cut}");
                    prop_assert_eq!(head_end(head.as_bytes()), Some(head.len()));
                }
            }
        }
    }
}
