//! hawser's Swarm provider against a real single-node swarm on the local engine (see
//! `common::swarm`): services found from their labels, one backend per task named
//! `SERVICE.SLOT`, the address modes, and rolling updates and kills under load with no failed
//! request.
//!
//! What this machine kind allows (../shared/SWARM-NOTES.md): a host-run hawser reaches tasks
//! through ports published in mode host; task IPs on an attachable overlay are reached from a
//! container on that overlay, so the `container` mode runs hawser in one; VIPs need IPVS, and
//! the vip test says so and skips where the kernel has none.

mod common;

use std::time::Duration;

use common::load::Load;
use common::swarm::{Service, Swarm, has_ipvs, image_id, overlay};
use common::*;
use serde_json::Value;

const HOST: &str = "swarm.test";
const SECS_30: Duration = Duration::from_secs(30);

/// `(container_name, state)` of the backends of `service`, sorted.
fn backends(h: &Hawser, service: &str) -> Vec<(String, String)> {
    service_backends(&admin_json(h, "/api/services"), service, "state")
}

/// hawser in a container on overlay `net` (label prefix of `env`), its proxy and admin ports
/// published on loopback; the admin token is `t0ken`. Returns the container, its proxy and
/// admin addresses, and the directory of its configuration (keep it while it runs).
fn hawser_on_overlay(env: &TestEnv, net: &str) -> (Container, std::net::SocketAddr, std::net::SocketAddr, TempDir) {
    let configs = TempDir::new(&format!("{}-config", env.id));
    let config = configs.0.join("hawser.yaml");
    let yaml = format!("listen: [\"0.0.0.0:8080\"]\nadmin: {{listen: \"0.0.0.0:9900\", token: t0ken}}\ndocker: {{label_prefix: \"{}\"}}\n", env.prefix);
    std::fs::write(&config, yaml).expect("write config");
    let hawser = common::image::run_hawser(env, "hawser", net, &config, true);
    let (proxy, admin) = (hawser.published_addr(8080), hawser.published_addr(9900));
    (hawser, proxy, admin, configs)
}

/// Waits until `service` has exactly the backends `names`, all ready.
fn wait_ready(h: &Hawser, service: &str, names: &[String], timeout: Duration) {
    let want: Vec<(String, String)> = names.iter().map(|n| (n.clone(), "ready".to_string())).collect();
    let start = std::time::Instant::now();
    loop {
        let now = backends(h, service);
        if now == want {
            return;
        }
        if start.elapsed() > timeout {
            panic!("service {service}: backends {now:?}, want {want:?}\nhawser log:\n{}", h.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `/api/containers` entry named `name`.
fn container_entry(h: &Hawser, name: &str) -> Option<Value> {
    admin_json(h, "/api/containers").as_array()?.iter().find(|c| c["container_name"] == name).cloned()
}

fn wait_reason(h: &Hawser, name: &str, needle: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let entry = container_entry(h, name);
        if let Some(reason) = entry.as_ref().and_then(|e| e["reason"].as_str()).filter(|r| r.contains(needle)) {
            assert_eq!(entry.as_ref().unwrap()["routed"], false);
            return reason.to_string();
        }
        if start.elapsed() > SECS_10 {
            panic!("{name}: no reason containing {needle:?} in /api/containers: {entry:?}\nhawser log:\n{}", h.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Service labels (`--label`) under the env's prefix, with `HOST`.
fn routed_labels(env: &TestEnv) -> Vec<String> {
    vec!["--label".into(), format!("{}=true", env.label("enable")), "--label".into(), format!("{}={HOST}", env.label("host"))]
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn names(svc: &Service, slots: &[usize]) -> Vec<String> {
    slots.iter().map(|s| format!("{}.{s}", svc.name)).collect()
}

#[test]
fn published_tasks_are_routed_from_a_host_run_hawser() {
    let _swarm = Swarm::join();
    let env = TestEnv::new("swarm-published");
    let image = image_id(&backend_image());
    let mut a = routed_labels(&env);
    a.extend(args(&["--endpoint-mode", "dnsrr", "--publish", "mode=host,target=80", "--replicas", "2"]));
    let svc = Service::create(&env, "web", &a, &image);
    // A service hawser cannot reach from the host: no port published, no network shared.
    let mut a = vec!["--label".to_string(), format!("{}=true", env.label("enable"))];
    a.extend(["--label".to_string(), format!("{}=lost.test", env.label("host"))]);
    let lost = Service::create(&env, "lost", &a, &image);
    // A bad label costs its own service only.
    let mut a = routed_labels(&env);
    a.extend(["--label".to_string(), format!("{}=eighty", env.label("port"))]);
    a.extend(args(&["--endpoint-mode", "dnsrr", "--publish", "mode=host,target=80"]));
    let bad = Service::create(&env, "bad", &a, &image);
    svc.wait_running(2, SECS_30);

    let h = env.hawser("listen: [\"$LISTEN\"]\ndocker: {label_prefix: \"$PREFIX\"}\n");
    wait_ready(&h, &svc.name, &names(&svc, &[1, 2]), SECS_10);
    let seen = shares(&h, HOST, 20);
    assert_eq!(seen.len(), 2, "round robin over both tasks: {seen:?}");
    // One entry per task, named as `docker service ps` names it, with its verdict.
    let task = container_entry(&h, &format!("{}.1", svc.name)).expect("task 1 in /api/containers");
    assert_eq!((task["routed"].as_bool(), task["service"].as_str()), (Some(true), Some(svc.name.as_str())), "{task}");
    let reason = wait_reason(&h, &format!("{}.1", lost.name), "publishes no port in mode host");
    assert!(reason.contains("hawser runs outside Docker"), "{reason}");
    // `hawser explain` knows a task by its name, as a container.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hawser"))
        .args(["explain", "--admin", &h.admin.to_string(), &format!("{}.1", lost.name)])
        .env_remove("HAWSER_ADMIN_TOKEN")
        .output()
        .expect("hawser explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("publishes no port in mode host"), "{text}");
    let reason = wait_reason(&h, &format!("{}.1", bad.name), &env.label("port"));
    assert!(reason.contains("not a port number"), "{reason}");

    // Scaled up, the new task is routed once it runs; scaled down, it leaves.
    svc.scale(3);
    wait_ready(&h, &svc.name, &names(&svc, &[1, 2, 3]), SECS_30);
    assert_eq!(shares(&h, HOST, 30).len(), 3);
    svc.scale(1);
    wait_ready(&h, &svc.name, &names(&svc, &[1]), SECS_30);
    assert_eq!(shares(&h, HOST, 10).len(), 1);
}

#[test]
fn rolling_updates_and_kills_fail_no_request() {
    let _swarm = Swarm::join();
    let env = TestEnv::new("swarm-rolling");
    let image = image_id(&backend_image());
    let mut a = routed_labels(&env);
    a.extend(args(&["--endpoint-mode", "dnsrr", "--publish", "mode=host,target=80", "--replicas", "2"]));
    a.extend(args(&["--stop-grace-period", "3s", "--update-parallelism", "1"]));
    let svc = Service::create(&env, "web", &a, &image);
    svc.wait_running(2, SECS_30);
    let h = env.hawser("listen: [\"$LISTEN\"]\ndocker: {label_prefix: \"$PREFIX\"}\n");
    wait_ready(&h, &svc.name, &names(&svc, &[1, 2]), SECS_10);

    for order in ["stop-first", "start-first"] {
        let load = Load::start(h.addr, HOST, 4);
        // Some load before and after the update, so both ends are covered.
        std::thread::sleep(Duration::from_millis(500));
        svc.update(&["--force", "--update-order", order]);
        wait_ready(&h, &svc.name, &names(&svc, &[1, 2]), SECS_30);
        std::thread::sleep(Duration::from_millis(500));
        let out = load.stop();
        eprintln!("update {order}: {} answered, {} failed", out.ok, out.failed);
        assert!(out.ok > 100, "update {order}: too little load to say anything: {out:?}");
        assert_eq!(out.failed, 0, "update {order}: {out:?}\nhawser log:\n{}", h.log());
    }

    // A task's container killed: its local `kill` event takes it out at once; GETs in flight
    // are retried on the other task.
    let load = Load::start(h.addr, HOST, 4);
    std::thread::sleep(Duration::from_millis(500));
    let victim = svc.containers().into_iter().next().expect("a task container");
    docker(&["kill", &victim]);
    wait_until("the killed task replaced", SECS_30, || {
        (backends(&h, &svc.name).iter().filter(|(_, s)| s == "ready").count() == 2 && !svc.containers().contains(&victim)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = load.stop();
    eprintln!("docker kill: {} answered, {} failed", out.ok, out.failed);
    assert_eq!(out.failed, 0, "docker kill: {out:?}\nhawser log:\n{}", h.log());
}

#[test]
fn task_ips_on_a_shared_overlay_from_hawser_in_a_container() {
    let _swarm = Swarm::join();
    let env = TestEnv::new("swarm-overlay");
    let net = overlay(&env, "ov");
    let image = image_id(&backend_image());
    let mut a = routed_labels(&env);
    // Nothing published: the image's EXPOSE is not in the service's spec, so the port is a label.
    a.extend(["--label".to_string(), format!("{}=80", env.label("port"))]);
    a.extend(args(&["--endpoint-mode", "dnsrr", "--network", &net, "--replicas", "2"]));
    let svc = Service::create(&env, "web", &a, &image);
    svc.wait_running(2, SECS_30);

    let (hawser, proxy, admin, _configs) = hawser_on_overlay(&env, &net);
    let services = || -> Vec<(String, String)> {
        let Ok(r) = admin_request(admin, "GET", "/api/services", Some("t0ken")) else { return Vec::new() };
        service_backends(&serde_json::from_str(&r.body).unwrap_or(Value::Null), &svc.name, "address")
    };
    let ready = wait_until_or(&hawser, "both tasks routed by their overlay IPs", SECS_30, || {
        let b = services();
        (b.len() == 2).then_some(b)
    });
    assert_eq!(ready.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names(&svc, &[1, 2]));
    for (_, addr) in &ready {
        assert!(addr.starts_with("10.") && addr.ends_with(":80"), "an overlay task IP: {ready:?}");
    }
    let seen = wait_until_or(&hawser, "answers from both tasks", SECS_10, || {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let r = get(proxy, HOST, "/").ok()?;
            (r.status == 200).then_some(())?;
            seen.insert(r.backend()?.to_string());
        }
        (seen.len() == 2).then_some(seen)
    });
    assert_eq!(seen.len(), 2);
}

/// Polls like `wait_until`, with hawser's container log on timeout.
fn wait_until_or<T>(hawser: &Container, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out waiting for {what}; hawser's log:\n{}", hawser.logs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vip_needs_ipvs() {
    if !has_ipvs() {
        eprintln!("SKIPPED vip_needs_ipvs: this kernel has no IPVS (/proc/net/ip_vs), which Swarm VIPs need");
        return;
    }
    let _swarm = Swarm::join();
    let env = TestEnv::new("swarm-vip");
    let net = overlay(&env, "ov");
    let image = image_id(&backend_image());
    let mut a = routed_labels(&env);
    a.extend(["--label".to_string(), format!("{}=vip", env.label("address"))]);
    a.extend(["--label".to_string(), format!("{}=80", env.label("port"))]);
    a.extend(args(&["--network", &net, "--replicas", "2"]));
    let svc = Service::create(&env, "web", &a, &image);
    svc.wait_running(2, SECS_30);
    let (hawser, proxy, _admin, _configs) = hawser_on_overlay(&env, &net);
    wait_until_or(&hawser, "the service answering through its VIP", SECS_30, || {
        let r = get(proxy, HOST, "/").ok()?;
        (r.status == 200).then_some(())
    });
}

/// hawser itself as a Swarm service on a manager: `conf/swarm-stack.yml`, deployed as it is
/// (`docker stack deploy`), with image ids built here in its variables. hawser finds its own
/// task container, so its overlay, and routes the app's three tasks there by their IPs.
#[test]
fn the_stack_file_deploys_hawser_as_a_swarm_service() {
    use std::os::unix::fs::MetadataExt;
    let _swarm = Swarm::join();
    let env = TestEnv::new("swarm-stack");
    let stack = Stack(format!("hst{}", env.id.replace('-', "")));
    let gid = std::fs::metadata("/var/run/docker.sock").expect("the Docker socket").gid().to_string();
    let port = free_port().to_string();
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/swarm-stack.yml");
    let out = std::process::Command::new("docker")
        .args(["stack", "deploy", "--resolve-image", "never", "-c", file, &stack.0])
        .env("HAWSER_IMAGE", image_id(&common::image::hawser_image()))
        .env("APP_IMAGE", image_id(&backend_image()))
        .env("DOCKER_GID", &gid)
        .env("HAWSER_PORT", &port)
        .output()
        .expect("docker stack deploy");
    assert!(out.status.success(), "docker stack deploy: {}", String::from_utf8_lossy(&out.stderr));
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let logs = || docker_ok(&["service", "logs", "--raw", &format!("{}_hawser", stack.0)]).unwrap_or_default();
    let start = std::time::Instant::now();
    let seen = loop {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..30 {
            if let Ok(r) = get(proxy, "whoami.example.com", "/") {
                if r.status == 200 {
                    seen.insert(r.backend().unwrap_or_default().to_string());
                }
            }
        }
        if seen.len() == 3 {
            break seen;
        }
        if start.elapsed() > Duration::from_secs(60) {
            panic!("the stack's hawser did not route the app's 3 tasks (saw {seen:?}); its log:\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// A deployed stack; `docker stack rm` when dropped, then waits until its containers are gone.
struct Stack(String);

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = docker_ok(&["stack", "rm", &self.0]);
        let filter = format!("label=com.docker.stack.namespace={}", self.0);
        let start = std::time::Instant::now();
        while !docker(&["ps", "-aq", "--filter", &filter]).trim().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // The stack's network goes once its containers have.
        while !docker(&["network", "ls", "-q", "--filter", &filter]).trim().is_empty() && start.elapsed() < Duration::from_secs(40) {
            let _ = docker_ok(&["network", "rm", &format!("{}_web", self.0)]);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
