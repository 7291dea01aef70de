//! Path normalisation for routing: the one spelling of a request path that the routing table
//! sees and, when it differs from what the client sent, the one the backend receives.
//!
//! Why: a prefix route `/api` must not be reached with a path that its backend resolves outside
//! `/api` (`/api/../admin`), and a path under `/api` must not dodge the route by another spelling
//! (`/%61pi`, `/x/../api`). nginx normalises the same way before it matches its `location`s.
//!
//! The rules, applied to the path of the request-target (never its query):
//! - it starts with `/`;
//! - every `%` starts a valid escape (`%` and two hex digits); escapes of unreserved characters
//!   (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) are decoded, every other escape is kept, with
//!   upper-case hex (§6.2.2.1);
//! - no control character (0x00-0x1F, 0x7F), neither raw nor escaped: `%00` and `%0A` have no
//!   business in a path and are how header injection and truncation attacks start;
//! - dot-segments are removed (§5.2.4) and consecutive slashes merged (nginx's
//!   `merge_slashes on`); a trailing slash is kept;
//! - `%2F`, `%5C` and a raw `\` are never decoded nor read as a separator (`group%2Fproject`
//!   APIs rely on `%2F` being data), but a backend may decode them before resolving
//!   dot-segments. So a segment that becomes a `.` or `..` when `%2F`, `%5C` and `\` are read
//!   as `/` is refused (`/api/..%2Fsecret`); so is one that becomes a dot-segment once a
//!   `;parameter` is cut off (`/api/..;/secret`), as Tomcat and Jetty read paths.
//!
//! The result has no `.` or `..` segment and no `//`, and normalising it again changes nothing.
//! An already normal path comes back borrowed: the common request allocates nothing here.

use std::borrow::Cow;
use std::fmt;

/// Why a path is refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits: the bytes from the `%` on (at most three).
    BadEscape(String),
    /// A control character; `encoded` when it came as a percent-escape.
    ControlCharacter { byte: u8, encoded: bool },
    /// A segment that is a dot-segment in a backend's reading (see the module doc).
    HiddenDotSegment(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotAbsolute => f.write_str("the path does not start with '/'"),
            PathError::BadEscape(at) => {
                write!(f, "invalid percent-escape {at:?} in the path: '%' must be followed by two hex digits")
            }
            PathError::ControlCharacter { byte, encoded: true } => {
                write!(f, "the path contains the encoded control character %{byte:02X}")
            }
            PathError::ControlCharacter { byte, encoded: false } => {
                write!(f, "the path contains the control character 0x{byte:02X}")
            }
            PathError::HiddenDotSegment(segment) => write!(
                f,
                "the path segment {segment:?} is a dot-segment to a backend that decodes %2F or %5C, \
                 reads '\\' as '/' or cuts ';' parameters: it could resolve outside its route"
            ),
        }
    }
}

impl std::error::Error for PathError {}

/// Normalises `path` (see the module doc). Borrowed when it is already normal.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathError::NotAbsolute);
    };
    // First pass: validate, and find out whether anything changes at all.
    let mut changed = false;
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let seg = inspect(segment)?;
        changed |= seg.rewrite
            || match seg.kind {
                Kind::Empty => !last,
                Kind::Dot | Kind::DotDot => true,
                Kind::Name => false,
            };
    }
    if !changed {
        return Ok(Cow::Borrowed(path));
    }

    // Second pass: build the normal form. `out` never ends with '/' except for the trailing
    // slash pushed by the last segment, so rfind('/') finds where the previous segment starts.
    let mut out = String::with_capacity(path.len());
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match inspect(segment)?.kind {
            Kind::Empty | Kind::Dot => {}
            Kind::DotDot => {
                if let Some(i) = out.rfind('/') {
                    out.truncate(i);
                }
            }
            Kind::Name => {
                out.push('/');
                push_decoded(&mut out, segment);
                continue;
            }
        }
        if last {
            out.push('/');
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// A segment as hawser reads it, once unreserved escapes are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Dot,
    DotDot,
    Name,
}

struct Segment {
    kind: Kind,
    /// An escape to decode or to upper-case.
    rewrite: bool,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XY` at `i` stands for, or the error for a malformed or control escape.
fn escape_at(bytes: &[u8], i: usize) -> Result<u8, PathError> {
    let digits = (bytes.get(i + 1).copied().and_then(hex_value), bytes.get(i + 2).copied().and_then(hex_value));
    let (Some(hi), Some(lo)) = digits else {
        let end = bytes.len().min(i + 3);
        return Err(PathError::BadEscape(String::from_utf8_lossy(&bytes[i..end]).into_owned()));
    };
    let value = hi << 4 | lo;
    if is_control(value) {
        return Err(PathError::ControlCharacter { byte: value, encoded: true });
    }
    Ok(value)
}

/// Counts a run of '.' (raw or `%2E`) for the dot-segment tests: `None` once anything else
/// appears, and past two dots it cannot be a dot-segment any more.
fn add_dot(run: Option<u8>, is_dot: bool) -> Option<u8> {
    match run {
        Some(n) if is_dot && n < 3 => Some(n + 1),
        _ => None,
    }
}

/// Validates one segment and classifies it, in hawser's reading and in a decoding backend's.
fn inspect(segment: &str) -> Result<Segment, PathError> {
    let bytes = segment.as_bytes();
    let mut rewrite = false;
    // Hawser's reading: is the whole segment one or two dots (raw or `%2E`)?
    let mut dots = Some(0u8);
    // A decoding backend's reading: pieces between `%2F`, `%5C` and `\`, each cut at its first
    // ';' (raw or `%3B`). `head_dots` counts the dots of the current piece before its ';'.
    let mut split = false;
    let mut head_dots = Some(0u8);
    let mut in_params = false;
    let mut dot_piece = false;
    let mut dot_piece_with_params = false;
    let mut end_piece = |head_dots: Option<u8>, in_params: bool| {
        let dot = matches!(head_dots, Some(1 | 2));
        dot_piece |= dot;
        dot_piece_with_params |= dot && in_params;
    };

    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let (decoded, width) = if b == b'%' {
            let value = escape_at(bytes, i)?;
            rewrite |= is_unreserved(value) || bytes[i + 1..i + 3].iter().any(u8::is_ascii_lowercase);
            (value, 3)
        } else if is_control(b) {
            return Err(PathError::ControlCharacter { byte: b, encoded: false });
        } else {
            (b, 1)
        };
        let is_dot = decoded == b'.';
        dots = add_dot(dots, is_dot);
        if matches!(decoded, b'/' | b'\\') {
            end_piece(head_dots, in_params);
            split = true;
            head_dots = Some(0);
            in_params = false;
        } else if decoded == b';' {
            // Also `%3B`: a backend that decodes everything first would cut there too.
            in_params = true;
        } else if !in_params {
            head_dots = add_dot(head_dots, is_dot);
        }
        i += width;
    }
    end_piece(head_dots, in_params);
    if (split && dot_piece) || dot_piece_with_params {
        return Err(PathError::HiddenDotSegment(segment.to_string()));
    }
    let kind = match dots {
        _ if bytes.is_empty() => Kind::Empty,
        Some(1) => Kind::Dot,
        Some(2) => Kind::DotDot,
        _ => Kind::Name,
    };
    Ok(Segment { kind, rewrite })
}

/// Appends `segment` with unreserved escapes decoded and the others upper-cased. The segment
/// was validated by [`inspect`].
fn push_decoded(out: &mut String, segment: &str) {
    let bytes = segment.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        out.push_str(&segment[start..i]);
        let (hi, lo) = (bytes[i + 1], bytes[i + 2]);
        let value = hex_value(hi).unwrap_or(0) << 4 | hex_value(lo).unwrap_or(0);
        if is_unreserved(value) {
            out.push(char::from(value));
        } else {
            out.push('%');
            out.push(char::from(hi.to_ascii_uppercase()));
            out.push(char::from(lo.to_ascii_uppercase()));
        }
        i += 3;
        start = i;
    }
    out.push_str(&segment[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn normal(p: &str) -> String {
        normalize(p).unwrap_or_else(|e| panic!("{p:?}: {e}")).into_owned()
    }

    #[test]
    fn a_normal_path_is_borrowed() {
        for p in ["/", "/api", "/api/v1/", "/a%2Fb", "/caf%C3%A9", "/caf\u{e9}", "/a;b=c", "/~user", "/a\\b", "/...", "/.a", "/a..b", "/a;.."] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(q)) if q == p), "{p:?} -> {:?}", normalize(p));
        }
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_upper_cased() {
        assert_eq!(normal("/%61pi"), "/api");
        assert_eq!(normal("/%7e%5F%2D%30"), "/~_-0");
        assert_eq!(normal("/a%2fb"), "/a%2Fb");
        assert_eq!(normal("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(normal("/100%25"), "/100%25");
        assert_eq!(normal("/q%3f%23"), "/q%3F%23");
    }

    #[test]
    fn dot_segments_are_removed_and_slashes_merged() {
        for (raw, want) in [
            ("/api/../secret", "/secret"),
            ("/api/%2e%2e/secret", "/secret"),
            ("/api/.%2e/secret", "/secret"),
            ("/api/%2E./secret", "/secret"),
            ("/api/./../secret", "/secret"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/a/b/../../../c/", "/c/"),
            ("//a///b//", "/a/b/"),
            ("//", "/"),
            ("/a//..//b", "/b"),
        ] {
            assert_eq!(normal(raw), want, "{raw}");
        }
    }

    #[test]
    fn malformed_paths_are_refused_with_the_reason() {
        let err = |p: &str| normalize(p).expect_err(p);
        assert_eq!(err("api"), PathError::NotAbsolute);
        assert_eq!(err(""), PathError::NotAbsolute);
        assert_eq!(err("/%zz"), PathError::BadEscape("%zz".into()));
        assert_eq!(err("/a%4"), PathError::BadEscape("%4".into()));
        assert_eq!(err("/a%"), PathError::BadEscape("%".into()));
        assert_eq!(err("/a%g0b"), PathError::BadEscape("%g0".into()));
        assert!(err("/%zz").to_string().contains("\"%zz\""), "{}", err("/%zz"));
        for (p, byte) in [("/a%00", 0), ("/%0a", 0x0A), ("/%1F", 0x1F), ("/%7f", 0x7F)] {
            assert_eq!(err(p), PathError::ControlCharacter { byte, encoded: true }, "{p}");
        }
        assert!(err("/%00").to_string().contains("%00"));
        for (p, byte) in [("/a\nb", b'\n'), ("/\t", b'\t'), ("/\r", b'\r'), ("/\x7f", 0x7F), ("/\0", 0)] {
            assert_eq!(err(p), PathError::ControlCharacter { byte, encoded: false }, "{p:?}");
        }
    }

    #[test]
    fn encoded_separators_stay_but_never_hide_a_dot_segment() {
        assert_eq!(normal("/api/group%2fproject/x"), "/api/group%2Fproject/x");
        assert_eq!(normal("/api/a%5Cb\\c"), "/api/a%5Cb\\c");
        assert_eq!(normal("/api/a%2F...%2Fb"), "/api/a%2F...%2Fb");
        for p in [
            "/api/..%2Fsecret",
            "/api/..%2fsecret",
            "/api/%2e%2e%2Fsecret",
            "/api/..%5Csecret",
            "/api/..\\secret",
            "/api/.%2Fsecret",
            "/api/x%2F..",
            "/api/%2F%2F..%2F",
            "/api/..;/secret",
            "/api/.;x",
            "/api/..%3B",
            "/api/a\\..\\..\\b",
        ] {
            match normalize(p) {
                Err(PathError::HiddenDotSegment(seg)) => {
                    assert!(p.contains(&seg), "{p}: {seg}");
                    let e = normalize(p).unwrap_err().to_string();
                    assert!(e.contains(&format!("{seg:?}")), "{e}");
                }
                other => panic!("{p:?} should be refused, got {other:?}"),
            }
        }
    }

    /// How a careless backend resolves a path: `%2F`, `%5C` and `\` are separators, `%2E` and
    /// `%3B` are decoded, ';' parameters are cut from each segment, then dot-segments resolve.
    fn naive_resolve(p: &str) -> String {
        let mut decoded = String::new();
        let mut rest = p;
        while let Some(c) = rest.chars().next() {
            let esc = rest.get(..3).map(str::to_ascii_uppercase);
            let (s, n) = match esc.as_deref() {
                Some("%2F") | Some("%5C") => ("/", 3),
                Some("%2E") => (".", 3),
                Some("%3B") => (";", 3),
                _ if c == '\\' => ("/", 1),
                _ => (&rest[..c.len_utf8()], c.len_utf8()),
            };
            decoded.push_str(s);
            rest = &rest[n..];
        }
        let mut stack: Vec<&str> = Vec::new();
        for seg in decoded.split('/') {
            match seg.split(';').next().unwrap_or("") {
                "" | "." => {}
                ".." => {
                    stack.pop();
                }
                s => stack.push(s),
            }
        }
        format!("/{}", stack.join("/"))
    }

    fn under_api(p: &str) -> bool {
        p == "/api" || p.starts_with("/api/")
    }

    /// Paths made of the pieces that matter here, so that most are valid and many are tricky.
    fn tricky_path() -> impl Strategy<Value = String> {
        let tokens = prop::sample::select(vec![
            "/", "//", "api", "a", "secret", "..", ".", "%2e", "%2E", "%2F", "%2f", "%5C", "%5c", "\\", ";", "%3B",
            "x=1", "%41", "%7e", "~", "%25", "%zz", "%4", "%0a", "%00", "\t", "\u{e9}", "%C3%A9", "%",
        ]);
        let start = prop::sample::select(vec!["/", "/api/", "/api"]);
        (start, prop::collection::vec(tokens, 0..12)).prop_map(|(start, t)| format!("{start}{}", t.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn never_panics_on_any_input(bytes in prop::collection::vec(any::<u8>(), 0..64), s in any::<String>()) {
            let _ = normalize(&String::from_utf8_lossy(&bytes));
            let _ = normalize(&s);
            let _ = normalize(&format!("/{s}"));
        }

        #[test]
        fn normal_form_is_stable_and_clean(p in tricky_path()) {
            if let Ok(n) = normalize(&p) {
                prop_assert!(n.starts_with('/'));
                prop_assert!(!n.contains("//"), "{:?} -> {:?}", p, n);
                prop_assert!(n.split('/').all(|s| s != "." && s != ".."), "{:?} -> {:?}", p, n);
                let again = normalize(&n);
                prop_assert!(matches!(again, Ok(Cow::Borrowed(_))), "{:?} -> {:?} -> {:?}", p, n, again);
            }
        }

        #[test]
        fn a_path_routed_under_a_prefix_resolves_under_it(p in tricky_path()) {
            if let Ok(n) = normalize(&p)
                && under_api(&n)
            {
                let backend = naive_resolve(&n);
                prop_assert!(under_api(&backend), "{:?} -> {:?}, which a backend resolves to {:?}", p, n, backend);
            }
        }
    }
}
