//! A strict HTTP/1.1 origin server run in the test process (loopback), that records every
//! request it receives. Put behind hawser with a `--network host` container (hawser routes
//! those to `127.0.0.1:PORT`), it shows exactly what hawser forwarded: a request smuggled
//! past hawser shows up as one more recorded request, and anything a strict parser cannot
//! read one way only is recorded as a violation.
//!
//! Answers `200` with `X-Recorder: NAME` (and `X-Backend: NAME`, as the test backend does) and
//! the body `NAME PATH`. Keeps connections alive.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Where `target` leads on the most careless backend: one that also decodes `%2F`, `%5C` and
/// `%2E`, treats `\` as `/` and cuts `;params` (Tomcat, Jetty) before it resolves
/// dot-segments (RFC 3986 §5.2.4). The query is left off.
pub fn careless_resolution(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut decoded = path.to_string();
    for (from, to) in [("%2F", "/"), ("%2f", "/"), ("%5C", "/"), ("%5c", "/"), ("\\", "/"), ("%2E", "."), ("%2e", ".")] {
        decoded = decoded.replace(from, to);
    }
    let mut stack: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg.split(';').next().unwrap_or("") {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    format!("/{}", stack.join("/"))
}

#[derive(Default)]
struct Log {
    requests: Vec<Recorded>,
    violations: Vec<String>,
}

/// A server on a loopback port of its own: a thread per connection runs `handle`. Stops
/// accepting when dropped.
pub struct LoopbackServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl LoopbackServer {
    pub fn start(what: &str, handle: impl Fn(TcpStream) + Send + Sync + 'static) -> LoopbackServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind a loopback port for {what}: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, handle) = (Arc::clone(&stop), Arc::new(handle));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let handle = Arc::clone(&handle);
                std::thread::spawn(move || handle(conn));
            }
        });
        LoopbackServer { addr, stop }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

pub struct Recorder {
    pub name: String,
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    _server: LoopbackServer,
}

impl Recorder {
    pub fn start(name: &str) -> Recorder {
        let log = Arc::new(Mutex::new(Log::default()));
        let (l, n) = (Arc::clone(&log), name.to_string());
        let server = LoopbackServer::start("the recorder", move |conn| serve(conn, &n, &l));
        Recorder { name: name.to_string(), addr: server.addr, log, _server: server }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far (health-check probes included).
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Requests other than hawser's health probes (`/healthz`).
    pub fn app_requests(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| r.target != "/healthz").collect()
    }

    /// The request-targets of [`Recorder::app_requests`], in order.
    pub fn targets(&self) -> Vec<String> {
        self.app_requests().into_iter().map(|r| r.target).collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.log.lock().unwrap().violations.clone()
    }
}

fn serve(conn: TcpStream, name: &str, log: &Mutex<Log>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut writer = conn.try_clone().expect("clone the recorder's socket");
    let mut reader = BufReader::new(conn);
    loop {
        match read_request(&mut reader) {
            Ok(None) => return,
            Ok(Some(req)) => {
                let body = format!("{name} {}", req.target);
                let close = req.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                log.lock().unwrap().requests.push(req);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nX-Recorder: {name}\r\nX-Backend: {name}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if writer.write_all(resp.as_bytes()).is_err() || close {
                    return;
                }
            }
            // The peer gave up mid-request (hawser refusing a body it could not read, a
            // client going away): nothing to record, nothing ambiguous.
            Err(e) if e.starts_with(TRUNCATED) => return,
            Err(violation) => {
                log.lock().unwrap().violations.push(violation);
                let _ = writer.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return;
            }
        }
    }
}

const TRUNCATED: &str = "truncated: ";

fn line(reader: &mut BufReader<TcpStream>) -> Result<Option<String>, String> {
    let mut raw = Vec::new();
    match reader.read_until(b'\n', &mut raw) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let Some(text) = raw.strip_suffix(b"\r\n") else {
        return Err(format!("a line not ending in CRLF: {:?}", String::from_utf8_lossy(&raw)));
    };
    if text.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!("a control byte in {:?}", String::from_utf8_lossy(text)));
    }
    String::from_utf8(text.to_vec()).map(Some).map_err(|_| "a line that is not UTF-8".to_string())
}

/// One request, strictly: CRLF lines, one framing (Content-Length digits, or chunked).
fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<Recorded>, String> {
    let Some(request_line) = line(reader)? else { return Ok(None) };
    let parts: Vec<&str> = request_line.split(' ').collect();
    let [method, target, "HTTP/1.1"] = parts[..] else {
        return Err(format!("request line {request_line:?}"));
    };
    let mut headers = Vec::new();
    loop {
        let Some(l) = line(reader)? else { return Err(format!("{TRUNCATED}inside a head")) };
        if l.is_empty() {
            break;
        }
        if l.starts_with([' ', '\t']) {
            return Err(format!("obs-fold {l:?}"));
        }
        let Some((n, v)) = l.split_once(':') else { return Err(format!("field without colon {l:?}")) };
        if n.is_empty() || n.contains([' ', '\t']) {
            return Err(format!("field name {n:?}"));
        }
        headers.push((n.to_string(), v.trim().to_string()));
    }
    let all = |name: &str| headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    let (cl, te, host) = (all("content-length"), all("transfer-encoding"), all("host"));
    if host.len() != 1 {
        return Err(format!("{} Host fields", host.len()));
    }
    let body = match (&cl[..], &te[..]) {
        ([], []) => Vec::new(),
        ([n], []) => {
            let n: usize = n.parse().map_err(|_| format!("Content-Length {n:?}"))?;
            let mut body = vec![0; n];
            reader.read_exact(&mut body).map_err(|e| format!("{TRUNCATED}body: {e}"))?;
            body
        }
        ([], [t]) if t.eq_ignore_ascii_case("chunked") => read_chunked(reader)?,
        _ => return Err(format!("framing Content-Length {cl:?}, Transfer-Encoding {te:?}")),
    };
    Ok(Some(Recorded { method: method.to_string(), target: target.to_string(), headers, body }))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let Some(size_line) = line(reader)? else { return Err(format!("{TRUNCATED}inside a chunked body")) };
        let size = size_line.split(';').next().unwrap_or("");
        if size.is_empty() || size.len() > 8 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("chunk size {size_line:?}"));
        }
        let size = usize::from_str_radix(size, 16).unwrap();
        if size == 0 {
            // Trailer fields, then the final CRLF.
            loop {
                match line(reader)? {
                    Some(l) if l.is_empty() => return Ok(body),
                    Some(_) => {}
                    None => return Err(format!("{TRUNCATED}inside trailers")),
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).map_err(|e| format!("{TRUNCATED}chunk: {e}"))?;
        match line(reader)? {
            Some(l) if l.is_empty() => {}
            None => return Err(format!("{TRUNCATED}after a chunk")),
            other => return Err(format!("after a chunk: {other:?}")),
        }
    }
}
