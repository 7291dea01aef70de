//! Hostile request paths, Hosts and forwarding headers against a real hawser and real
//! backends (issue 10): what routing decides, what the backend receives, and hawser's 400s.
//! Requests are written raw on a `TcpStream`, so that nothing on the client side tidies them.

mod common;

use common::recorder::{Recorder, careless_resolution};
use common::*;

/// One raw request on a fresh connection: the status line, the headers (names lower-cased),
/// the body, and whether hawser closed the connection after the answer.
struct Raw {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
    closed: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn code(&self) -> u16 {
        self.status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }
}

fn raw(h: &Hawser, request: &str) -> Raw {
    // Reads until hawser closes: a connection it keeps open ends in the read timeout instead.
    let (bytes, ended) = http_raw(h.addr, request.as_bytes(), SECS_5);
    let Some((status, headers, body)) = split_raw(&bytes) else {
        panic!("no HTTP answer to {request:?} ({ended:?}); got {:?}\nhawser log:\n{}", String::from_utf8_lossy(&bytes), h.log());
    };
    Raw { status, headers, body: String::from_utf8_lossy(&body).into_owned(), closed: ended.is_none() }
}

fn get_raw(h: &Hawser, host: &str, target: &str) -> Raw {
    raw(h, &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"))
}

/// Asserts hawser's own 400: its text naming the problem, and the connection closed.
fn assert_bad_request(r: &Raw, what: &str, mentions: &str) {
    assert_eq!(r.code(), 400, "{what}: {} {}", r.status, r.body);
    assert!(r.body.starts_with("hawser: bad request: "), "{what}: not hawser's 400: {:?}", r.body);
    assert!(r.body.contains(mentions), "{what}: the 400 should mention {mentions:?}: {:?}", r.body);
    assert_eq!(r.header("connection"), Some("close"), "{what}: {:?}", r.headers);
    assert!(r.closed, "{what}: hawser kept reading from a client that sent garbage");
}

/// hawser's 4xx count for requests it answered itself (service "").
fn unrouted_4xx(h: &Hawser) -> u64 {
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("admin /metrics");
    let series = "hawser_requests_total{class=\"4xx\",service=\"\"} ";
    r.body.lines().find_map(|l| l.strip_prefix(series)).map_or(0, |v| v.trim().parse().unwrap_or(0))
}

#[test]
fn dot_segments_never_take_a_request_out_of_its_prefix_route() {
    let env = TestEnv::new("edge-dots");
    let root = web(&env, "root", "p.test", "root");
    let rec = Recorder::start("recorder");
    let port = rec.port().to_string();
    let unused = free_port().to_string();
    let _api = env.run(
        ContainerSpec::new("api")
            .network("host")
            .env("BIND", "127.0.0.1")
            .env("PORTS", &unused)
            .hawser("enable", "true")
            .hawser("host", "p.test")
            .hawser("path", "/api")
            .hawser("service", "api")
            .hawser("port", &port),
    );
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "p.test", "/", &root, SECS_10);
    wait_response("/api routed to the recorder", h.addr, "p.test", "/api/ready", SECS_10, |r| {
        r.backend() == Some("recorder")
    });

    // Dot-segments, plain or escaped, resolve before routing: these are the root's requests.
    for target in ["/api/../secret", "/api/%2e%2e/secret", "/api/.%2e/secret", "/api/./../secret", "/api/%2E%2E/%2e%2e/secret"] {
        let r = get_raw(&h, "p.test", target);
        assert_eq!((r.code(), r.header("x-backend")), (200, Some(root.name.as_str())), "{target}: {}", r.body);
    }
    // What the root's backend got is the normalised path, with the query as sent.
    let r = get_raw(&h, "p.test", "/api/%2e%2e//headers?x=%2e%2e/y");
    assert_eq!(r.code(), 200, "{}", r.body);
    assert!(r.body.starts_with("GET /headers?x=%2e%2e/y HTTP/1.1\n"), "the backend got:\n{}", r.body);

    // Requests that stay under /api reach it normalised.
    for (target, want) in [
        ("/api/x/../v1", "/api/v1"),
        ("/%61pi//v1/./", "/api/v1/"),
        ("/other/../api/v1?q=..%2F", "/api/v1?q=..%2F"),
        ("/api/group%2fproject", "/api/group%2Fproject"),
    ] {
        let r = get_raw(&h, "p.test", target);
        assert_eq!((r.code(), r.header("x-backend")), (200, Some("recorder")), "{target}: {}", r.body);
        let last = rec.targets().pop();
        assert_eq!(last.as_deref(), Some(want), "{target}");
    }

    // Dot-segments that only a backend decoding %2F, %5C or '\' would see: 400, and no backend
    // hears of them.
    let before = rec.targets().len();
    let refused_before = unrouted_4xx(&h);
    for (target, mentions) in [
        ("/api/..%2Fsecret", "..%2Fsecret"),
        ("/api/..%2fsecret", "..%2fsecret"),
        ("/api/..%5Csecret", "..%5Csecret"),
        ("/api/..\\secret", "..\\\\secret"),
        ("/api/.%2e%2Fsecret", ".%2e%2Fsecret"),
        ("/api/..;/secret", "..;"),
        ("/api/%zz", "%zz"),
        ("/api/%00", "%00"),
    ] {
        assert_bad_request(&get_raw(&h, "p.test", target), target, mentions);
    }
    assert_eq!(rec.targets().len(), before, "a refused request reached the /api backend: {:?}", rec.targets());
    assert_eq!(unrouted_4xx(&h), refused_before + 8, "hawser's 400s are counted as its own answers");

    // Every path the /api backend ever got resolves under /api even to a careless backend.
    let targets = rec.targets();
    assert!(targets.len() >= 5, "{targets:?}");
    for t in &targets {
        let resolved = careless_resolution(t);
        assert!(resolved == "/api" || resolved.starts_with("/api/"), "the /api backend got {t:?}, which resolves to {resolved:?}");
    }
}

#[test]
fn hosts_are_parsed_before_routing() {
    let env = TestEnv::new("edge-hosts");
    let wild = web(&env, "wild", "*.wild.example", "wild");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "x.wild.example", "/", &wild, SECS_10);
    let count = direct_count(&wild);

    let r = get_raw(&h, "evil.example/x.wild.example", "/");
    assert_bad_request(&r, "a '/' in Host", "'/'");
    assert!(r.body.contains("evil.example/x.wild.example"), "the 400 should quote the Host: {}", r.body);
    assert_bad_request(
        &raw(&h, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"),
        "HTTP/1.1 without Host",
        "needs a Host header",
    );
    assert_bad_request(&get_raw(&h, "", "/"), "an empty Host", "empty");
    assert_bad_request(&get_raw(&h, "a.wild.example:99999", "/"), "a port out of range", "99999");
    assert_bad_request(&get_raw(&h, "a..wild.example", "/"), "an empty label", "empty label");
    // Two Host headers: refused before hawser's own checks (by pingora), but refused.
    let r = raw(&h, "GET / HTTP/1.1\r\nHost: a.wild.example\r\nHost: b.wild.example\r\nConnection: close\r\n\r\n");
    assert_eq!(r.code(), 400, "two Host headers: {} {}", r.status, r.body);
    assert_eq!(direct_count(&wild), count, "a refused request reached the *.wild.example backend");

    // HTTP/1.0 may name no host: only host-less routes could answer, and there is none. (The
    // header makes the request longer than the HTTP/2 preface that the h2c detection waits for.)
    let r = raw(&h, "GET / HTTP/1.0\r\nUser-Agent: edge-paths-test\r\n\r\n");
    assert_eq!(r.code(), 404, "{}", r.body);

    // Case, port and a trailing dot do not matter; X-Forwarded-Host is the host as routed.
    let r = get_raw(&h, "A.Wild.Example.:8080", "/headers");
    assert_eq!(r.code(), 200, "{}", r.body);
    let head = r.body.to_ascii_lowercase();
    assert!(head.lines().any(|l| l == "x-forwarded-host: a.wild.example"), "{}", r.body);

    // An absolute-form target: its authority routes, and the backend gets origin-form.
    let r = raw(&h, "GET http://a.wild.example/headers?q=1 HTTP/1.1\r\nHost: a.wild.example\r\nConnection: close\r\n\r\n");
    assert_eq!((r.code(), r.header("x-backend")), (200, Some(wild.name.as_str())), "{}", r.body);
    assert!(r.body.starts_with("GET /headers?q=1 HTTP/1.1\n"), "the backend got:\n{}", r.body);
    assert_eq!(direct_count(&wild), count + 2);
}

/// The header lines a `/headers` answer echoes, lower-cased.
fn echoed(r: &Raw) -> Vec<String> {
    r.body.lines().skip(1).map(str::to_ascii_lowercase).collect()
}

const CLAIMS: &str = "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\n\
                      X-Forwarded-Host: evil.test\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Prefix: /admin\r\n";

/// What a backend behind hawser (with `extra_config`) received for a request that carries
/// [`CLAIMS`], one header line per entry, and the port the client connected to.
fn forwarded_claims(name: &str, extra_config: &str) -> (Raw, Vec<String>, String) {
    let env = TestEnv::new(name);
    let c = web(&env, "echo", "fwd.test", "fwd");
    let h = env.hawser(&format!("{}{extra_config}", env.default_config()));
    env.wait_routed(&h, "fwd.test", "/", &c, SECS_10);
    let r = raw(&h, &format!("GET /headers HTTP/1.1\r\nHost: fwd.test\r\n{CLAIMS}Connection: close\r\n\r\n"));
    assert_eq!(r.code(), 200, "{}", r.body);
    let lines = echoed(&r);
    (r, lines, h.addr.port().to_string())
}

#[test]
fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let (r, lines, port) = forwarded_claims("edge-xff", "");
    for want in [
        "x-forwarded-for: 127.0.0.1",
        "x-real-ip: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: fwd.test",
        &format!("x-forwarded-port: {port}"),
        "forwarded: for=127.0.0.1;proto=http;host=fwd.test",
    ] {
        assert_eq!(lines.iter().filter(|l| *l == want).count(), 1, "{want:?} once in what the backend got:\n{}", r.body);
    }
    for claim in ["6.6.6.6", "evil.test", "x-forwarded-prefix", "https"] {
        assert!(!lines.iter().any(|l| l.contains(claim)), "the client's {claim:?} reached the backend:\n{}", r.body);
    }
}

#[test]
fn a_trusted_proxy_is_appended_to() {
    let (r, lines, port) = forwarded_claims("edge-xff-trusted", "clients:\n  trusted_proxies: [\"127.0.0.1/32\"]\n");
    for want in [
        "x-forwarded-for: 6.6.6.6, 127.0.0.1",
        "x-real-ip: 6.6.6.6",
        "x-forwarded-proto: https",
        "x-forwarded-host: evil.test",
        "x-forwarded-prefix: /admin",
        // hawser's hop is appended to both chains, so they name the same hops.
        "forwarded: for=6.6.6.6;proto=https, for=127.0.0.1;proto=http;host=fwd.test",
        &format!("x-forwarded-port: {port}"),
    ] {
        assert_eq!(lines.iter().filter(|l| *l == want).count(), 1, "{want:?} once in what the backend got:\n{}", r.body);
    }
}
