//! The admin API's status page (`GET /`) as a user sees it: loaded by a real browser
//! (Debian's `chromium`, headless) from a hawser that routes one backend, has drained
//! another through `POST /api/backends/<name>/drain`, and cannot route a third container
//! that exposes two ports without a port label.
//!
//! The test asserts on the DOM chromium built (`--dump-dom`): the service with its route, the
//! backends with their states `ready` and `draining` (text and the class that colours it),
//! the "Containers not routed" table with each reason, and the Docker stream's state. It also
//! takes a screenshot (`--screenshot`), checks that the PNG is non-trivial and prints its path.
//!
//! A second test opens, in the same browser, a page of another origin (another port on
//! 127.0.0.1, served by the test itself) whose script POSTs a drain to the admin API the way
//! any web page can (`fetch(…, {method: 'POST', mode: 'no-cors'})`): the request reaches
//! hawser, and the backend stays `ready`.
//!
//! chromium is a test dependency: `.ci/run` installs it; without it the tests fail and say
//! so. It runs with a throwaway profile, no proxy and no background networking, and only
//! ever loads the admin address and the test's own page on 127.0.0.1.

mod common;

use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// How long one chromium run may take (it needs well under 2 s here).
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);


/// Panics with a clear message when the `chromium` command is missing.
fn require_chromium() -> String {
    match Command::new("chromium")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!(
            "`chromium --version` failed ({}): {}\nthis test needs Debian's chromium: apt-get install -y chromium (.ci/run installs it)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "chromium is not installed: this test loads the status page in a real browser; \
             install Debian's chromium with `apt-get install -y chromium` (.ci/run installs it)"
        ),
        Err(e) => panic!("cannot run chromium: {e}"),
    }
}

/// A headless chromium on `url` with `args` and a fresh profile under `work`, in its own
/// process group; its stdout and stderr go to files under `work`.
struct Chromium {
    child: std::process::Child,
    what: String,
    out_path: std::path::PathBuf,
    err_path: std::path::PathBuf,
    started: Instant,
}

impl Chromium {
    fn spawn(work: &Path, what: &str, args: &[String], url: &str) -> Chromium {
        use std::os::unix::process::CommandExt;
        let profile = work.join(format!("profile-{what}"));
        let out_path = work.join(format!("{what}.stdout"));
        let err_path = work.join(format!("{what}.stderr"));
        let out = std::fs::File::create(&out_path).expect("create chromium stdout file");
        let err = std::fs::File::create(&err_path).expect("create chromium stderr file");
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            // Nothing but the test's own loopback addresses: no proxy, no update or sync traffic.
            "--no-proxy-server",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group, so that a hung browser is killed with its children.
        .process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn chromium: {e}"));
        Chromium { child, what: what.to_string(), out_path, err_path, started: Instant::now() }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err_path).unwrap_or_default()
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait for chromium")
    }

    /// Waits for it to exit (at most [`CHROMIUM_TIMEOUT`]) and returns its stdout; panics with
    /// its stderr on a timeout or a failure.
    fn finish(mut self) -> String {
        let status = loop {
            if let Some(s) = self.exited() {
                break s;
            }
            if self.started.elapsed() >= CHROMIUM_TIMEOUT {
                panic!("chromium ({}) did not finish within {CHROMIUM_TIMEOUT:?}; killed. stderr:\n{}", self.what, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "chromium ({}) failed ({status}) after {:?}. stderr:\n{}",
            self.what,
            self.started.elapsed(),
            self.stderr()
        );
        eprintln!("chromium ({}) took {:?}", self.what, self.started.elapsed());
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if self.exited().is_none() {
            unsafe {
                kill(-(self.child.id() as i32), 9);
            }
            let _ = self.child.wait();
        }
    }
}

/// Runs headless chromium on `url` with `args` until it exits; returns its stdout.
fn chromium(work: &Path, what: &str, args: &[String], url: &str) -> String {
    Chromium::spawn(work, what, args, url).finish()
}

/// The visible text of an HTML fragment: tags dropped, the usual entities decoded,
/// whitespace collapsed.
fn text_of(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One table cell: its opening tag (with attributes) and its visible text.
#[derive(Debug)]
struct Cell {
    tag: String,
    text: String,
}

/// The data rows (rows with `<td>`) of the table `<table id="ID">` in `dom`.
fn table_rows(dom: &str, id: &str) -> Vec<Vec<Cell>> {
    let open = format!("<table id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no table #{id} in the DOM:\n{dom}"));
    let end = start + dom[start..].find("</table>").expect("table end");
    let table = &dom[start..end];
    let mut rows = Vec::new();
    for row in table.split("<tr").skip(1) {
        let row = row.split("</tr>").next().unwrap_or("");
        let mut cells = Vec::new();
        let mut rest = row;
        while let Some(i) = rest.find("<td") {
            let after = &rest[i..];
            let tag_end = after.find('>').expect("td tag end");
            let body = &after[tag_end + 1..];
            let close = body.find("</td>").unwrap_or(body.len());
            cells.push(Cell {
                tag: after[..=tag_end].to_string(),
                text: text_of(&body[..close]),
            });
            rest = &body[close..];
        }
        if !cells.is_empty() {
            rows.push(cells);
        }
    }
    rows
}

/// The row whose cells include one with exactly `text`.
fn row_with<'a>(rows: &'a [Vec<Cell>], text: &str, dom: &str) -> &'a [Cell] {
    rows.iter()
        .find(|r| r.iter().any(|c| c.text == text))
        .unwrap_or_else(|| {
            panic!("no table row with a cell {text:?}; rows: {rows:#?}\nDOM:\n{dom}")
        })
}

/// `GET path` on the admin API, parsed as JSON (status must be 200).
/// The state of backend `name` in service `service` per `/api/services`.
fn backend_state(h: &Hawser, service: &str, name: &str) -> Option<String> {
    let services = admin_json(h, "/api/services");
    let svc = services.as_array()?.iter().find(|s| s["name"] == service)?;
    let b = svc["backends"]
        .as_array()?
        .iter()
        .find(|b| b["container_name"] == name)?;
    b["state"].as_str().map(str::to_string)
}

#[test]
fn status_page_in_a_real_browser_shows_states_and_reasons() {
    let version = require_chromium();
    eprintln!("using {version}");
    let t0 = Instant::now();
    let env = TestEnv::new("status-page");
    let work = TempDir::new("status-page-chromium");
    let host = "status.test";
    let service = "statuspage";
    let ready = web(&env, "ready", host, service);
    let drained = web(&env, "drained", host, service);
    // Exposes 80 (the image) and 443, and has no port label: hawser cannot pick one.
    let two_ports = env.run(
        ContainerSpec::new("two-ports")
            .hawser("enable", "true")
            .hawser("host", "two-ports.test")
            .expose(443),
    );
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &ready, SECS_10);
    env.wait_routed(&h, host, "/", &drained, SECS_10);

    // Drain one through the admin API.
    let r = admin_request(
        h.admin,
        "POST",
        &format!("/api/backends/{}/drain", drained.name),
        None,
    )
    .expect("POST drain");
    assert_eq!(
        r.status, 200,
        "POST /api/backends/{}/drain: {}",
        drained.name, r.body
    );
    let v: Value = serde_json::from_str(&r.body).expect("drain answer is JSON");
    assert_eq!(v["container_name"], drained.name.as_str(), "{}", r.body);
    assert_eq!(v["drained"], true, "{}", r.body);
    wait_until(
        &format!("{} draining in /api/services", drained.name),
        SECS_5,
        || (backend_state(&h, service, &drained.name).as_deref() == Some("draining")).then_some(()),
    );
    assert_eq!(
        backend_state(&h, service, &ready.name).as_deref(),
        Some("ready")
    );
    // The drain is real: once the selector is live without it, new requests all go to the
    // other backend.
    let (head, cause) = (
        format!("service {service}: selector live"),
        format!("(drain of {})", drained.name),
    );
    h.wait_log_line("the selector live after the drain", SECS_5, |l| {
        l.contains(&head) && l.contains(&cause)
    });
    assert_only(&h, host, 10, &ready, "after draining through the admin API");
    let want_reason = format!("exposes 80 and 443: set {}.port", env.prefix);
    wait_until(
        &format!("{} not routed in /api/containers", two_ports.name),
        SECS_5,
        || {
            let containers = admin_json(&h, "/api/containers");
            let c = containers
                .as_array()?
                .iter()
                .find(|c| c["container_name"] == two_ports.name.as_str())?;
            (c["routed"] == false && c["reason"] == want_reason.as_str()).then_some(())
        },
    );
    let setup = t0.elapsed();

    // What a browser renders.
    let url = format!("http://{}/", h.admin);
    let dom = chromium(
        work.0.as_path(),
        "dump-dom",
        &["--dump-dom".to_string()],
        &url,
    );
    assert!(
        dom.contains("<title>hawser status</title>"),
        "not the status page:\n{dom}"
    );

    let docker_line = dom
        .split("<p id=\"docker\">")
        .nth(1)
        .and_then(|s| s.split("</p>").next())
        .map(text_of)
        .unwrap_or_else(|| panic!("no #docker paragraph:\n{dom}"));
    assert!(
        docker_line.starts_with("Docker event stream: connected."),
        "Docker stream line: {docker_line:?}"
    );

    let services = table_rows(&dom, "services");
    // The service's first row carries its name and routes; every row ends with the state.
    let first = row_with(&services, service, &dom);
    assert_eq!(first[1].text, format!("{host}/"), "routes cell: {first:#?}");
    for (c, state) in [(&ready, "ready"), (&drained, "draining")] {
        let row = row_with(&services, &c.name, &dom);
        let last = row.last().expect("cells");
        assert_eq!(
            last.text, state,
            "state of {} on the page: {row:#?}",
            c.name
        );
        assert!(
            last.tag.contains(&format!("class=\"{state}\"")),
            "state cell of {} is not styled as {state}: {}",
            c.name,
            last.tag
        );
    }
    assert!(
        !services.iter().flatten().any(|c| c.text == two_ports.name),
        "{} is listed as a backend:\n{dom}",
        two_ports.name
    );

    let heading = dom
        .split("<h2>Containers not routed")
        .nth(1)
        .and_then(|s| s.split("</h2>").next())
        .unwrap_or_else(|| panic!("no \"Containers not routed\" heading:\n{dom}"));
    // Every container hawser sees is listed, also other tests' (reason: no enable label), so
    // the count is only checked against the table it heads.
    let not_routed = table_rows(&dom, "not-routed");
    assert_eq!(
        heading,
        format!(" ({})", not_routed.len()),
        "heading vs. table rows:\n{dom}"
    );
    let row = row_with(&not_routed, &two_ports.name, &dom);
    assert_eq!(row.len(), 3, "{row:#?}");
    assert_eq!(
        row[2].text, want_reason,
        "why {} is not routed: {row:#?}",
        two_ports.name
    );
    let row = row_with(&not_routed, &drained.name, &dom);
    assert_eq!(row[1].text, service, "{row:#?}");
    assert_eq!(row[2].text, "drained through the admin API", "{row:#?}");
    assert!(
        !not_routed.iter().flatten().any(|c| c.text == ready.name),
        "the ready backend {} is listed as not routed:\n{dom}",
        ready.name
    );

    // And what it looks like. The PNG stays (outside the removed work dir) for a look.
    let png = tmp_dir().join("status_page.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        work.0.as_path(),
        "screenshot",
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1200,800".to_string(),
        ],
        &url,
    );
    let meta = std::fs::metadata(&png)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    let bytes = std::fs::read(&png).expect("read screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        png.display()
    );
    assert!(
        meta.len() > 5 * 1024,
        "screenshot {} is only {} bytes",
        png.display(),
        meta.len()
    );
    eprintln!(
        "status page screenshot: {} ({} bytes); setup {setup:?}, total {:?}",
        png.display(),
        meta.len(),
        t0.elapsed()
    );
}

/// A web site of another origin than the admin API (another port on 127.0.0.1), served from
/// the test process: `/attack` is a page whose script POSTs a drain to the admin API the way
/// any page can (`mode: 'no-cors'`, no preflight), then reports how the fetch ended by
/// loading `/done?OUTCOME` from this site. Stops when dropped.
struct AttackSite {
    addr: std::net::SocketAddr,
    outcome: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AttackSite {
    fn start(admin: std::net::SocketAddr, backend: &str) -> AttackSite {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the attack site on 127.0.0.1");
        let addr = listener.local_addr().expect("attack site address");
        let page = format!(
            "<!doctype html><title>attack</title><script>\n\
             fetch('http://{admin}/api/backends/{backend}/drain', {{method: 'POST', mode: 'no-cors'}})\n\
               .then(r => 'delivered-' + r.type, e => 'failed-' + e)\n\
               .then(outcome => {{ document.title = outcome; new Image().src = '/done?' + encodeURIComponent(outcome); }});\n\
             </script>\n"
        );
        let outcome = std::sync::Arc::new(std::sync::Mutex::new(None));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (outcome2, stop2) = (outcome.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(SECS_5));
                let mut reader = BufReader::new(conn);
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // The rest of the head; no request here has a body.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let target = request_line.split(' ').nth(1).unwrap_or("").to_string();
                let (status, body) = if target == "/attack" {
                    ("200 OK", page.clone())
                } else if let Some(q) = target.strip_prefix("/done?") {
                    *outcome2.lock().unwrap() = Some(q.to_string());
                    ("204 No Content", String::new())
                } else {
                    ("404 Not Found", String::new())
                };
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        AttackSite { addr, outcome, stop, thread: Some(thread) }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What the page reported about its fetch, once it has.
    fn outcome(&self) -> Option<String> {
        self.outcome.lock().unwrap().clone()
    }
}

impl Drop for AttackSite {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A page of another origin, in a real browser, POSTs a drain to the admin API (no token):
/// the request reaches hawser (the fetch resolves with an opaque response, so an HTTP answer
/// came back), and the backend stays `ready`. Without the admin guard this drains it.
#[test]
fn a_page_of_another_origin_cannot_drain_through_the_browser() {
    let version = require_chromium();
    eprintln!("using {version}");
    let env = TestEnv::new("status-page-csrf");
    let work = TempDir::new("status-page-csrf-chromium");
    let (host, service) = ("csrf.test", "csrf");
    let target = web(&env, "target", host, service);
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, host, "/", &target, SECS_10);
    assert_eq!(backend_state(&h, service, &target.name).as_deref(), Some("ready"));

    let site = AttackSite::start(h.admin, &target.name);
    let mut browser = Chromium::spawn(work.0.as_path(), "csrf", &[], &site.url("/attack"));
    let outcome = wait_until("the attack page to report its drain attempt", CHROMIUM_TIMEOUT, || {
        if let Some(status) = browser.exited() {
            panic!("chromium exited ({status}) before the page reported; stderr:\n{}", browser.stderr());
        }
        site.outcome()
    });
    drop(browser);
    assert_eq!(outcome, "delivered-opaque", "the cross-origin POST should have reached the admin API and got an answer");
    assert_eq!(
        backend_state(&h, service, &target.name).as_deref(),
        Some("ready"),
        "a page of another origin ({}) drained {} through the browser\nhawser log:\n{}",
        site.url("/"),
        target.name,
        h.log()
    );
    // It is still routed: requests reach it.
    assert_only(&h, host, 3, &target, "after the refused cross-origin drain");
}
