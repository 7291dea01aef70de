//! The edge against hostile clients, with raw sockets: answers that never hang, deadlines for
//! slow and idle clients, pipelining, the connection cap, and a corpus of hostile request
//! shapes (smuggling, malformed fields, oversize, Host and path tricks).
//!
//! Two strict recording servers in this process stand behind hawser (through `--network host`
//! containers): `api` at `edge.test/api`, `root` at `edge.test/`. For every hostile shape, the
//! test asserts that hawser answered (never hangs); that it refused with a 4xx, or the
//! recorders received exactly the requests the client got answers from them for; that no
//! request recorded at `/api` resolves outside `/api`; and that no recorder ever saw a
//! request it could read in more than one way.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::recorder::{Recorder, careless_resolution};
use common::*;

/// Deadlines short enough for a fast suite, long enough for a loaded CI machine.
const CLIENT_LIMITS: &str = "clients:\n  header_timeout: 1s\n  keepalive_timeout: 1s\n  body_timeout: 1s\n";

struct Edge {
    h: Hawser,
    api: Recorder,
    root: Recorder,
    _containers: Vec<Container>,
    env: TestEnv,
}

/// A `--network host` container that makes hawser route `edge.test` + `path` to `rec`.
fn front(env: &TestEnv, rec: &Recorder, path: &str) -> Container {
    env.run(
        ContainerSpec::new(&rec.name)
            .network("host")
            .hawser("enable", "true")
            .hawser("host", "edge.test")
            .hawser("path", path)
            .hawser("service", &rec.name)
            .hawser("port", &rec.port().to_string())
            // The container only needs to run; its own backend listens on a port nobody uses.
            .env("BIND", "127.0.0.1")
            .env("PORTS", &free_port().to_string()),
    )
}

fn edge(name: &str, extra_config: &str) -> Edge {
    let env = TestEnv::new(name);
    let api = Recorder::start("api");
    let root = Recorder::start("root");
    let containers = vec![front(&env, &api, "/api"), front(&env, &root, "/")];
    let h = env.hawser(&format!("{}{CLIENT_LIMITS}{extra_config}", env.default_config()));
    for (path, rec) in [("/api/ready", &api), ("/ready", &root)] {
        wait_response("recorders routed", h.addr, "edge.test", path, SECS_10, |r| {
            r.header("x-recorder") == Some(rec.name.as_str())
        });
    }
    Edge { h, api, root, _containers: containers, env }
}

/// The responses in `bytes`, in order: status and the recorder that answered, if one did.
fn responses(mut bytes: &[u8]) -> Vec<(u16, Option<String>)> {
    let mut out = Vec::new();
    while let Some((status, headers, rest)) = split_raw(bytes) {
        let code = status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let recorder = headers.iter().find(|(k, _)| k == "x-recorder").map(|(_, v)| v.clone());
        let len: usize = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        out.push((code, recorder));
        let body_at = bytes.len() - rest.len();
        let body_len = if code == 100 { 0 } else { len.min(rest.len()) };
        bytes = &bytes[body_at + body_len..];
    }
    out
}

/// Sends `raw` on a new connection and reads until hawser closes it; panics if that takes
/// longer than `within` (hawser hung).
fn exchange(addr: SocketAddr, raw: &[u8], within: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect to hawser");
    s.set_read_timeout(Some(within)).unwrap();
    let _ = s.write_all(raw);
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // A reset after the answer (hawser closing with unread request bytes) ends it too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!(
                "hawser did not close the connection within {within:?} ({e}, {:?}) after {:?}; got {:?}",
                start.elapsed(),
                e.kind(),
                String::from_utf8_lossy(&got)
            ),
        }
    }
}

enum Expect {
    /// hawser refuses with exactly this status; no recorder sees anything.
    Refused(u16),
    /// Answered: whatever hawser decided, the recorders saw exactly the requests whose
    /// answers came from them.
    Answered,
}

#[test]
fn hostile_request_corpus() {
    use Expect::*;
    let e = edge("edge-corpus", "");
    let big_field = format!("GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024));
    let many_fields = format!("GET /api/x HTTP/1.1\r\nHost: edge.test\r\n{}\r\n", "X-F: 1\r\n".repeat(101));
    let long_uri = format!("GET /api/{} HTTP/1.1\r\nHost: edge.test\r\n\r\n", "a".repeat(9000));
    let long_method = format!("{} / HTTP/1.1\r\nHost: edge.test\r\n\r\n", "A".repeat(100));
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        // --- framing and smuggling ---
        ("CL.TE", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED".to_vec(), Refused(400)),
        ("TE.CL", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("TE twice", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("TE xchunked", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("TE list", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("TE identity", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nhi".to_vec(), Refused(400)),
        ("TE space before colon", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("TE folded", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("TE quoted", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("TE in HTTP/1.0", b"POST /api/x HTTP/1.0\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), Refused(400)),
        ("CL twice equal", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi".to_vec(), Refused(400)),
        ("CL twice different", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 2\r\nContent-Length: 7\r\n\r\nhiGET /".to_vec(), Refused(400)),
        ("CL list", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 2, 2\r\n\r\nhi".to_vec(), Refused(400)),
        ("CL signed", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: +2\r\n\r\nhi".to_vec(), Refused(400)),
        ("CL negative", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: -1\r\n\r\n".to_vec(), Refused(400)),
        ("CL hex", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 0x2\r\n\r\nhi".to_vec(), Refused(400)),
        ("CL overflow", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 184467440737095516160\r\n\r\n".to_vec(), Refused(400)),
        ("bare LF", b"GET /api/x HTTP/1.1\nHost: edge.test\n\n".to_vec(), Refused(400)),
        ("bare LF in one field", b"GET /api/x HTTP/1.1\r\nHost: edge.test\nX: y\r\n\r\n".to_vec(), Refused(400)),
        ("bare CR", b"GET /api/x HTTP/1.1\r\nHost: edge.test\rX: y\r\n\r\n".to_vec(), Refused(400)),
        ("NUL in value", b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX: a\0b\r\n\r\n".to_vec(), Refused(400)),
        ("DEL in value", b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX: a\x7fb\r\n\r\n".to_vec(), Refused(400)),
        ("obs-fold", b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX: a\r\n b\r\n\r\n".to_vec(), Refused(400)),
        ("space in field name", b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX Y: a\r\n\r\n".to_vec(), Refused(400)),
        ("field without colon", b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nnocolon\r\n\r\n".to_vec(), Refused(400)),
        ("empty field name", b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\n: v\r\n\r\n".to_vec(), Refused(400)),
        ("double space in request line", b"GET  /api/x HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("tab in request line", b"GET\t/api/x HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("HTTP/1.2", b"GET /api/x HTTP/1.2\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("HTTP/0.9", b"GET /api/x\r\n\r\n".to_vec(), Refused(400)),
        ("bad method byte", b"G@T /api/x HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("long method", long_method.into_bytes(), Refused(400)),
        ("TLS ClientHello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(), Refused(400)),
        ("chunk size overflow", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFF\r\nx\r\n0\r\n\r\n".to_vec(), Answered),
        ("chunk size not hex", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nx\r\n0\r\n\r\n".to_vec(), Answered),
        ("chunk without CRLF", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Answered),
        ("pipelined after CL body", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 2\r\n\r\nhiGET /api/second HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("chunked body, then a request", b"POST /api/x HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET /api/second HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        // --- size limits ---
        ("100 KB header line", big_field.into_bytes(), Refused(431)),
        ("101 header fields", many_fields.into_bytes(), Refused(431)),
        ("9000-byte URI", long_uri.into_bytes(), Refused(414)),
        // --- Host tricks ---
        ("no Host in HTTP/1.1", b"GET /api/x HTTP/1.1\r\n\r\n".to_vec(), Refused(400)),
        ("two Hosts", b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nHost: other.test\r\n\r\n".to_vec(), Refused(400)),
        ("Host with a path", b"GET /api/x HTTP/1.1\r\nHost: evil.example/x.edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("Host with userinfo", b"GET /api/x HTTP/1.1\r\nHost: user@edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("Host with a space", b"GET /api/x HTTP/1.1\r\nHost: edge .test\r\n\r\n".to_vec(), Refused(400)),
        ("Host with a bad port", b"GET /api/x HTTP/1.1\r\nHost: edge.test:8o\r\n\r\n".to_vec(), Refused(400)),
        ("empty Host", b"GET /api/x HTTP/1.1\r\nHost: \r\n\r\n".to_vec(), Refused(400)),
        ("Host upper case, port, trailing dot", b"GET /api/x HTTP/1.1\r\nHost: EDGE.test.:80\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("absolute form for another host", b"GET http://other.test/api/x HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        // --- path tricks ---
        ("dot-dot", b"GET /api/../secret HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("encoded dot-dot", b"GET /api/%2e%2e/secret HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("half-encoded dot-dot", b"GET /api/.%2e/secret HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("dot then dot-dot", b"GET /api/./../secret HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("upper-case encoded dot-dot", b"GET /api/%2E%2E/secret?q=1 HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("dot-dot behind an encoded slash", b"GET /api/..%2Fsecret HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("all encoded", b"GET /api/%2e%2e%2fsecret HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("backslash dot-dot", b"GET /api/..\\secret HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("encoded backslash dot-dot", b"GET /api/..%5csecret HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("encoded NUL", b"GET /api/%00 HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("bad escape", b"GET /api/%zz HTTP/1.1\r\nHost: edge.test\r\n\r\n".to_vec(), Refused(400)),
        ("double slash", b"GET //api//x HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("encoded letters", b"GET /%61pi/x HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("encoded slash kept", b"GET /api/group%2Fproject HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
        ("h2c upgrade offer", b"GET /api/h2c HTTP/1.1\r\nHost: edge.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n".to_vec(), Answered),
        // --- ordinary, for contrast ---
        ("HTTP/1.0 without Host", b"GET /api/x HTTP/1.0\r\n\r\n".to_vec(), Answered),
        ("leading empty line", b"\r\nGET /api/x HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n".to_vec(), Answered),
    ];
    assert!(cases.len() >= 40, "the corpus has {} shapes", cases.len());
    let mut failures = Vec::new();
    // Each shape twice: as the first request of a connection, and behind an ordinary request
    // on a kept-alive one (hawser reads those heads differently: pingora reads them).
    const FIRST: &[u8] = b"GET /api/first HTTP/1.1\r\nHost: edge.test\r\n\r\n";
    for (name, raw, expect) in &cases {
        for behind in [false, true] {
            let sent = if behind { [FIRST, raw.as_slice()].concat() } else { raw.clone() };
            let name = if behind { format!("{name} (second on its connection)") } else { name.to_string() };
            let before = (e.api.app_requests().len(), e.root.app_requests().len());
            let got = exchange(e.h.addr, &sent, Duration::from_secs(5));
            let mut answers = responses(&got);
            let mut recorded = (e.api.app_requests().len() - before.0, e.root.app_requests().len() - before.1);
            let text = String::from_utf8_lossy(&got[..got.len().min(300)]).into_owned();
            if behind {
                if answers.first().map(|a| (a.0, a.1.as_deref())) != Some((200, Some("api"))) || recorded.0 == 0 {
                    failures.push(format!("{name}: the ordinary first request was not answered by api: {answers:?}: {text:?}"));
                    continue;
                }
                answers.remove(0);
                recorded.0 -= 1;
            }
            let from = |rec: &str| answers.iter().filter(|(_, r)| r.as_deref() == Some(rec)).count();
            match expect {
                Refused(status) => {
                    // A later head is refused with the same status, or, past the size limit
                    // before pingora has it whole, by closing the connection.
                    let refused = match answers.first() {
                        Some((s, _)) => s == status,
                        None => behind && *status == 431,
                    };
                    if !refused || recorded != (0, 0) {
                        failures.push(format!("{name}: expected {status} and nothing forwarded, got {answers:?}, recorded {recorded:?}: {text:?}"));
                    }
                }
                Answered => {
                    if recorded != (from("api"), from("root")) {
                        failures.push(format!("{name}: recorders got {recorded:?} requests, the client answers from them {answers:?}: {text:?}"));
                    }
                    if answers.iter().any(|(s, _)| *s >= 500) {
                        failures.push(format!("{name}: hawser answered a 5xx: {answers:?}: {text:?}"));
                    }
                }
            }
        }
    }
    for r in e.api.app_requests() {
        let resolved = careless_resolution(&r.target);
        if !(resolved == "/api" || resolved.starts_with("/api/")) {
            failures.push(format!("the /api backend got {:?}, which resolves to {resolved:?}", r.target));
        }
    }
    for (rec, v) in [(&e.api, e.api.violations()), (&e.root, e.root.violations())] {
        if !v.is_empty() {
            failures.push(format!("recorder {} got requests with more than one reading: {v:?}", rec.name));
        }
    }
    // h2c smuggling: no backend is offered a tunnel hawser would not see into.
    for r in e.api.app_requests().iter().chain(e.root.app_requests().iter()) {
        if r.header("upgrade").is_some_and(|v| v.to_ascii_lowercase().contains("h2c")) || r.header("http2-settings").is_some() {
            failures.push(format!("{} reached a backend with an h2c upgrade offer", r.target));
        }
    }
    // The path tricks reached the root service, as their resolution says they should.
    let root_targets: Vec<String> = e.root.app_requests().iter().map(|r| r.target.clone()).collect();
    for wanted in ["/secret", "/secret?q=1"] {
        if !root_targets.iter().any(|t| t == wanted) {
            failures.push(format!("no {wanted:?} at the root service: {root_targets:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} shapes failed:\n{}\n--- hawser log:\n{}", failures.len(), cases.len(), failures.join("\n"), e.h.log());
}

#[test]
fn short_requests_are_answered_at_once_with_h2c_on() {
    let e = edge("edge-short", "");
    // What load-balancer health checks send: 18 bytes, fewer than an HTTP/2 preface. Without
    // a Host they match no route: hawser's own 404, at once.
    for (raw, status) in [
        (&b"GET / HTTP/1.0\r\n\r\n"[..], 404),
        (b"OPTIONS / HTTP/1.0\r\n\r\n", 404),
        (b"GET /api/x HTTP/1.0\r\nHost: edge.test\r\n\r\n", 200),
        (b"HEAD / HTTP/1.0\r\nHost: edge.test\r\n\r\n", 200),
    ] {
        let started = Instant::now();
        let got = exchange(e.h.addr, raw, Duration::from_secs(5));
        let answers = responses(&got);
        assert_eq!(answers.len(), 1, "{:?}", String::from_utf8_lossy(&got));
        assert_eq!(answers[0].0, status, "{:?}", String::from_utf8_lossy(&got));
        // Not waiting for a possible HTTP/2 preface: well under the 1 s header timeout.
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let e = edge("edge-pipeline", "");
    let raw = b"GET /api/one HTTP/1.1\r\nHost: edge.test\r\n\r\n\
GET /two HTTP/1.1\r\nHost: edge.test\r\n\r\n\
GET /api/three HTTP/1.1\r\nHost: edge.test\r\nConnection: close\r\n\r\n";
    let got = exchange(e.h.addr, raw, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    let bodies: Vec<&str> = ["api /api/one", "root /two", "api /api/three"].into_iter().filter(|b| text.contains(b)).collect();
    assert_eq!(bodies.len(), 3, "{text}");
    let at = |s: &str| text.find(s).unwrap();
    assert!(at("api /api/one") < at("root /two") && at("root /two") < at("api /api/three"), "{text}");
}

/// Reads from `s` until the peer closes it; the time that took.
fn time_to_close(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return start.elapsed(),
            Err(e) => panic!("connection still open after {:?}: {e}", start.elapsed()),
        }
    }
}

fn closed_total(h: &Hawser, reason: &str) -> u64 {
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("metrics");
    let line = format!("hawser_client_connections_closed_total{{reason=\"{reason}\"}} ");
    r.body.lines().find_map(|l| l.strip_prefix(&line)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn silent_slow_and_idle_clients_are_closed_at_their_deadlines() {
    let e = edge("edge-deadlines", "");
    let limit = Duration::from_secs(5);
    let header_before = closed_total(&e.h, "header_timeout");
    let idle_before = closed_total(&e.h, "keepalive_timeout");

    // Sends nothing at all.
    let mut silent = TcpStream::connect(e.h.addr).unwrap();
    // Half a request head, then nothing (slowloris).
    let mut half = TcpStream::connect(e.h.addr).unwrap();
    half.write_all(b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX-A: ").unwrap();
    // A byte every 200 ms: each read is quick, the head never completes.
    let mut trickle = TcpStream::connect(e.h.addr).unwrap();
    let trickler = {
        let mut t = trickle.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if t.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // One request, then idle on the kept-alive connection.
    let mut idle = TcpStream::connect(e.h.addr).unwrap();
    idle.write_all(b"GET /api/x HTTP/1.1\r\nHost: edge.test\r\n\r\n").unwrap();

    for (name, s) in [("silent", &mut silent), ("half head", &mut half), ("trickle", &mut trickle), ("idle keep-alive", &mut idle)] {
        let took = time_to_close(s, limit);
        eprintln!("{name}: closed after {took:?}");
    }
    trickler.join().unwrap();
    assert!(closed_total(&e.h, "header_timeout") >= header_before + 3);
    assert!(closed_total(&e.h, "keepalive_timeout") > idle_before);
    // hawser still serves.
    assert_eq!(get(e.h.addr, "edge.test", "/api/after").unwrap().status, 200);
}

#[test]
fn a_stalled_request_body_is_dropped() {
    let e = edge("edge-body-stall", "");
    let mut s = TcpStream::connect(e.h.addr).unwrap();
    s.write_all(b"POST /api/upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 100\r\n\r\nonly part of it").unwrap();
    time_to_close(&mut s, Duration::from_secs(5));
    assert!(e.api.app_requests().iter().all(|r| r.target != "/api/upload"), "a partial body must not become a request");
}

#[test]
fn beyond_max_connections_new_connections_are_closed_and_old_ones_work() {
    let e = edge("edge-cap", "  max_connections: 3\n");
    let _ = &e.env;
    // Wait until the readiness polls' connections are gone.
    wait_until("no client connections", SECS_5, || {
        let r = admin_request(e.h.admin, "GET", "/metrics", None).ok()?;
        r.body.lines().any(|l| l == "hawser_client_connections 0").then_some(())
    });
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(e.h.addr).unwrap();
            s.write_all(b"GET /api/held HTTP/1.1\r\nHost: edge.test\r\n").unwrap();
            s
        })
        .collect();
    wait_until("three held connections", SECS_5, || {
        let r = admin_request(e.h.admin, "GET", "/metrics", None).ok()?;
        r.body.lines().any(|l| l == "hawser_client_connections 3").then_some(())
    });
    let mut extra = TcpStream::connect(e.h.addr).unwrap();
    let _ = extra.write_all(b"GET /api/extra HTTP/1.1\r\nHost: edge.test\r\n\r\n");
    let took = time_to_close(&mut extra, Duration::from_secs(5));
    assert!(took < Duration::from_millis(500), "the fourth connection was closed after {took:?}");
    assert!(closed_total(&e.h, "over_limit") >= 1);
    // The held ones finish their requests normally.
    for s in &mut held {
        s.write_all(b"Connection: close\r\n\r\n").unwrap();
        let mut got = Vec::new();
        s.set_read_timeout(Some(SECS_5)).unwrap();
        s.read_to_end(&mut got).unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&got));
    }
    assert!(e.api.app_requests().iter().all(|r| r.target != "/api/extra"));
}

#[test]
fn expect_100_continue_is_honoured() {
    let e = edge("edge-expect", "");
    let mut s = TcpStream::connect(e.h.addr).unwrap();
    s.set_read_timeout(Some(SECS_5)).unwrap();
    s.write_all(b"POST /api/upload HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).expect("an interim 100 Continue before the body is sent");
    assert!(buf[..n].starts_with(b"HTTP/1.1 100"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    s.write_all(b"hello").unwrap();
    let mut rest = buf[..n].to_vec();
    let mut more = Vec::new();
    let _ = s.read_to_end(&mut more);
    rest.extend(more);
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    let got = e.api.app_requests().into_iter().find(|r| r.target == "/api/upload").expect("the upload reached the backend");
    assert_eq!(got.body, b"hello");
}

#[test]
fn request_bodies_over_a_services_limit_get_413() {
    let env_cfg = "proxy:\n  max_body_size: 10\n";
    let e = edge("edge-413", env_cfg);
    let ok = exchange(e.h.addr, b"POST /api/small HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789", SECS_5);
    assert_eq!(responses(&ok).first().map(|a| a.0), Some(200), "{:?}", String::from_utf8_lossy(&ok));
    let big = exchange(e.h.addr, b"POST /api/big HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 11\r\n\r\n01234567890", SECS_5);
    assert_eq!(responses(&big).first().map(|a| a.0), Some(413), "{:?}", String::from_utf8_lossy(&big));
    let chunked = exchange(
        e.h.addr,
        b"POST /api/chunked HTTP/1.1\r\nHost: edge.test\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n678901\r\n0\r\n\r\n",
        SECS_5,
    );
    let first = responses(&chunked).first().map(|a| a.0);
    assert!(first == Some(413) || first.is_none(), "{:?}", String::from_utf8_lossy(&chunked));
    let targets: Vec<String> = e.api.app_requests().iter().map(|r| r.target.clone()).collect();
    assert!(targets.contains(&"/api/small".to_string()), "{targets:?}");
    assert!(!targets.contains(&"/api/big".to_string()) && !targets.contains(&"/api/chunked".to_string()), "{targets:?}");
}

#[test]
fn out_of_descriptors_the_open_connections_are_still_served() {
    let e = edge("edge-emfile", "  max_connections: 100000\n");
    // A kept-alive client whose backend connection is pooled: it needs no new descriptor.
    let mut kept = HttpConn::connect(e.h.addr).unwrap();
    assert_eq!(kept.get("edge.test", "/api/before").unwrap().status, 200);
    assert_eq!(kept.get("edge.test", "/api/before2").unwrap().status, 200);
    // Leave hawser a few descriptors only, then take them with connections that stall.
    let pid = e.h.pid();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let limit = open_fds + 8;
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:{limit}")])
        .output()
        .expect("run prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    let stalled: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(e.h.addr).unwrap();
            let _ = s.write_all(b"GET /api/x HTTP/1.1\r\n");
            s
        })
        .collect();
    wait_until("hawser to run out of descriptors", SECS_5, || {
        let n = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        (n >= limit).then_some(())
    });
    // Out of descriptors indeed: a new connection waits in the kernel's backlog, unaccepted.
    let mut probe = TcpStream::connect(e.h.addr).unwrap();
    probe.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    probe.write_all(b"GET /api/probe HTTP/1.1\r\nHost: edge.test\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert!(probe.read(&mut buf).is_err(), "a new connection was served: hawser was not out of descriptors");
    // The connection it has is served as before.
    for i in 0..5 {
        let r = kept.get("edge.test", &format!("/api/during{i}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    drop(stalled);
    drop(probe);
    // Once descriptors are free again, new connections are accepted.
    wait_response("new connections after the stalled ones left", e.h.addr, "edge.test", "/api/after", Duration::from_secs(10), |r| {
        r.status == 200
    });
}

#[test]
fn an_idle_http2_connection_is_closed_at_the_keepalive_timeout() {
    let e = edge("edge-h2-idle", "");
    let mut s = TcpStream::connect(e.h.addr).unwrap();
    // The HTTP/2 preface and an empty SETTINGS frame (length 0, type 4, no flags, stream 0):
    // a client that connects with prior knowledge and then opens no stream.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    let took = time_to_close(&mut s, Duration::from_secs(8));
    // keepalive_timeout is 1 s here; the 60 s header timeout must not be what closes it.
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "closed after {took:?}");
}

/// hawser's verdict on container `name` from `/api/containers`, once it has one.
fn verdict(h: &Hawser, name: &str) -> serde_json::Value {
    wait_until(&format!("a verdict on {name}"), SECS_10, || {
        let r = admin_request(h.admin, "GET", "/api/containers", None).ok()?;
        let all: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        all.as_array()?.iter().find(|c| c["container_name"] == name).cloned()
    })
}

#[test]
fn a_control_character_in_a_label_or_a_route_to_hawser_itself_is_refused_with_its_reason() {
    let env = TestEnv::new("edge-labels");
    let h = env.hawser(&format!("{}{CLIENT_LIMITS}", env.default_config()));
    // CR LF in a label value would reach the health probe's request line.
    let crlf = env.run(
        ContainerSpec::new("crlf")
            .hawser("enable", "true")
            .hawser("host", "crlf.test")
            .hawser("healthcheck.path", "/healthz\r\nX-Injected: 1"),
    );
    // A host-network container whose port is hawser's own listener: a loop.
    let own = env.run(
        ContainerSpec::new("own")
            .network("host")
            .hawser("enable", "true")
            .hawser("host", "own.test")
            .hawser("port", &h.addr.port().to_string())
            .env("BIND", "127.0.0.1")
            .env("PORTS", &free_port().to_string()),
    );
    let good = env.run(ContainerSpec::new("good").hawser("enable", "true").hawser("host", "good.test"));
    env.wait_routed(&h, "good.test", "/", &good, SECS_10);

    let v = verdict(&h, &crlf.name);
    assert_eq!(v["routed"], false, "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("healthcheck.path") && reason.contains("control character"), "{v}");
    let v = verdict(&h, &own.name);
    assert_eq!(v["routed"], false, "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&h.addr.to_string()), "the reason names the listener: {v}");
    for host in ["crlf.test", "own.test"] {
        assert_eq!(get(h.addr, host, "/").unwrap().status, 404, "{host} must not be routed");
    }
    // The others are untouched.
    assert_eq!(get(h.addr, "good.test", "/").unwrap().status, 200);
}
