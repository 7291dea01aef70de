//! hawser's own answers to gRPC requests: the form gRPC clients decode (gRPC over HTTP/2,
//! "Trailers-Only"), instead of a plain-text 404/503 that a gRPC client only reports as a
//! protocol error ("Received http2 header with status: 404").
//!
//! Invariants:
//! - A request is gRPC exactly when its `content-type` is `application/grpc`, or starts with
//!   `application/grpc+` (a codec: `+proto`, `+json`) or `application/grpc;` (parameters),
//!   compared ASCII case-insensitively, as the spec defines it. `application/grpc-web` is not
//!   gRPC: its clients read the status from the body, which hawser does not write.
//! - An answer has HTTP status 200, `content-type: application/grpc`, a `grpc-status` and a
//!   `grpc-message`, and no body: the whole answer is one header block that ends the stream.
//! - `grpc-message` holds only bytes 0x20–0x7E: every other byte of the message's UTF-8, and
//!   `%`, is percent-encoded (`%XX`), so any message is a valid header value.
//! - The gRPC code stands for the HTTP status hawser decided (see [`code_for`]); that decided
//!   status, not the 200 on the wire, is what metrics and the access log count. A call whose
//!   `grpc-timeout` passed before any answer is DEADLINE_EXCEEDED, counted as a 504.
//! - A `grpc-timeout` is read as the spec writes it (1 to 8 digits and one of `HMSmun`);
//!   anything else is no deadline for hawser (the backend gets the header as sent).

use pingora::http::{RequestHeader, ResponseHeader};

/// The gRPC status codes hawser answers with (the subset of the spec's table it needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Unknown = 2,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Whether a request is a gRPC call (see the module's invariants).
pub fn is_grpc(req: &RequestHeader) -> bool {
    req.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

fn is_grpc_content_type(value: &[u8]) -> bool {
    const BASE: &[u8] = b"application/grpc";
    value.len() >= BASE.len()
        && value[..BASE.len()].eq_ignore_ascii_case(BASE)
        && matches!(value.get(BASE.len()), None | Some(b'+' | b';'))
}

/// The gRPC code for an HTTP status hawser decided on. No route (404) is NOT_FOUND, as
/// hawser's contract says: the spec's table maps a 404 from a server to UNIMPLEMENTED, which
/// would tell the client the method is missing when it is the whole host or path. A backend
/// that is not there or failed (502/503/504) is UNAVAILABLE, which clients may retry. The rest
/// follows the spec's HTTP-to-gRPC table.
pub fn code_for(status: u16) -> Code {
    match status {
        404 => Code::NotFound,
        502..=504 | 429 => Code::Unavailable,
        400 | 500 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        413 | 431 => Code::ResourceExhausted,
        _ => Code::Unknown,
    }
}

/// `message` as `grpc-message` carries it: percent-encoded outside 0x20–0x7E, and `%` itself.
pub fn encode_message(message: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The call's deadline from now, from its `grpc-timeout` (see the module's invariants).
pub fn timeout(req: &RequestHeader) -> Option<std::time::Duration> {
    parse_timeout(req.headers.get("grpc-timeout")?.as_bytes())
}

fn parse_timeout(value: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: no overflow in u64 for any unit.
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// hawser's answer to a gRPC request that it does not pass on, with gRPC status `code` and
/// the message that says why (a trailing newline is dropped).
pub fn answer(code: Code, message: &str) -> pingora::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/grpc")?;
    resp.insert_header("grpc-status", (code as u8).to_string())?;
    resp.insert_header("grpc-message", encode_message(message.trim_end()))?;
    // HTTP/1.1 needs the framing; over HTTP/2 it is true and harmless.
    resp.insert_header(http::header::CONTENT_LENGTH, "0")?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(content_type: Option<&'static str>) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/pkg.Svc/Method", None).unwrap();
        if let Some(t) = content_type {
            req.insert_header("content-type", t).unwrap();
        }
        req
    }

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        for t in ["application/grpc", "Application/GRPC", "application/grpc+proto", "application/grpc;charset=utf-8"] {
            assert!(is_grpc(&with_type(Some(t))), "{t}");
        }
        for t in ["application/grpc-web", "application/grpcx", "application/json", "text/plain", "application/gr", ""] {
            assert!(!is_grpc(&with_type(Some(t))), "{t}");
        }
        assert!(!is_grpc(&with_type(None)));
    }

    #[test]
    fn deadlines_are_read_as_the_spec_writes_them() {
        use std::time::Duration;
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout(b"250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_timeout(b"99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse_timeout(b"99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
        for bad in [&b""[..], b"m", b"100", b"123456789m", b"-1S", b"1.5S", b"10s", b"10 m", b" 10m", b"10x", "１S".as_bytes()] {
            assert_eq!(parse_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn statuses_map_to_the_codes_clients_act_on() {
        assert_eq!(code_for(404), Code::NotFound);
        for s in [502, 503, 504, 429] {
            assert_eq!(code_for(s), Code::Unavailable, "{s}");
        }
        assert_eq!(code_for(413), Code::ResourceExhausted);
        assert_eq!(code_for(500), Code::Internal);
        assert_eq!(code_for(418), Code::Unknown);
    }

    #[test]
    fn messages_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(encode_message("no route for host \"a.test\""), "no route for host \"a.test\"");
        assert_eq!(encode_message("100% café\n"), "100%25 caf%C3%A9%0A");
        assert_eq!(encode_message("~ \x7f"), "~ %7F");
    }

    #[test]
    fn an_answer_is_a_200_that_carries_the_status_in_its_headers() {
        let resp = answer(code_for(503), "hawser: service api has no ready backend\n").unwrap();
        assert_eq!(resp.status, 200);
        let h = |n: &str| resp.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(h("content-type").as_deref(), Some("application/grpc"));
        assert_eq!(h("grpc-status").as_deref(), Some("14"));
        assert_eq!(h("grpc-message").as_deref(), Some("hawser: service api has no ready backend"));
        assert_eq!(answer(code_for(404), "x").unwrap().headers["grpc-status"], "5");
    }
}
