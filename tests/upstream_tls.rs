//! TLS toward backends (`scheme: https`), against the real Docker engine: TLS origins run in
//! this process on loopback, each with its own certificate, and `--network host` containers
//! put them behind hawser (hawser routes those to `127.0.0.1:PORT`).
//!
//! - verified with the CA given by `ca`: 200, and the origin saw the name hawser was told
//!   (`server_name`) or the request's own host (one of the service's exact hosts);
//! - a name the certificate does not cover: 502 at once, counted as a connect error, logged;
//!   a probe that fails verification keeps the backend out with a reason that says so;
//! - 100 upgraded connections (101, then an echo) over TLS to the backend, none ended at
//!   its 101 (each a fresh, held connection: `src/upstream/hold.rs`);
//! - `tls_verify: false`: 200 from an origin whose certificate nothing would verify;
//! - probes speak TLS: the origin saw `/healthz` over TLS, and a cleartext-only backend of
//!   an https service is never ready and never gets a cleartext request;
//! - the same from labels, and a label naming an unusable CA file refuses its container.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::recorder::{LoopbackServer, Recorder};
use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;

/// What a TLS origin saw: one entry per request, with the SNI of its connection.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    path: String,
    host: String,
}

/// An HTTPS/1.1 origin on 127.0.0.1 in this process. Answers every request `200` with
/// `X-Backend: NAME` and the body `NAME PATH`; keeps connections alive.
struct TlsOrigin {
    seen: Arc<Mutex<Vec<Seen>>>,
    server: LoopbackServer,
}

impl TlsOrigin {
    fn start(name: &str, chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsOrigin {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the origin's certificate and key");
        let config = Arc::new(config);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, n) = (Arc::clone(&seen), name.to_string());
        let server = LoopbackServer::start("a TLS origin", move |conn| serve_tls(conn, Arc::clone(&config), &n, &s));
        TlsOrigin { seen, server }
    }

    fn port(&self) -> u16 {
        self.server.addr.port()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The SNIs of the requests for `path`.
    fn snis(&self, path: &str) -> Vec<Option<String>> {
        self.seen().into_iter().filter(|s| s.path == path).map(|s| s.sni).collect()
    }
}

fn serve_tls(tcp: TcpStream, config: Arc<rustls::ServerConfig>, name: &str, seen: &Mutex<Vec<Seen>>) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
    let mut reader = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    loop {
        // A failed handshake (hawser refusing the certificate) ends here, as an error.
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let (mut host, mut close, mut upgrade) = (String::new(), false, None);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "host" => host = v.trim().to_string(),
                    "connection" => close = v.trim().eq_ignore_ascii_case("close"),
                    "upgrade" => upgrade = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
        let sni = reader.get_ref().conn.server_name().map(str::to_string);
        seen.lock().unwrap().push(Seen { sni, path: path.clone(), host });
        if let Some(protocol) = upgrade {
            // An upgrade: 101, then an echo of whatever comes until the client closes.
            let resp = format!("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {protocol}\r\n\r\n");
            if reader.get_mut().write_all(resp.as_bytes()).and_then(|()| reader.get_mut().flush()).is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut reader, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let stream = reader.get_mut();
                        if stream.write_all(&buf[..n]).and_then(|()| stream.flush()).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let body = format!("{name} {path}");
        let resp = format!("HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let stream = reader.get_mut();
        if stream.write_all(resp.as_bytes()).and_then(|()| stream.flush()).is_err() || close {
            return;
        }
    }
}

/// A CA (its PEM) and a leaf it signed for `names` (chain and key, for an origin).
fn ca_and_leaf(names: &[&str]) -> (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "hawser test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    (ca_pem, vec![leaf.der().clone()], key)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A running `--network host` container that a selector or its labels make a backend at
/// `127.0.0.1:port`; its own process listens on a port nobody uses.
fn on_host(env: &TestEnv, spec: ContainerSpec) -> Container {
    env.run(spec.network("host").env("BIND", "127.0.0.1").env("PORTS", &free_port().to_string()))
}

/// The `/api/containers` entry of `c` once `pred` holds (10 s).
fn wait_container(h: &Hawser, c: &Container, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = wait_until_or(SECS_10, || {
        let all = admin_json(h, "/api/containers");
        let v = all.as_array()?.iter().find(|v| v["container_name"] == c.name.as_str())?.clone();
        last = v.clone();
        pred(&v).then_some(v)
    });
    found.unwrap_or_else(|| panic!("container {} never {what}; last entry {last}\nhawser log:\n{}", c.name, h.log()))
}

/// Like [`wait_until`], but `None` on timeout, so that the caller can say what it last saw.
fn wait_until_or<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn yaml_services_verify_their_tls_backends() {
    let env = TestEnv::new("upstream-tls-yaml");
    let dir = TempDir::new("upstream-tls-yaml");
    let (ca, chain, key) = ca_and_leaf(&["backend.internal", "a-byhost.test"]);
    let ca = write(&dir.0, "ca.pem", &ca);
    let origin = TlsOrigin::start("origin", chain, key);
    // Signed by a CA hawser is never told of, for a name nobody asks for.
    let (_, chain, key) = ca_and_leaf(&["elsewhere.invalid"]);
    let stranger = TlsOrigin::start("stranger", chain, key);
    let cleartext = Recorder::start("cleartext");

    let select = |service: &str| format!("upstream-tls={}-{service}", env.id);
    let service = |name: &str, hosts: &str, port: u16, tls: &str| {
        format!(
            "  {name}:\n    hosts: [{hosts}]\n    port: {port}\n    selector: {{label: \"{}\"}}\n    health_check: {{path: /healthz, interval: 200ms, rise: 1, fall: 1}}\n{tls}",
            select(name)
        )
    };
    let config = format!(
        "{}services:\n{}{}{}{}{}",
        env.default_config(),
        service("verified", "verified.test", origin.port(), &format!("    scheme: https\n    server_name: backend.internal\n    ca: {ca}\n")),
        service("byhost", "a-byhost.test, z-other.test", origin.port(), &format!("    scheme: https\n    ca: {ca}\n")),
        service("wrongname", "wrongname.test", origin.port(), &format!("    scheme: https\n    server_name: wrong.internal\n    ca: {ca}\n")),
        service("insecure", "insecure.test", stranger.port(), "    scheme: https\n    tls_verify: false\n"),
        service("cleartext", "cleartext.test", cleartext.port(), "    scheme: https\n"),
    );
    let containers: Vec<(&str, Container)> = ["verified", "byhost", "wrongname", "insecure", "cleartext"]
        .into_iter()
        .map(|s| {
            let (k, v) = select(s).split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap();
            (s, on_host(&env, ContainerSpec::new(s).label(&k, &v)))
        })
        .collect();
    let container = |s: &str| &containers.iter().find(|(n, _)| *n == s).unwrap().1;
    let h = env.hawser(&config);

    // (a) Verified with the service's CA, under the name hawser was told.
    let r = wait_response("verified.test routed over TLS", h.addr, "verified.test", "/a", SECS_10, |r| r.status == 200);
    assert_eq!((r.backend(), r.body.as_str()), (Some("origin"), "origin /a"));
    assert_eq!(origin.snis("/a"), [Some("backend.internal".to_string())], "{:?}", origin.seen());
    // The name toward the backend is not the request's: its Host goes through as sent.
    assert!(origin.seen().iter().any(|s| s.path == "/a" && s.host == "verified.test"), "{:?}", origin.seen());
    // Upgraded connections over TLS to the backend (a fresh, held connection each: see
    // src/upstream/hold.rs): every tunnel echoes its first bytes, none ends at its 101.
    for i in 0..100 {
        let mut s = TcpStream::connect(h.addr).unwrap();
        s.set_read_timeout(Some(SECS_5)).unwrap();
        let request = "GET /tunnel HTTP/1.1\r\nHost: verified.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        s.write_all(request.as_bytes()).unwrap();
        let text = format!("over-tls-{i}");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let mut sent = false;
        while !String::from_utf8_lossy(&got).contains(&text) {
            let n = std::io::Read::read(&mut s, &mut buf)
                .unwrap_or_else(|e| panic!("tunnel {i} over TLS: no echo ({e}); got {:?}\nhawser log:\n{}", String::from_utf8_lossy(&got), h.log()));
            assert!(n > 0, "tunnel {i} over TLS ended; got {:?}\nhawser log:\n{}", String::from_utf8_lossy(&got), h.log());
            got.extend_from_slice(&buf[..n]);
            if !sent && got.windows(4).any(|w| w == b"\r\n\r\n") {
                assert!(got.starts_with(b"HTTP/1.1 101"), "{:?}", String::from_utf8_lossy(&got));
                s.write_all(text.as_bytes()).unwrap();
                sent = true;
            }
        }
    }
    assert_eq!(origin.snis("/tunnel").len(), 100, "every tunnel a TLS connection with SNI: {:?}", origin.snis("/tunnel"));
    assert!(origin.snis("/tunnel").iter().all(|s| s.as_deref() == Some("backend.internal")));
    // Without server_name, a request for one of the service's exact hosts sends that host.
    let r = wait_response("a-byhost.test routed over TLS", h.addr, "a-byhost.test", "/b", SECS_10, |r| r.status == 200);
    assert_eq!(r.body, "origin /b");
    assert_eq!(origin.snis("/b"), [Some("a-byhost.test".to_string())], "{:?}", origin.seen());
    // (d) The probes went over TLS too, with the same names (the Host header as before).
    let probes = origin.snis("/healthz");
    for name in ["backend.internal", "a-byhost.test"] {
        assert!(probes.contains(&Some(name.to_string())), "no TLS probe with SNI {name}: {probes:?}");
    }
    assert!(probes.iter().all(|p| p.is_some()), "a probe without SNI: {probes:?}");

    // (b) A host of the service that the certificate does not cover: 502 at once, a connect
    // error against the backend, and rustls' reason in the log.
    let started = Instant::now();
    let r = h.get("z-other.test", "/c").unwrap();
    assert_eq!(r.status, 502, "{}\nhawser log:\n{}", r.body, h.log());
    assert!(started.elapsed() < Duration::from_secs(5), "the 502 took {:?}", started.elapsed());
    assert!(r.body.contains("no backend of service byhost could be reached"), "{}", r.body);
    assert!(origin.snis("/c").is_empty(), "nothing reached the origin: {:?}", origin.seen());
    let byhost = &container("byhost").name;
    let metrics = admin_request(h.admin, "GET", "/metrics", None).unwrap().body;
    let series = format!("hawser_upstream_connect_errors_total{{backend=\"{byhost}\",service=\"byhost\"}}");
    assert!(metric(&metrics, &series).is_some_and(|n| n >= 1.0), "{series} in\n{metrics}");
    h.wait_log_line("the TLS failure logged with service, backend and reason", SECS_5, |l| {
        l.contains("WARN")
            && l.contains("service byhost: backend")
            && l.contains(byhost.as_str())
            && l.contains("TLS handshake failed")
            && l.contains("z-other.test")
    });

    // A probe that fails verification keeps its backend out, and says why.
    let v = wait_container(&h, container("wrongname"), "reported failing TLS", |v| {
        v["reason"].as_str().is_some_and(|r| r.contains("TLS handshake failed") && r.contains("wrong.internal"))
    });
    assert_eq!(v["routed"], false, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.starts_with("its first health check (HTTPS GET /healthz) has not passed yet: "), "{reason}");
    assert!(reason.contains("not valid for name"), "{reason}");
    assert_eq!(h.get("wrongname.test", "/").unwrap().status, 503);
    let wrongname = &container("wrongname").name;
    h.wait_log_line("the failing TLS probe logged", SECS_5, |l| {
        l.contains("WARN") && l.contains(wrongname.as_str()) && l.contains("health check (HTTPS GET /healthz) failed: TLS handshake failed")
    });

    // (c) Verification off, when asked: any certificate is taken, and hawser says so once.
    let r = wait_response("insecure.test routed", h.addr, "insecure.test", "/d", SECS_10, |r| r.status == 200);
    assert_eq!(r.body, "stranger /d");
    assert_eq!(stranger.snis("/d"), [Some("insecure.test".to_string())]);
    let warned = h.log().lines().filter(|l| l.contains("service insecure: the certificates of its TLS backends are not verified")).count();
    assert_eq!(warned, 1, "hawser log:\n{}", h.log());

    // (d) A backend that speaks only cleartext is never ready, and is never sent cleartext.
    let v = wait_container(&h, container("cleartext"), "reported failing TLS", |v| {
        v["reason"].as_str().is_some_and(|r| r.contains("TLS handshake failed"))
    });
    assert_eq!(v["state"], "starting", "{v}");
    assert_eq!(h.get("cleartext.test", "/").unwrap().status, 503);
    assert!(cleartext.requests().is_empty(), "a cleartext request reached it: {:?}", cleartext.requests());

    // The services view says how each service's backends are spoken to.
    let services = admin_json(&h, "/api/services");
    let scheme = |name: &str| services.as_array().unwrap().iter().find(|s| s["name"] == name).map(|s| s["scheme"].clone());
    assert_eq!(scheme("verified"), Some(Value::from("https")), "{services}");
}

#[test]
fn labels_make_a_verified_tls_service_and_a_bad_ca_label_is_refused() {
    let env = TestEnv::new("upstream-tls-labels");
    let dir = TempDir::new("upstream-tls-labels");
    let (ca, chain, key) = ca_and_leaf(&["backend.internal"]);
    let ca = write(&dir.0, "ca.pem", &ca);
    let origin = TlsOrigin::start("labelled", chain, key);
    let port = origin.port().to_string();
    let labelled = |name: &str, host: &str| {
        ContainerSpec::new(name)
            .hawser("enable", "true")
            .hawser("host", host)
            .hawser("service", name)
            .hawser("port", &port)
            .hawser("healthcheck.path", "/healthz")
    };
    let _good = on_host(
        &env,
        labelled("good", "labelled.test")
            .hawser("scheme", "https")
            .hawser("tls.ca", &ca)
            .hawser("tls.server_name", "backend.internal"),
    );
    let missing = on_host(
        &env,
        labelled("missing", "missing.test").hawser("scheme", "https").hawser("tls.ca", "/nonexistent/ca.pem"),
    );
    let cleartext_ca = on_host(&env, labelled("plain", "plain.test").hawser("tls.ca", &ca));
    let h = env.hawser(&env.default_config());

    let r = wait_response("labelled.test routed over TLS", h.addr, "labelled.test", "/e", SECS_10, |r| r.status == 200);
    assert_eq!(r.body, "labelled /e");
    assert_eq!(origin.snis("/e"), [Some("backend.internal".to_string())], "{:?}", origin.seen());
    assert!(origin.snis("/healthz").iter().all(|s| s.as_deref() == Some("backend.internal")));

    let prefix = &env.prefix;
    let v = wait_container(&h, &missing, "refused", |v| v["reason"].is_string());
    assert_eq!(v["routed"], false, "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.starts_with(&format!("label {prefix}.tls.ca=\"/nonexistent/ca.pem\": cannot read /nonexistent/ca.pem")), "{reason}");
    let v = wait_container(&h, &cleartext_ca, "refused", |v| v["reason"].is_string());
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("applies to TLS backends only") && reason.contains(&format!("{prefix}.scheme=https")), "{reason}");
    assert_eq!(h.get("plain.test", "/").unwrap().status, 404, "refused: no route");
}

#[test]
fn a_bad_ca_file_is_a_configuration_error_with_file_line_and_key() {
    let env = TestEnv::new("upstream-tls-check");
    let dir = TempDir::new("upstream-tls-check");
    let bad = write(&dir.0, "bad.pem", "not a certificate\n");
    let config = format!("{}services:\n  api:\n    hosts: [api.test]\n    scheme: https\n    ca: {bad}\n", env.default_config());
    let (code, out) = env.hawser_check(&config);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(":9:") && out.contains("services.api.ca") && out.contains("no certificate in it"), "{out}");
}
