//! hawser test backend: a tiny std-only HTTP/1.1 server used as the upstream in
//! the integration tests and the benchmarks. It is a single file with no crates so
//! that it can be compiled into a static binary and run as PID 1 in a `FROM scratch`
//! image:
//!
//! ```text
//! rustc --edition 2021 -O -C target-feature=+crt-static tests/support/backend.rs -o backend
//! ```
//!
//! Configuration (environment variables):
//!
//! ```text
//! PORTS             comma-separated TCP ports to listen on (default 80)
//! BIND              address to bind (default 0.0.0.0, all IPv4 interfaces;
//!                   :: for dual stack, 127.0.0.1 when run on a host)
//! NAME              identity (default: /etc/hostname trimmed, else $HOSTNAME,
//!                   else "backend")
//! LISTEN_DELAY_MS   wait this long before binding the ports
//! SIGTERM_DELAY_MS  after SIGTERM keep serving this long, then exit(0); without it
//!                   SIGTERM exits(0) promptly (PID 1 would otherwise ignore it)
//! IDLE_TIMEOUT_MS   close keep-alive connections idle this long (default: never)
//! ```
//!
//! Once a port is bound it prints `backend NAME: listening on ADDR (unix time S.MICROS)` to
//! stderr.
//!
//! Every response carries `X-Backend: <NAME>` and a `Content-Length` (except 204/304,
//! which must not have a body). Paths (query strings are ignored unless noted):
//!
//! ```text
//! /headers         200, body = the request head as received (request line and
//!                  header lines, one per line, \n-terminated)
//! /slow?ms=N       sleep N ms, then 200 with body NAME
//! /healthz         200 "ok", or 503 "unhealthy" after /_ctl/unhealthy
//! /_ctl/unhealthy  make /healthz answer 503; /_ctl/healthy reverts
//! /count           decimal number of requests received so far, not counting
//!                  /count, /healthz and /_ctl/*
//! /status/NNN      status NNN (200..=599), body NAME
//! /echo            200, body = the request body (Content-Length or chunked)
//! /hangup          reads the whole request (body included), then closes the
//!                  connection without writing a single byte (not even a
//!                  100 Continue)
//! /partial         200 with Content-Length: 1000, but only 10 body bytes
//!                  ("0123456789"), flushed, then the connection is closed
//! /_ctl/fail       from now on answer every application request (everything
//!                  /count counts, /hangup and /partial included) with status 502,
//!                  body NAME; `?status=NNN` (200..=599) for another status.
//!                  /healthz is not affected (only /_ctl/unhealthy changes it)
//! /_ctl/ok         revert /_ctl/fail
//! /sse?gap_ms=N&events=K
//!                  server-sent events: 200 with `Content-Type: text/event-stream`,
//!                  chunked (unframed and closed for HTTP/1.0); the head is sent at once,
//!                  then K times (default 1): wait N ms (default 0), send the chunk
//!                  `data: I\n\n` (I from 0); then the last chunk
//! /upgrade         with an `Upgrade` header: `101 Switching Protocols` (same Upgrade
//!                  value), then every byte received is echoed back until the client
//!                  closes; no WebSocket framing. `?echo=0`: read and discard instead
//!                  (a backend that never speaks). Without `Upgrade`: 400
//! anything else    200, body = NAME
//! ```
//!
//! Client mode, for Docker HEALTHCHECK in images without a shell:
//! `backend check [PORT [PATH]]` GETs http://127.0.0.1:PORT/PATH and exits 0 on a 2xx
//! status, 1 otherwise (connect error, timeout: everything bounded by 2 s). PORT and
//! PATH default to env `HEALTHCHECK_PORT` / `HEALTHCHECK_PATH`, else `80` / `/healthz`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

static TERM: AtomicBool = AtomicBool::new(false);
static UNHEALTHY: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);
/// Status every application request is answered with after /_ctl/fail; 0: normal answers.
static FAIL_STATUS: AtomicU16 = AtomicU16::new(0);

/// Async-signal-safe: only stores to an atomic.
extern "C" fn on_signal(_signum: i32) {
    TERM.store(true, Ordering::SeqCst);
}

const INITIAL_BUF: usize = 8 * 1024;
const MAX_HEAD: usize = 64 * 1024;

fn env_ms(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() >= 2 && args[1] == "check" {
        std::process::exit(check(&args[2..]));
    }

    unsafe {
        signal(SIGTERM, on_signal as extern "C" fn(i32) as usize);
        signal(SIGINT, on_signal as extern "C" fn(i32) as usize);
    }
    let term_delay = env_ms("SIGTERM_DELAY_MS");
    thread::spawn(move || loop {
        if TERM.load(Ordering::SeqCst) {
            if let Some(ms) = term_delay {
                thread::sleep(Duration::from_millis(ms));
            }
            std::process::exit(0);
        }
        thread::sleep(Duration::from_millis(5));
    });

    let name: &'static str = Box::leak(backend_name().into_boxed_str());
    let idle = env_ms("IDLE_TIMEOUT_MS")
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis);
    let bind = std::env::var("BIND").unwrap_or_else(|_| "0.0.0.0".to_string());
    let ports = std::env::var("PORTS").unwrap_or_else(|_| "80".to_string());

    if let Some(ms) = env_ms("LISTEN_DELAY_MS") {
        thread::sleep(Duration::from_millis(ms));
    }

    let mut acceptors = Vec::new();
    for port in ports.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port: u16 = match port.parse() {
            Ok(p) => p,
            Err(_) => {
                eprintln!("backend: bad port {port:?} in PORTS");
                std::process::exit(2);
            }
        };
        let ip: std::net::IpAddr = match bind.parse() {
            Ok(ip) => ip,
            Err(_) => {
                eprintln!("backend: bad BIND address {bind:?}");
                std::process::exit(2);
            }
        };
        let listener = match TcpListener::bind(SocketAddr::new(ip, port)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("backend: cannot listen on {ip}:{port}: {e}");
                std::process::exit(2);
            }
        };
        // The wall-clock time lets bench/discovery-latency.sh measure from the moment the
        // port accepts connections (same host clock as Docker's events and hawser's log).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        eprintln!(
            "backend {name}: listening on {} (unix time {}.{:06})",
            listener.local_addr().unwrap(),
            now.as_secs(),
            now.subsec_micros()
        );
        acceptors.push(thread::spawn(move || accept_loop(listener, name, idle)));
    }
    for a in acceptors {
        let _ = a.join();
    }
}

fn backend_name() -> String {
    if let Ok(n) = std::env::var("NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            return h.to_string();
        }
    }
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return h;
        }
    }
    "backend".to_string()
}

fn accept_loop(listener: TcpListener, name: &'static str, idle: Option<Duration>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let spawned = thread::Builder::new()
                    .stack_size(128 * 1024)
                    .spawn(move || serve(stream, name, idle));
                if spawned.is_err() {
                    // Out of threads: the stream was dropped (closed); back off a bit.
                    thread::sleep(Duration::from_millis(5));
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Buffered reader over one connection, reused for all its requests.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Body bytes consumed so far (for /sink).
    consumed: u64,
}

fn bad(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl Conn {
    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes into the buffer; Ok(0) means EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            } else {
                return Err(bad("line or head too long"));
            }
        }
        loop {
            match self.s.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Returns (start, end) of the next line without its line ending and consumes it.
    fn line(&mut self) -> io::Result<(usize, usize)> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buffered()[scanned..].iter().position(|&b| b == b'\n') {
                let s = self.start;
                let mut e = s + scanned + i;
                self.start = e + 1;
                if e > s && self.buf[e - 1] == b'\r' {
                    e -= 1;
                }
                return Ok((s, e));
            }
            // fill() may move the data to the front; `scanned` is relative to start.
            scanned = self.end - self.start;
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Consumes `n` body bytes, appending them to `sink` when given.
    fn consume(&mut self, mut n: u64, mut sink: Option<&mut Vec<u8>>) -> io::Result<()> {
        while n > 0 {
            if self.start == self.end && self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let take = ((self.end - self.start) as u64).min(n) as usize;
            if let Some(sink) = sink.as_deref_mut() {
                sink.extend_from_slice(&self.buf[self.start..self.start + take]);
            }
            self.start += take;
            self.consumed += take as u64;
            n -= take as u64;
        }
        Ok(())
    }

    fn chunked_body(&mut self, mut sink: Option<&mut Vec<u8>>) -> io::Result<()> {
        loop {
            let (s, e) = self.line()?;
            let line = &self.buf[s..e];
            let hex = match line.iter().position(|&b| b == b';') {
                Some(i) => &line[..i],
                None => line,
            };
            let size = parse_hex(trim(hex)).ok_or_else(|| bad("bad chunk size"))?;
            if size == 0 {
                // Trailer section, ends with an empty line.
                loop {
                    let (s, e) = self.line()?;
                    if s == e {
                        return Ok(());
                    }
                }
            }
            self.consume(size, sink.as_deref_mut())?;
            let (s, e) = self.line()?;
            if s != e {
                return Err(bad("missing CRLF after chunk"));
            }
        }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn parse_dec(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 18 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (b - b'0') as u64;
    }
    Some(v)
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 15 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in s {
        let d = (b as char).to_digit(16)?;
        v = v * 16 + d as u64;
    }
    Some(v)
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

enum Route {
    Name,
    Headers,
    Slow(u64),
    Healthz,
    SetHealthy(bool),
    Count,
    Status(u16),
    Echo,
    BadStatus,
    Hangup,
    Partial,
    /// /_ctl/fail (status) and /_ctl/ok (0).
    SetFail(u16),
    /// /_ctl/fail with a status outside 200..=599.
    BadFail,
    Sse { gap_ms: u64, events: u64 },
    Upgrade { echo: bool },
    WebSocket,
    Bytes { n: u64, chunked: bool },
    Sink,
}

/// The value of `key=` in a query string.
fn query_param<'a>(query: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    query.split(|&b| b == b'&').find_map(|kv| {
        kv.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix(b"="))
    })
}

fn route(target: &[u8]) -> Route {
    // Accept absolute-form targets too: http://host/path
    let mut t = target;
    for scheme in [&b"http://"[..], &b"https://"[..]] {
        if t.len() >= scheme.len() && t[..scheme.len()].eq_ignore_ascii_case(scheme) {
            t = &t[scheme.len()..];
            t = match t.iter().position(|&b| b == b'/') {
                Some(i) => &t[i..],
                None => b"/",
            };
        }
    }
    let (path, query) = match t.iter().position(|&b| b == b'?') {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, &b""[..]),
    };
    match path {
        b"/headers" => Route::Headers,
        b"/healthz" => Route::Healthz,
        b"/count" => Route::Count,
        b"/echo" => Route::Echo,
        b"/_ctl/unhealthy" => Route::SetHealthy(false),
        b"/_ctl/healthy" => Route::SetHealthy(true),
        b"/_ctl/ok" => Route::SetFail(0),
        b"/_ctl/fail" => match query_param(query, b"status") {
            None => Route::SetFail(502),
            Some(code) => match parse_dec(code) {
                Some(c) if (200..=599).contains(&c) => Route::SetFail(c as u16),
                _ => Route::BadFail,
            },
        },
        b"/hangup" => Route::Hangup,
        b"/ws" => Route::WebSocket,
        b"/sink" => Route::Sink,
        b"/bytes" => Route::Bytes {
            n: query_param(query, b"n").and_then(parse_dec).unwrap_or(0),
            chunked: query_param(query, b"chunked") == Some(b"1"),
        },
        b"/upgrade" => Route::Upgrade { echo: query_param(query, b"echo") != Some(b"0") },
        b"/sse" => Route::Sse {
            gap_ms: query_param(query, b"gap_ms").and_then(parse_dec).unwrap_or(0),
            events: query_param(query, b"events").and_then(parse_dec).unwrap_or(1),
        },
        b"/partial" => Route::Partial,
        b"/slow" => {
            let ms = query_param(query, b"ms").and_then(parse_dec).unwrap_or(0);
            Route::Slow(ms)
        }
        _ => {
            if let Some(code) = path.strip_prefix(b"/status/") {
                match parse_dec(code) {
                    Some(c) if (200..=599).contains(&c) => Route::Status(c as u16),
                    _ => Route::BadStatus,
                }
            } else {
                Route::Name
            }
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn write_response(
    out: &mut Vec<u8>,
    name: &str,
    code: u16,
    body: &[u8],
    head_only: bool,
    keep_alive: Option<bool>,
) {
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nX-Backend: {}\r\n",
        code,
        reason(code),
        name
    );
    let no_body = code == 204 || code == 304;
    if !no_body {
        let _ = write!(
            out,
            "Content-Type: text/plain\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    match keep_alive {
        Some(false) => out.extend_from_slice(b"Connection: close\r\n"),
        Some(true) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    if !no_body && !head_only {
        out.extend_from_slice(body);
    }
}

fn serve(stream: TcpStream, name: &'static str, idle: Option<Duration>) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(idle);
    let mut conn = Conn {
        s: stream,
        buf: vec![0; INITIAL_BUF],
        start: 0,
        end: 0,
        consumed: 0,
    };
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut scratch: Vec<u8> = Vec::new();
    let _ = serve_requests(&mut conn, name, &mut out, &mut scratch);
}

fn serve_requests(
    conn: &mut Conn,
    name: &'static str,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        // Skip empty lines between requests (RFC 9112 2.2), detect clean EOF.
        let (ls, le) = loop {
            if conn.start == conn.end && conn.fill()? == 0 {
                return Ok(());
            }
            let (s, e) = match conn.line() {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    write_response(out, name, 431, b"head too large\n", false, Some(false));
                    conn.s.write_all(out)?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if s != e {
                break (s, e);
            }
        };
        // The head is parsed in place line by line (fill() may compact the buffer
        // between lines); /headers copies the lines into `scratch`.
        let req_line = &conn.buf[ls..le];
        let mut parts = req_line.split(|&b| b == b' ').filter(|p| !p.is_empty());
        let (method, target, version) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(t), Some(v)) => (m, t, v),
            _ => {
                write_response(out, name, 400, b"bad request line\n", false, Some(false));
                conn.s.write_all(out)?;
                return Ok(());
            }
        };
        let head_only = method == b"HEAD";
        let http10 = version == b"HTTP/1.0";
        let rt = route(target);
        let is_headers = matches!(rt, Route::Headers);
        if is_headers {
            scratch.clear();
            scratch.extend_from_slice(req_line);
            scratch.push(b'\n');
        }
        // Application requests: counted by /count, and subject to /_ctl/fail.
        let app = !matches!(
            rt,
            Route::Count
                | Route::Healthz
                | Route::SetHealthy(_)
                | Route::SetFail(_)
                | Route::BadFail
        );
        if app {
            COUNT.fetch_add(1, Ordering::Relaxed);
        }

        let mut content_length: u64 = 0;
        let mut chunked = false;
        let mut keep_alive = !http10;
        let mut explicit_keep_alive = false;
        let mut expect_continue = false;
        let mut upgrade: Option<Vec<u8>> = None;
        let mut ws_key: Option<Vec<u8>> = None;
        let mut head_bytes = le - ls;
        loop {
            let (s, e) = match conn.line() {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    write_response(out, name, 431, b"head too large\n", false, Some(false));
                    conn.s.write_all(out)?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if s == e {
                break;
            }
            head_bytes += e - s;
            if head_bytes > MAX_HEAD {
                write_response(out, name, 431, b"head too large\n", false, Some(false));
                conn.s.write_all(out)?;
                return Ok(());
            }
            let line = &conn.buf[s..e];
            if is_headers {
                scratch.extend_from_slice(line);
                scratch.push(b'\n');
            }
            let colon = match line.iter().position(|&b| b == b':') {
                Some(c) => c,
                None => {
                    write_response(out, name, 400, b"bad header line\n", false, Some(false));
                    conn.s.write_all(out)?;
                    return Ok(());
                }
            };
            let (key, value) = (trim(&line[..colon]), trim(&line[colon + 1..]));
            if key.eq_ignore_ascii_case(b"content-length") {
                match parse_dec(value) {
                    Some(n) => content_length = n,
                    None => {
                        write_response(out, name, 400, b"bad content-length\n", false, Some(false));
                        conn.s.write_all(out)?;
                        return Ok(());
                    }
                }
            } else if key.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = has_token(value, b"chunked");
            } else if key.eq_ignore_ascii_case(b"connection") {
                if has_token(value, b"close") {
                    keep_alive = false;
                } else if has_token(value, b"keep-alive") {
                    keep_alive = true;
                    explicit_keep_alive = true;
                }
            } else if key.eq_ignore_ascii_case(b"expect") {
                expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            } else if key.eq_ignore_ascii_case(b"upgrade") && !value.is_empty() {
                upgrade = Some(value.to_vec());
            } else if key.eq_ignore_ascii_case(b"sec-websocket-key") {
                ws_key = Some(value.to_vec());
            }
        }

        // /hangup writes nothing at all, not even an interim response.
        let hangup = matches!(rt, Route::Hangup);
        if expect_continue && !http10 && !hangup && (chunked || content_length > 0) {
            conn.s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let echo = matches!(rt, Route::Echo);
        if echo {
            scratch.clear();
        }
        let sink = if echo { Some(&mut *scratch) } else { None };
        conn.consumed = 0;
        if chunked {
            if conn.chunked_body(sink).is_err() {
                write_response(out, name, 400, b"bad chunked body\n", false, Some(false));
                let _ = conn.s.write_all(out);
                return Ok(());
            }
        } else {
            conn.consume(content_length, sink)?;
        }

        let conn_header = if !keep_alive {
            Some(false)
        } else if http10 && explicit_keep_alive {
            Some(true)
        } else {
            None
        };
        let failing = match FAIL_STATUS.load(Ordering::SeqCst) {
            0 => None,
            c if app => Some(c),
            _ => None,
        };
        if let Some(code) = failing {
            write_response(out, name, code, name.as_bytes(), head_only, conn_header);
            conn.s.write_all(out)?;
            if !keep_alive {
                return Ok(());
            }
            continue;
        }
        match rt {
            // The whole request was read: close without a byte of response.
            Route::Hangup => return Ok(()),
            Route::Partial => {
                out.clear();
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
                );
                if !head_only {
                    out.extend_from_slice(b"0123456789");
                }
                conn.s.write_all(out)?;
                conn.s.flush()?;
                return Ok(());
            }
            Route::Sse { gap_ms, events } => {
                out.clear();
                let framing = if http10 { "Connection: close\r\n" } else { "Transfer-Encoding: chunked\r\n" };
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n{framing}\r\n"
                );
                conn.s.write_all(out)?;
                if head_only {
                    if http10 {
                        return Ok(());
                    }
                    continue;
                }
                for i in 0..events {
                    thread::sleep(Duration::from_millis(gap_ms));
                    let event = format!("data: {i}\n\n");
                    out.clear();
                    if http10 {
                        out.extend_from_slice(event.as_bytes());
                    } else {
                        let _ = write!(out, "{:x}\r\n{event}\r\n", event.len());
                    }
                    conn.s.write_all(out)?;
                }
                if http10 {
                    return Ok(());
                }
                conn.s.write_all(b"0\r\n\r\n")?;
                if !keep_alive {
                    return Ok(());
                }
                continue;
            }
            Route::Upgrade { echo } => {
                let Some(protocol) = upgrade else {
                    write_response(out, name, 400, b"/upgrade needs an Upgrade header\n", head_only, Some(false));
                    conn.s.write_all(out)?;
                    return Ok(());
                };
                out.clear();
                let _ = write!(out, "HTTP/1.1 101 Switching Protocols\r\nX-Backend: {name}\r\nConnection: Upgrade\r\nUpgrade: ");
                out.extend_from_slice(&protocol);
                out.extend_from_slice(b"\r\n\r\n");
                // Bytes the client sent right behind its head are the tunnel's first.
                if echo {
                    out.extend_from_slice(conn.buffered());
                }
                conn.s.write_all(out)?;
                let mut buf = [0u8; 4096];
                loop {
                    match conn.s.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) if echo => conn.s.write_all(&buf[..n])?,
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Route::WebSocket => {
                let websocket = upgrade.as_deref().is_some_and(|u| has_token(u, b"websocket"));
                let Some(key) = ws_key.filter(|_| websocket) else {
                    write_response(out, name, 400, b"/ws needs Upgrade: websocket and Sec-WebSocket-Key\n", head_only, Some(false));
                    conn.s.write_all(out)?;
                    return Ok(());
                };
                out.clear();
                let _ = write!(
                    out,
                    "HTTP/1.1 101 Switching Protocols\r\nX-Backend: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    websocket_accept(&key)
                );
                conn.s.write_all(out)?;
                return websocket_echo(conn);
            }
            Route::Bytes { n, chunked } => {
                out.clear();
                let framing = if chunked { "Transfer-Encoding: chunked".to_string() } else { format!("Content-Length: {n}") };
                let _ = write!(out, "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Type: application/octet-stream\r\n{framing}\r\n\r\n");
                conn.s.write_all(out)?;
                if !head_only {
                    // 64 KiB is a multiple of 251 plus 24: the pattern continues across writes
                    // when each write starts at offset `sent % 251`.
                    let pattern: Vec<u8> = (0..64 * 1024 + 251).map(|i| (i % 251) as u8).collect();
                    let mut sent: u64 = 0;
                    while sent < n {
                        let take = (n - sent).min(64 * 1024) as usize;
                        let off = (sent % 251) as usize;
                        if chunked {
                            conn.s.write_all(format!("{take:x}\r\n").as_bytes())?;
                        }
                        conn.s.write_all(&pattern[off..off + take])?;
                        if chunked {
                            conn.s.write_all(b"\r\n")?;
                        }
                        sent += take as u64;
                    }
                    if chunked {
                        conn.s.write_all(b"0\r\n\r\n")?;
                    }
                }
                if !keep_alive {
                    return Ok(());
                }
                continue;
            }
            _ => {}
        }
        let mut num = [0u8; 20];
        let (code, body): (u16, &[u8]) = match rt {
            Route::Name => (200, name.as_bytes()),
            Route::Headers | Route::Echo => (200, &scratch[..]),
            Route::Slow(ms) => {
                thread::sleep(Duration::from_millis(ms));
                (200, name.as_bytes())
            }
            Route::Healthz => {
                if UNHEALTHY.load(Ordering::SeqCst) {
                    (503, b"unhealthy")
                } else {
                    (200, b"ok")
                }
            }
            Route::SetHealthy(h) => {
                UNHEALTHY.store(!h, Ordering::SeqCst);
                (
                    200,
                    if h {
                        &b"healthy"[..]
                    } else {
                        &b"unhealthy"[..]
                    },
                )
            }
            Route::Count | Route::Sink => {
                let n = if matches!(rt, Route::Sink) { conn.consumed } else { COUNT.load(Ordering::SeqCst) };
                let len = {
                    let mut cur = io::Cursor::new(&mut num[..]);
                    let _ = write!(cur, "{n}");
                    cur.position() as usize
                };
                (200, &num[..len])
            }
            Route::Status(c) => (c, name.as_bytes()),
            Route::BadStatus | Route::BadFail => (400, b"status must be 200..=599\n"),
            Route::SetFail(c) => {
                FAIL_STATUS.store(c, Ordering::SeqCst);
                (200, if c == 0 { &b"ok"[..] } else { &b"failing"[..] })
            }
            // Answered above.
            Route::Hangup
            | Route::Partial
            | Route::Sse { .. }
            | Route::Upgrade { .. }
            | Route::WebSocket
            | Route::Bytes { .. } => unreachable!(),
        };
        write_response(out, name, code, body, head_only, conn_header);
        conn.s.write_all(out)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

// ---------------------------------------------------------------------------
// /ws: just enough RFC 6455 for the tests (no extensions, no UTF-8 checks)
// ---------------------------------------------------------------------------

/// Echoes frames until the client's close (answered) or the connection ends.
fn websocket_echo(conn: &mut Conn) -> io::Result<()> {
    const MAX_FRAME: u64 = 16 << 20;
    let mut head = Vec::with_capacity(14);
    let mut payload = Vec::new();
    loop {
        head.clear();
        conn.consume(2, Some(&mut head))?;
        let (fin_opcode, masked, len7) = (head[0], head[1] & 0x80 != 0, head[1] & 0x7f);
        let len = match len7 {
            126 | 127 => {
                let n = if len7 == 126 { 2 } else { 8 };
                conn.consume(n, Some(&mut head))?;
                head[2..].iter().fold(0u64, |v, &b| v << 8 | b as u64)
            }
            n => n as u64,
        };
        if len > MAX_FRAME {
            return Err(bad("WebSocket frame too large"));
        }
        let mut mask = Vec::with_capacity(4);
        if masked {
            conn.consume(4, Some(&mut mask))?;
        }
        payload.clear();
        conn.consume(len, Some(&mut payload))?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let opcode = fin_opcode & 0x0f;
        let reply = match opcode {
            0x9 => 0x80 | 0xA, // ping: a pong with the same payload
            0xA => continue,   // pong: nothing
            0x8 => {
                // close: the same status code back (no reason), then the end
                payload.truncate(2);
                0x80 | 0x8
            }
            _ => fin_opcode, // data or continuation: as received
        };
        let mut frame = vec![reply];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xffff => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&payload);
        conn.s.write_all(&frame)?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

/// `Sec-WebSocket-Accept`: base64(SHA-1(key + the RFC's GUID)).
fn websocket_accept(key: &[u8]) -> String {
    let mut input = trim(key).to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&input))
}

/// SHA-1 (FIPS 180-4), only for the WebSocket handshake.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([block[4 * i], block[4 * i + 1], block[4 * i + 2], block[4 * i + 3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a.rotate_left(5).wrapping_add(f).wrapping_add(e).wrapping_add(k).wrapping_add(*wi);
            (e, d, c, b, a) = (d, c, b.rotate_left(30), a, t);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |v, (i, &b)| v | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `backend check [PORT [PATH]]`: exit 0 on a 2xx answer within 2 s, else 1.
fn check(args: &[String]) -> i32 {
    let port = args
        .first()
        .cloned()
        .or_else(|| std::env::var("HEALTHCHECK_PORT").ok())
        .unwrap_or_else(|| "80".to_string());
    let mut path = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("HEALTHCHECK_PATH").ok())
        .unwrap_or_else(|| "/healthz".to_string());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let port: u16 = match port.trim().parse() {
        Ok(p) => p,
        Err(_) => return 1,
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(_) => return 1,
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    let left = |d: Instant| {
        d.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let _ = s.set_write_timeout(Some(left(deadline)));
    if s.write_all(req.as_bytes()).is_err() {
        return 1;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        let _ = s.set_read_timeout(Some(left(deadline)));
        match s.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return 1,
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    // "HTTP/1.x 2xx"
    if got >= 12 && buf.starts_with(b"HTTP/1.") && buf[9] == b'2' {
        0
    } else {
        1
    }
}
