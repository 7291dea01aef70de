//! Deploys against the real Docker engine: what happens to requests while containers come and
//! go, and while a backend misbehaves.
//!
//! - `docker stop` (SIGTERM) *drains* a container: no new request goes to it from the moment
//!   hawser applied the `kill` event, requests in flight finish; a container still running after
//!   its stop timeout is removed; other signals (HUP) change nothing.
//! - A new container gets no request before hawser's first probe of it passed.
//! - A burst of containers started and stopped together is routed, then drained, container by
//!   container (their inspects run side by side).
//! - Retries are safe: a POST that reached a backend is never sent again, an idempotent GET is
//!   retried once per other backend, nothing is retried once response bytes reached the client.
//! - Passive ejection: consecutive gateway errors take a backend out for a while; it comes back
//!   through a passing probe.
//!
//! Everything waits by polling with a deadline: for hawser having *applied* a Docker event
//! ([`Hawser::wait_applied`]), for a log line, or for a backend's `/count` (asked straight at
//! the container). Failure messages carry hawser's log (and a panicking test's `TestEnv` prints
//! its tail too).

mod common;

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A routed backend like [`web`], with extra environment variables and `docker run` settings.
fn web_with(
    env: &TestEnv,
    suffix: &str,
    host: &str,
    service: &str,
    spec: impl FnOnce(ContainerSpec) -> ContainerSpec,
) -> Container {
    env.run(spec(
        ContainerSpec::new(suffix)
            .hawser("enable", "true")
            .hawser("host", host)
            .hawser("service", service),
    ))
}

/// `(status, backend)` of a response, for failure messages.
fn brief(r: &Response) -> String {
    format!(
        "{} from {}",
        r.status,
        r.backend().unwrap_or("<no X-Backend>")
    )
}

// ---------------------------------------------------------------------------
// 1. docker stop drains
// ---------------------------------------------------------------------------

#[test]
fn draining_container_finishes_in_flight_requests_and_gets_no_new_ones() {
    let env = TestEnv::new("drain-sigterm");
    let host = "drain.test";
    // A keeps serving 4 s after SIGTERM, so `docker stop` takes ~4 s.
    let a = web_with(&env, "a", host, "drain", |s| {
        s.env("SIGTERM_DELAY_MS", "4000")
    });
    let b = web(&env, "b", host, "drain");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &a, SECS_10);
    env.wait_routed(&h, host, "/", &b, SECS_10);
    let (a0, b0) = (direct_count(&a), direct_count(&b));

    thread::scope(|s| {
        // Two concurrent slow requests: round robin puts one on each backend.
        let slow: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let t = Instant::now();
                    (
                        http(h.addr, "GET", host, "/slow?ms=2500", &[], b""),
                        t.elapsed(),
                    )
                })
            })
            .collect();
        // Both reached their backend (the backends count a request when they read its head).
        let (da, db) = wait_until(
            "the two slow requests to reach the backends",
            SECS_5,
            || {
                let (da, db) = (direct_count(&a) - a0, direct_count(&b) - b0);
                (da + db >= 2).then_some((da, db))
            },
        );
        assert!(
            da >= 1,
            "setup: no slow request reached {} (A: {da}, B: {db}); round robin should have put one on each\nhawser log:\n{}",
            a.name,
            h.log()
        );

        // docker stop blocks until A exits (~4 s): run it on its own thread.
        let stop_started = Instant::now();
        let stopper = s.spawn(|| {
            let t = Instant::now();
            a.stop(10);
            t.elapsed()
        });
        h.wait_applied(&format!("kill {}", a.name), SECS_5);
        let applied_after = stop_started.elapsed();

        // From now on nothing new goes to A, although it still runs and serves.
        assert_only(&h, host, 50, &b, "while A drains after SIGTERM");
        assert!(
            a.is_running(),
            "{} exited before the request stream ended ({:?} after docker stop started): the test cannot tell draining from death",
            a.name,
            stop_started.elapsed()
        );
        let stream_done = stop_started.elapsed();

        // The request in flight to A when SIGTERM came finishes normally, from A.
        let mut from_a = 0;
        for t in slow {
            let (res, took) = t.join().expect("slow request thread");
            let r = res.unwrap_or_else(|e| {
                panic!("a slow request in flight during docker stop failed after {took:?}: {e}\nhawser log:\n{}", h.log())
            });
            assert_eq!(
                r.status,
                200,
                "a slow request in flight during docker stop: {} after {took:?}, body {:?}\nhawser log:\n{}",
                brief(&r),
                r.body,
                h.log()
            );
            if r.backend() == Some(a.name.as_str()) {
                from_a += 1;
            }
        }
        assert!(
            from_a >= 1,
            "no slow request was answered by {} (it had {da} in flight)",
            a.name
        );
        let stop_took = stopper.join().expect("docker stop thread");
        assert!(
            !a.is_running(),
            "{} still running after docker stop returned",
            a.name
        );
        eprintln!(
            "drain: kill applied {applied_after:?} after docker stop started; 50 requests, none to A, done at {stream_done:?}; \
             {from_a} in-flight request(s) to A finished with 200; docker stop took {stop_took:?}"
        );
    });
}

/// Eight containers started by one `docker start` and stopped by one `docker stop`: the
/// engine interleaves their network, start and kill events, and hawser inspects them side by
/// side while it keeps each container's own events in order. Every one is routed, and once
/// their kill events are applied none of them gets a request, although they all still serve.
#[test]
fn a_burst_of_containers_is_routed_together_and_drained_together() {
    let env = TestEnv::new("burst");
    let host = "burst.test";
    let anchor = web(&env, "anchor", host, "burst");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &anchor, SECS_10);
    let n = 8;
    let burst: Vec<Container> = (1..=n)
        .map(|i| web_with(&env, &format!("c{i}"), host, "burst", |s| s.env("SIGTERM_DELAY_MS", "6000").create_only()))
        .collect();
    let ids: Vec<String> = burst.iter().map(|c| c.id.clone()).collect();
    docker_s(&[vec!["start".to_string()], ids.clone()].concat());
    h.wait_backends_ready("burst", n + 1, SECS_10);
    let counts = shares(&h, host, 4 * (n + 1));
    for c in burst.iter().chain([&anchor]) {
        assert_eq!(counts.get(&c.name), Some(&4), "round robin over all {} backends: {counts:?}", n + 1);
    }

    thread::scope(|s| {
        let stopper = s.spawn(|| docker_s(&[vec!["stop".to_string(), "-t".to_string(), "10".to_string()], ids.clone()].concat()));
        // Every container's kill event was handled (one line each)...
        let draining: Vec<String> = burst.iter().map(|c| format!("container {}: draining (signal 15)", c.name)).collect();
        wait_until("every burst container to be draining", SECS_10, || {
            let log = h.log();
            draining.iter().all(|d| log.contains(d.as_str())).then_some(())
        });
        // ... and the service's selector went live after the last of them.
        let log = h.log();
        let last = draining.iter().filter_map(|d| log.find(d.as_str())).max().expect("draining lines");
        wait_until("the selector to go live after the last kill", SECS_5, || {
            h.log()[last..].contains("service burst: selector live").then_some(())
        });
        for c in &burst {
            assert!(c.is_running(), "{} exited already: the test cannot tell draining from death", c.name);
        }
        assert_only(&h, host, 30, &anchor, "after the burst's kill events were applied");
        stopper.join().expect("docker stop thread");
    });
}

// ---------------------------------------------------------------------------
// 2. other signals
// ---------------------------------------------------------------------------

#[test]
fn sighup_changes_nothing() {
    let env = TestEnv::new("drain-sighup");
    let host = "hup.test";
    let a = web(&env, "a", host, "hup");
    let b = web(&env, "b", host, "hup");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &a, SECS_10);
    env.wait_routed(&h, host, "/", &b, SECS_10);

    // The FROM-scratch backend runs as PID 1 with no HUP handler: the kernel ignores the signal.
    a.kill("HUP");
    let needle = format!("Docker event: kill {} (signal 1)", a.name);
    h.wait_log_line(&format!("a line containing {needle:?}"), SECS_5, |l| {
        l.contains(&needle)
    });
    assert!(a.is_running(), "{} exited on SIGHUP", a.name);

    let counts = shares(&h, host, 20);
    let want: BTreeMap<String, usize> = [(a.name.clone(), 10), (b.name.clone(), 10)].into();
    assert_eq!(
        counts,
        want,
        "round robin over both after SIGHUP to A\nhawser log:\n{}",
        h.log()
    );
    let draining = format!("container {}: draining", a.name);
    assert!(
        !h.log().contains(&draining),
        "SIGHUP started a drain of {}:\n{}",
        a.name,
        h.log()
    );
}

// ---------------------------------------------------------------------------
// 3. stop timeout
// ---------------------------------------------------------------------------

#[test]
fn container_still_running_after_its_stop_timeout_is_removed() {
    let env = TestEnv::new("drain-stop-timeout");
    let host = "overdue.test";
    // Ignores SIGTERM for 60 s; Docker would SIGKILL it 2 s after a `docker stop`, but a plain
    // `docker kill -s TERM` leaves it running: only hawser's own timer removes it.
    let slow = web_with(&env, "slow", host, "overdue", |s| {
        s.env("SIGTERM_DELAY_MS", "60000").stop_timeout(2)
    });
    let b = web(&env, "b", host, "overdue");
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &slow, SECS_10);
    env.wait_routed(&h, host, "/", &b, SECS_10);

    let t = Instant::now();
    slow.kill("TERM");
    h.wait_applied(&format!("kill {}", slow.name), SECS_5);
    let applied_after = t.elapsed();
    assert_only(&h, host, 30, &b, "after hawser applied SIGTERM");

    let name_part = format!("container {}: still running", slow.name);
    let line = h.wait_log_line(
        &format!("a line containing {name_part:?} and \"stop timeout\" within 6 s of docker kill"),
        Duration::from_secs(6).saturating_sub(t.elapsed()),
        |l| l.contains(&name_part) && l.contains("stop timeout"),
    );
    let removed_after = t.elapsed();
    assert!(
        removed_after >= Duration::from_millis(1800),
        "{} removed for its stop timeout {removed_after:?} after docker kill, before its 2 s stop timeout: {line}",
        slow.name
    );
    assert!(
        slow.is_running(),
        "{} exited: it should still run (SIGTERM_DELAY_MS=60000)",
        slow.name
    );
    assert_only(&h, host, 20, &b, "after the stop timeout removal");
    eprintln!(
        "stop timeout: kill applied after {applied_after:?}, removal seen after {removed_after:?}: {line}"
    );
}

// ---------------------------------------------------------------------------
// 4. readiness gating
// ---------------------------------------------------------------------------

#[test]
fn new_container_gets_no_request_before_it_listens() {
    let env = TestEnv::new("ready-gate");
    let host = "gate.test";
    // No retries: a request sent to a backend that does not listen yet would be a 502.
    let config = format!("{}proxy:\n  retries: 0\n", env.default_config());
    let a = web(&env, "a", host, "gate");
    let h = env.hawser(&config);
    env.wait_routed(&h, host, "/", &a, SECS_10);

    let late = web_with(&env, "late", host, "gate", |s| {
        s.env("LISTEN_DELAY_MS", "1500")
    });
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut sent = 0usize;
    let mut first_late = None;
    // One keep-alive client connection (thousands of requests: fresh connections could run out
    // of local ports). hawser answers a failure with a 502, not a close, so an error on a reused
    // connection only means it was closed: resend once on a new one.
    let mut conn: Option<HttpConn> = None;
    let send = |conn: &mut Option<HttpConn>| -> std::io::Result<Response> {
        if let Some(c) = conn.as_mut() {
            if let Ok(r) = c.get(host, "/") {
                return Ok(r);
            }
        }
        *conn = None;
        let mut c = HttpConn::connect(h.addr)?;
        let r = c.get(host, "/");
        if r.is_ok() {
            *conn = Some(c);
        }
        r
    };
    // Bounded: 10 s (and it stops at the first answer from the new backend).
    while started.elapsed() < SECS_10 {
        sent += 1;
        match send(&mut conn) {
            Ok(r) if r.status == 200 => {
                if r.backend() == Some(late.name.as_str()) {
                    first_late = Some(started.elapsed());
                    break;
                }
            }
            Ok(r) => failures.push(format!(
                "#{sent} at {:?}: {} body {:?}",
                started.elapsed(),
                brief(&r),
                r.body
            )),
            Err(e) => failures.push(format!("#{sent} at {:?}: {e}", started.elapsed())),
        }
        if failures.len() >= 20 {
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "requests failed while {} was starting (LISTEN_DELAY_MS=1500, retries 0): {failures:?}\nhawser log:\n{}",
        late.name,
        h.log()
    );
    let first_late = first_late.unwrap_or_else(|| {
        panic!(
            "{} got no request within {:?} after docker run ({sent} requests)\nhawser log:\n{}",
            late.name,
            started.elapsed(),
            h.log()
        )
    });
    eprintln!(
        "readiness: {} got its first request {first_late:?} after docker run returned; {sent} requests, all 200",
        late.name
    );
}

// ---------------------------------------------------------------------------
// 5. safe retries
// ---------------------------------------------------------------------------

#[test]
fn sent_post_is_not_replayed_get_is_retried_once_per_backend_and_partial_response_never() {
    let env = TestEnv::new("safe-retries");
    let host = "retry.test";
    let svc = "retry";
    let a = web(&env, "a", host, svc);
    let b = web(&env, "b", host, svc);
    a.wait_http(80);
    b.wait_http(80);
    // A fresh hawser that has sent no request yet: its first upstream connections are new ones,
    // not reused pooled ones (a failure on a reused connection may be retried for any method).
    let h = env.hawser(&env.default_config());
    h.wait_backends_ready(svc, 2, SECS_10);
    let counts = || (direct_count(&a), direct_count(&b));
    let (a0, b0) = counts();

    // POST /hangup: the backend reads the whole request and closes without answering.
    let r = http(h.addr, "POST", host, "/hangup", &[], b"small body")
        .unwrap_or_else(|e| panic!("POST /hangup through hawser: {e}\nhawser log:\n{}", h.log()));
    let (a1, b1) = counts();
    let sent = (a1 - a0) + (b1 - b0);
    assert_eq!(
        sent,
        1,
        "POST /hangup reached the backends {sent} times (A {}, B {}): a POST that was sent must not be replayed\nhawser log:\n{}",
        a1 - a0,
        b1 - b0,
        h.log()
    );
    assert_eq!(
        r.status,
        502,
        "POST /hangup: {} body {:?}\nhawser log:\n{}",
        brief(&r),
        r.body,
        h.log()
    );

    // GET /hangup: idempotent, retried on the other backend; with 2 backends no third attempt.
    let r = get(h.addr, host, "/hangup")
        .unwrap_or_else(|e| panic!("GET /hangup through hawser: {e}\nhawser log:\n{}", h.log()));
    let (a2, b2) = counts();
    assert_eq!(
        (a2 - a1, b2 - b1),
        (1, 1),
        "GET /hangup should reach each backend exactly once (A, B); hawser answered {}\nhawser log:\n{}",
        brief(&r),
        h.log()
    );
    assert_eq!(
        r.status,
        502,
        "GET /hangup after both backends hung up: {} body {:?}\nhawser log:\n{}",
        brief(&r),
        r.body,
        h.log()
    );

    // GET /partial: the 200 head and 10 of 1000 body bytes reach the client, then the
    // connection breaks. Never retried: response bytes were already sent.
    let req = format!("GET /partial HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let (got, end) = http_raw(h.addr, req.as_bytes(), SECS_5);
    let (a3, b3) = counts();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (status, headers, body) = split_raw(&got)
        .unwrap_or_else(|| panic!("GET /partial: no response head from hawser ({text:?}, ended by {end:?})\nhawser log:\n{}", h.log()));
    assert_eq!(
        (a3 - a2) + (b3 - b2),
        1,
        "GET /partial reached the backends {} times (A {}, B {}): never retried after response bytes; client got {text:?}\nhawser log:\n{}",
        (a3 - a2) + (b3 - b2),
        a3 - a2,
        b3 - b2,
        h.log()
    );
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "GET /partial: the backend's 200 head should reach the client, got {status:?} ({text:?})\nhawser log:\n{}",
        h.log()
    );
    assert!(
        b"0123456789".starts_with(&body),
        "GET /partial: the client should get a truncated body, a prefix of the 10 bytes the backend sent; got {} body bytes \
         (bytes the backend never sent mean hawser wrote into a response whose head was already forwarded): {text:?}\nhawser log:\n{}",
        body.len(),
        h.log()
    );
    let cl = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.as_str());
    eprintln!(
        "safe retries: POST sent once, GET sent to both, /partial: {status:?} content-length {cl:?}, {} body bytes, ended by {:?}",
        body.len(),
        end.map(|e| e.to_string())
    );
}

// ---------------------------------------------------------------------------
// 6. passive ejection
// ---------------------------------------------------------------------------

#[test]
fn failing_backend_is_ejected_and_returns_through_a_probe() {
    let env = TestEnv::new("passive-eject");
    let host = "eject.test";
    let svc = "eject";
    let config = format!(
        "{}health_check: {{path: /healthz, interval: 500ms}}\n\
         proxy:\n  passive_ejection: {{consecutive_failures: 3, duration: 2s}}\n",
        env.default_config()
    );
    let a = web(&env, "a", host, svc);
    let b = web(&env, "b", host, svc);
    let h = env.hawser(&config);
    env.wait_routed(&h, host, "/", &a, SECS_10);
    env.wait_routed(&h, host, "/", &b, SECS_10);

    // A answers every request with 502; its /healthz still passes (the active probe alone would
    // keep it in).
    direct(&a, "/_ctl/fail");
    let ejected = format!("backend {} (", a.name);
    let is_ejection =
        |l: &str| l.contains(&ejected) && l.contains(&format!("of service {svc}: ejected for"));
    let mut failures: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut sent = 0;
    // Until A was seen failing 3 times (or hawser logged the ejection); bounded. After the
    // third failure nothing more is sent until the ejection is logged, so a hawser that needed
    // more than 3 failures times out below.
    while failures.len() < 3 && sent < 50 && start.elapsed() < SECS_5 {
        sent += 1;
        let r = h
            .get(host, "/")
            .unwrap_or_else(|e| panic!("request {sent}: {e}\nhawser log:\n{}", h.log()));
        if r.status != 200 {
            assert_eq!(
                r.backend(),
                Some(a.name.as_str()),
                "request {sent}: {} (only A fails)\nhawser log:\n{}",
                brief(&r),
                h.log()
            );
            failures.push(format!("#{sent}: {}", brief(&r)));
        }
        if h.log().lines().any(is_ejection) {
            break;
        }
    }
    let line = h.wait_log_line(
        &format!(
            "{} ejected after 3 consecutive failures (client saw {failures:?})",
            a.name
        ),
        SECS_5,
        is_ejection,
    );
    let seen_at = Instant::now();
    assert!(
        line.contains("ejected for 2s after 3 consecutive failures"),
        "ejection line should say 'ejected for 2s after 3 consecutive failures': {line}"
    );

    // Ejected for 2 s: every request goes to B and succeeds.
    let mut after = 0;
    while after < 30 {
        after += 1;
        let r = h.get(host, "/").unwrap_or_else(|e| {
            panic!(
                "request {after} after the ejection: {e}\nhawser log:\n{}",
                h.log()
            )
        });
        assert!(
            r.status == 200 && r.backend() == Some(b.name.as_str()),
            "request {after} sent {:?} after the ejection of {} was logged: {}\nhawser log:\n{}",
            seen_at.elapsed(),
            a.name,
            brief(&r),
            h.log()
        );
    }
    let stream_took = seen_at.elapsed();
    assert!(
        stream_took < Duration::from_secs(2),
        "30 requests took {stream_took:?}: longer than the 2 s ejection, so they do not show it"
    );

    // A recovers: once the ejection ran out, a passing probe brings it back.
    direct(&a, "/_ctl/ok");
    env.wait_routed(&h, host, "/", &a, SECS_10);
    let back = h.wait_log_line(&format!("{} back from ejection", a.name), SECS_5, |l| {
        l.contains(&ejected) && l.contains("back from ejection")
    });
    let counts = shares(&h, host, 20);
    let want: BTreeMap<String, usize> = [(a.name.clone(), 10), (b.name.clone(), 10)].into();
    assert_eq!(
        counts,
        want,
        "round robin after A came back\nhawser log:\n{}",
        h.log()
    );
    eprintln!(
        "passive ejection: {} failures seen by clients before `{line}`; 30 requests to B in {stream_took:?}; \
         back after {:?}: {back}",
        failures.len(),
        seen_at.elapsed()
    );
}
