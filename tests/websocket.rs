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

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::python::{PythonServer, python_with, script};
use common::*;

const HOST: &str = "ws.test";
const SERVICE: &str = "echo";
const MESSAGES: usize = 10_000;

/// The Python client, its stdout read line by line on a thread of its own.
struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Client {
    fn start(python: &std::path::Path, h: &Hawser) -> Client {
        let mut child = Command::new(python)
            .arg(script("websocket.py"))
            .args(["client", &h.addr.to_string(), HOST, &MESSAGES.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the websocket client");
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Client { child, stdin, lines }
    }

    /// The client's next line; a failure (with hawser's log) if it printed none in `limit`.
    fn line(&mut self, limit: Duration, h: &Hawser) -> String {
        match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(_) => {
                let status = self.child.try_wait().ok().flatten();
                panic!("the websocket client printed nothing more (exit: {status:?}; its stderr is above)\nhawser log:\n{}", h.log())
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hawser_websocket_connections` of [`SERVICE`].
fn websockets(h: &Hawser) -> Option<f64> {
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("GET /metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    metric(&r.body, &format!("hawser_websocket_connections{{service=\"{SERVICE}\"}}"))
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
    // Resolved from the 101 on; a first tunnel that pingora ended (the client's one retry)
    // may take a moment to leave the gauge.
    wait_until("the gauge to show the one open WebSocket", SECS_5, || (websockets(&h) == Some(1.0)).then_some(()));

    writeln!(client.stdin, "close").expect("tell the client to close");
    assert_eq!(client.line(SECS_10, &h), "closed 1000 bye", "the server's close frame, as the client saw it");
    let status = client.child.wait().expect("wait for the client");
    assert!(status.success(), "the websocket client failed: {status}");

    wait_until("the gauge back to 0 after the close", SECS_5, || (websockets(&h) == Some(0.0)).then_some(()));
    let r = admin_request(h.admin, "GET", "/metrics", None).expect("GET /metrics");
    assert_eq!(metric(&r.body, &format!("hawser_active_requests{{service=\"{SERVICE}\"}}")), Some(0.0), "{}", r.body);
}
