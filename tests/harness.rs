//! Tests of the test harness itself (tests/common) and of the backend
//! (tests/support/backend.rs). They need Docker but not hawser.

mod common;

use common::*;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn backend_container_answers_with_its_name() {
    let env = TestEnv::new("backend_answers_name");
    let b = env.run(
        ContainerSpec::new("b1")
            .hawser("enable", "true")
            .label("other", "x"),
    );
    let addr = b.wait_http(80);
    let r = get(addr, "whatever.test", "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b.name);
    assert_eq!(r.backend(), Some(b.name.as_str()));
    assert_eq!(
        r.header("content-length"),
        Some(b.name.len().to_string().as_str())
    );
    // Labels: per-test id, the env's hawser prefix, raw labels.
    let key = env.label("enable");
    assert!(key.starts_with('h') && key.ends_with(".enable"), "{key}");
    assert_eq!(
        b.inspect(&format!("{{{{index .Config.Labels \"{key}\"}}}}")),
        "true"
    );
    assert_eq!(b.inspect("{{index .Config.Labels \"other\"}}"), "x");
    assert_eq!(
        b.inspect("{{index .Config.Labels \"hawser-test\"}}"),
        env.id
    );
    // Another env gets another prefix.
    let env2 = TestEnv::new("backend_answers_name");
    assert_ne!(env.prefix, env2.prefix);
    assert_ne!(env.id, env2.id);
}

#[test]
fn image_variants() {
    let exposed = |tag: &str| {
        docker(&[
            "image",
            "inspect",
            "-f",
            "{{json .Config.ExposedPorts}}",
            tag,
        ])
    };
    assert_eq!(exposed(&backend_image()), r#"{"80/tcp":{}}"#);
    assert_eq!(exposed(&backend_image_with("noexpose", "")), "null");
    let hc = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}}",
        &backend_health_image(),
    ]);
    assert_eq!(hc, r#"["CMD","/backend","check"]"#);
    for tag in [backend_image(), backend_health_image()] {
        assert_eq!(
            docker(&[
                "image",
                "inspect",
                "-f",
                "{{index .Config.Labels \"hawser-test\"}}",
                &tag
            ]),
            "1"
        );
    }
    // --expose adds ports at run time.
    let env = TestEnv::new("image_variants");
    let c = env.run(ContainerSpec::new("b").expose(8080));
    let ports = c.inspect("{{json .Config.ExposedPorts}}");
    assert!(
        ports.contains("80/tcp") && ports.contains("8080/tcp"),
        "{ports}"
    );
}

#[test]
fn count_counts_application_requests_only() {
    let env = TestEnv::new("count_counts");
    let b = env.run(ContainerSpec::new("b1"));
    let addr = b.wait_http(80); // probes /healthz, which is not counted
    for path in ["/", "/a", "/headers"] {
        assert_eq!(get(addr, "h", path).unwrap().status, 200);
    }
    get(addr, "h", "/healthz").unwrap();
    get(addr, "h", "/_ctl/healthy").unwrap();
    assert_eq!(get(addr, "h", "/count").unwrap().body, "3");
    assert_eq!(get(addr, "h", "/count").unwrap().body, "3");
    assert_eq!(get(addr, "h", "/status/404").unwrap().status, 404);
    assert_eq!(get(addr, "h", "/count").unwrap().body, "4");
}

#[test]
fn keep_alive_serves_two_requests_on_one_connection() {
    let env = TestEnv::new("keep_alive");
    let b = env.run(ContainerSpec::new("b1"));
    let addr = b.wait_http(80);
    let mut c = HttpConn::connect(addr).unwrap();
    let r1 = c.get("h", "/one").unwrap();
    let r2 = c.get("h", "/two").unwrap();
    assert_eq!((r1.status, r2.status), (200, 200));
    assert_eq!(r2.body, b.name);
    assert!(
        !c.peer_closed(Duration::from_millis(100)),
        "server closed a keep-alive connection"
    );
    // Connection: close is honoured.
    let r3 = c
        .request("GET", "h", "/three", &[("Connection", "close")], b"")
        .unwrap();
    assert_eq!(r3.header("connection"), Some("close"));
    assert!(c.peer_closed(SECS_5));
    // HTTP/1.0 defaults to close.
    let mut c = HttpConn::connect(addr).unwrap();
    c.send_raw(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(c.read_response("GET").unwrap().status, 200);
    assert!(c.peer_closed(SECS_5));
    assert_eq!(get(addr, "h", "/count").unwrap().body, "4");
}

#[test]
fn healthz_toggles_via_ctl() {
    let env = TestEnv::new("healthz_toggles");
    let b = env.run(ContainerSpec::new("b1"));
    let addr = b.wait_http(80);
    assert_eq!(get(addr, "h", "/healthz").unwrap().status, 200);
    assert_eq!(get(addr, "h", "/_ctl/unhealthy").unwrap().status, 200);
    let r = get(addr, "h", "/healthz").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.backend(), Some(b.name.as_str()));
    // Other paths keep working.
    assert_eq!(get(addr, "h", "/").unwrap().status, 200);
    get(addr, "h", "/_ctl/healthy").unwrap();
    assert_eq!(get(addr, "h", "/healthz").unwrap().body, "ok");
}

#[test]
fn sigterm_makes_backend_exit_promptly() {
    let env = TestEnv::new("sigterm_exit");
    let b = env.run(ContainerSpec::new("b1"));
    b.wait_http(80);
    let t = Instant::now();
    b.stop(10);
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "docker stop -t 10 took {took:?}: SIGTERM not handled"
    );
    assert_eq!(b.wait_exited(SECS_10), 0);
}

#[test]
fn sigterm_delay_keeps_serving_then_exits() {
    let env = TestEnv::new("sigterm_delay");
    let b = env.run(ContainerSpec::new("b1").env("SIGTERM_DELAY_MS", "3000"));
    let addr = b.wait_http(80);
    b.kill("TERM");
    let r = get(addr, "h", "/").unwrap();
    assert_eq!(r.status, 200, "backend stopped serving right after SIGTERM");
    assert!(b.is_running());
    assert_eq!(b.wait_exited(SECS_10), 0);
}

#[test]
fn healthcheck_reports_healthy_and_unhealthy() {
    let env = TestEnv::new("healthcheck");
    let b = env.run(ContainerSpec::new("b1").healthcheck(80, "/healthz", 200));
    b.wait_health("healthy", SECS_10);
    let addr = b.addr(80);
    get(addr, "h", "/_ctl/unhealthy").unwrap();
    b.wait_health("unhealthy", SECS_10);
    get(addr, "h", "/_ctl/healthy").unwrap();
    b.wait_health("healthy", SECS_10);
    // A container without .healthcheck() has no health status.
    let plain = env.run(ContainerSpec::new("b2"));
    assert_eq!(plain.health(), "");
}

#[test]
fn ports_publish_and_listen_delay() {
    let env = TestEnv::new("ports_publish");
    let b = env.run(
        ContainerSpec::new("b1")
            .env("PORTS", "80,8080")
            .env("NAME", "custom-name")
            .env("LISTEN_DELAY_MS", "300")
            .publish(8080),
    );
    let host_addr = b.published_addr(8080);
    assert_eq!(host_addr.ip().to_string(), "127.0.0.1");
    let r = wait_response("published port", host_addr, "h", "/", SECS_10, |r| {
        r.status == 200
    });
    assert_eq!(r.backend(), Some("custom-name"));
    assert_eq!(get(b.addr(80), "h", "/").unwrap().body, "custom-name");
}

#[test]
fn container_lifecycle_helpers() {
    let env = TestEnv::new("lifecycle");
    let net2 = env.extra_network("second");
    let b = env.run(ContainerSpec::new("b1").create_only());
    assert!(!b.is_running());
    b.start();
    b.wait_http(80);
    b.connect(&net2);
    let ip2 = b.ip(&net2);
    assert_ne!(ip2, b.ip_default());
    let addr2: SocketAddr = format!("{ip2}:80").parse().unwrap();
    assert_eq!(get(addr2, "h", "/").unwrap().status, 200);
    b.disconnect(&net2);
    assert_eq!(
        b.inspect(&format!(
            "{{{{with index .NetworkSettings.Networks \"{net2}\"}}}}yes{{{{end}}}}"
        )),
        ""
    );
    b.pause();
    assert_eq!(b.inspect("{{.State.Status}}"), "paused");
    b.unpause();
    assert_eq!(get(b.addr(80), "h", "/").unwrap().status, 200);
    b.rm();
    assert!(docker_ok(&["inspect", &b.id]).is_err());
}

#[test]
fn dropping_env_removes_its_containers_and_networks() {
    let (id, filter) = {
        let env = TestEnv::new("drop_cleans");
        env.run(ContainerSpec::new("running"));
        env.run(ContainerSpec::new("created").create_only());
        let extra = env.extra_network("x");
        let c = env.run(ContainerSpec::new("multi"));
        c.connect(&extra);
        let filter = format!("label=hawser-test={}", env.id);
        assert_eq!(
            docker(&["ps", "-aq", "--filter", &filter]).lines().count(),
            3
        );
        assert_eq!(
            docker(&["network", "ls", "-q", "--filter", &filter])
                .lines()
                .count(),
            2
        );
        (env.id.clone(), filter)
    };
    assert_eq!(
        docker(&["ps", "-aq", "--filter", &filter]),
        "",
        "containers of {id} left behind"
    );
    assert_eq!(
        docker(&["network", "ls", "-q", "--filter", &filter]),
        "",
        "networks of {id} left behind"
    );
}

#[test]
fn dropping_env_while_panicking_cleans_up() {
    let id = std::sync::Mutex::new(String::new());
    let res = std::panic::catch_unwind(|| {
        let env = TestEnv::new("panic_cleans");
        env.run(ContainerSpec::new("b1"));
        *id.lock().unwrap() = env.id.clone();
        panic!("deliberate panic to exercise cleanup");
    });
    assert!(res.is_err());
    let filter = format!("label=hawser-test={}", id.lock().unwrap());
    assert_eq!(docker(&["ps", "-aq", "--filter", &filter]), "");
    assert_eq!(docker(&["network", "ls", "-q", "--filter", &filter]), "");
}

/// The backend binary run directly on the host (loopback only), for protocol details.
struct HostBackend {
    child: Child,
    addr: SocketAddr,
}

impl HostBackend {
    fn start(name: &str) -> HostBackend {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(backend_binary())
            .env("BIND", "127.0.0.1")
            .env("PORTS", port.to_string())
            .env("NAME", name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let hb = HostBackend { child, addr };
        wait_until("host backend to listen", SECS_10, || {
            get(addr, "h", "/healthz").ok()
        });
        hb
    }
}

impl Drop for HostBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn backend_protocol_details() {
    let hb = HostBackend::start("hostb");
    let addr = hb.addr;
    // /headers echoes the request head.
    let r = http(
        addr,
        "GET",
        "example.test",
        "/headers?q=1",
        &[("X-Custom", "v 1")],
        b"",
    )
    .unwrap();
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines[0], "GET /headers?q=1 HTTP/1.1");
    assert!(lines.contains(&"Host: example.test"), "{lines:?}");
    assert!(lines.contains(&"X-Custom: v 1"), "{lines:?}");
    // /status/NNN
    let r = get(addr, "h", "/status/503").unwrap();
    assert_eq!(
        (r.status, r.body.as_str(), r.backend()),
        (503, "hostb", Some("hostb"))
    );
    assert_eq!(get(addr, "h", "/status/204").unwrap().status, 204);
    assert_eq!(get(addr, "h", "/status/99").unwrap().status, 400);
    // /slow
    let t = Instant::now();
    assert_eq!(get(addr, "h", "/slow?ms=200").unwrap().body, "hostb");
    assert!(t.elapsed() >= Duration::from_millis(200));
    // /echo with Content-Length and chunked bodies; HEAD.
    let big: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r = http(addr, "POST", "h", "/echo", &[], &big).unwrap();
    assert_eq!(r.body.as_bytes(), &big[..]);
    let chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
    let r = http(
        addr,
        "POST",
        "h",
        "/echo",
        &[("Transfer-Encoding", "chunked")],
        chunked,
    )
    .unwrap();
    assert_eq!(r.body, "hello world");
    let r = http(addr, "HEAD", "h", "/", &[], b"").unwrap();
    assert_eq!(
        (r.status, r.body.as_str(), r.header("content-length")),
        (200, "", Some("5"))
    );
    // Pipelined requests with bodies on one connection.
    let mut c = HttpConn::connect(addr).unwrap();
    c.send_raw(
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /x HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.read_response("POST").unwrap().body, "abc");
    assert_eq!(c.read_response("GET").unwrap().body, "hostb");
    // Expect: 100-continue gets an interim response (skipped by the client).
    let r = http(
        addr,
        "PUT",
        "h",
        "/echo",
        &[("Expect", "100-continue")],
        b"body",
    )
    .unwrap();
    assert_eq!(r.body, "body");
    // Garbage gets a 400 and a close.
    let mut c = HttpConn::connect(addr).unwrap();
    c.send_raw(b"NONSENSE\r\n\r\n").unwrap();
    assert_eq!(c.read_response("GET").unwrap().status, 400);
    assert!(c.peer_closed(SECS_5));
}

#[test]
fn backend_check_client_mode() {
    let hb = HostBackend::start("checked");
    let port = hb.addr.port().to_string();
    let check = |path: &str| {
        Command::new(backend_binary())
            .args(["check", &port, path])
            .stdin(Stdio::null())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(check("/healthz"), Some(0));
    assert_eq!(check("status/500"), Some(1));
    get(hb.addr, "h", "/_ctl/unhealthy").unwrap();
    assert_eq!(check("/healthz"), Some(1));
    drop(hb);
    // Nothing listens any more: connection refused means failure, promptly.
    let t = Instant::now();
    assert_eq!(check("/healthz"), Some(1));
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn backend_hangup_partial_and_fail() {
    let env = TestEnv::new("backend_faults");
    let b = env.run(ContainerSpec::new("b1"));
    let addr = b.wait_http(80);
    let t = Duration::from_secs(5);

    // /hangup reads the whole request (Content-Length body), counts it, and closes without
    // writing a single byte: a clean EOF, not a reset (the body was read).
    let (got, end) = http_raw(
        addr,
        b"POST /hangup HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world",
        t,
    );
    assert!(
        got.is_empty(),
        "/hangup wrote {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        end.is_none(),
        "/hangup: reading ended with {end:?}, not a clean EOF"
    );
    assert_eq!(direct_count(&b), 1);
    // Chunked body, and Expect: 100-continue gets no interim response either.
    let (got, end) = http_raw(
        addr,
        b"PUT /hangup HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        t,
    );
    assert!(
        got.is_empty(),
        "/hangup (chunked) wrote {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(end.is_none(), "/hangup (chunked): {end:?}");
    // The harness client sees "connection closed before a response".
    let e = get(addr, "h", "/hangup").expect_err("/hangup must not answer");
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(direct_count(&b), 3);

    // /partial: a 200 head announcing 1000 bytes, 10 of them, then the close.
    let (got, end) = http_raw(addr, b"GET /partial HTTP/1.1\r\nHost: h\r\n\r\n", t);
    let (status, headers, body) = split_raw(&got).expect("a response head");
    assert_eq!(
        status,
        "HTTP/1.1 200 OK",
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        headers.contains(&("content-length".into(), "1000".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("x-backend".into(), b.name.clone())),
        "{headers:?}"
    );
    assert_eq!(body, b"0123456789");
    assert!(end.is_none(), "/partial: {end:?}");
    let e = get(addr, "h", "/partial").expect_err("a short body is an error for the client");
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    assert_eq!(direct_count(&b), 5);

    // /_ctl/fail: every application request answers 502 (body NAME, X-Backend) instead of
    // its normal answer; /healthz and /count are not affected and /_ctl/* is not counted.
    assert_eq!(direct(&b, "/_ctl/fail").body, "failing");
    for path in [
        "/",
        "/slow?ms=5000",
        "/echo",
        "/status/200",
        "/hangup",
        "/partial",
    ] {
        let r = get(addr, "h", path).unwrap_or_else(|e| panic!("{path} while failing: {e}"));
        assert_eq!(
            (r.status, r.body.as_str(), r.backend()),
            (502, b.name.as_str(), Some(b.name.as_str())),
            "{path} while failing"
        );
    }
    let r = http(addr, "POST", "h", "/echo", &[], b"abc").unwrap();
    assert_eq!((r.status, r.body.as_str()), (502, b.name.as_str()));
    assert_eq!(get(addr, "h", "/healthz").unwrap().status, 200);
    assert_eq!(direct_count(&b), 12);
    // Another status, a bad one, then back to normal.
    direct(&b, "/_ctl/fail?status=503");
    assert_eq!(get(addr, "h", "/").unwrap().status, 503);
    assert_eq!(get(addr, "h", "/_ctl/fail?status=99").unwrap().status, 400);
    assert_eq!(get(addr, "h", "/").unwrap().status, 503);
    // Failing and unhealthy are independent.
    direct(&b, "/_ctl/unhealthy");
    assert_eq!(get(addr, "h", "/healthz").unwrap().status, 503);
    direct(&b, "/_ctl/healthy");
    assert_eq!(direct(&b, "/_ctl/ok").body, "ok");
    let r = get(addr, "h", "/x").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, b.name.as_str()));
    assert_eq!(get(addr, "h", "/healthz").unwrap().status, 200);
    // Keep-alive: the failing answer keeps the connection usable.
    direct(&b, "/_ctl/fail");
    let mut c = HttpConn::connect(addr).unwrap();
    assert_eq!(c.get("h", "/a").unwrap().status, 502);
    direct(&b, "/_ctl/ok");
    assert_eq!(c.get("h", "/b").unwrap().status, 200);
    assert_eq!(direct_count(&b), 17);
}
