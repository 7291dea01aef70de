//! gRPC end to end: a real client (Python grpcio, `tests/support/grpc_calls.py`) over h2c to
//! hawser, and hawser over HTTP/2 to the gRPC test backend (`tests/support/grpc-backend`, an
//! `h2` server in a `FROM scratch` image) with `hawser.scheme=h2c` — or `h2`, over TLS.
//!
//! - every kind of call (unary, server stream, client stream, bidi in lock step), a 3 MiB
//!   message each way, the backend's own status and message, 300 calls at once;
//! - `grpc-timeout`: a deadline longer than `read_timeout` wins over it; one that passes
//!   before the backend answers gets hawser's DEADLINE_EXCEEDED soon after it, the call is
//!   cancelled toward the backend, and nobody is ejected for it;
//! - `hawser.healthcheck.type=grpc`: the standard `grpc.health.v1.Health/Check`, NOT_SERVING
//!   takes a backend out of rotation and SERVING brings it back; a gRPC check of a backend
//!   spoken to in HTTP/1.1 is refused with the reason.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::grpc::grpc_backend_image;
use common::python::run_script;
use common::tls::TestCa;
use common::*;

const HOST: &str = "grpc.test";
const SERVICE: &str = "grpc";

/// `grpc_calls.py CMD ADDR AUTHORITY [ARGS…]`: its JSON, parsed.
fn calls(cmd: &str, addr: &str, authority: &str, args: &[&str]) -> serde_json::Value {
    let stdout = run_script("grpc_calls.py", &[&[cmd, addr, authority], args].concat());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("grpc_calls.py printed {stdout:?}: {e}"))
}

fn grpc_backend(env: &TestEnv, suffix: &str) -> Container {
    env.run(
        ContainerSpec::new(suffix)
            .image(&grpc_backend_image())
            .hawser("enable", "true")
            .hawser("service", SERVICE)
            .hawser("host", HOST)
            .hawser("scheme", "h2c")
            .hawser("healthcheck.type", "grpc"),
    )
}

fn backend_states(h: &Hawser) -> Vec<(String, String)> {
    let r = admin_request(h.admin, "GET", "/api/services", None).expect("GET /api/services");
    let v: serde_json::Value = serde_json::from_str(&r.body).expect("services JSON");
    let svc = v.as_array().into_iter().flatten().find(|s| s["name"] == SERVICE);
    svc.and_then(|s| s["backends"].as_array())
        .into_iter()
        .flatten()
        .map(|b| (b["container_name"].as_str().unwrap_or("?").to_string(), b["state"].as_str().unwrap_or("?").to_string()))
        .collect()
}

#[test]
fn every_kind_of_call_passes_through_to_an_h2c_backend() {
    let env = TestEnv::new("grpc-kinds");
    let a = grpc_backend(&env, "a");
    let b = grpc_backend(&env, "b");
    let h = env.hawser(&env.default_config());
    h.wait_backends_ready(SERVICE, 2, SECS_10);

    let out = calls("kinds", &h.addr.to_string(), HOST, &[]);
    eprintln!("{out}");
    let log = || h.log();
    assert_eq!(out["unary"], "hello", "{out}\nhawser log:\n{}", log());
    let mut names = vec![a.name.clone(), b.name.clone()];
    names.sort();
    assert_eq!(out["names"], serde_json::json!(names), "round robin over both backends");
    assert_eq!(out["server_stream"], serde_json::json!(["0", "1", "2", "3", "4"]));
    // The first of three messages 1 s apart arrives at once: nothing buffers the stream.
    let (first, all) = (out["stream_first_s"].as_f64().unwrap(), out["stream_all_s"].as_f64().unwrap());
    assert!(first < 0.8 && all >= 1.9, "first message after {first:.3} s, all after {all:.3} s");
    assert_eq!(out["stream_rest"], 2);
    assert_eq!(out["client_stream"], "100,5050", "100 messages, 1+2+…+100 bytes");
    assert_eq!(out["bidi_lockstep"], 1000, "{out}");
    assert_eq!(out["bidi_after_close"], 0);
    assert_eq!(out["big_roundtrip"], true);
    // The backend's status and message (trailers) reach the client unchanged.
    assert_eq!(out["backend_status"]["code"], "NOT_FOUND", "{out}");
    assert_eq!(out["backend_status"]["details"], "not here, é");
    assert_eq!(out["concurrent_ok"], 600, "{out}\nhawser log:\n{}", log());
    // Calls share HTTP/2 connections to the backends (h2_streams_per_connection, 100): 64 at
    // once over 2 backends, where one call per connection needs about 32 each. A few more than
    // one connection is normal: pingora's connector takes a connection out of its pool while it
    // opens a stream on it, so calls arriving in that instant open their own (seen: up to 8 on
    // a loaded 2-core machine with 32 at once).
    for backend in [&a, &b] {
        let (_, connections) = backend_stats(&format!("{}:80", backend.ip_default()));
        eprintln!("{}: {connections} connections carried calls (one of them this question)", backend.name);
        assert!(connections <= 16, "{}: {connections} connections for 600 calls, 64 at a time", backend.name);
    }

    // A WebSocket upgrade cannot cross HTTP/2 (no extended CONNECT in pingora): the backend
    // gets a plain GET, and the client an ordinary answer, not a 101 (README, Protocols).
    let mut conn = HttpConn::connect(h.addr).unwrap();
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let r = conn.request("GET", HOST, "/chat", &upgrade, b"").unwrap();
    assert_eq!(r.status, 200, "{r:?}\nhawser log:\n{}", log());
    assert!(r.backend().is_some_and(|x| x == a.name || x == b.name), "{r:?}");

    // Counted as the 2xx they are, and the backends stayed in rotation.
    let r = admin_request(h.admin, "GET", "/metrics", None).unwrap();
    let ok = metric(&r.body, &format!("hawser_requests_total{{class=\"2xx\",service=\"{SERVICE}\"}}")).unwrap_or(0.0);
    assert!(ok >= 300.0, "{ok} 2xx counted");
    assert!(backend_states(&h).iter().all(|(_, s)| s == "ready"), "{:?}", backend_states(&h));
}

#[test]
fn grpc_timeout_is_the_calls_timeout() {
    let env = TestEnv::new("grpc-deadline");
    let backend = grpc_backend(&env, "slow");
    // read_timeout 1 s: a gRPC call's own deadline replaces it. One failure would eject a
    // backend: a client's deadline must not count as one.
    let config = format!(
        "{}proxy:\n  read_timeout: 1s\n  retries: 0\n  passive_ejection: {{consecutive_failures: 1}}\n",
        env.default_config()
    );
    let h = env.hawser(&config);
    h.wait_backends_ready(SERVICE, 1, SECS_10);

    let out = calls("deadline", &h.addr.to_string(), HOST, &[]);
    eprintln!("{out}");
    assert_eq!(out["long"], serde_json::json!({"code": "OK", "value": "slept:2000"}), "{out}\nhawser log:\n{}", h.log());
    assert_eq!(out["short"]["code"], "DEADLINE_EXCEEDED", "{out}");
    assert_eq!(out["stream"], serde_json::json!({"code": "OK", "value": ["0", "1"]}), "{out}\nhawser log:\n{}", h.log());

    // A call the client cancels (RST_STREAM) is the client's end: no answer, no 4xx.
    assert_eq!(calls("cancel", &h.addr.to_string(), HOST, &[]), serde_json::json!({"cancelled": true}));

    // A client that sends a deadline but does not keep it itself (curl): hawser answers soon
    // after the deadline (a margin of 1 s lets the client or the backend end it first), in
    // gRPC's form, and cancels the call toward the backend.
    let direct = format!("{}:80", backend.ip_default());
    let cancelled_before = calls_stats(&direct);
    let body = tmp_dir().join(format!("grpc-deadline-{}.bin", std::process::id()));
    let msg = b"sleep:3000";
    let mut framed = vec![0u8, 0, 0, 0, msg.len() as u8];
    framed.extend_from_slice(msg);
    std::fs::write(&body, &framed).unwrap();
    let started = Instant::now();
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", "--max-time", "10"])
        .args(["-H", &format!("Host: {HOST}"), "-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", "grpc-timeout: 300m", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://{}/hawser.test.Echo/Unary", h.addr))
        .output()
        .expect("run curl");
    let took = started.elapsed();
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    eprintln!("curl took {took:?}:\n{head}");
    assert!(head.starts_with("http/2 200"), "{head}\nhawser log:\n{}", h.log());
    assert!(head.contains("grpc-status: 4\r\n"), "DEADLINE_EXCEEDED expected:\n{head}\nhawser log:\n{}", h.log());
    assert!(took < Duration::from_millis(2500), "answered after {took:?}, not at the 300 ms deadline and its 1 s margin");
    assert!(took >= Duration::from_millis(300), "answered after {took:?}, before the deadline");
    // The backend saw its call cancelled (RST_STREAM), rather than finishing it for nobody.
    wait_until("the backend to count one more cancelled call", SECS_10, || (calls_stats(&direct) > cancelled_before).then_some(()));
    // A deadline is the client's choice, not the backend's failure: still ready, and counted
    // as the 504 hawser's answer stands for.
    assert_eq!(backend_states(&h), vec![(backend.name.clone(), "ready".to_string())]);
    let r = admin_request(h.admin, "GET", "/metrics", None).unwrap();
    let ejected = metric(&r.body, &format!("hawser_passive_ejections_total{{service=\"{SERVICE}\"}}")).unwrap_or(0.0);
    assert_eq!(ejected, 0.0, "ejected for a client's deadline");
    let r = admin_request(h.admin, "GET", "/metrics", None).unwrap();
    let client_errors = metric(&r.body, &format!("hawser_requests_total{{class=\"4xx\",service=\"{SERVICE}\"}}")).unwrap_or(0.0);
    assert_eq!(client_errors, 0.0, "a cancelled call counted as a 4xx\nhawser log:\n{}", h.log());
    wait_until("the 504 counted", SECS_5, || {
        let r = admin_request(h.admin, "GET", "/metrics", None).unwrap();
        let n = metric(&r.body, &format!("hawser_requests_total{{class=\"5xx\",service=\"{SERVICE}\"}}")).unwrap_or(0.0);
        (n >= 1.0).then_some(())
    });
    let _ = std::fs::remove_file(&body);
}

/// The backend's count of cancelled calls, asked directly.
fn calls_stats(direct: &str) -> u64 {
    backend_stats(direct).0
}

/// The backend's counts of cancelled calls and of connections that carried calls, asked
/// directly (the asking connection counts too).
fn backend_stats(direct: &str) -> (u64, u64) {
    let out = calls("method", direct, HOST, &["Stats", ""]);
    let text = out["value"].as_str().unwrap_or_default();
    let field = |name: &str| {
        text.split_whitespace().find_map(|f| f.strip_prefix(name)).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    (field("cancelled="), field("connections="))
}

/// `SetHealth` on the backend itself (not through hawser, which may have no ready backend).
fn set_health(direct: &str, status: &str) {
    let out = calls("method", direct, HOST, &["SetHealth", status]);
    assert_eq!(out["code"], "OK", "SetHealth {status}: {out}");
}

#[test]
fn grpc_health_checks_use_the_standard_health_service() {
    let env = TestEnv::new("grpc-health");
    let backend = grpc_backend(&env, "hc");
    // A gRPC check of a backend spoken to in HTTP/1.1 cannot work: refused, with the reason.
    let wrong = env.run(
        ContainerSpec::new("wrong")
            .image(&grpc_backend_image())
            .hawser("enable", "true")
            .hawser("service", "wrong")
            .hawser("host", "wrong.test")
            .hawser("healthcheck.type", "grpc"),
    );
    let config = format!("{}health_check:\n  interval: 200ms\n  fall: 1\n  rise: 1\n", env.default_config());
    let h = env.hawser(&config);
    h.wait_backends_ready(SERVICE, 1, SECS_10);
    let direct = format!("{}:80", backend.ip_default());

    let verdict = wait_until("the wrong container's verdict", SECS_10, || {
        let r = admin_request(h.admin, "GET", "/api/containers", None).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v.as_array()?.iter().find(|c| c["container_name"] == wrong.name.as_str()).cloned()
    });
    let reason = verdict["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("health check type grpc needs scheme h2c or h2"), "{verdict}");

    assert_eq!(calls("unary", &h.addr.to_string(), HOST, &["ping"])["code"], "OK");
    set_health(&direct, "not_serving");
    wait_until("NOT_SERVING to take the backend out", SECS_10, || {
        (backend_states(&h) == vec![(backend.name.clone(), "unhealthy".to_string())]).then_some(())
    });
    let out = calls("unary", &h.addr.to_string(), HOST, &["ping"]);
    assert_eq!(out["code"], "UNAVAILABLE", "{out}");
    assert!(out["details"].as_str().unwrap_or_default().contains("no ready backend"), "{out}");
    // Why, in the admin API.
    let r = admin_request(h.admin, "GET", "/api/containers", None).unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let verdict = v.as_array().unwrap().iter().find(|c| c["container_name"] == backend.name.as_str()).cloned().unwrap();
    let reason = verdict["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("gRPC Health/Check") && reason.contains("NOT_SERVING"), "{verdict}");

    set_health(&direct, "serving");
    wait_until("SERVING to bring it back", SECS_10, || {
        (backend_states(&h) == vec![(backend.name.clone(), "ready".to_string())]).then_some(())
    });
    assert_eq!(calls("unary", &h.addr.to_string(), HOST, &["ping"])["code"], "OK");
}

/// `hawser.scheme=h2`: HTTP/2 over TLS to the backend (ALPN h2), verified against the
/// test's CA, for calls and for the gRPC health check; and the client over TLS (h2) too.
#[test]
fn grpc_over_tls_on_both_sides() {
    let env = TestEnv::new("grpc-h2");
    let ca = TestCa::new("grpc-h2");
    let dir = TempDir::new("grpc-h2");
    ca.write_leaf(&dir.0, "grpcs", "crt", &["grpcs.test"]);
    let ca_path = dir.0.join("ca.pem");
    ca.write(&ca_path);
    let backend = env.run(
        ContainerSpec::new("tls")
            .image(&grpc_backend_image())
            .args(&["-v", &format!("{}:/tls:ro", dir.0.display())])
            .env("TLS_CERT", "/tls/grpcs.crt")
            .env("TLS_KEY", "/tls/grpcs.key")
            .hawser("enable", "true")
            .hawser("service", "grpcs")
            .hawser("host", "grpcs.test")
            .hawser("tls", "true")
            .hawser("scheme", "h2")
            .hawser("tls.ca", &ca_path.display().to_string())
            .hawser("healthcheck.type", "grpc"),
    );
    // hawser's own TLS listener serves the same name, from the same CA.
    let config = format!(
        "{}tls:\n  listen: [\"$LISTEN2\"]\n  certificates:\n    - {{cert: \"{}\", key: \"{}\"}}\n",
        env.default_config(),
        dir.0.join("grpcs.crt").display(),
        dir.0.join("grpcs.key").display(),
    );
    let h = env.hawser(&config);
    h.wait_backends_ready("grpcs", 1, SECS_10);
    // h2c client -> hawser -> h2 backend.
    let out = calls("unary", &h.addr.to_string(), "grpcs.test", &["name"]);
    assert_eq!(out, serde_json::json!({"code": "OK", "value": backend.name}), "hawser log:\n{}", h.log());
    // h2 (TLS) client -> hawser -> h2 backend.
    let ca_arg = ca_path.display().to_string();
    let out = calls("tls_unary", &h.addrs[1].to_string(), "grpcs.test", &["status:7:no entry", &ca_arg]);
    assert_eq!(out, serde_json::json!({"code": "PERMISSION_DENIED", "details": "no entry"}), "hawser log:\n{}", h.log());
    let out = calls("tls_unary", &h.addrs[1].to_string(), "grpcs.test", &["over tls", &ca_arg]);
    assert_eq!(out, serde_json::json!({"code": "OK", "value": "over tls"}));
    // Plain HTTP/1.1 clients reach the HTTP/2 backend too.
    let r = h.get("grpcs.test", "/").unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, backend.name.as_str()), "{r:?}");
}

/// hawser stopping (SIGTERM) with a gRPC server stream open over HTTP/2: the client gets a
/// GOAWAY at once (no new streams on this connection), and the open stream runs to its end
/// within the grace period, trailers included. nghttp (nghttp2) shows the frames.
#[test]
fn stopping_sends_goaway_and_lets_open_streams_finish() {
    let env = TestEnv::new("grpc-goaway");
    let _backend = grpc_backend(&env, "s");
    let mut h = env.hawser(&env.default_config());
    h.wait_backends_ready(SERVICE, 1, SECS_10);
    let body = tmp_dir().join(format!("grpc-goaway-{}.bin", std::process::id()));
    // Six messages 400 ms apart: about 2 s, within the 5 s grace period.
    let msg = b"6,400";
    let mut framed = vec![0u8, 0, 0, 0, msg.len() as u8];
    framed.extend_from_slice(msg);
    std::fs::write(&body, &framed).unwrap();
    let client = Command::new("nghttp")
        .args(["-v", "-n", "-d"])
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers", "-H", &format!(":authority: {HOST}")])
        .arg(format!("http://{}/hawser.test.Echo/ServerStream", h.addr))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nghttp (Debian's nghttp2-client; .ci/run installs it)");
    // Once the answer has started: the backend's first message is out at once.
    wait_until("the stream to be answered", SECS_10, || {
        let r = admin_request(h.admin, "GET", "/metrics", None).ok()?;
        (metric(&r.body, &format!("hawser_active_requests{{service=\"{SERVICE}\"}}")).unwrap_or(0.0) >= 1.0).then_some(())
    });
    h.signal(SIGTERM);
    let out = client.wait_with_output().unwrap();
    let frames = String::from_utf8_lossy(&out.stdout).into_owned();
    let _ = std::fs::remove_file(&body);
    assert!(out.status.success(), "nghttp: {}\n{frames}\n{}", String::from_utf8_lossy(&out.stderr), h.log());
    assert!(frames.contains("recv GOAWAY frame"), "no GOAWAY:\n{frames}");
    // The whole stream: six messages (5-byte prefix + 1 byte each) and status 0 in the trailers.
    let data: usize = frames
        .lines()
        .filter(|l| l.contains("recv DATA frame"))
        .filter_map(|l| l.split("length=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(data, 6 * 6, "DATA bytes of the stream:\n{frames}");
    assert!(frames.contains("grpc-status: 0"), "the stream's trailers are missing:\n{frames}");
    let status = h.wait_exit(SECS_10).expect("hawser exits within its grace period");
    assert!(status.success(), "{status:?}");
}
