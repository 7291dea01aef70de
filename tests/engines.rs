//! Several Docker engines behind one hawser (`docker.endpoints`): the local engine and a second
//! `dockerd` started by the test (common::engine), reached over TCP with TLS client
//! certificates. Containers of both join one service, addressed by their engine's host address
//! and published port, named `ENGINE/NAME`; the second engine's daemon SIGKILLed mid-load costs
//! no request, its backends stay for `docker.endpoint_grace` and then go, and when it is back
//! hawser lists it again. Also: `DOCKER_HOST` + `DOCKER_TLS_VERIFY` + `DOCKER_CERT_PATH` as the
//! Docker CLI reads them, and `docker.mode: swarm` against an engine that is no swarm manager.

mod common;

use std::time::{Duration, Instant};

use common::engine::SecondEngine;
use common::load::Load;
use common::*;
use serde_json::Value;

const HOST: &str = "multi.test";
const SERVICE: &str = "multi";

/// The admin API's answer to `GET path` (Null while hawser does not answer yet).
fn json(admin: std::net::SocketAddr, path: &str) -> Value {
    let Ok(r) = admin_request(admin, "GET", path, None) else { return Value::Null };
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", r.body))
}

/// `(container_name, state)` of the backends of SERVICE, sorted.
fn backends(h: &Hawser) -> Vec<(String, String)> {
    service_backends(&json(h.admin, "/api/services"), SERVICE, "state")
}

fn engine(h: &Hawser, name: &str) -> Value {
    json(h.admin, "/api/engines").as_array().and_then(|a| a.iter().find(|e| e["name"] == name).cloned()).unwrap_or(Value::Null)
}

fn wait_for<T>(h: &Hawser, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}; backends {:?}\nhawser log:\n{}", backends(h), h.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A routed container on the second engine, its port published on every address.
fn run_on(second: &SecondEngine, env: &TestEnv, name: &str) -> String {
    let name = format!("{}-{name}", env.id);
    second.docker(&[
        "run", "-d", "--name", &name, "-p", "0.0.0.0::80", "-e", &format!("NAME={name}"),
        "-l", &format!("{}=true", env.label("enable")),
        "-l", &format!("{}={HOST}", env.label("host")),
        "-l", &format!("{}={SERVICE}", env.label("service")),
        &backend_image(),
    ]);
    name
}

#[test]
fn two_engines_one_service_and_a_lost_engine_ages_out() {
    let env = TestEnv::new("engines");
    let mut second = SecondEngine::new();
    second.load_image(&backend_image());
    let local = env.run(
        ContainerSpec::new("a").hawser("enable", "true").hawser("host", HOST).hawser("service", SERVICE).publish(80),
    );
    let remote = run_on(&second, &env, "b");
    let certs = second.certs.display().to_string();
    let config = format!(
        "listen: [\"$LISTEN\"]\nhealth_check: {{interval: 500ms}}\ndocker:\n  label_prefix: \"$PREFIX\"\n  endpoint_grace: 3s\n  endpoints:\n    \
         - {{name: local, endpoint: \"unix:///var/run/docker.sock\"}}\n    \
         - {{name: second, endpoint: \"{}\", address_host: 127.0.0.1, tls: {{ca: \"{certs}/ca.pem\", cert: \"{certs}/cert.pem\", key: \"{certs}/key.pem\"}}}}\n",
        second.tcp
    );
    let h = env.hawser(&config);
    let both = vec![(format!("local/{}", local.name), "ready".to_string()), (format!("second/{remote}"), "ready".to_string())];
    wait_for(&h, "a backend on each engine", SECS_10, || (backends(&h) == both).then_some(()));
    // Addressed by the engine's host address and the published port (0.0.0.0 → address_host).
    let services = json(h.admin, "/api/services");
    let addr = services.as_array().unwrap().iter().find(|s| s["name"] == SERVICE).unwrap()["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["container_name"] == format!("second/{remote}").as_str())
        .unwrap()["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":80"), "the published port at address_host: {addr}");
    assert_eq!(shares(&h, HOST, 20).len(), 2, "round robin over both engines");
    assert_eq!(engine(&h, "second")["connected"], true);
    assert_eq!(engine(&h, "local")["connected"], true);

    // The second engine's daemon dies mid-load (its userland proxy with it): no request fails.
    lose_second_engine(&h, &mut second, &remote, &both);

    // Back: hawser lists it again (its container was stopped with the old daemon: start it).
    second.start();
    second.docker(&["start", &remote]);
    wait_for(&h, "the second engine's backend back", SECS_30, || (backends(&h) == both).then_some(()));
    assert_eq!(engine(&h, "second")["connected"], true);
    // Lost a second time: the grace is counted from this loss, not the first.
    lose_second_engine(&h, &mut second, &remote, &both);
}

/// SIGKILLs the second engine's dockerd under load and checks: no failed request, its backend
/// out of rotation but kept for endpoint_grace (3 s), then dropped.
fn lose_second_engine(h: &Hawser, second: &mut SecondEngine, remote: &str, both: &[(String, String)]) {
    let load = Load::start(h.addr, HOST, 4);
    std::thread::sleep(Duration::from_millis(300));
    let killed = Instant::now();
    second.kill();
    wait_for(h, "the second engine seen as lost", SECS_10, || (engine(h, "second")["connected"] == false).then_some(()));
    let name = format!("second/{remote}");
    // Kept with its health checks: seen out of rotation before it is dropped.
    wait_for(h, "the lost engine's backend out of rotation, still listed", SECS_10, || {
        backends(h).iter().any(|(n, state)| n == &name && state != "ready").then_some(())
    });
    wait_for(h, "the lost engine's backend dropped", SECS_10, || (backends(h) == both[..1].to_vec()).then_some(()));
    assert!(killed.elapsed() >= Duration::from_secs(3), "dropped after {:?}, before docker.endpoint_grace", killed.elapsed());
    let out = load.stop();
    eprintln!("second engine killed: {} answered, {} failed", out.ok, out.failed);
    assert!(out.ok > 100, "{out:?}");
    assert_eq!(out.failed, 0, "{out:?}\nhawser log:\n{}", h.log());
    assert!(engine(h, "second")["error"].as_str().is_some_and(|e| !e.is_empty()));
}

const SECS_30: Duration = Duration::from_secs(30);

#[test]
fn docker_host_tls_verify_and_cert_path_as_the_cli_reads_them() {
    let env = TestEnv::new("engines-env");
    let second = SecondEngine::new();
    second.load_image(&backend_image());
    let remote = run_on(&second, &env, "b");
    let certs = second.certs.display().to_string();
    // One engine, no docker.endpoint: DOCKER_HOST with TLS. Its container is reached at its
    // published port on 0.0.0.0 (loopback here), as with one local engine in published mode.
    let h = env.spawn_hawser(
        "listen: [\"$LISTEN\"]\ndocker: {label_prefix: \"$PREFIX\", address: published, mode: swarm}\n",
        &[],
        &[("DOCKER_HOST", second.tcp.as_str()), ("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", certs.as_str())],
    );
    wait_for(&h, "the container of the engine DOCKER_HOST names", SECS_10, || {
        (backends(&h) == vec![(remote.clone(), "ready".to_string())]).then_some(())
    });
    // docker.mode: swarm against an engine that is no manager: said, and its containers served.
    let engines = json(h.admin, "/api/engines");
    let swarm = engines[0]["swarm"].as_str().unwrap_or_default().to_string();
    assert!(swarm.contains("not a swarm manager"), "{engines}");
    assert_eq!(engines[0]["endpoint"], second.tcp.as_str());
    h.wait_ready(SECS_10);
    assert_eq!(h.get(HOST, "/").unwrap().status, 200);

    // Without the client certificate the engine refuses hawser, and hawser says why.
    let h2 = env.spawn_hawser(
        "listen: [\"$LISTEN\"]\ndocker: {label_prefix: \"$PREFIX\"}\n",
        &[],
        &[("DOCKER_HOST", second.tcp.as_str())],
    );
    wait_for(&h2, "the refusal in /api/engines", SECS_10, || {
        let e = json(h2.admin, "/api/engines");
        (e[0]["connected"] == false && e[0]["error"].as_str().is_some_and(|m| !m.is_empty())).then_some(())
    });
}
