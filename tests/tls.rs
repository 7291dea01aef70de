//! HTTPS at the edge, with real clients (rustls, curl) against a real hawser and a recording
//! origin behind it: SNI picks the certificate (exact, wildcard, default, refused), HTTP/2 by
//! ALPN, replaced files are served without a restart while open connections keep working, a
//! bad file keeps the certificate it replaced, redirects and HSTS, `-t` on bad TLS settings,
//! and the handshake deadline.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::recorder::Recorder;
use common::tls::{TestCa, connect, curl, write_atomic};
use common::*;

/// A `--network host` container that routes `host` to the recorder, with extra labels.
fn front(env: &TestEnv, rec: &Recorder, host: &str, labels: &[(&str, &str)]) -> Container {
    let mut spec = ContainerSpec::new(&rec.name)
        .network("host")
        .hawser("enable", "true")
        .hawser("host", host)
        .hawser("service", &rec.name)
        .hawser("port", &rec.port().to_string())
        .env("BIND", "127.0.0.1")
        .env("PORTS", &free_port().to_string());
    for (k, v) in labels {
        spec = spec.hawser(k, v);
    }
    env.run(spec)
}

struct Site {
    h: Hawser,
    tls_addr: std::net::SocketAddr,
    ca_path: std::path::PathBuf,
    ca: TestCa,
    dir: TempDir,
    app: Recorder,
    moved: Recorder,
    _containers: Vec<Container>,
    _env: TestEnv,
}

/// hawser with a certificate directory (`app.test`, `*.w.test`), one explicit pair
/// (`explicit.test`), `tls_extra` appended to the `tls:` section; `app.test` (TLS, HSTS) and
/// `moved.test` (TLS, redirect) routed to two recorders.
fn site(name: &str, tls_extra: &str) -> Site {
    let env = TestEnv::new(name);
    let dir = TempDir::new(&format!("{name}-certs"));
    let ca = TestCa::new("hawser test CA");
    let ca_path = dir.0.join("ca.pem.txt");
    ca.write(&ca_path);
    let certs = dir.0.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    ca.write_leaf(&certs, "app", "crt", &["app.test", "moved.test"]);
    ca.write_leaf(&certs, "wild", "pem", &["*.w.test"]);
    let explicit = ca.write_leaf(&dir.0, "explicit", "crt", &["explicit.test"]);
    let app = Recorder::start("app");
    let moved = Recorder::start("moved");
    let containers = vec![
        front(&env, &app, "app.test", &[("tls", "true"), ("tls.hsts", "max-age=31536000; includeSubDomains")]),
        front(&env, &moved, "moved.test", &[("tls", "true"), ("tls.redirect", "true")]),
    ];
    let config = format!(
        "{}clients:\n  header_timeout: 1s\ntls:\n  listen: [\"$LISTEN2\"]\n  directory: \"{}\"\n  certificates:\n    - {{cert: \"{}\", key: \"{}\"}}\n{tls_extra}",
        env.default_config(),
        certs.display(),
        explicit.display(),
        dir.0.join("explicit.key").display(),
    );
    let h = env.hawser(&config);
    let tls_addr = h.addrs[1];
    for (host, rec) in [("app.test", &app), ("moved.test", &moved)] {
        wait_until(&format!("{host} routed over TLS"), SECS_10, || {
            let mut c = connect(tls_addr, Some(host), &["http/1.1"]).ok()?;
            let (_, headers, _) = c.get(host, "/ready").ok()?;
            headers.iter().any(|(k, v)| k == "x-recorder" && *v == rec.name).then_some(())
        });
    }
    Site { h, tls_addr, ca_path, ca, dir, app, moved, _containers: containers, _env: env }
}

fn names(s: &Site, sni: Option<&str>) -> Vec<String> {
    connect(s.tls_addr, sni, &["http/1.1"]).unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e}")).presented.names
}

#[test]
fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let s = site("tls-sni", "");
    assert_eq!(names(&s, Some("app.test")), ["app.test", "moved.test"]);
    assert_eq!(names(&s, Some("APP.test.")), ["app.test", "moved.test"], "SNI is case-insensitive, trailing dot ignored");
    assert_eq!(names(&s, Some("x.w.test")), ["*.w.test"]);
    assert_eq!(names(&s, Some("explicit.test")), ["explicit.test"]);
    // A wildcard covers one label only; unknown names and no SNI get the default certificate.
    assert_eq!(names(&s, Some("a.b.w.test")), ["hawser.invalid"]);
    assert_eq!(names(&s, Some("unknown.test")), ["hawser.invalid"]);
    assert_eq!(names(&s, None), ["hawser.invalid"]);

    let h2 = connect(s.tls_addr, Some("app.test"), &["h2", "http/1.1"]).unwrap();
    assert_eq!(h2.presented.alpn.as_deref(), Some("h2"));
    let h1 = connect(s.tls_addr, Some("app.test"), &["http/1.1"]).unwrap();
    assert_eq!(h1.presented.alpn.as_deref(), Some("http/1.1"));
    for version in ["--tlsv1.2 --tls-max 1.2", "--tlsv1.3"] {
        let args: Vec<&str> = version.split(' ').collect();
        let (status, text) = curl(s.tls_addr, &s.ca_path, "app.test", "/v", &args);
        assert_eq!(status, 200, "curl {version}: {text}");
    }

    // A real client, verifying against the test CA, over HTTP/2 and HTTP/1.1.
    for proto in ["--http2", "--http1.1"] {
        let (status, text) = curl(s.tls_addr, &s.ca_path, "app.test", &format!("/hello{proto}"), &[proto]);
        assert_eq!(status, 200, "{proto}: {text}");
        assert!(text.to_ascii_lowercase().contains("strict-transport-security: max-age=31536000; includesubdomains"), "{text}");
        if proto == "--http2" {
            assert!(text.starts_with("HTTP/2 200"), "{text}");
        }
    }
    let seen = s.app.app_requests();
    let req = seen.iter().find(|r| r.target == "/hello--http2").expect("the h2 request reached the backend");
    assert_eq!(req.header("x-forwarded-proto"), Some("https"));
    assert!(req.header("forwarded").is_some_and(|f| f.contains("proto=https")), "{:?}", req.headers);

    // Cleartext: no HSTS, X-Forwarded-Proto http; moved.test is redirected, path and query kept.
    let r = get(s.h.addr, "app.test", "/plain").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("strict-transport-security").is_none());
    assert_eq!(s.app.app_requests().iter().find(|r| r.target == "/plain").unwrap().header("x-forwarded-proto"), Some("http"));
    let r = get(s.h.addr, "moved.test", "/a/b?c=d").unwrap();
    assert_eq!(r.status, 308, "{}", r.body);
    assert_eq!(r.header("location"), Some(format!("https://moved.test:{}/a/b?c=d", s.tls_addr.port()).as_str()));
    assert!(!s.moved.app_requests().iter().any(|r| r.target == "/a/b?c=d"), "a redirected request never reaches the backend");
    let (status, _) = curl(s.tls_addr, &s.ca_path, "moved.test", "/a/b?c=d", &[]);
    assert_eq!(status, 200);

    // What the admin API says.
    let certs = admin_request(s.h.admin, "GET", "/api/certificates", None).unwrap();
    let list: serde_json::Value = serde_json::from_str(&certs.body).unwrap();
    let app = list.as_array().unwrap().iter().find(|c| c["host"] == "app.test").expect("app.test listed");
    assert_eq!(app["source"], "file");
    assert!(app["not_after"].as_str().is_some_and(|t| t.ends_with('Z')), "{app}");
    assert_eq!(app["service"], "app");
    assert!(app["error"].is_null());
    let metrics = admin_request(s.h.admin, "GET", "/metrics", None).unwrap().body;
    let expiry = metric(&metrics, "hawser_certificate_expiry_seconds{host=\"app.test\"}").expect("expiry metric");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is in the future");
}

#[test]
fn replaced_files_are_served_without_a_restart_and_bad_ones_keep_the_old() {
    let s = site("tls-reload", "");
    let certs = s.dir.0.join("certs");
    let first = connect(s.tls_addr, Some("app.test"), &["http/1.1"]).unwrap();
    let old_serial = first.presented.serial.clone();
    let mut open = first;
    assert_eq!(open.get("app.test", "/before").unwrap().0, 200);

    // Replaced (as deploy tools do, by rename): new handshakes see the new certificate.
    s.ca.write_leaf(&certs, "app", "crt", &["app.test", "moved.test", "new.test"]);
    let new_serial = wait_until("the replaced certificate served", SECS_10 + SECS_5, || {
        let p = connect(s.tls_addr, Some("app.test"), &["http/1.1"]).ok()?.presented;
        (p.serial != old_serial).then_some(p.serial)
    });
    assert_eq!(names(&s, Some("new.test")), ["app.test", "moved.test", "new.test"]);
    // The connection made before keeps working.
    assert_eq!(open.get("app.test", "/after").unwrap().0, 200);

    // A broken replacement: the certificate it replaced keeps serving, and the API says why.
    write_atomic(&certs.join("app.crt"), b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
    let why = wait_until("the bad file reported", SECS_10 + SECS_5, || {
        let body = admin_request(s.h.admin, "GET", "/api/certificates", None).ok()?.body;
        let list: serde_json::Value = serde_json::from_str(&body).ok()?;
        let app = list.as_array()?.iter().find(|c| c["host"] == "app.test")?.clone();
        let error = app["error"].as_str()?.to_string();
        Some((error, app))
    });
    assert!(why.0.contains("app.crt"), "the error names the file: {}", why.0);
    assert_eq!(why.1["source"], "file");
    assert_eq!(connect(s.tls_addr, Some("app.test"), &["http/1.1"]).unwrap().presented.serial, new_serial);

    // A key that does not match: still the old one.
    let (cert, _) = s.ca.leaf(&["app.test"]);
    let (_, other_key) = s.ca.leaf(&["app.test"]);
    write_atomic(&certs.join("app.key"), other_key.as_bytes());
    write_atomic(&certs.join("app.crt"), cert.as_bytes());
    wait_until("the mismatch reported", SECS_10 + SECS_5, || {
        let body = admin_request(s.h.admin, "GET", "/api/certificates", None).ok()?.body;
        body.contains("does not match").then_some(())
    });
    assert_eq!(connect(s.tls_addr, Some("app.test"), &["http/1.1"]).unwrap().presented.serial, new_serial);

    // Fixed, and told with SIGHUP: served again.
    s.ca.write_leaf(&certs, "app", "crt", &["app.test", "fixed.test"]);
    s.h.signal(libc_sighup());
    wait_until("the fixed certificate served", SECS_10, || {
        let p = connect(s.tls_addr, Some("app.test"), &["http/1.1"]).ok()?.presented;
        (p.names.contains(&"fixed.test".to_string())).then_some(())
    });
    // Removed from the directory: no longer served.
    std::fs::remove_file(certs.join("wild.pem")).unwrap();
    wait_until("the removed certificate dropped", SECS_10 + SECS_5, || {
        (names(&s, Some("x.w.test")) == ["hawser.invalid"]).then_some(())
    });
}

fn libc_sighup() -> i32 {
    1
}

#[test]
fn refused_default_handshakes_and_the_handshake_deadline() {
    let s = site("tls-refuse", "  default_certificate: refuse\n");
    assert!(connect(s.tls_addr, Some("unknown.test"), &["http/1.1"]).is_err(), "unknown SNI refused");
    assert!(connect(s.tls_addr, None, &["http/1.1"]).is_err(), "no SNI refused");
    assert_eq!(names(&s, Some("app.test")), ["app.test", "moved.test"]);
    wait_until("both refused handshakes counted", SECS_5, || {
        let m = admin_request(s.h.admin, "GET", "/metrics", None).ok()?.body;
        (metric(&m, "hawser_tls_handshake_errors_total{reason=\"no_certificate\"}")? >= 2.0).then_some(())
    });

    // A client that connects and sends no ClientHello is closed after clients.header_timeout.
    let mut idle = TcpStream::connect(s.tls_addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut idle, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(start.elapsed() < Duration::from_secs(5), "closed after {:?}", start.elapsed());
    // Half a ClientHello, then silence: closed too.
    let mut half = TcpStream::connect(s.tls_addr).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    half.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").unwrap();
    let start = Instant::now();
    let _ = std::io::Read::read(&mut half, &mut buf);
    assert!(start.elapsed() < Duration::from_secs(5), "closed after {:?}", start.elapsed());
    // Counted once the handshake's future has ended, which closed the connection first.
    wait_until("both handshake timeouts counted", SECS_5, || {
        let m = admin_request(s.h.admin, "GET", "/metrics", None).ok()?.body;
        (metric(&m, "hawser_tls_handshake_errors_total{reason=\"timeout\"}")? >= 2.0).then_some(())
    });
    // Cleartext HTTP on the TLS port is no TLS: closed, and counted.
    let mut plain = TcpStream::connect(s.tls_addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n").unwrap();
    let _ = std::io::Read::read(&mut plain, &mut buf);
    wait_until("a protocol error counted", SECS_5, || {
        let m = admin_request(s.h.admin, "GET", "/metrics", None).ok()?.body;
        (metric(&m, "hawser_tls_handshake_errors_total{reason=\"protocol\"}")? >= 1.0).then_some(())
    });
}

#[test]
fn bad_tls_settings_are_named_by_file_line_and_key() {
    let env = TestEnv::new("tls-check");
    let dir = TempDir::new("tls-check");
    let ca = TestCa::new("check CA");
    let good = ca.write_leaf(&dir.0, "good", "crt", &["good.test"]);
    let (_, other_key) = ca.leaf(&["good.test"]);
    std::fs::write(dir.0.join("other.key"), other_key).unwrap();
    let base = env.default_config();
    let missing = dir.0.join("missing.crt");
    let cases: Vec<(String, &str, String)> = vec![
        (
            format!("tls:\n  certificates:\n    - {{cert: \"{}\", key: \"{}\"}}\n", missing.display(), dir.0.join("good.key").display()),
            "tls.certificates[0]",
            missing.display().to_string(),
        ),
        (
            format!("tls:\n  certificates:\n    - {{cert: \"{}\", key: \"{}\"}}\n", good.display(), dir.0.join("other.key").display()),
            "tls.certificates[0]",
            "does not match".to_string(),
        ),
        ("tls:\n  directory: /nonexistent/hawser-certs\n".to_string(), "tls.directory", "/nonexistent/hawser-certs".to_string()),
        ("tls:\n  default_certificate: maybe\n".to_string(), "tls.default_certificate", "self_signed".to_string()),
        ("tls:\n  acme: {directory: \"http://ca.example/dir\", storage: /tmp}\n".to_string(), "tls.acme.directory", "https".to_string()),
        ("tls:\n  acme: {directory: \"https://ca.example/dir\"}\n".to_string(), "tls.acme", "storage".to_string()),
        ("tls:\n  acme: {directory: \"https://ca.example/dir\", storage: /tmp, email: nobody}\n".to_string(), "tls.acme.email", "e-mail".to_string()),
        ("services:\n  a: {hosts: [a.test], tls: true}\n".to_string(), "services.a.tls", "tls:".to_string()),
        ("tls:\n  listen: [\"0.0.0.0:9900\"]\n".to_string(), "tls.listen", "overlaps 127.0.0.1:9900".to_string()),
        ("services:\n  a: {hosts: [a.test], hsts: \"max-age=x\"}\n".to_string(), "services.a.hsts", "max-age".to_string()),
        ("services:\n  a: {hosts: [a.test], scheme: ftp}\n".to_string(), "services.a.scheme", "https".to_string()),
    ];
    for (extra, key, needle) in cases {
        let (code, out) = env.hawser_check(&format!("{base}{extra}"));
        assert_ne!(code, 0, "{extra}: accepted\n{out}");
        assert!(out.contains(key), "{extra}: the error names {key}: {out}");
        assert!(out.contains(&needle), "{extra}: the error says {needle:?}: {out}");
        if key.starts_with("tls.certificates") {
            let line = out.split(".yaml:").nth(1).and_then(|r| r.split(':').next()).and_then(|l| l.parse::<u32>().ok());
            assert!(line.is_some_and(|l| l > 3), "{extra}: the error names the line: {out}");
        }
    }
    let (code, out) = env.hawser_check(&format!(
        "{base}tls:\n  listen: [\"127.0.0.1:0\"]\n  certificates:\n    - {{cert: \"{}\", key: \"{}\"}}\n  default_certificate: refuse\n",
        good.display(),
        dir.0.join("good.key").display()
    ));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn tls_labels_that_contradict_their_service_are_refused() {
    let env = TestEnv::new("tls-labels");
    let _a = web(&env, "a", "lbl.test", "lbl");
    let h = env.hawser(&format!("{}tls:\n  listen: [\"$LISTEN2\"]\n", env.default_config()));
    wait_response("a routed", h.addr, "lbl.test", "/", SECS_10, |r| r.status == 200);
    let first = env.run(ContainerSpec::new("b").hawser("enable", "true").hawser("host", "lbl2.test").hawser("service", "lbl2").hawser("tls", "true"));
    let second = env.run(ContainerSpec::new("c").hawser("enable", "true").hawser("service", "lbl2").hawser("tls", "false"));
    // The first container of the service (running, then oldest: the two may share a creation
    // time, and then the id decides) sets `tls`; the other is refused, naming it.
    let (refused, reason) = wait_until("one of the two refused for contradicting the other", SECS_10, || {
        let body = admin_request(h.admin, "GET", "/api/containers", None).ok()?.body;
        let list: serde_json::Value = serde_json::from_str(&body).ok()?;
        list.as_array()?.iter().find_map(|c| {
            let name = c["container_name"].as_str()?;
            let reason = c["reason"].as_str().filter(|r| r.contains("contradicts"))?;
            [&first, &second].into_iter().find(|k| k.name == name).map(|k| (k.name.clone(), reason.to_string()))
        })
    });
    let other = if refused == first.name { &second.name } else { &first.name };
    assert!(reason.contains(&format!("{}.tls=", env.prefix)) && reason.contains(other.as_str()), "{reason}");
    // With tls=true decided by b, its host asks for a certificate.
    if refused == second.name {
        let certs = admin_request(h.admin, "GET", "/api/certificates", None).unwrap().body;
        assert!(certs.contains("lbl2.test"), "{certs}");
    }
}
