//! Routing against the real Docker engine: round robin, weights, host and path rules, 404/503,
//! published-port addressing, YAML selectors, forwarded headers, cleartext HTTP/2.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn round_robin_gives_exactly_equal_shares() {
    let env = TestEnv::new("rr-equal");
    let backends: Vec<Container> = (1..=3).map(|i| web(&env, &format!("b{i}"), "rr.test", "rr")).collect();
    let h = env.hawser(&env.default_config());
    for b in &backends {
        env.wait_routed(&h, "rr.test", "/", b, SECS_10);
    }
    let n = 100;
    let counts = shares(&h, "rr.test", 3 * n);
    assert_eq!(counts.len(), 3, "{counts:?}");
    for b in &backends {
        assert_eq!(counts.get(&b.name), Some(&n), "{counts:?}");
    }
}

#[test]
fn weights_are_honoured() {
    let env = TestEnv::new("rr-weight");
    let heavy = env.run(
        ContainerSpec::new("heavy").hawser("enable", "true").hawser("host", "w.test").hawser("service", "w").hawser("weight", "3"),
    );
    let light = web(&env, "light", "w.test", "w");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "w.test", "/", &heavy, SECS_10);
    env.wait_routed(&h, "w.test", "/", &light, SECS_10);
    let counts = shares(&h, "w.test", 400);
    assert_eq!(counts.get(&heavy.name), Some(&300), "{counts:?}");
    assert_eq!(counts.get(&light.name), Some(&100), "{counts:?}");
}

#[test]
fn a_container_started_while_running_gets_traffic_within_two_seconds() {
    let env = TestEnv::new("late-start");
    let first = web(&env, "first", "late.test", "late");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "late.test", "/", &first, SECS_10);

    let second = web(&env, "second", "late.test", "late");
    let started = Instant::now();
    env.wait_routed(&h, "late.test", "/", &second, Duration::from_secs(2));
    eprintln!("second container routed {:?} after docker run returned", started.elapsed());
}

#[test]
fn host_and_path_rules() {
    let env = TestEnv::new("host-path");
    let root = web(&env, "root", "a.test", "root");
    let api = env.run(
        ContainerSpec::new("api").hawser("enable", "true").hawser("host", "a.test").hawser("path", "/api").hawser("service", "api"),
    );
    let wild = web(&env, "wild", "*.wild.test", "wild");
    let multi = web(&env, "multi", "m1.test, m2.test", "multi");
    let stat = env.run(ContainerSpec::new("static").hawser("enable", "true").hawser("path", "/static").hawser("service", "static"));
    let h = env.hawser(&env.default_config());
    for (host, path, c) in [
        ("a.test", "/", &root),
        ("a.test", "/api", &api),
        ("x.wild.test", "/", &wild),
        ("m1.test", "/", &multi),
        ("any.test", "/static", &stat),
    ] {
        env.wait_routed(&h, host, path, c, SECS_10);
    }

    let expect = |host: &str, path: &str, want: Option<&Container>| {
        let r = h.get(host, path).unwrap();
        match want {
            Some(c) => assert_eq!((r.status, r.backend()), (200, Some(c.name.as_str())), "{host}{path}: {}", r.body),
            None => assert_eq!(r.status, 404, "{host}{path} should not be routed, got {:?}", r.backend()),
        }
    };
    expect("a.test", "/", Some(&root));
    expect("a.test", "/api", Some(&api));
    expect("a.test", "/api/v1/x", Some(&api));
    // Prefixes match whole path segments.
    expect("a.test", "/apix", Some(&root));
    // Host matching ignores case and port.
    expect("A.Test:8080", "/api/", Some(&api));
    expect("deep.x.wild.test", "/", Some(&wild));
    expect("wild.test", "/", None);
    expect("m2.test", "/", Some(&multi));
    // A route with only a path answers on every host, after the host routes.
    expect("other.test", "/static/app.css", Some(&stat));
    expect("a.test", "/static/app.css", Some(&root));
    expect("other.test", "/", None);
}

#[test]
fn not_found_and_no_ready_backend() {
    let env = TestEnv::new("404-503");
    let c = web(&env, "only", "gone.test", "gone");
    // An HTTP probe, so that the backend can be made unready while it runs.
    let config = format!("{}health_check: {{path: /healthz, interval: 200ms, rise: 1, fall: 1}}\n", env.default_config());
    let h = env.hawser(&config);
    env.wait_routed(&h, "gone.test", "/", &c, SECS_10);

    let r = h.get("nowhere.test", "/x").unwrap();
    assert_eq!(r.status, 404);
    assert!(r.body.contains("nowhere.test"), "404 body should name the host: {:?}", r.body);

    // A 503 with Retry-After, at once: no attempt on a backend that is not ready.
    let assert_503_at_once = |why: &str| {
        let t = Instant::now();
        let r = h.get("gone.test", "/").unwrap_or_else(|e| panic!("{why}: {e}\nhawser log:\n{}", h.log()));
        let took = t.elapsed();
        assert_eq!(r.status, 503, "{why}: status {} from {:?}, body {:?}\nhawser log:\n{}", r.status, r.backend(), r.body, h.log());
        assert!(took < Duration::from_secs(1), "{why}: the 503 took {took:?}, not at once\nhawser log:\n{}", h.log());
        assert!(r.body.contains("gone"), "503 body should name the service: {:?}", r.body);
        assert_eq!(r.header("retry-after"), Some("1"), "{why}: Retry-After");
    };

    // Its only backend runs but fails its probe.
    direct(&c, "/_ctl/unhealthy");
    wait_response("503 once the only backend fails its probe", h.addr, "gone.test", "/", SECS_5, |r| r.status == 503);
    assert_503_at_once("only backend unhealthy");
    direct(&c, "/_ctl/healthy");
    env.wait_routed(&h, "gone.test", "/", &c, SECS_5);

    // Its only backend stopped.
    c.stop(10);
    wait_response("503 once the only container stopped", h.addr, "gone.test", "/", SECS_5, |r| r.status == 503);
    assert_503_at_once("only container stopped");

    // A removed container takes its route with it.
    c.rm();
    wait_response("404 once the container is removed", h.addr, "gone.test", "/", SECS_5, |r| r.status == 404);
}

#[test]
fn published_address_mode_uses_the_host_port() {
    let env = TestEnv::new("published");
    let c = env.run(ContainerSpec::new("pub").hawser("enable", "true").hawser("host", "pub.test").publish(80));
    let port = c.published_port(80);
    let config = "listen: [\"$LISTEN\"]\ndocker:\n  label_prefix: \"$PREFIX\"\n  address: published\n";
    let h = env.hawser(config);
    env.wait_routed(&h, "pub.test", "/", &c, SECS_10);
    let needle = format!("127.0.0.1:{port}");
    assert!(h.log().contains(&needle), "hawser should use the published address {needle}:\n{}", h.log());
    assert!(!h.log().contains(&format!("{}:80", c.ip_default())), "hawser used the container IP:\n{}", h.log());
}

#[test]
fn yaml_services_select_containers_by_label_and_image() {
    let env = TestEnv::new("selectors");
    let role = format!("role-{}", env.prefix);
    let config = format!(
        "listen: [\"$LISTEN\"]\n\
         docker:\n  label_prefix: \"$PREFIX\"\n  network: \"$NETWORK\"\n\
         services:\n\
         \x20 bylabel:\n    hosts: [label.test]\n    selector: {{ label: \"{role}=yes\" }}\n\
         \x20 byimage:\n    hosts: [image.test]\n    path_prefix: /img\n    selector: {{ image: \"{image}\", label: \"hawser-test={id}\" }}\n",
        image = backend_image(),
        id = env.id,
    );
    // No hawser.enable label: the selectors pull them in.
    let labelled = env.run(ContainerSpec::new("labelled").label(&role, "yes").image(&backend_health_image()));
    let imaged = env.run(ContainerSpec::new("imaged"));
    let other_image = env.run(ContainerSpec::new("other").image(&backend_health_image()));
    // A label route may not take a host a YAML service owns.
    let intruder = web(&env, "intruder", "label.test", "intruder");
    let h = env.hawser(&config);
    env.wait_routed(&h, "label.test", "/", &labelled, SECS_10);
    env.wait_routed(&h, "image.test", "/img/x", &imaged, SECS_10);

    let r = h.get("image.test", "/").unwrap();
    assert_eq!(r.status, 404, "only /img is routed for image.test");
    let counts = shares(&h, "label.test", 20);
    assert_eq!(counts.get(&labelled.name), Some(&20), "{counts:?}");
    let counts = {
        let mut c = BTreeMap::new();
        for _ in 0..20 {
            *c.entry(h.get("image.test", "/img").unwrap().backend().unwrap_or("?").to_string()).or_insert(0) += 1;
        }
        c
    };
    assert_eq!(counts.get(&imaged.name), Some(&20), "{counts:?} ({} must not join)", other_image.name);
    h.wait_log(&format!("container {}: not routed: host label.test is already routed to service bylabel", intruder.name), SECS_5);
}

#[test]
fn forwarded_headers_are_set_and_host_is_preserved() {
    let env = TestEnv::new("xfwd");
    let c = web(&env, "echo", "echo.test", "echo");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "echo.test", "/", &c, SECS_10);
    let r = http(h.addr, "GET", "Echo.Test", "/headers", &[("X-Forwarded-For", "6.6.6.6")], b"").unwrap();
    assert_eq!(r.status, 200);
    let head = r.body.to_ascii_lowercase();
    let has = |line: &str| head.lines().any(|l| l.trim() == line);
    assert!(has("host: echo.test"), "Host must reach the backend unchanged:\n{}", r.body);
    assert!(has("x-forwarded-for: 127.0.0.1"), "client address, not the client's claim:\n{}", r.body);
    assert!(has("x-forwarded-proto: http"), "{}", r.body);
    assert!(has("x-forwarded-host: echo.test"), "{}", r.body);
    assert!(!head.contains("6.6.6.6"), "a client-supplied X-Forwarded-For must not pass:\n{}", r.body);
}

/// `curl --http2-prior-knowledge` against hawser's listener: the answer's status line and
/// headers, or None when the exchange failed (the listener does not speak h2c).
fn h2c_get(addr: std::net::SocketAddr, host: &str, path: &str) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null", "-H"])
        .arg(format!("Host: {host}"))
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("run curl (the test suite needs it, as .ci/run installs it)");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).to_ascii_lowercase())
}

#[test]
fn cleartext_http2_is_routed_unless_turned_off() {
    let env = TestEnv::new("h2c");
    let c = web(&env, "h2", "h2.test", "h2");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, "h2.test", "/", &c, SECS_10);
    let head = h2c_get(h.addr, "h2.test", "/").expect("h2c is on by default");
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains(&format!("x-backend: {}", c.name.to_ascii_lowercase())), "{head}");
    let head = h2c_get(h.addr, "nowhere.test", "/").expect("h2c answer");
    assert!(head.starts_with("http/2 404"), "{head}");

    let off = env.hawser(&format!("{}\nh2c: false\n", env.default_config()));
    env.wait_routed(&off, "h2.test", "/", &c, SECS_10);
    assert_eq!(h2c_get(off.addr, "h2.test", "/"), None, "h2c: false must refuse the HTTP/2 preface");
    assert_eq!(off.get("h2.test", "/").unwrap().status, 200, "HTTP/1.1 still works");
}

#[test]
fn network_connect_and_disconnect_events_are_followed() {
    let env = TestEnv::new("netconn");
    let extra = env.extra_network("extra");
    let c = env.run(
        ContainerSpec::new("late-net").hawser("enable", "true").hawser("host", "net.test").hawser("network", &extra),
    );
    let h = env.hawser(&env.default_config());
    // Not on the network its label names: skipped, and the log says why.
    h.wait_log(&format!("container {}: not routed: label {}.network=", c.name, env.prefix), SECS_5);
    assert_eq!(h.get("net.test", "/").unwrap().status, 404);

    c.connect(&extra);
    env.wait_routed(&h, "net.test", "/", &c, SECS_5);
    let ip = c.ip(&extra);
    assert!(h.log().contains(&format!("{ip}:80")), "should use the IP on {extra} ({ip}):\n{}", h.log());

    // A request already on its way may wait on the vanished IP (that is what
    // proxy.read_timeout bounds); what matters is that once hawser handled the event, the
    // container is out.
    let skipped = format!("container {}: not routed: label {}.network=", c.name, env.prefix);
    c.disconnect(&extra);
    wait_until("hawser to handle the disconnect", SECS_5, || (h.log().matches(&skipped).count() >= 2).then_some(()));
    assert_eq!(h.get("net.test", "/").unwrap().status, 404);
}
