//! WebSocket end to end through hawser with real clients: Python's `websockets` (from the
//! venv of [`common::python`]) as the echo server, on the host, and as the client.
//!
//! The server listens on loopback; a `--network host` container whose labels route
//! `ws.test` to `127.0.0.1:PORT` puts it behind hawser. Through hawser the client checks
//! (`tests/support/websocket.py`):
//! - 10,000 messages, text and binary in turn, echoed in order (a hundred in flight at a
//!   time), and one of 512 KiB;
//! - a ping answered by a pong;
//! - the close handshake the server starts: the client gets its close frame, 1000 "bye".
//!
//! `hawser_websocket_connections{service}` is 0 before, 1 while the tunnel is open and 0 again
//! once it closed; `hawser_active_requests` is back to 0 too.
//!
//! A deploy under an open WebSocket: two replicas of a service, containers running the test
//! backend's `/ws` (a real WebSocket echo), and the same client library driven command by
//! command (`websocket.py drive`). A WebSocket to replica A (the `X-Backend` of its `101`
//! names the replica) stays usable while `docker stop` drains A (A keeps serving 6 s after
//! SIGTERM); every new WebSocket in that time goes to B; when A's process exits the client
//! sees the connection end, and the gauge counts it no more.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::python::{PythonServer, python_with, script};
use common::*;

const HOST: &str = "ws.test";
const SERVICE: &str = "echo";
const MESSAGES: usize = 10_000;

/// `tests/support/websocket.py` in one of its modes, its stdout read line by line on a thread
/// of its own; killed when dropped.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Script {
    fn start(python: &std::path::Path, args: &[&str]) -> Script {
        let mut child = Command::new(python)
            .arg(script("websocket.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start websocket.py {args:?}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Script { child, stdin, lines }
    }

    /// The script's next line; a failure (with hawser's log) if it printed none in `limit`,
    /// saying what it was `waiting` for.
    fn line(&mut self, limit: Duration, h: &Hawser, waiting: &str) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!("websocket.py: no {waiting} within {limit:?} (exit: {status:?}; its stderr is above)\nhawser log:\n{}", h.log())
            }
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The checking client (`websocket.py client`).
struct Client(Script);

impl Client {
    fn start(python: &std::path::Path, h: &Hawser) -> Client {
        Client(Script::start(python, &["client", &h.addr.to_string(), HOST, &MESSAGES.to_string()]))
    }

    fn line(&mut self, limit: Duration, h: &Hawser) -> String {
        self.0.line(limit, h, "line from the client")
    }
}

/// `hawser_websocket_connections` of [`SERVICE`].
fn websockets(h: &Hawser) -> Option<f64> {
    gauge(h, SERVICE)
}

#[test]
fn a_real_client_echoes_through_hawser_and_closes_cleanly() {
    let python = python_with(&["websockets"]);
    let env = TestEnv::new("websocket_echo");
    let server = PythonServer::start(&python, &[script("websocket.py").to_str().expect("UTF-8 path"), "serve"]);
    let _front = env.run(
        ContainerSpec::new("echo")
            .network("host")
            .hawser("enable", "true")
            .hawser("host", HOST)
            .hawser("service", SERVICE)
            .hawser("port", &server.port.to_string())
            // The container only needs to run; its own backend listens on a port nobody uses.
            .env("BIND", "127.0.0.1")
            .env("PORTS", &free_port().to_string()),
    );
    let h = env.hawser(&env.default_config());
    // The echo server answers a plain GET with 426 Upgrade Required: routed and ready.
    wait_response("the echo server routed", h.addr, HOST, "/", SECS_10, |r| r.status == 426);
    assert_eq!(websockets(&h), Some(0.0), "the service's gauge exists, at 0, before any WebSocket");

    let mut client = Client::start(&python, &h);
    let open = client.line(Duration::from_secs(30), &h);
    assert_eq!(open, "open", "the client's exchange through hawser");
    // Counted from the 101 on.
    wait_until("the gauge to show the one open WebSocket", SECS_5, || (websockets(&h) == Some(1.0)).then_some(()));

    writeln!(client.0.stdin, "close").expect("tell the client to close");
    assert_eq!(client.line(SECS_10, &h), "closed 1000 bye", "the server's close frame, as the client saw it");
    let status = client.0.child.wait().expect("wait for the client");
    assert!(status.success(), "the websocket client failed: {status}");

    wait_until("the gauge back to 0 after the close", SECS_5, || (websockets(&h) == Some(0.0)).then_some(()));
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("GET /metrics");
    assert_eq!(metric(&r.body, &format!("hawser_active_requests{{service=\"{SERVICE}\"}}")), Some(0.0), "{}", r.body);
}

/// Many WebSockets driven by `websocket.py drive`: one command line in, one answer line out
/// (see that script).
struct Driver(Script);

impl Driver {
    fn start(python: &std::path::Path, h: &Hawser, host: &str) -> Driver {
        Driver(Script::start(python, &["drive", &h.addr.to_string(), host]))
    }

    /// Sends `command`; its answer, waiting at most `limit`.
    fn ask(&mut self, command: &str, limit: Duration, h: &Hawser) -> String {
        writeln!(self.0.stdin, "{command}").expect("write to the websocket driver");
        self.0.line(limit, h, &format!("answer to {command:?}"))
    }

    /// Opens WebSocket `id`; the replica that answered its upgrade.
    fn open(&mut self, id: &str, h: &Hawser) -> String {
        let line = self.ask(&format!("open {id}"), SECS_10, h);
        line.strip_prefix(&format!("opened {id} "))
            .unwrap_or_else(|| panic!("open {id}: {line:?}"))
            .to_string()
    }

    fn echo(&mut self, id: &str, text: &str, h: &Hawser) {
        let line = self.ask(&format!("echo {id} {text}"), SECS_10, h);
        assert_eq!(line, format!("echoed {id} {text}"), "echo on WebSocket {id}\nhawser log:\n{}", h.log());
    }

    fn close(&mut self, id: &str, h: &Hawser) {
        let line = self.ask(&format!("close {id}"), SECS_10, h);
        assert_eq!(line, format!("closed {id}"));
    }
}

fn gauge(h: &Hawser, service: &str) -> Option<f64> {
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    metric(&r.body, &format!("hawser_websocket_connections{{service=\"{service}\"}}"))
}

fn wait_gauge(h: &Hawser, service: &str, want: f64, why: &str) {
    wait_until(&format!("hawser_websocket_connections of {service} at {want} ({why})"), SECS_5, || {
        (gauge(h, service) == Some(want)).then_some(())
    });
}

/// What a WebSocket through hawser sees while its container is stopped (see the module doc).
/// What the client sees when A exits is printed: the backend sends no close frame of its own,
/// so the connection just ends; hawser passes that on as a plain TCP close (seen on
/// 2026-12-01: `received=none sent=none cause=EOFError`, which `websockets` reports as 1006,
/// with A's exit: 6.03–6.06 s after the stop began, A serving 6 s after SIGTERM).
#[test]
fn an_open_websocket_outlives_the_drain_of_its_container_and_ends_with_it() {
    let python = python_with(&["websockets"]);
    let env = TestEnv::new("websocket_deploy");
    const HOST: &str = "ws-deploy.test";
    const SERVICE: &str = "live";
    let replica = |suffix: &str| {
        env.run(
            ContainerSpec::new(suffix)
                .hawser("enable", "true")
                .hawser("host", HOST)
                .hawser("service", SERVICE)
                // Wide of the 2.5 s of checks while A drains, for a loaded machine.
                .env("SIGTERM_DELAY_MS", "6000")
                .stop_timeout(10),
        )
    };
    let (a, b) = (replica("a"), replica("b"));
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, HOST, "/", &a, SECS_10);
    env.wait_routed(&h, HOST, "/", &b, SECS_10);
    wait_gauge(&h, SERVICE, 0.0, "before any WebSocket");

    // Round robin: of the first WebSockets, one reaches A. The others are closed again.
    let mut ws = Driver::start(&python, &h, HOST);
    let mut on_a = None;
    for i in 0..6 {
        let id = format!("first{i}");
        let backend = ws.open(&id, &h);
        if backend == a.name && on_a.is_none() {
            on_a = Some(id);
        } else {
            ws.close(&id, &h);
        }
        if on_a.is_some() {
            break;
        }
    }
    let long = on_a.unwrap_or_else(|| panic!("none of 6 WebSockets reached {}\nhawser log:\n{}", a.name, h.log()));
    ws.echo(&long, "before-the-stop", &h);
    wait_gauge(&h, SERVICE, 1.0, "one WebSocket open, to A");

    std::thread::scope(|s| {
        // docker stop blocks until A exits (~6 s after SIGTERM): on its own thread.
        let stop_started = Instant::now();
        let stopping = &a;
        let stopper = s.spawn(move || {
            stopping.stop(10);
            stop_started.elapsed()
        });
        h.wait_applied(&format!("kill {}", a.name), SECS_5);
        let applied = stop_started.elapsed();

        // A drains: for 2.5 s of its 6 s, the open WebSocket stays open (each `wait_end` of a
        // quarter second paces the loop) and echoes, and every new one goes to B.
        let mut new = 0;
        while stop_started.elapsed() < Duration::from_millis(2500) {
            let still = ws.ask(&format!("wait_end {long} 0.25"), SECS_5, &h);
            assert_eq!(still, format!("open {long}"), "the WebSocket to {} while it drains\nhawser log:\n{}", a.name, h.log());
            ws.echo(&long, &format!("while-draining-{new}"), &h);
            let id = format!("new{new}");
            let backend = ws.open(&id, &h);
            assert_eq!(backend, b.name, "WebSocket {id}, opened while {} drains\nhawser log:\n{}", a.name, h.log());
            ws.echo(&id, "hello-b", &h);
            ws.close(&id, &h);
            new += 1;
        }
        let drained_checks_done = stop_started.elapsed();
        assert!(
            a.is_running(),
            "{} exited {drained_checks_done:?} after docker stop started, before the checks while draining were done: \
             the test cannot tell draining from its end",
            a.name
        );
        wait_gauge(&h, SERVICE, 1.0, "the WebSockets to B closed, the one to A still open");

        // A's process exits (SIGTERM_DELAY_MS after the signal): the WebSocket ends with it.
        let end = ws.ask(&format!("wait_end {long} 15"), Duration::from_secs(20), &h);
        let ended_at = stop_started.elapsed();
        let exited_at = stopper.join().expect("docker stop thread");
        assert!(
            end.starts_with(&format!("ended {long} ")),
            "the WebSocket to {} after it exited: {end:?}\nhawser log:\n{}",
            a.name,
            h.log()
        );
        // The end comes with A's exit (docker stop returns a moment after it), not with the drain.
        assert!(
            ended_at >= Duration::from_secs(5),
            "the WebSocket ended {ended_at:?} after docker stop started, before A's 6 s SIGTERM delay: {end}"
        );
        wait_gauge(&h, SERVICE, 0.0, "the WebSocket to A ended with A");
        eprintln!(
            "websocket deploy: kill applied after {applied:?}; open WebSocket echoed and {new} new ones went to B until {drained_checks_done:?}; \
             client saw `{end}` at {ended_at:?}; docker stop returned at {exited_at:?}"
        );
    });
}

/// hawser stops (SIGTERM) with a WebSocket open: the WebSocket goes on for
/// `clients.tunnel_shutdown_timeout`, then the client gets a close frame 1001 "going away"
/// from hawser (not a bare TCP close, which clients report as 1006), well before pingora's
/// grace period ends.
#[test]
fn hawser_stopping_closes_open_websockets_with_going_away() {
    let python = python_with(&["websockets"]);
    let env = TestEnv::new("websocket_shutdown");
    const HOST: &str = "ws-stop.test";
    let backend = env.run(ContainerSpec::new("a").hawser("enable", "true").hawser("host", HOST).hawser("service", "stop"));
    let config = format!(
        "{}clients:\n  tunnel_shutdown_timeout: 1500ms\npingora:\n  grace_period_seconds: 6\n",
        env.default_config()
    );
    let h = env.hawser(&config);
    env.wait_routed(&h, HOST, "/", &backend, SECS_10);
    let mut ws = Driver::start(&python, &h, HOST);
    assert_eq!(ws.open("w", &h), backend.name);
    // A second one that the client closes before the stop: nothing to do for it.
    assert_eq!(ws.open("gone", &h), backend.name);
    ws.close("gone", &h);

    let stopped = Instant::now();
    h.signal(SIGTERM);
    // Still open and echoing while the timeout runs.
    ws.echo("w", "after-the-signal", &h);
    let end = ws.ask("wait_end w 10", Duration::from_secs(15), &h);
    let took = stopped.elapsed();
    eprintln!("{end} after {took:?}");
    assert!(end.starts_with("ended w received=1001 "), "{end}\nhawser log:\n{}", h.log());
    assert!(took >= Duration::from_millis(1400), "closed {took:?} after the signal, before tunnel_shutdown_timeout");
    assert!(took < Duration::from_millis(5000), "closed {took:?} after the signal: pingora's grace period (6 s), not hawser, ended it");
}

/// The same across a zero-downtime upgrade (`hawser -u`, then SIGQUIT to the old process): the
/// old process's WebSocket gets 1001 `tunnel_shutdown_timeout` after the old process begins
/// its shutdown (pingora: 5 s after SIGQUIT), and a client that reconnects is served by the
/// new process on the same address.
#[test]
fn a_handover_closes_the_old_processs_websockets_with_going_away() {
    let python = python_with(&["websockets"]);
    let env = TestEnv::new("websocket_handover");
    const HOST: &str = "ws-up.test";
    let backend = env.run(ContainerSpec::new("a").hawser("enable", "true").hawser("host", HOST).hawser("service", "up"));
    let sock = tmp_dir().join(format!("{}-upgrade.sock", env.id));
    let _ = std::fs::remove_file(&sock);
    let config = format!(
        "{}clients:\n  tunnel_shutdown_timeout: 1500ms\npingora:\n  upgrade_sock: \"{}\"\n  grace_period_seconds: 4\n  graceful_shutdown_timeout_seconds: 2\n",
        env.default_config(),
        sock.display()
    );
    let mut old = env.hawser(&config);
    env.wait_routed(&old, HOST, "/", &backend, SECS_10);
    let mut ws = Driver::start(&python, &old, HOST);
    assert_eq!(ws.open("w", &old), backend.name);

    let log_path = tmp_dir().join(format!("{}-new.log", env.id));
    let mut new = spawn_upgrade(&old.config_path, &log_path);
    wait_until("the new process to wait on the upgrade socket", SECS_10, || sock.exists().then_some(()));
    let handed = Instant::now();
    old.signal(SIGQUIT);
    ws.echo("w", "after-the-handover", &old);
    let end = ws.ask("wait_end w 10", Duration::from_secs(15), &old);
    let took = handed.elapsed();
    // A reconnecting client reaches the new process.
    assert_eq!(ws.open("again", &old), backend.name, "new process log:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default());
    ws.echo("again", "to-the-new-one", &old);
    let status = old.wait_exit(SECS_10);
    let _ = new.kill();
    let _ = new.wait();
    eprintln!("{end} after {took:?}");
    assert!(end.starts_with("ended w received=1001 "), "{end}\nold process log:\n{}", old.log());
    // pingora keeps the old process accepting for 5 s after SIGQUIT (CLOSE_TIMEOUT) before it
    // signals the shutdown; the tunnel's 1.5 s run from that signal.
    assert!(took >= Duration::from_millis(6400) && took < Duration::from_millis(9000), "closed {took:?} after SIGQUIT");
    assert!(status.is_some_and(|s| s.success()), "old process: {status:?}\n{}", old.log());
}
