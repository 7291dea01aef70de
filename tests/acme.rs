//! Certificates from ACME, end to end against Debian's pebble on loopback (see
//! tests/common/pebble.rs): a labelled container gets a certificate a curl trusting only
//! pebble's root accepts; a restart serves the stored one and orders nothing; short
//! certificates renew on their own; a CA that is gone leaves the old certificate serving and
//! the failure backed off, across a restart too; two hawsers sharing one storage directory
//! order once between them, wait out each other's failed orders, and a challenge reaching the
//! one that did not order is answered.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::pebble::{Pebble, PebbleOptions};
use common::*;
use serde_json::Value;

const APP: &str = "app.hawser.test";
const SECS_30: Duration = Duration::from_secs(30);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// hawser's configuration: cleartext on `http`, TLS on `https`, certificates from `pebble`.
fn config(pebble: &Pebble, http: SocketAddr, https: SocketAddr, storage: &Path) -> String {
    format!(
        "listen: [\"{http}\"]\n\
         docker:\n  label_prefix: \"$PREFIX\"\n  network: \"$NETWORK\"\n\
         tls:\n  listen: [\"{https}\"]\n  acme:\n    directory: \"{}\"\n    email: \"ops@hawser.test\"\n    storage: \"{}\"\n    ca_root: \"{}\"\n",
        pebble.directory,
        storage.display(),
        pebble.https_root.display()
    )
}

/// Starts hawser on a configuration whose listen addresses were chosen by the test (pebble
/// must know the cleartext port before hawser starts).
fn start(env: &TestEnv, yaml: &str, http: SocketAddr) -> Hawser {
    let mut h = env.spawn_hawser(yaml, &[], &[]);
    h.addr = http;
    h.wait_ready(SECS_10);
    h
}

fn app(env: &TestEnv) -> Container {
    env.run(ContainerSpec::new("app").hawser("enable", "true").hawser("host", APP).hawser("tls", "true"))
}

fn certificates(h: &Hawser) -> Vec<Value> {
    admin_json(h, "/api/certificates").as_array().cloned().unwrap_or_else(|| panic!("/api/certificates is not a list"))
}

fn certificate(h: &Hawser, host: &str) -> Option<Value> {
    certificates(h).into_iter().find(|c| c["host"] == host)
}

/// Polls `/api/certificates` until `host`'s line satisfies `pred`; panics with both logs.
fn wait_certificate(h: &Hawser, pebble: &Pebble, host: &str, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let line = certificate(h, host);
        if let Some(c) = line.as_ref().filter(|c| pred(c)) {
            return c.clone();
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {:?} waiting for {host}: {what}; last: {line:?}\nhawser log:\n{}\npebble log:\n{}",
                start.elapsed(),
                h.log(),
                pebble.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn orders(h: &Hawser, result: &str) -> f64 {
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("GET /metrics");
    let series = format!("hawser_acme_orders_total{{result=\"{result}\"}}");
    metric(&r.body, &series).unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// `curl --cacert ROOT --resolve HOST:PORT:127.0.0.1 https://HOST:PORT/`: (status, headers
/// and body), or curl's error.
fn curl(https: SocketAddr, host: &str, root: &Path) -> Result<(u16, String), String> {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5", "--cacert"])
        .arg(root)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", https.port()))
        .arg(format!("https://{host}:{}/", https.port()))
        .output()
        .expect("run curl");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

fn assert_served_by(https: SocketAddr, root: &Path, backend: &Container, h: &Hawser) {
    let (status, text) = curl(https, APP, root).unwrap_or_else(|e| panic!("curl over TLS failed: {e}\nhawser log:\n{}", h.log()));
    assert_eq!(status, 200, "{text}");
    assert!(text.to_ascii_lowercase().contains(&format!("x-backend: {}", backend.name)), "{text}");
}

/// RFC 3339 (UTC, seconds), as the admin API writes times: such strings compare as times.
fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn unix(text: &Value) -> i64 {
    let text = text.as_str().unwrap_or_else(|| panic!("not a time: {text}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .unix_timestamp()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, u32, bool)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let meta = std::fs::metadata(&path).unwrap();
        out.push((path.clone(), meta.mode() & 0o777, meta.is_dir()));
        if meta.is_dir() {
            walk(&path, out);
        }
    }
}

#[test]
fn a_labelled_container_gets_a_certificate_and_a_restart_reuses_it() {
    let env = TestEnv::new("acme-issue");
    let backend = app(&env);
    // A wildcard route asks TLS too: HTTP-01 cannot prove it, so it is never ordered.
    env.run(
        ContainerSpec::new("wild").hawser("enable", "true").hawser("host", "*.wild.hawser.test").hawser("service", "wild").hawser("tls", "true"),
    );
    let (http, https) = (loopback(), loopback());
    let pebble = Pebble::start("issue", PebbleOptions { http_port: http.port(), validity_secs: None });
    let storage = TempDir::new("acme-issue-storage");
    let yaml = config(&pebble, http, https, &storage.0);

    let h = start(&env, &yaml, http);
    let issued = wait_certificate(&h, &pebble, APP, "a certificate from pebble", SECS_30, |c| c["source"] == "acme");
    assert_eq!(issued["error"], Value::Null, "{issued}");
    assert_eq!(issued["names"], serde_json::json!([APP]), "{issued}");
    let root = pebble.issuing_root();
    assert_served_by(https, &root, &backend, &h);
    assert_eq!(orders(&h, "issued"), 1.0, "one order: the wildcard is never ordered\n{}", h.log());
    assert_eq!(orders(&h, "failed"), 0.0, "{}", h.log());

    let wild = certificate(&h, "*.wild.hawser.test").expect("the wildcard route is listed");
    assert!(wild["error"].as_str().is_some_and(|e| e.contains("DNS-01")), "{wild}");
    assert_eq!(wild["source"], "default", "{wild}");
    // A client naming a host no route asks TLS for gets the default certificate; nothing is
    // ordered for it.
    let out = Command::new("curl")
        .args(["-sS", "-k", "-o", "/dev/null", "--max-time", "5", "--resolve"])
        .arg(format!("stranger.hawser.test:{}:127.0.0.1", https.port()))
        .arg(format!("https://stranger.hawser.test:{}/", https.port()))
        .output()
        .expect("run curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(certificate(&h, "stranger.hawser.test").is_none());

    // Storage: private files, private directories, one account, the certificate's three files.
    let mut files = Vec::new();
    walk(&storage.0, &mut files);
    for (path, mode, is_dir) in &files {
        assert_eq!(*mode, if *is_dir { 0o700 } else { 0o600 }, "{}", path.display());
    }
    let host_dir = storage.0.join("certificates").join(APP);
    for ext in ["crt", "key", "json"] {
        assert!(host_dir.join(format!("{APP}.{ext}")).is_file(), "{ext}: {files:?}");
    }
    let accounts = std::fs::read_dir(storage.0.join("accounts")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count();
    assert_eq!(accounts, 1, "{files:?}");

    // Restart on the same storage: the stored certificate is served at once, nothing is
    // ordered, and its renewal is years away (pebble's default validity).
    drop(h);
    let (http2, https2) = (loopback(), loopback());
    let h2 = start(&env, &config(&pebble, http2, https2, &storage.0), http2);
    let reused = wait_certificate(&h2, &pebble, APP, "the stored certificate", SECS_10, |c| c["source"] == "acme");
    assert_eq!(reused["not_after"], issued["not_after"], "{reused}");
    h2.wait_log("serving the stored certificate", SECS_5);
    let next = reused["next_renewal"].as_str().expect("next_renewal").to_string();
    assert!(next > rfc3339(unix_now() + 86_400), "renewal is not due: {reused}");
    assert_served_by(https2, &root, &backend, &h2);
    assert_eq!(orders(&h2, "issued"), 0.0, "{}", h2.log());
    assert_eq!(orders(&h2, "failed"), 0.0, "{}", h2.log());
}

#[test]
fn short_certificates_renew_on_their_own_and_a_dead_ca_backs_off() {
    let env = TestEnv::new("acme-renew");
    let backend = app(&env);
    let (http, https) = (loopback(), loopback());
    // 45 s: renewal when 15 s remain, i.e. 30 s after issuance.
    let mut pebble = Pebble::start("renew", PebbleOptions { http_port: http.port(), validity_secs: Some(45) });
    let storage = TempDir::new("acme-renew-storage");
    let h = start(&env, &config(&pebble, http, https, &storage.0), http);
    let first = wait_certificate(&h, &pebble, APP, "a certificate from pebble", SECS_30, |c| c["source"] == "acme");
    let root = pebble.issuing_root();
    assert_served_by(https, &root, &backend, &h);

    // Renewed without a restart: a new expiry, a second issued order.
    let renewed = wait_certificate(&h, &pebble, APP, "a renewed certificate", Duration::from_secs(60), |c| {
        c["source"] == "acme" && c["not_after"] != first["not_after"]
    });
    // When a third of the lifetime remained: about 30 s after the first, not at once.
    let between = unix(&renewed["not_after"]) - unix(&first["not_after"]);
    assert!((20..=45).contains(&between), "renewed {between} s after the first issuance: {first} then {renewed}");
    assert_eq!(orders(&h, "issued"), 2.0, "{}", h.log());
    assert_served_by(https, &root, &backend, &h);

    // The CA goes away: the next renewal fails, is backed off (a minute at least), and the
    // certificate it has keeps serving.
    pebble.stop();
    let failed = wait_certificate(&h, &pebble, APP, "a failed renewal", Duration::from_secs(60), |c| !c["error"].is_null());
    let seen = unix_now();
    assert_eq!(failed["source"], "acme", "{failed}");
    assert_eq!(failed["not_after"], renewed["not_after"], "{failed}");
    let next = failed["next_renewal"].as_str().expect("next_renewal");
    assert!(next > rfc3339(seen + 30).as_str(), "the retry is backed off: {failed}");
    assert!(orders(&h, "failed") >= 1.0, "{}", h.log());
    assert_served_by(https, &root, &backend, &h);
    h.wait_log(&format!("ACME: {APP}: no certificate:"), SECS_5);

    // A restart (a crash loop, say) does not order again at once: the run of failures is in
    // the storage, and the new process waits for the same next attempt. Ordering at once
    // would fail at once too (the CA is still gone) and count a failed order.
    let failed = certificate(&h, APP).expect("the host's line");
    drop(h);
    let h = start(&env, &config(&pebble, http, https, &storage.0), http);
    let restarted = wait_certificate(&h, &pebble, APP, "the stored certificate and failures", SECS_10, |c| {
        c["source"] == "acme" && !c["error"].is_null()
    });
    assert_eq!(restarted["next_renewal"], failed["next_renewal"], "restarted: {restarted}\nbefore: {failed}\nhawser log:\n{}", h.log());
    assert_eq!(restarted["error"], failed["error"], "{restarted}");
    assert_eq!(orders(&h, "failed"), 0.0, "ordered at once after the restart\nhawser log:\n{}", h.log());
}

/// Two hawsers on one storage, cleartext on `http_a` and `http_b`, started at once (so both
/// want the certificate at once): A, B and their TLS addresses.
fn two_sharing(env: &TestEnv, pebble: &Pebble, storage: &Path, http_a: SocketAddr, http_b: SocketAddr) -> (Hawser, Hawser, SocketAddr, SocketAddr) {
    let (https_a, https_b) = (loopback(), loopback());
    let mut a = env.spawn_hawser(&config(pebble, http_a, https_a, storage), &[], &[]);
    let mut b = env.spawn_hawser(&config(pebble, http_b, https_b, storage), &[], &[]);
    a.addr = http_a;
    b.addr = http_b;
    a.wait_ready(SECS_10);
    b.wait_ready(SECS_10);
    (a, b, https_a, https_b)
}

/// Answers pebble's HTTP-01 requests from whichever hawser has the token: the two hawsers of
/// the shared-storage test listen on two ports, pebble validates on one.
struct Relay {
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(listener: TcpListener, targets: Vec<SocketAddr>) -> Relay {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
                        Self::answer(&mut client, &targets);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Relay { stop }
    }

    fn answer(client: &mut TcpStream, targets: &[SocketAddr]) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            match client.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head);
        let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
        let host = text
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("host")).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_default();
        // The hawser without the token routes the request to the backend, which answers 200
        // too: only a key authorization (`<token>.<thumbprint>`) counts.
        let token = path.rsplit('/').next().unwrap_or("").to_string();
        let found = targets.iter().find_map(|t| get(*t, &host, &path).ok().filter(|r| r.status == 200 && r.body.starts_with(&format!("{token}."))));
        let (status, body) = found.map_or((404, String::new()), |r| (200, r.body));
        let _ = write!(client, "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn two_hawsers_sharing_a_storage_directory_order_once() {
    let env = TestEnv::new("acme-shared");
    let backend = app(&env);
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let pebble = Pebble::start("shared", PebbleOptions { http_port: relay.local_addr().unwrap().port(), validity_secs: None });
    let storage = TempDir::new("acme-shared-storage");
    let (http_a, http_b) = (loopback(), loopback());
    let _relay = Relay::start(relay, vec![http_a, http_b]);
    let (a, b, https_a, https_b) = two_sharing(&env, &pebble, &storage.0, http_a, http_b);
    let from_a = wait_certificate(&a, &pebble, APP, "a certificate", SECS_30, |c| c["source"] == "acme");
    let from_b = wait_certificate(&b, &pebble, APP, "a certificate", SECS_30, |c| c["source"] == "acme");
    assert_eq!(from_a["not_after"], from_b["not_after"], "the same certificate: {from_a} {from_b}");
    let issued = orders(&a, "issued") + orders(&b, "issued");
    assert_eq!(issued, 1.0, "one order between them\nA:\n{}\nB:\n{}", a.log(), b.log());
    assert_eq!(orders(&a, "failed") + orders(&b, "failed"), 0.0, "A:\n{}\nB:\n{}", a.log(), b.log());
    let accounts = std::fs::read_dir(storage.0.join("accounts")).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json")).count();
    assert_eq!(accounts, 1, "one account between them");
    let root = pebble.issuing_root();
    assert_served_by(https_a, &root, &backend, &a);
    assert_served_by(https_b, &root, &backend, &b);
}

/// Behind one load balancer, the CA's validation request can reach a hawser that is not the
/// one ordering. Here pebble validates on B, which shares A's storage but has no route that
/// asks TLS for the host (another label prefix: it sees no container), so only A orders;
/// B answers A's challenge from the storage (`<storage>/challenges/<token>`).
#[test]
fn a_challenge_is_answered_by_a_hawser_that_did_not_order() {
    let env = TestEnv::new("acme-ha");
    let backend = app(&env);
    let (http_a, https_a, http_b, https_b) = (loopback(), loopback(), loopback(), loopback());
    let pebble = Pebble::start("ha", PebbleOptions { http_port: http_b.port(), validity_secs: None });
    let storage = TempDir::new("acme-ha-storage");
    // B first: pebble validates on it as soon as A orders.
    let b_config = config(&pebble, http_b, https_b, &storage.0).replace("\"$PREFIX\"", &format!("\"hawser-test-none-{}\"", std::process::id()));
    let mut b = env.spawn_hawser(&b_config, &[], &[]);
    b.addr = http_b;
    b.wait_ready(SECS_10);
    let mut a = env.spawn_hawser(&config(&pebble, http_a, https_a, &storage.0), &[], &[]);
    a.addr = http_a;
    a.wait_ready(SECS_10);
    let issued = wait_certificate(&a, &pebble, APP, "a certificate validated through B", SECS_30, |c| c["source"] == "acme");
    assert!(issued["error"].is_null(), "{issued}");
    assert_eq!(orders(&a, "issued"), 1.0, "A:\n{}", a.log());
    assert_eq!(orders(&b, "issued") + orders(&b, "failed"), 0.0, "B ordered\nB:\n{}", b.log());
    assert!(certificate(&b, APP).is_none(), "B has no route asking TLS for {APP}");
    assert_served_by(https_a, &pebble.issuing_root(), &backend, &a);
    // The order's answers are gone from the storage with it.
    let left: Vec<_> = std::fs::read_dir(storage.0.join("challenges")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "challenge answers left behind: {left:?}");
}

/// A failed order holds for every hawser sharing the storage: the one that ordered records
/// its failure while it still holds the host's lock, and the other, next in line, waits for
/// the same next attempt instead of ordering again. pebble validates on a port nobody
/// listens on, so every order fails at the CA and is counted.
#[test]
fn hawsers_sharing_a_storage_wait_out_each_others_failures() {
    let env = TestEnv::new("acme-shared-fail");
    let _backend = app(&env);
    let nobody = loopback();
    let pebble = Pebble::start("shared-fail", PebbleOptions { http_port: nobody.port(), validity_secs: None });
    let storage = TempDir::new("acme-shared-fail-storage");
    let (a, b, _, _) = two_sharing(&env, &pebble, &storage.0, loopback(), loopback());
    // A line shows an error once its hawser's own attempt ended: failed, or deferred to the
    // other's record; a failed order is counted before its line changes.
    let failed = |h: &Hawser| wait_certificate(h, &pebble, APP, "a failed order", SECS_30, |c| !c["error"].is_null());
    let (line_a, line_b) = (failed(&a), failed(&b));
    let logs = || format!("A:\n{}\nB:\n{}", a.log(), b.log());
    assert_eq!(orders(&a, "failed") + orders(&b, "failed"), 1.0, "one failed order between them\n{}", logs());
    assert_eq!(line_a["next_renewal"], line_b["next_renewal"], "one back-off for both: {line_a} {line_b}\n{}", logs());
    assert_eq!(line_a["error"], line_b["error"], "{line_a} {line_b}");
}
