//! The command line and process lifecycle: `-t`, configuration errors, running on embedded
//! defaults, Docker unreachable at start, graceful shutdown.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn check_accepts_the_reference_config_and_the_defaults() {
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/hawser.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_hawser")).args(["-t", "-c", reference]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_hawser")).arg("-t").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_names_file_line_and_key() {
    let (code, out) = hawser_check("listen: [\"$LISTEN\"]\nservices:\n  api:\n    hosts: [api.test]\n    hots: [x.test]\n");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(".yaml:5:5: services.api.hots: unknown field `hots`"), "{out}");

    let (code, out) = hawser_check("listen: [\"not-an-address\"]\n");
    assert_ne!(code, 0);
    assert!(out.contains(".yaml:1:") && out.contains("listen") && out.contains("invalid listen address"), "{out}");

    let (code, out) = hawser_check("docker:\n  label_prefix: hawser\n  address: nowhere\n");
    assert_ne!(code, 0);
    assert!(out.contains(".yaml:3:") && out.contains("docker.address"), "{out}");

    let (code, out) = hawser_check("services: [unclosed\n");
    assert_ne!(code, 0);
    assert!(out.contains(".yaml:"), "{out}");
}

#[test]
fn start_fails_on_a_bad_config_with_the_location() {
    let env = TestEnv::new("bad-start");
    let mut h = env.spawn_hawser("listen: [\"$LISTEN\"]\nhealth_check:\n  interval: soon\n", &[], &[]);
    let status = h.wait_exit(SECS_10).expect("hawser must exit on a bad config");
    assert!(!status.success());
    let log = h.log();
    assert!(log.contains(".yaml:3:") && log.contains("health_check.interval"), "{log}");
}

#[test]
fn runs_with_no_arguments_on_embedded_defaults() {
    // The defaults listen on 0.0.0.0:8080; skip (loudly) if something else holds it.
    if TcpListener::bind("0.0.0.0:8080").is_err() {
        eprintln!("SKIPPED: port 8080 is in use on this machine");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_hawser"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let r = wait_until("hawser on its default port", SECS_10, || get(addr, "nothing.test", "/").ok());
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn docker_unreachable_at_start_is_retried_and_then_followed() {
    let env = TestEnv::new("docker-late");
    let socket = tmp_dir().join(format!("{}-late.sock", env.id));
    let _ = std::fs::remove_file(&socket);
    let config = format!(
        "listen: [\"$LISTEN\"]\ndocker:\n  endpoint: \"unix://{}\"\n  label_prefix: \"$PREFIX\"\n  network: \"$NETWORK\"\n",
        socket.display()
    );
    let c = env.run(ContainerSpec::new("a").hawser("enable", "true").hawser("host", "late.test"));
    let h = env.hawser(&config);
    // Serving (404) without Docker, and saying why.
    assert_eq!(h.get("late.test", "/").unwrap().status, 404);
    h.wait_log("retrying in", SECS_5);
    // The engine "appears": hawser's backoff reconnects and routes what exists.
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).unwrap();
    let _cleanup = RemoveOnDrop(socket.clone());
    env.wait_routed(&h, "late.test", "/", &c, Duration::from_secs(15));
    assert!(!h.log().contains("panicked"), "{}", h.log());
}

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn sigterm_shuts_down_gracefully_within_docker_stops_timeout() {
    // Embedded defaults: the exit must fit in `docker stop`'s default 10 s.
    let env = TestEnv::new("sigterm");
    let mut h = env.hawser(&env.default_config());
    h.signal(SIGTERM);
    let status = h.wait_exit(SECS_10).expect("hawser must exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", h.log());
}

#[test]
fn zero_downtime_upgrade_hands_over_without_a_failed_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let env = TestEnv::new("upgrade");
    let sock = tmp_dir().join(format!("{}-upgrade.sock", env.id));
    let _ = std::fs::remove_file(&sock);
    let config = format!(
        "{}pingora:\n  upgrade_sock: \"{}\"\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 2\n",
        env.default_config(),
        sock.display()
    );
    let c = env.run(ContainerSpec::new("app").hawser("enable", "true").hawser("host", "up.test"));
    let mut old = env.hawser(&config);
    env.wait_routed(&old, "up.test", "/", &c, SECS_10);

    // A steady client for the whole handover.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, addr) = (Arc::clone(&stop), old.addr);
        std::thread::spawn(move || {
            let mut outcomes: Vec<Result<u16, String>> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                outcomes.push(get(addr, "up.test", "/").map(|r| r.status).map_err(|e| e.to_string()));
            }
            outcomes
        })
    };

    // The new binary takes the listening sockets over (same file, -u), then the old one quits.
    let log_path = tmp_dir().join(format!("{}-new.log", env.id));
    let mut new = spawn_upgrade(&old.config_path, &log_path);
    wait_until("the new process to wait on the upgrade socket", SECS_10, || sock.exists().then_some(()));
    old.signal(SIGQUIT);
    let status = old.wait_exit(Duration::from_secs(20)).expect("the old process must exit after SIGQUIT");
    // Keep going a little after the old one is gone: every request is now the new one's.
    let after = wait_until("requests answered after the handover", SECS_10, || {
        let r = get(old.addr, "up.test", "/").ok()?;
        (r.status == 200).then_some(r)
    });
    stop.store(true, Ordering::Relaxed);
    let outcomes = client.join().unwrap();
    let _ = new.kill();
    let _ = new.wait();
    let new_log = std::fs::read_to_string(&log_path).unwrap_or_default();

    assert!(status.success(), "old process: {status:?}\n{}", old.log());
    assert_eq!(after.backend(), Some(c.name.as_str()));
    assert!(outcomes.len() > 100, "too few requests to prove anything: {}", outcomes.len());
    // Every answer is a 200: neither process ever answers 404/503 for not having looked yet.
    let failed: Vec<_> = outcomes.iter().filter(|o| matches!(o, Ok(s) if *s != 200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests got an error status during the upgrade: {:?}\nnew process log:\n{new_log}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(10)]
    );
    // pingora's shutdown drops a connection it accepted but whose request it has not read
    // yet (pingora-proxy `handle_new_request`: "dropping the connection to stop more req
    // from coming in"). A client that connects in the microseconds before the old process
    // broadcasts its shutdown can lose that one connection: seen once in ~38,000 requests.
    // More than one is a real regression.
    let dropped: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
    assert!(
        dropped.len() <= 1,
        "{} of {} requests failed at connection level during the upgrade: {:?}\nnew process log:\n{new_log}",
        dropped.len(),
        outcomes.len(),
        &dropped[..dropped.len().min(10)]
    );
    if !dropped.is_empty() {
        eprintln!("upgrade: {} of {} connections dropped unread at the old process's shutdown: {dropped:?}", dropped.len(), outcomes.len());
    }
    assert!(new_log.contains("Docker") && new_log.contains("connected"), "{new_log}");
}

#[test]
fn daemon_mode_detaches_and_serves() {
    /// Kills the daemon named by the pid file, also when the test panics.
    struct Daemon(std::path::PathBuf);
    impl Drop for Daemon {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            }
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let env = TestEnv::new("daemon");
    let pid_file = tmp_dir().join(format!("{}.pid", env.id));
    let error_log = tmp_dir().join(format!("{}.err", env.id));
    let (config, addrs) = env.render(&format!(
        "{}pingora:\n  pid_file: \"{}\"\n  error_log: \"{}\"\n",
        env.default_config(),
        pid_file.display(),
        error_log.display()
    ));
    let config_path = tmp_dir().join(format!("{}.yaml", env.id));
    std::fs::write(&config_path, config).unwrap();
    let c = env.run(ContainerSpec::new("d").hawser("enable", "true").hawser("host", "daemon.test"));

    let _daemon = Daemon(pid_file.clone());
    let status = Command::new(env!("CARGO_BIN_EXE_hawser")).arg("-d").arg("-c").arg(&config_path).status().unwrap();
    assert!(status.success(), "the foreground process exits 0 once it has daemonised");
    let pid = wait_until("the daemon's pid file", SECS_10, || std::fs::read_to_string(&pid_file).ok().filter(|p| !p.trim().is_empty()));
    assert!(std::path::Path::new(&format!("/proc/{}", pid.trim())).exists(), "daemon {pid} is not running");
    let r = wait_response("the daemon to route", addrs[0], "daemon.test", "/", SECS_10, |r| r.backend() == Some(c.name.as_str()));
    assert_eq!(r.status, 200);
    let log = std::fs::read_to_string(&error_log).unwrap_or_default();
    assert!(log.contains("connected"), "the daemon logs to pingora.error_log:\n{log}");
}
