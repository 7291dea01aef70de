//! Resilience against the real Docker engine: backends that are killed, stopped, paused or
//! unhealthy (by Docker's HEALTHCHECK or by hawser's own HTTP probe) stop getting traffic; an
//! interrupted Docker connection keeps the last routes and resynchronises; a bad label skips
//! only its own container.
//!
//! Everything waits by polling with a deadline. Where a test needs to know that hawser has
//! *applied* a Docker event (not just that Docker emitted it), it waits for hawser's
//! "selector live … after Docker event (<action> <container>)" log line, which hawser writes
//! after the service's load balancer has been updated ([`Hawser::wait_applied`]).

mod common;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// local helpers
// ---------------------------------------------------------------------------

/// Number of log lines saying hawser (re)connected to Docker at `endpoint`
/// ("Docker <endpoint>: connected (API …), N containers listed").
fn connected_lines(log: &str, endpoint: &str) -> usize {
    let needle = format!("Docker {endpoint}: connected");
    log.lines().filter(|l| l.contains(&needle)).count()
}

// ---------------------------------------------------------------------------
// 1. SIGKILL under load
// ---------------------------------------------------------------------------

struct Sample {
    started: Instant,
    result: Result<(u16, Option<String>), String>,
}

#[test]
fn sigkill_during_load_fails_no_request() {
    let env = TestEnv::new("sigkill-load");
    let host = "kill.test";
    let bs: Vec<Container> = (1..=3)
        .map(|i| web(&env, &format!("b{i}"), host, "kill"))
        .collect();
    let h = env.hawser(&env.default_config());
    for b in &bs {
        env.wait_routed(&h, host, "/", b, SECS_10);
    }
    let victim = &bs[1];
    let survivors = [&bs[0], &bs[2]];

    const KILL_AT: usize = 100;
    const MIN_TOTAL: usize = 400;
    const MIN_AFTER_KILL: usize = 200;
    const MAX_TOTAL: usize = 4000;
    let killed_at: OnceLock<Instant> = OnceLock::new();
    let (tx, rx) = mpsc::channel::<()>();
    let mut samples: Vec<Sample> = Vec::new();
    let loop_start = Instant::now();
    thread::scope(|s| {
        // The kill runs on its own thread so that it lands while requests are in flight.
        let killed_at = &killed_at;
        let killer = s.spawn(move || {
            if rx.recv().is_ok() {
                victim.kill("KILL");
                let _ = killed_at.set(Instant::now());
            }
        });
        let mut after_kill = 0;
        // Bounded: at most MAX_TOTAL requests and 25 s.
        while samples.len() < MAX_TOTAL && loop_start.elapsed() < Duration::from_secs(25) {
            if samples.len() == KILL_AT {
                tx.send(()).unwrap();
            }
            let started = Instant::now();
            let result = h
                .get(host, "/")
                .map(|r| (r.status, r.backend().map(str::to_string)))
                .map_err(|e| e.to_string());
            if killed_at.get().is_some_and(|k| started >= *k) {
                after_kill += 1;
            }
            samples.push(Sample { started, result });
            if samples.len() >= MIN_TOTAL && after_kill >= MIN_AFTER_KILL {
                break;
            }
        }
        drop(tx);
        killer.join().expect("killer thread");
    });
    let killed_at = *killed_at
        .get()
        .unwrap_or_else(|| panic!("docker kill did not return during the load loop"));

    // Every request succeeded, before, during and after the kill.
    let failures: Vec<String> = samples
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match &s.result {
            Ok((200, _)) => None,
            Ok((st, b)) => Some(format!("#{i}: status {st} from {b:?}")),
            Err(e) => Some(format!("#{i}: {e}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed around the SIGKILL of {}: {failures:?}\nhawser log:\n{}",
        failures.len(),
        samples.len(),
        victim.name,
        h.log()
    );
    let backend = |s: &Sample| {
        s.result
            .as_ref()
            .ok()
            .and_then(|(_, b)| b.clone())
            .unwrap_or_default()
    };

    // Before the kill: exact round robin over the three.
    let mut before: BTreeMap<String, usize> = BTreeMap::new();
    for s in &samples[..99] {
        *before.entry(backend(s)).or_insert(0) += 1;
    }
    let want: BTreeMap<String, usize> = bs.iter().map(|b| (b.name.clone(), 33)).collect();
    assert_eq!(before, want, "round robin over 3 backends before the kill");

    // hawser saw the kill.
    h.wait_applied(&format!("kill {}", victim.name), SECS_5);

    // After `docker kill` returned: the victim must disappear within 2 s, and for good: the
    // first run of 30 consecutive requests without it starts within 2 s, and nothing after
    // that run's start comes from it.
    let post: Vec<&Sample> = samples.iter().filter(|s| s.started >= killed_at).collect();
    let last_victim = post.iter().rposition(|s| backend(s) == victim.name);
    let window_start = last_victim.map_or(0, |p| p + 1);
    assert!(
        post.len() >= window_start + 30,
        "{} answered request {} of {} sent after docker kill returned: fewer than 30 requests without it followed",
        victim.name,
        window_start,
        post.len()
    );
    let gone_after = post[window_start].started.duration_since(killed_at);
    assert!(
        gone_after <= Duration::from_secs(2),
        "{} still answered {:?} after docker kill -s KILL returned (request {} of {})\nhawser log:\n{}",
        victim.name,
        gone_after,
        window_start,
        post.len(),
        h.log()
    );
    let mut after: BTreeMap<String, usize> = BTreeMap::new();
    for s in &post[window_start..] {
        *after.entry(backend(s)).or_insert(0) += 1;
    }
    assert!(!after.contains_key(&victim.name), "{after:?}");
    let n_after = post.len() - window_start;
    for sv in survivors {
        let got = after.get(&sv.name).copied().unwrap_or(0);
        assert!(
            got + 2 >= n_after / 2,
            "survivor {} got {got} of {n_after} requests after the kill: {after:?}",
            sv.name
        );
    }
    eprintln!(
        "sigkill: {} requests in {:?}, {} after docker kill returned; last response from the victim at #{:?} of those; all 200",
        samples.len(),
        loop_start.elapsed(),
        post.len(),
        last_victim
    );
}

// ---------------------------------------------------------------------------
// 2. docker stop
// ---------------------------------------------------------------------------

#[test]
fn stopped_container_gets_no_more_traffic() {
    let env = TestEnv::new("stop-no-traffic");
    let host = "stop.test";
    let keep = web(&env, "keep", host, "stop");
    let gone = web(&env, "gone", host, "stop");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &keep, SECS_10);
    env.wait_routed(&h, host, "/", &gone, SECS_10);

    let t = Instant::now();
    gone.stop(10);
    let stop_took = t.elapsed();
    assert!(
        !gone.is_running(),
        "{} still running after docker stop",
        gone.name
    );
    // No wait: the backend is gone once `docker stop` returns, and no request may fail or be
    // answered by it from then on.
    assert_only(&h, host, 20, &keep, "after docker stop returned");
    eprintln!("docker stop took {stop_took:?}");
}

// ---------------------------------------------------------------------------
// 3. docker pause / unpause
// ---------------------------------------------------------------------------

#[test]
fn paused_container_gets_no_traffic_and_returns_after_unpause() {
    let env = TestEnv::new("pause-unpause");
    let host = "pause.test";
    let a = web(&env, "a", host, "pause");
    let p = web(&env, "p", host, "pause");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &a, SECS_10);
    env.wait_routed(&h, host, "/", &p, SECS_10);

    p.pause();
    assert_eq!(p.inspect("{{.State.Status}}"), "paused");
    // A request sent to a frozen container would hang, not fail: wait until hawser has applied
    // the pause before sending any.
    h.wait_applied(&format!("pause {}", p.name), SECS_5);
    assert_only(&h, host, 20, &a, "while paused");

    p.unpause();
    env.wait_routed(&h, host, "/", &p, SECS_5);
    let counts = shares(&h, host, 20);
    let want: BTreeMap<String, usize> = [(a.name.clone(), 10), (p.name.clone(), 10)].into();
    assert_eq!(
        counts,
        want,
        "round robin after unpause\nhawser log:\n{}",
        h.log()
    );
}

// ---------------------------------------------------------------------------
// 4. Docker HEALTHCHECK gates traffic
// ---------------------------------------------------------------------------

/// Exit codes of the Docker health checks run so far (`.State.Health.Log`, newest last; Docker
/// keeps the last 5).
fn health_log(c: &Container) -> Vec<i64> {
    c.inspect("{{if .State.Health}}{{range .State.Health.Log}}{{.ExitCode}} {{end}}{{end}}")
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn docker_healthcheck_gates_traffic() {
    let env = TestEnv::new("docker-health-gate");
    let host = "hc.test";
    let plain = web(&env, "plain", host, "hc");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &plain, SECS_10);

    // Docker runs the first check one interval after start. A long start period keeps the
    // status `starting` while checks fail, so /_ctl/unhealthy (sent well before the first
    // check) holds the container in `starting` for as long as the test needs.
    let hc = env.run(
        ContainerSpec::new("checked")
            .hawser("enable", "true")
            .hawser("host", host)
            .hawser("service", "hc")
            .healthcheck(80, "/healthz", 1500)
            .args(&["--health-start-period", "120s"]),
    );
    hc.wait_http(80);
    direct(&hc, "/_ctl/unhealthy");
    let codes = health_log(&hc);
    assert!(
        codes.iter().all(|&c| c != 0),
        "setup: Docker's first health check of {} passed before /_ctl/unhealthy was sent ({codes:?}); the machine is too slow for a 1.5 s interval",
        hc.name
    );
    assert_eq!(hc.health(), "starting");

    // hawser knows the container and gates it on Docker's health.
    h.wait_log(
        &format!("container {}: not routed: Docker health: starting", hc.name),
        SECS_5,
    );
    // At least one failed check, still `starting` (start period).
    wait_until(
        &format!("a failed health check of {}", hc.name),
        SECS_10,
        || (!health_log(&hc).is_empty()).then_some(()),
    );
    assert_only(&h, host, 30, &plain, "while Docker health is starting");
    assert_eq!(
        hc.health(),
        "starting",
        "Docker health changed during the requests; log {:?}",
        health_log(&hc)
    );
    // hawser's own TCP probe passes meanwhile: only Docker's health keeps it out.
    assert!(hc.is_running());

    // Healthy: traffic.
    direct(&hc, "/_ctl/healthy");
    hc.wait_health("healthy", SECS_10);
    env.wait_routed(&h, host, "/", &hc, SECS_5);
    let counts = shares(&h, host, 20);
    assert_eq!(
        counts.len(),
        2,
        "both backends should serve once healthy: {counts:?}"
    );

    // Unhealthy: no traffic once hawser has applied Docker's health_status event.
    direct(&hc, "/_ctl/unhealthy");
    hc.wait_health("unhealthy", SECS_10);
    h.wait_applied(&format!("health_status: unhealthy {}", hc.name), SECS_5);
    assert_only(&h, host, 30, &plain, "after Docker marked it unhealthy");
    assert_eq!(hc.health(), "unhealthy");
}

// ---------------------------------------------------------------------------
// 5. hawser's active HTTP probe
// ---------------------------------------------------------------------------

const HTTP_PROBE_CONFIG: &str = "listen: [\"$LISTEN\"]\n\
docker:\n  label_prefix: \"$PREFIX\"\n  network: \"$NETWORK\"\n\
health_check: {path: /healthz, interval: 200ms, fall: 2, rise: 1}\n";

#[test]
fn active_http_probe_takes_failing_backend_out() {
    let env = TestEnv::new("http-probe");
    let host = "probe.test";
    let good = web(&env, "good", host, "probe");
    let sick = web(&env, "sick", host, "probe");
    let h = env.hawser(HTTP_PROBE_CONFIG);
    env.wait_routed(&h, host, "/", &good, SECS_10);
    env.wait_routed(&h, host, "/", &sick, SECS_10);

    let t = Instant::now();
    direct(&sick, "/_ctl/unhealthy");
    // fall 2 × 200 ms: out well within 5 s.
    let needle = format!("backend {} (", sick.name);
    wait_until(
        &format!("hawser to mark {} unhealthy", sick.name),
        SECS_5,
        || {
            h.log()
                .lines()
                .any(|l| l.contains(&needle) && l.contains(": unhealthy by HTTP GET /healthz check"))
                .then_some(())
        },
    );
    let out_after = t.elapsed();
    // The request path itself still answers 200 on the sick backend: only the probe decides.
    assert_eq!(direct(&sick, "/").body, sick.name);
    assert_only(&h, host, 30, &good, "after its /healthz turned 503");

    let t = Instant::now();
    direct(&sick, "/_ctl/healthy");
    env.wait_routed(&h, host, "/", &sick, SECS_5);
    let back_after = t.elapsed();
    let counts = shares(&h, host, 20);
    let want: BTreeMap<String, usize> = [(good.name.clone(), 10), (sick.name.clone(), 10)].into();
    assert_eq!(
        counts,
        want,
        "round robin after recovery\nhawser log:\n{}",
        h.log()
    );
    eprintln!("http probe: out after {out_after:?}, back after {back_after:?}");
}

// ---------------------------------------------------------------------------
// 6. Docker connection interrupted
// ---------------------------------------------------------------------------

const DOCKER_SOCK: &str = "/var/run/docker.sock";

/// A unix-socket relay to the Docker socket that can be cut: every accepted connection is
/// piped both ways to `/var/run/docker.sock`. [`Relay::cut`] shuts down every live connection
/// and makes the relay close new ones at once; [`Relay::restore`] relays again. Std threads
/// only; dropping it stops everything and removes the socket file.
struct Relay {
    path: PathBuf,
    shared: Arc<RelayShared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

#[derive(Default)]
struct RelayShared {
    down: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Live connections: id → (client side, Docker side).
    live: Mutex<HashMap<u64, (UnixStream, UnixStream)>>,
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

impl RelayShared {
    fn shut_all(&self) {
        let live = std::mem::take(&mut *self.live.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, (client, upstream)) in live {
            let _ = client.shutdown(std::net::Shutdown::Both);
            let _ = upstream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Relay {
    fn start(path: &Path) -> Relay {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .unwrap_or_else(|e| panic!("bind relay socket {}: {e}", path.display()));
        let shared = Arc::new(RelayShared::default());
        let sh = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            for conn in listener.incoming() {
                if sh.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if sh.down.load(Ordering::SeqCst) {
                    sh.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let upstream = match UnixStream::connect(DOCKER_SOCK) {
                    Ok(u) => u,
                    Err(e) => {
                        eprintln!("relay: cannot connect to {DOCKER_SOCK}: {e}");
                        continue;
                    }
                };
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
                let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
                    client.try_clone(),
                    upstream.try_clone(),
                    client.try_clone(),
                    upstream.try_clone(),
                ) else {
                    continue;
                };
                sh.live
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, (c3, u3));
                let done = Arc::new(AtomicUsize::new(0));
                for (from, to) in [(client, u2), (upstream, c2)] {
                    let sh = Arc::clone(&sh);
                    let done = Arc::clone(&done);
                    thread::spawn(move || {
                        pipe(from, to);
                        // The second direction to finish forgets the connection.
                        if done.fetch_add(1, Ordering::SeqCst) == 1 {
                            sh.live
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&id);
                        }
                    });
                }
            }
        });
        Relay {
            path: path.to_path_buf(),
            shared,
            acceptor: Some(acceptor),
        }
    }

    fn cut(&self) {
        self.shared.down.store(true, Ordering::SeqCst);
        self.shared.shut_all();
    }

    fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    fn stats(&self) -> String {
        format!(
            "relay: {} connections relayed, {} refused while cut, {} live",
            self.shared.accepted.load(Ordering::SeqCst),
            self.shared.refused.load(Ordering::SeqCst),
            self.shared
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len()
        )
    }
}

/// Copies `from` → `to` until EOF or error, then passes the EOF on (half-close).
fn pipe(mut from: UnixStream, mut to: UnixStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.down.store(true, Ordering::SeqCst);
        self.shared.shut_all();
        // Wake the acceptor so it sees `stop`.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn event_stream_interruption_resyncs() {
    let env = TestEnv::new("event-resync");
    let host = "resync.test";
    let sock = tmp_dir().join(format!("relay-{}.sock", env.id));
    let relay = Relay::start(&sock);
    let endpoint = format!("unix://{}", sock.display());
    let config = format!(
        "listen: [\"$LISTEN\"]\n\
docker:\n  endpoint: \"{endpoint}\"\n  label_prefix: \"$PREFIX\"\n  network: \"$NETWORK\"\n"
    );
    let a = web(&env, "a", host, "resync");
    let h = env.hawser(&config);
    env.wait_routed(&h, host, "/", &a, SECS_10);
    assert_eq!(
        connected_lines(&h.log(), &endpoint),
        1,
        "one connection at start\nhawser log:\n{}",
        h.log()
    );

    // Cut: hawser notices and keeps serving the last known routes.
    relay.cut();
    let cut_at = Instant::now();
    h.wait_log("serving the last known routes", SECS_5);
    assert_only(&h, host, 10, &a, "while the Docker connection is cut");

    // Changes hawser cannot see now.
    let b = web(&env, "b", host, "resync");
    a.stop(10);
    assert!(!a.is_running());
    assert_eq!(
        connected_lines(&h.log(), &endpoint),
        1,
        "hawser reconnected through a cut relay?\n{}\nhawser log:\n{}",
        relay.stats(),
        h.log()
    );

    relay.restore();
    let cut_for = cut_at.elapsed();
    let restored = Instant::now();
    // Reconnect: hawser retries with a backoff of 250 ms doubling up to 10 s, so the next
    // attempt comes at most 10 s after the restore; then a full list and B's first probe.
    wait_until(
        &format!("hawser to reconnect to Docker ({})", relay.stats()),
        Duration::from_secs(12),
        || (connected_lines(&h.log(), &endpoint) >= 2).then_some(()),
    );
    let reconnected_after = restored.elapsed();
    env.wait_routed(&h, host, "/", &b, SECS_10);
    let routed_after = restored.elapsed();
    assert_only(&h, host, 20, &b, "after the resync");
    let log = h.log();
    assert!(
        connected_lines(&log, &endpoint) >= 2,
        "expected at least two 'connected' lines\nhawser log:\n{log}"
    );
    eprintln!(
        "resync: cut for {cut_for:?}; reconnected {reconnected_after:?} and routed to B {routed_after:?} after restore; {}",
        relay.stats()
    );
}

// ---------------------------------------------------------------------------
// 7. A bad label
// ---------------------------------------------------------------------------

#[test]
fn bad_label_skips_only_that_container() {
    let env = TestEnv::new("bad-label");
    let host = "labels.test";
    let good = web(&env, "good", host, "labels");
    // Same service, a port label that is not a number: listed at start.
    let bad_port = env.run(
        ContainerSpec::new("badport")
            .hawser("enable", "true")
            .hawser("host", host)
            .hawser("service", "labels")
            .hawser("port", "abc"),
    );
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &good, SECS_10);
    let port_line = format!(
        "container {}: not routed: label {}=\"abc\"",
        bad_port.name,
        env.label("port")
    );
    h.wait_log(&port_line, SECS_5);

    // Another service, weight 0 (the minimum is 1): started while hawser runs.
    let zero = env.run(
        ContainerSpec::new("zero")
            .hawser("enable", "true")
            .hawser("host", "zero.test")
            .hawser("service", "zero")
            .hawser("weight", "0"),
    );
    let weight_line = format!(
        "container {}: not routed: label {}=\"0\"",
        zero.name,
        env.label("weight")
    );
    h.wait_log(&weight_line, SECS_5);

    // Both refused containers run and answer; hawser just does not route them.
    assert_eq!(direct(&bad_port, "/").body, bad_port.name);
    assert_eq!(direct(&zero, "/").body, zero.name);
    assert_only(&h, host, 20, &good, "with a bad port label on a sibling");
    let r = h.get("zero.test", "/").unwrap();
    assert_eq!(
        r.status,
        404,
        "the weight=0 container's host must not be routed: backend {:?} body {:?}",
        r.backend(),
        r.body
    );
    // Each warning is given once, at the line level: find the full lines for the report.
    let log = h.log();
    for needle in [&port_line, &weight_line] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(needle.as_str()))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{needle:?} should be logged exactly once: {lines:#?}"
        );
        assert!(lines[0].contains("WARN"), "not a warning: {}", lines[0]);
    }
}
