//! The admin API and `hawser explain`, against the real Docker engine:
//!
//! - `/api/containers` says why a container is not routed (two exposed ports, a bad label), and
//!   `hawser explain` shows the same verdicts, for one container or as a table;
//! - `POST /api/backends/{container}/drain` takes a backend out of rotation (by name or short
//!   id) and `…/undrain` puts it back; unknown containers are 404, non-backends 409;
//! - `/metrics` moves with real traffic;
//! - `admin.token` guards every endpoint but `/healthz`, and a non-loopback `admin.listen`
//!   without a token is refused before anything listens;
//! - without a token, a foreign `Host` (DNS rebinding) is refused, and so is, token or not, a
//!   POST that a browser sent from another origin, while curl's POST works;
//! - `access_log: json` and `access_log: text` write a line per request on stdout.
//!
//! Everything waits by polling with a deadline; failure messages carry hawser's log.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// `GET path` on the admin API, with `Authorization: Bearer <token>` when given.
fn admin_get(h: &Hawser, path: &str, token: Option<&str>) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    http(h.admin, "GET", &h.admin.to_string(), path, &headers, b"")
        .unwrap_or_else(|e| panic!("GET {path} on the admin API {}: {e}\nhawser log:\n{}", h.admin, h.log()))
}

/// `POST path` on the admin API (no token), as curl sends it: `Host` is the admin address.
fn admin_post(h: &Hawser, path: &str) -> Response {
    http(h.admin, "POST", &h.admin.to_string(), path, &[], b"")
        .unwrap_or_else(|e| panic!("POST {path} on the admin API {}: {e}\nhawser log:\n{}", h.admin, h.log()))
}

/// A 200 JSON answer of the admin API.
/// The `/api/containers` entry of container `name`, once it satisfies `pred` (5 s).
fn wait_container(h: &Hawser, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let start = std::time::Instant::now();
    loop {
        let all = admin_json(h, "/api/containers");
        let list = all.as_array().expect("/api/containers is a list");
        if let Some(v) = list.iter().find(|v| v["container_name"] == name) {
            if pred(v) {
                return v.clone();
            }
            last = v.clone();
        }
        if start.elapsed() > SECS_5 {
            panic!("timed out waiting for container {name} to be {what} in /api/containers; last entry: {last}\nhawser log:\n{}", h.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `/api/services` entry of backend `name` of service `service`.
fn backend_view(h: &Hawser, service: &str, name: &str) -> Option<Value> {
    let all = admin_json(h, "/api/services");
    let svc = all.as_array()?.iter().find(|s| s["name"] == service)?.clone();
    svc["backends"].as_array()?.iter().find(|b| b["container_name"] == name).cloned()
}

/// Polls until backend `name` of `service` is in `state` per `/api/services` (5 s).
fn wait_backend_state(h: &Hawser, service: &str, name: &str, state: &str) -> Value {
    wait_until(&format!("backend {name} of {service} to be {state} in /api/services"), SECS_5, || {
        backend_view(h, service, name).filter(|b| b["state"] == state)
    })
}

/// `hawser explain ARGS` (without `HAWSER_ADMIN_TOKEN` unless in `envs`): (exit code, stdout,
/// stderr).
fn explain(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hawser"))
        .arg("explain")
        .args(args)
        .env_remove("HAWSER_ADMIN_TOKEN")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run hawser explain");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn conf(h: &Hawser) -> &str {
    h.config_path.to_str().expect("config path is UTF-8")
}

/// A loopback port nobody listens on (a moment ago).
fn unused_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

// ---------------------------------------------------------------------------
// 1. why not routed: the API and `hawser explain`
// ---------------------------------------------------------------------------

#[test]
fn api_and_explain_say_why_a_container_is_not_routed() {
    let env = TestEnv::new("admin-why");
    // The image exposes 80; --expose adds 443; no port label: hawser cannot choose.
    let two = env.run(ContainerSpec::new("two-ports").hawser("enable", "true").hawser("host", "two.test").expose(443));
    let bad = env.run(ContainerSpec::new("bad-port").hawser("enable", "true").hawser("host", "bad.test").hawser("port", "abc"));
    let ok = web(&env, "ok", "ok.test", "ok");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "ok.test", "/", &ok, SECS_10);

    let port_reason = format!("exposes 80 and 443: set {}.port", env.prefix);
    let v = wait_container(&h, &two.name, "refused", |v| v["reason"].is_string());
    assert_eq!(v["routed"], false, "{v}");
    assert_eq!(v["container_id"], two.id.as_str(), "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains(&port_reason), "reason {reason:?} should contain {port_reason:?}");

    let v = wait_container(&h, &bad.name, "refused", |v| v["reason"].is_string());
    assert_eq!(v["routed"], false, "{v}");
    let label_reason = v["reason"].as_str().unwrap().to_string();
    assert!(
        label_reason.contains(&format!("{}.port", env.prefix)) && label_reason.contains("abc"),
        "the reason should name the label and its value: {label_reason:?}"
    );

    let v = wait_container(&h, &ok.name, "routed and ready", |v| v["routed"] == true && v["state"] == "ready");
    assert!(v["reason"].is_null(), "{v}");
    assert_eq!(v["service"], "ok", "{v}");

    // One container, by name: a detailed block with the reason, exit 0.
    let (code, out, err) = explain(&["-c", conf(&h), &two.name], &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&port_reason), "explain {} should print {port_reason:?}:\n{out}", two.name);
    assert!(out.contains(&two.id), "the detail shows the full id:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("routed:") && l.trim_end().ends_with("no")), "{out}");

    // By short id; a backend shows its address, weight and state.
    let (code, out, err) = explain(&["-c", conf(&h), &ok.id[..12]], &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let addr = format!("{}:80", ok.ip_default());
    assert!(out.contains(&ok.name) && out.contains(&ok.id), "{out}");
    assert!(out.lines().any(|l| l.starts_with("routed:") && l.trim_end().ends_with("yes")), "{out}");
    assert!(out.contains(&format!("{addr} (weight 1, state ready) of service ok")), "{out}");

    // The table: both refused ones with their whole reasons, the routed one as such.
    let (code, out, err) = explain(&["-c", conf(&h)], &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let header = out.lines().next().unwrap_or_default();
    for col in ["CONTAINER", "SERVICE", "ROUTED", "STATE", "REASON"] {
        assert!(header.contains(col), "header {header:?} lacks {col}");
    }
    let row = |name: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{out}"))
            .to_string()
    };
    let two_row = row(&two.name);
    assert!(two_row.contains(" no ") && two_row.ends_with(&port_reason), "{two_row:?}\n{out}");
    assert!(row(&bad.name).ends_with(&label_reason), "{out}");
    let ok_row: Vec<String> = row(&ok.name).split_whitespace().map(str::to_string).collect();
    assert_eq!(ok_row, [ok.name.as_str(), "ok", "yes", "ready", "-"], "{out}");
    // Columns are aligned: REASON starts at the same offset on every line.
    let at = header.find("REASON").unwrap();
    assert!(two_row[..at].ends_with(' ') && !two_row[at..].starts_with(' '), "{out}");
    // Not-routed ones first.
    let pos = |name: &str| out.find(&format!("\n{name} ")).unwrap();
    assert!(pos(&two.name) < pos(&ok.name) && pos(&bad.name) < pos(&ok.name), "{out}");

    // Unknown container: exit 1, and it says so.
    let ghost = format!("{}-ghost", env.id);
    let (code, out, err) = explain(&["-c", conf(&h), &ghost], &[]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&ghost) && err.contains("no container"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Draining a container that is not a backend is a conflict, not a success.
    let r = admin_post(&h, &format!("/api/backends/{}/drain", two.name));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("not a backend"), "{}", r.body);
}

#[test]
fn explain_says_when_it_cannot_ask() {
    // Nothing listens there: exit 2, naming the address and how to point elsewhere.
    let port = unused_port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = explain(&["--admin", &addr], &[]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&addr) && err.contains("-c") && err.contains("--admin"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(out.is_empty(), "{out}");

    let missing = tmp_dir().join(format!("explain-missing-{}.yaml", std::process::id()));
    let (code, _, err) = explain(&["-c", missing.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("explain-missing"), "{err}");

    let (code, _, err) = explain(&["--bogus"], &[]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = explain(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("usage: hawser explain") && out.contains("--token"), "{out}");
}

// ---------------------------------------------------------------------------
// 2. manual drain
// ---------------------------------------------------------------------------

#[test]
fn drain_and_undrain_through_the_api() {
    let env = TestEnv::new("admin-drain");
    let host = "drain.test";
    let a = web(&env, "a", host, "drain");
    let b = web(&env, "b", host, "drain");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &a, SECS_10);
    env.wait_routed(&h, host, "/", &b, SECS_10);

    // By name.
    let r = admin_post(&h, &format!("/api/backends/{}/drain", a.name));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["container_name"], a.name.as_str(), "{v}");
    assert_eq!(v["drained"], true, "{v}");
    // Applied once the service's selector went live with it.
    h.wait_log(&format!("(drain of {})", a.name), SECS_5);
    assert_only(&h, host, 30, &b, "A drained through the admin API");
    assert_eq!(backend_view(&h, "drain", &a.name).unwrap()["state"], "draining");
    let v = wait_container(&h, &a.name, "drained", |v| v["state"] == "draining");
    assert_eq!(v["routed"], false, "{v}");
    assert!(v["reason"].as_str().unwrap_or_default().contains("drained"), "{v}");
    // Still running: a drain is not a stop.
    assert!(a.is_running());

    let r = admin_post(&h, &format!("/api/backends/{}/undrain", a.name));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!((v["container_name"].as_str(), v["drained"].as_bool()), (Some(a.name.as_str()), Some(false)), "{v}");
    env.wait_routed(&h, host, "/", &a, SECS_5);
    wait_backend_state(&h, "drain", &a.name, "ready");
    wait_container(&h, &a.name, "routed again", |v| v["routed"] == true);

    // By short id (as `docker ps` shows it).
    let short = &b.id[..12];
    let r = admin_post(&h, &format!("/api/backends/{short}/drain"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["container_name"], b.name.as_str(), "{v}");
    h.wait_log(&format!("(drain of {})", b.name), SECS_5);
    assert_only(&h, host, 30, &a, "B drained by short id");
    wait_backend_state(&h, "drain", &b.name, "draining");
    let r = admin_post(&h, &format!("/api/backends/{short}/undrain"));
    assert_eq!(r.status, 200, "{}", r.body);
    env.wait_routed(&h, host, "/", &b, SECS_5);
    wait_backend_state(&h, "drain", &b.name, "ready");

    // Unknown: 404, and nothing changed.
    let r = admin_post(&h, &format!("/api/backends/{}-nobody/drain", env.id));
    assert_eq!(r.status, 404, "{}", r.body);
    let r = admin_get(&h, &format!("/api/backends/{}/drain", a.name), None);
    assert_eq!(r.status, 405, "drain needs POST: {}", r.body);
    let counts = shares(&h, host, 20);
    assert_eq!(counts.len(), 2, "both backends serve again: {counts:?}");
}

// ---------------------------------------------------------------------------
// 3. metrics
// ---------------------------------------------------------------------------

#[test]
fn metrics_move_with_real_traffic() {
    let env = TestEnv::new("admin-metrics");
    let svc = "met";
    let host = "met.test";
    let h = env.hawser(&env.default_config());
    // Started after hawser: its start event is counted, and timed to the selector.
    let c = web(&env, "m", host, svc);
    env.wait_routed(&h, host, "/", &c, SECS_10);

    let ok_series = format!("hawser_requests_total{{class=\"2xx\",service=\"{svc}\"}}");
    let ready_series = format!("hawser_backend_state{{backend=\"{}\",service=\"{svc}\",state=\"ready\"}}", c.name);
    let draining_series = format!("hawser_backend_state{{backend=\"{}\",service=\"{svc}\",state=\"draining\"}}", c.name);
    let miss_series = "hawser_requests_total{class=\"4xx\",service=\"\"}";
    let scrape = || {
        let r = admin_get(&h, "/metrics", None);
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.header("content-type").is_some_and(|t| t.starts_with("text/plain")), "{:?}", r.headers);
        r.body
    };

    // A request is counted once its answer went out (pingora's logging phase), so the last of
    // wait_routed's requests may be counted a moment after the client read it: poll.
    let base = wait_until("wait_routed's requests counted", SECS_5, || metric(&scrape(), &ok_series).filter(|n| *n >= 1.0));
    let before = scrape();
    assert_eq!(metric(&before, &ready_series), Some(1.0), "{before}");
    assert_eq!(metric(&before, &draining_series), Some(0.0), "{before}");
    let start_events = metric(&before, "hawser_docker_events_total{action=\"start\"}").unwrap_or(0.0);
    assert!(start_events >= 1.0, "the container's start event is counted:\n{before}");
    let latency = wait_until("hawser_discovery_latency_seconds_count > 0", SECS_5, || {
        metric(&scrape(), "hawser_discovery_latency_seconds_count").filter(|n| *n > 0.0)
    });
    assert!(latency >= 1.0);

    // N requests through the proxy: the 2xx counter grows by exactly N. It is counted after
    // the answer went out, so poll for it, then check it did not overshoot.
    let n = 25;
    let counts = shares(&h, host, n);
    assert_eq!(counts.get(&c.name), Some(&n), "{counts:?}");
    let want = base + n as f64;
    let after = wait_until(&format!("{ok_series} to reach {want}"), SECS_5, || {
        let text = scrape();
        (metric(&text, &ok_series)? >= want).then_some(text)
    });
    assert_eq!(metric(&after, &ok_series), Some(want), "{after}");
    let duration_count = format!("hawser_request_duration_seconds_count{{service=\"{svc}\"}}");
    assert!(metric(&after, &duration_count).is_some_and(|v| v >= n as f64), "{after}");

    // A request that matches no route is counted under service="".
    let miss0 = metric(&after, miss_series).unwrap_or(0.0);
    assert_eq!(h.get("nowhere.test", "/").unwrap().status, 404);
    wait_until("the 404 to be counted under service=\"\"", SECS_5, || {
        (metric(&scrape(), miss_series)? >= miss0 + 1.0).then_some(())
    });
    assert_eq!(metric(&scrape(), miss_series), Some(miss0 + 1.0));
}

// ---------------------------------------------------------------------------
// 4. the token rule
// ---------------------------------------------------------------------------

#[test]
fn token_guards_every_endpoint_but_healthz() {
    let env = TestEnv::new("admin-token");
    let config = "listen: [\"$LISTEN\"]\n\
                  docker:\n  label_prefix: \"$PREFIX\"\n  network: \"$NETWORK\"\n\
                  admin: {listen: \"$ADMIN\", token: \"t0k3n\"}\n";
    let c = web(&env, "t", "token.test", "tok");
    let h = env.hawser(config);
    env.wait_routed(&h, "token.test", "/", &c, SECS_10);

    for path in ["/api/containers", "/api/services", "/metrics", "/"] {
        let r = admin_get(&h, path, None);
        assert_eq!(r.status, 401, "{path} without a token: {}", r.body);
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{path}: {:?}", r.headers);
        let r = admin_get(&h, path, Some("wrong"));
        assert_eq!(r.status, 401, "{path} with a wrong token: {}", r.body);
        let r = admin_get(&h, path, Some("t0k3n"));
        assert_eq!(r.status, 200, "{path} with the token: {}", r.body);
    }
    let r = admin_post(&h, &format!("/api/backends/{}/drain", c.name));
    assert_eq!(r.status, 401, "drain without a token: {}", r.body);
    // With a token any Host goes (the token is what a rebinding page lacks), but a cross-site
    // POST is still refused, token or not.
    let r = http(h.admin, "GET", "hawser.internal.example", "/api/services", &[("Authorization", "Bearer t0k3n")], b"").unwrap();
    assert_eq!(r.status, 200, "a foreign Host with the token: {}", r.body);
    let r = http(
        h.admin,
        "POST",
        &h.admin.to_string(),
        &format!("/api/backends/{}/drain", c.name),
        &[("Authorization", "Bearer t0k3n"), ("Origin", "http://evil.example")],
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 403, "a cross-site drain with the token: {}", r.body);

    let r = admin_get(&h, "/healthz", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], "serving", "{v}");
    assert_eq!(v["docker_connected"], true, "{v}");

    // explain: 401 without the token is exit 2 with advice; the token from the file, the flag
    // or the environment works.
    let admin = h.admin.to_string();
    let (code, out, err) = explain(&["--admin", &admin, &c.name], &[]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("401") && err.contains(&admin) && err.contains("--token"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let (code, out, err) = explain(&["--admin", &admin, "--token", "nope"], &[]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    for (args, envs) in [
        (vec!["-c", conf(&h)], vec![]),
        (vec!["--admin", &admin, "--token", "t0k3n"], vec![]),
        (vec!["--admin", &admin], vec![("HAWSER_ADMIN_TOKEN", "t0k3n")]),
    ] {
        let mut args = args.clone();
        args.push(c.name.as_str());
        let (code, out, err) = explain(&args, &envs);
        assert_eq!(code, 0, "explain {args:?} {envs:?}\nstdout:\n{out}\nstderr:\n{err}");
        assert!(out.lines().any(|l| l.starts_with("routed:") && l.trim_end().ends_with("yes")), "{out}");
    }
}

#[test]
fn a_public_admin_address_needs_a_token() {
    let env = TestEnv::new("admin-public");
    let port = unused_port();
    let config = format!(
        "listen: [\"$LISTEN\"]\ndocker:\n  label_prefix: \"$PREFIX\"\nadmin: {{listen: \"0.0.0.0:{port}\"}}\n"
    );
    let (code, out) = hawser_check(&config);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("admin.listen") && out.contains("admin.token"), "{out}");
    let with_token = config.replace("}\n", ", token: \"s3cret\"}\n");
    let (code, out) = hawser_check(&with_token);
    assert_eq!(code, 0, "with a token it is accepted: {out}");

    let mut h = env.spawn_hawser(&config, &[], &[]);
    let status = h.wait_exit(SECS_10).unwrap_or_else(|| panic!("hawser must refuse to start; log:\n{}", h.log()));
    assert!(!status.success(), "{status}");
    let log = h.log();
    assert!(log.contains("admin.listen") && log.contains("admin.token"), "{log}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "nothing may answer on {addr}"
    );
}

// ---------------------------------------------------------------------------
// 5. what browsers send for other sites: DNS rebinding and cross-site POSTs
// ---------------------------------------------------------------------------

/// A request on the admin API with its own `Host` and extra headers.
fn admin_raw(h: &Hawser, method: &str, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    http(h.admin, method, host, path, headers, b"")
        .unwrap_or_else(|e| panic!("{method} {path} (Host {host}) on the admin API {}: {e}\nhawser log:\n{}", h.admin, h.log()))
}

#[test]
fn browsers_on_other_sites_can_neither_read_nor_drain() {
    let env = TestEnv::new("admin-browsers");
    let svc = "guarded";
    let c = web(&env, "g", "guard.test", svc);
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "guard.test", "/", &c, SECS_10);
    let own = h.admin.to_string();
    let port = h.admin.port();

    // DNS rebinding: the browser connected to 127.0.0.1 but says the attacker's name.
    for path in ["/api/services", "/api/containers", "/metrics", "/", "/healthz"] {
        for host in [format!("evil.example:{port}"), "evil.example".to_string(), format!("evil.localhost:{port}")] {
            let r = admin_raw(&h, "GET", &host, path, &[]);
            assert_eq!(r.status, 403, "GET {path} with Host {host}: {}", r.body);
            assert!(r.body.contains("DNS rebinding"), "{}", r.body);
            assert!(!r.body.contains(&c.name), "a refusal must not leak: {}", r.body);
        }
    }
    // A foreign absolute-form target names a foreign host too, even without a Host header.
    let req = format!("GET http://evil.example:{port}/api/services HTTP/1.0\r\n\r\n");
    let (bytes, _) = http_raw(h.admin, req.as_bytes(), SECS_5);
    let (status, _, _) = split_raw(&bytes).unwrap_or_else(|| panic!("no answer to an absolute-form target: {bytes:?}"));
    assert!(status.contains(" 403 "), "absolute-form target: {status}");
    // Loopback names and the address itself, with or without a port.
    for host in [own.clone(), "127.0.0.1".to_string(), format!("localhost:{port}"), "localhost".to_string()] {
        let r = admin_raw(&h, "GET", &host, "/api/services", &[]);
        assert_eq!(r.status, 200, "GET /api/services with Host {host}: {}", r.body);
    }
    // HTTP/1.0 without Host, from loopback: served.
    let (bytes, _) = http_raw(h.admin, b"GET /healthz HTTP/1.0\r\n\r\n", SECS_5);
    let (status, _, body) = split_raw(&bytes).unwrap_or_else(|| panic!("no answer to HTTP/1.0 without Host: {bytes:?}"));
    assert!(status.starts_with("HTTP/1.1 200") || status.starts_with("HTTP/1.0 200"), "{status} {}", String::from_utf8_lossy(&body));

    // Cross-site POSTs: refused, and nothing changed.
    let drain = format!("/api/backends/{}/drain", c.name);
    let evil = format!("http://evil.example:{port}");
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1));
    for headers in [
        vec![("Origin", evil.as_str())],
        vec![("Origin", "null")],
        vec![("Origin", other_port.as_str())],
        vec![("Sec-Fetch-Site", "cross-site")],
        vec![("Sec-Fetch-Site", "same-site")],
        vec![("Origin", evil.as_str()), ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "no-cors")],
    ] {
        let r = admin_raw(&h, "POST", &own, &drain, &headers);
        assert_eq!(r.status, 403, "POST drain with {headers:?}: {}", r.body);
        assert!(r.body.contains("cross-site request forgery"), "{}", r.body);
    }
    assert_eq!(backend_view(&h, svc, &c.name).expect("backend listed")["state"], "ready", "a refused drain changed nothing");

    // The same POST as curl sends it (neither header) works; so does a same-origin one.
    let r = admin_post(&h, &drain);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_backend_state(&h, svc, &c.name, "draining");
    let same_origin = format!("http://{own}");
    let undrain = format!("/api/backends/{}/undrain", c.name);
    let r = admin_raw(&h, "POST", &own, &undrain, &[("Origin", &same_origin), ("Sec-Fetch-Site", "same-origin")]);
    assert_eq!(r.status, 200, "same-origin POST: {}", r.body);
    wait_backend_state(&h, svc, &c.name, "ready");
}

// ---------------------------------------------------------------------------
// 6. access log
// ---------------------------------------------------------------------------

/// A hawser with `access_log: <format>` in front of one backend, after `n` requests to
/// `/<tag>-<i>` and one 404: (hawser, backend).
fn logged_requests(env: &TestEnv, format: &str, tag: &str, n: usize) -> (Hawser, Container) {
    let c = web(env, "log", "log.test", "alog");
    let h = env.hawser(&format!("{}access_log: {format}\n", env.default_config()));
    env.wait_routed(&h, "log.test", "/", &c, SECS_10);
    for i in 0..n {
        let r = h.get("log.test", &format!("/{tag}-{i}")).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(h.get("nowhere.test", &format!("/{tag}-miss")).unwrap().status, 404);
    (h, c)
}

#[test]
fn access_log_json_lines() {
    let env = TestEnv::new("admin-log-json");
    let n = 3;
    let (h, c) = logged_requests(&env, "json", "aj", n);
    let entries = |log: &str| -> Vec<Value> {
        log.lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["path"].as_str().is_some_and(|p| p.starts_with("/aj-")))
            .collect()
    };
    let lines = wait_until("the access log lines of every request", SECS_5, || {
        let e = entries(&h.log());
        (e.len() > n).then_some(e)
    });
    assert_eq!(lines.len(), n + 1, "one line per request: {lines:#?}");
    for v in &lines[..n] {
        assert!(v.is_object(), "{v}");
        assert_eq!(v["status"], 200, "{v}");
        assert_eq!(v["service"], "alog", "{v}");
        assert_eq!(v["backend"], c.name.as_str(), "{v}");
        assert_eq!(v["retries"], 0, "{v}");
        assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
        assert_eq!(v["host"], "log.test", "{v}");
        assert_eq!(v["method"], "GET", "{v}");
    }
    let miss = &lines[n];
    assert_eq!((miss["status"].as_u64(), miss["service"].as_str(), miss["backend"].as_str()), (Some(404), Some(""), Some("")), "{miss}");
}

#[test]
fn access_log_text_lines() {
    let env = TestEnv::new("admin-log-text");
    let n = 3;
    let (h, c) = logged_requests(&env, "text", "at", n);
    let lines = wait_until("the access log lines of every request", SECS_5, || {
        let log = h.log();
        let lines: Vec<String> = log.lines().filter(|l| l.contains(" path=/at-")).map(str::to_string).collect();
        (lines.len() > n).then_some(lines)
    });
    assert_eq!(lines.len(), n + 1, "one line per request: {lines:#?}");
    for (i, l) in lines[..n].iter().enumerate() {
        assert!(l.contains(&format!(" path=/at-{i} ")), "{l}");
        assert!(l.contains("status=200 ") && l.contains("service=alog") && l.contains(&format!("backend={}", c.name)), "{l}");
        assert!(l.contains(" retries=0 ") && l.contains(" duration_ms="), "{l}");
    }
    assert!(lines[n].contains("status=404 ") && lines[n].contains("service=- "), "{}", lines[n]);
}
