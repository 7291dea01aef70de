//! hawser itself running in a container, as the README's "Running in Docker" deploys it:
//! the real binary in a `FROM scratch` image (with the shared libraries it links), as the
//! unprivileged uid 10001 with the Docker socket mounted read-only and the socket's group
//! added, its configuration file mounted, its ports published on 127.0.0.1.
//!
//! - hawser finds its own container (HOSTNAME, /etc/hostname or cgroup) and so its networks;
//!   a container only on a network hawser is not on is not routed, and `/api/containers`
//!   says "not on a network shared with hawser"; a container on hawser's network is routed
//!   and answers through the published proxy port.
//! - The admin API on 0.0.0.0 needs the Bearer token (401 without it or with a wrong one;
//!   `/healthz` stays open).
//! - A non-loopback admin address without a token is refused at start: the container exits
//!   non-zero and its log names `admin.token`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::image::run_hawser;
use common::*;
use serde_json::Value;



/// A token nobody guesses: 128 bits from std's randomly keyed hasher and the clock.
fn random_token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut out = String::new();
    for i in 0..2u8 {
        let mut h = RandomState::new().build_hasher();
        i.hash(&mut h);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .hash(&mut h);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Polls `what` (at most `timeout`); panics with hawser's container log on timeout.
fn wait_hawser<T>(
    hawser: &Container,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:?} waiting for {what}; hawser container running: {}; its log:\n{}",
                start.elapsed(),
                hawser.is_running(),
                hawser.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn containers_view(admin: SocketAddr, token: &str) -> Option<Vec<Value>> {
    let r = admin_request(admin, "GET", "/api/containers", Some(token)).ok()?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_str::<Value>(&r.body)
        .ok()?
        .as_array()
        .cloned()
}

#[test]
fn hawser_in_a_container_routes_over_its_own_networks_and_guards_its_admin_api() {
    let t0 = Instant::now();
    // Declared before the env, so dropped after it: the files outlive the containers.
    let configs = TempDir::new("in-container-config");
    let env = TestEnv::new("in-container");
    let net_a = env.network();
    let net_b = env.extra_network("b");
    let token = random_token();
    // hawser's configuration, written for the container to mount; the admin API listens on
    // all addresses, with the token or (to see hawser refuse that) without.
    let write_config = |file: &str, token: Option<&str>| {
        let path = configs.0.join(file);
        let token = token.map_or_else(String::new, |t| format!("  token: \"{t}\"\n"));
        std::fs::write(
            &path,
            format!(
                "listen: [\"0.0.0.0:8080\"]\ndocker:\n  label_prefix: \"{}\"\nadmin:\n  listen: \"0.0.0.0:9900\"\n{token}",
                env.prefix
            ),
        )
        .expect("write config");
        path
    };
    let config = write_config("hawser.yaml", Some(&token));

    let hawser = run_hawser(&env, "hawser", &net_a, &config, true);
    let built = t0.elapsed();
    let admin = hawser.published_addr(9900);
    let proxy = hawser.published_addr(8080);
    // Published ports accept connections before hawser listens: wait for a real answer.
    wait_hawser(
        &hawser,
        "hawser's /healthz to say docker_connected",
        SECS_10,
        || {
            let r = admin_request(admin, "GET", "/healthz", None).ok()?;
            let v: Value = serde_json::from_str(&r.body).ok()?;
            (r.status == 200 && v["docker_connected"] == true).then_some(())
        },
    );
    let started = t0.elapsed();
    // It found its own container, hence its network.
    let own = format!("hawser runs on networks {net_a}");
    wait_hawser(&hawser, &format!("the log line {own:?}"), SECS_5, || {
        hawser
            .logs()
            .lines()
            .any(|l| l.trim_end().ends_with(&own))
            .then_some(())
    });

    let host_a = "in-container.test";
    let a = env.run(
        ContainerSpec::new("a")
            .hawser("enable", "true")
            .hawser("host", host_a)
            .network(&net_a),
    );
    let b = env.run(
        ContainerSpec::new("b-only")
            .hawser("enable", "true")
            .hawser("host", "b-only.test")
            .network(&net_b),
    );

    // The verdicts, through the token-guarded admin API. b-only passes through transient
    // verdicts ("container is created") before hawser sees it started on its network.
    let shared = "not on a network shared with hawser";
    let mut last = String::from("no answer yet");
    let deadline = Instant::now() + SECS_10;
    let (va, vb) = loop {
        if let Some(all) = containers_view(admin, &token) {
            let find = |name: &str| all.iter().find(|c| c["container_name"] == name).cloned();
            let (va, vb) = (find(&a.name), find(&b.name));
            if let (Some(va), Some(vb)) = (&va, &vb) {
                let reason = vb["reason"].as_str().unwrap_or_default();
                if va["routed"] == true && vb["routed"] == false && reason.contains(shared) {
                    break (va.clone(), vb.clone());
                }
            }
            last = format!("{}: {va:?}\n{}: {vb:?}", a.name, b.name);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {} routed and {} not routed ({shared}); last seen:\n{last}\nhawser log:\n{}",
            a.name,
            b.name,
            hawser.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let reason = vb["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("container on: {net_b}"))
            && reason.contains(&format!("hawser on: {net_a}")),
        "the reason should name both sides' networks: {reason:?}"
    );
    assert_eq!(va["state"], "ready", "{va}");

    // Without the token, or with a wrong one: 401 (and /healthz stays open).
    for (what, t) in [("no token", None), ("a wrong token", Some("not-the-token"))] {
        for path in ["/api/containers", "/api/services", "/"] {
            let r = admin_request(admin, "GET", path, t).expect("admin request");
            assert_eq!(
                r.status, 401,
                "GET {path} with {what}: {} {}",
                r.status, r.body
            );
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"hawser\""),
                "GET {path} with {what}"
            );
            assert!(
                !r.body.contains(&a.name),
                "GET {path} with {what} leaks container names: {}",
                r.body
            );
        }
        let r = admin_request(admin, "POST", &format!("/api/backends/{}/drain", a.name), t)
            .expect("admin request");
        assert_eq!(
            r.status, 401,
            "POST drain with {what}: {} {}",
            r.status, r.body
        );
    }
    assert_eq!(
        admin_request(admin, "GET", "/healthz", None)
            .expect("healthz")
            .status,
        200
    );

    // Through the published proxy port: A answers; B is never reached.
    let r = wait_response(
        &format!("{host_a} routed to {}", a.name),
        proxy,
        host_a,
        "/",
        SECS_10,
        |r| r.backend() == Some(a.name.as_str()),
    );
    assert_eq!(r.status, 200);
    for i in 0..10 {
        let r =
            get(proxy, host_a, "/").unwrap_or_else(|e| panic!("request {i} through {proxy}: {e}"));
        assert_eq!(
            (r.status, r.backend()),
            (200, Some(a.name.as_str())),
            "request {i}: {}",
            r.body
        );
    }
    let r = get(proxy, "b-only.test", "/").expect("request for b-only.test");
    assert_ne!(
        r.backend(),
        Some(b.name.as_str()),
        "{} is not routable but answered",
        b.name
    );
    assert!(
        matches!(r.status, 404 | 503),
        "b-only.test: {} {:?}",
        r.status,
        r.body
    );
    let routed = t0.elapsed();

    // A non-loopback admin address without a token: hawser refuses to start.
    let open = write_config("no-token.yaml", None);
    let refused = run_hawser(&env, "hawser-no-token", &net_a, &open, false);
    let code = refused.wait_exited(SECS_10);
    let log = refused.logs();
    assert_ne!(
        code, 0,
        "hawser with admin on 0.0.0.0 and no token exited 0; log:\n{log}"
    );
    assert!(
        log.contains("admin.token"),
        "the refusal should name admin.token; exit {code}, log:\n{log}"
    );
    eprintln!(
        "in-container: image built and hawser started {built:?}, serving {started:?}, \
         verdicts and routing checked {routed:?}, no-token refusal (exit {code}) {:?}; refusal: {}",
        t0.elapsed(),
        log.lines()
            .find(|l| l.contains("admin.token"))
            .unwrap_or("")
            .trim()
    );
}
