//! `hawser explain [CONTAINER]`: why is (or is not) a container routed, asked of a running
//! hawser through its admin API and shown as a table.
//!
//! ```text
//! hawser explain [-c FILE] [--admin ADDR] [--token TOKEN] [CONTAINER]
//! ```
//!
//! The admin address and token come from hawser's configuration file (`-c`, else the embedded
//! defaults: `127.0.0.1:9900`, no token); `--admin` and `--token` (or `HAWSER_ADMIN_TOKEN`)
//! override them. Without CONTAINER every container hawser has seen is listed, those that are
//! not routed first; with CONTAINER (full id, id prefix or name) that one is shown in detail,
//! with its backend address, weight and state when it is a backend.
//!
//! Exit status: 0 when hawser answered, 1 when CONTAINER is unknown to it, 2 when the admin
//! API cannot be reached, refuses the token, or the command line or configuration is wrong.
//!
//! The client is a plain blocking HTTP/1.1 GET over `std::net::TcpStream`: this runs once and
//! exits, so it needs no runtime.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{DEFAULT_ADMIN_LISTEN, Loaded};

/// Exit status: hawser answered.
pub const EXIT_OK: i32 = 0;
/// Exit status: the container asked about is unknown to hawser.
pub const EXIT_UNKNOWN: i32 = 1;
/// Exit status: the admin API could not be asked (unreachable, 401, bad arguments).
pub const EXIT_UNREACHABLE: i32 = 2;

/// Environment variable that gives the admin token (overridden by `--token`).
pub const TOKEN_ENV: &str = "HAWSER_ADMIN_TOKEN";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted (the admin API lists every container: generous).
const MAX_BODY: usize = 64 * 1024 * 1024;

pub const USAGE: &str = "\
usage: hawser explain [-c FILE] [--admin ADDR] [--token TOKEN] [CONTAINER]

Asks a running hawser, through its admin API, which containers it routes and why the
others are not routed.

  CONTAINER            show only this container, in detail: its full id, an id
                       prefix (as `docker ps` shows) or its name
  -c, --conf FILE      hawser's configuration file: the admin API's address and token
                       are read from it (default: the embedded defaults, 127.0.0.1:9900)
      --admin ADDR     the admin API's address, ip:port (overrides the file)
      --token TOKEN    the admin token (overrides the file and $HAWSER_ADMIN_TOKEN)
  -h, --help           this help

Exit status: 0 answered; 1 CONTAINER unknown to hawser; 2 admin API unreachable,
token refused (401), or bad arguments or configuration.
";

/// What the command line asks for.
#[derive(Debug, Default, PartialEq)]
struct Args {
    conf: Option<PathBuf>,
    admin: Option<String>,
    token: Option<String>,
    container: Option<String>,
    help: bool,
}

/// `args` are the words after `explain`.
fn parse_args(args: Vec<OsString>) -> Result<Args, String> {
    let mut out = Args::default();
    let mut it = args.into_iter();
    let mut only_positional = false;
    while let Some(arg) = it.next() {
        let Some(text) = arg.to_str() else {
            return Err(format!("argument {arg:?} is not valid UTF-8"));
        };
        let text = text.to_string();
        if only_positional || !text.starts_with('-') || text == "-" {
            if let Some(first) = &out.container {
                return Err(format!("one CONTAINER at most (got {first:?} and {text:?})"));
            }
            out.container = Some(text);
            continue;
        }
        if text == "--" {
            only_positional = true;
            continue;
        }
        // `--opt=value` and `--opt value`; `-cFILE` and `-c FILE`.
        let (flag, inline): (&str, Option<OsString>) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(OsString::from(v))),
            _ if text.starts_with("-c") && text.len() > 2 && !text.starts_with("--") => {
                ("-c", Some(OsString::from(&text[2..])))
            }
            _ => (text.as_str(), None),
        };
        let mut value = |name: &str| -> Result<OsString, String> {
            match inline.clone().or_else(|| it.next()) {
                Some(v) => Ok(v),
                None => Err(format!("{name} needs a value")),
            }
        };
        let utf8 = |v: OsString, name: &str| -> Result<String, String> {
            v.into_string().map_err(|v| format!("{name} {v:?} is not valid UTF-8"))
        };
        match flag {
            "-h" | "--help" => out.help = true,
            "-c" | "--conf" => out.conf = Some(PathBuf::from(value(flag)?)),
            "--admin" => out.admin = Some(utf8(value(flag)?, flag)?),
            "--token" => out.token = Some(utf8(value(flag)?, flag)?),
            _ => return Err(format!("unknown option {text:?}")),
        }
    }
    Ok(out)
}

/// Runs `hawser explain`; `args` are the words after `explain`. Returns the exit status.
pub fn run(args: Vec<OsString>) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hawser explain: {e} (see hawser explain --help)");
            return EXIT_UNREACHABLE;
        }
    };
    if args.help {
        print!("{USAGE}");
        return EXIT_OK;
    }
    match explain(&args) {
        Ok(text) => {
            print!("{text}");
            EXIT_OK
        }
        Err((status, e)) => {
            eprintln!("hawser explain: {e}");
            status
        }
    }
}

/// Asks the running hawser and renders the answer; on failure, the exit status and why.
fn explain(args: &Args) -> Result<String, (i32, String)> {
    let unreachable = |e| (EXIT_UNREACHABLE, e);
    let target = Target::from_args(args, std::env::var(TOKEN_ENV).ok()).map_err(unreachable)?;
    let containers: Vec<ContainerView> = target.get_json("/api/containers").map_err(unreachable)?;
    let Some(who) = &args.container else {
        return Ok(render_table(&containers));
    };
    let found = find(&containers, who).map_err(|e| (EXIT_UNKNOWN, e))?;
    let services: Vec<ServiceView> = target.get_json("/api/services").map_err(unreachable)?;
    // Without TLS listeners (or from an older hawser) there are none: nothing to show.
    let certificates: Vec<CertificateView> = target.get_json("/api/certificates").unwrap_or_default();
    Ok(render_detail(found, &services, &certificates))
}

/// Where to ask, and with which token.
#[derive(Debug, PartialEq)]
struct Target {
    addr: SocketAddr,
    token: Option<String>,
    /// Where the address came from, for error messages.
    source: String,
}

impl Target {
    /// Flags over environment over file over defaults.
    fn from_args(args: &Args, env_token: Option<String>) -> Result<Target, String> {
        let (listen, file_token, source) = match &args.conf {
            Some(path) => {
                let loaded = Loaded::from_path(path).map_err(|e| {
                    // The one-line form: the snippet would spread the message over lines.
                    let mut e = e;
                    e.snippet = None;
                    format!("invalid configuration: {e}")
                })?;
                (loaded.config.admin.listen, loaded.config.admin.token, format!("admin.listen in {}", path.display()))
            }
            None => (DEFAULT_ADMIN_LISTEN.parse().expect("valid default"), None, "the default admin address".to_string()),
        };
        let (addr, source) = match &args.admin {
            Some(a) => (parse_admin_addr(a)?, "--admin".to_string()),
            None => (reachable(listen), source),
        };
        let nonempty = |t: &Option<String>| t.clone().filter(|t| !t.is_empty());
        let token = nonempty(&args.token).or_else(|| nonempty(&env_token)).or(file_token);
        Ok(Target { addr, token, source })
    }

    /// GET `path` and parse its JSON answer.
    fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, String> {
        let (status, body) = self.get(path)?;
        match status {
            200 => {}
            401 => {
                let how = if self.token.is_some() { "the token given was refused" } else { "it needs a token" };
                return Err(format!(
                    "the admin API at {} answered 401 Unauthorized: {how}; give the right one with --token TOKEN, ${TOKEN_ENV}, or -c FILE (hawser's configuration, admin.token)",
                    self.addr
                ));
            }
            _ => {
                let first = String::from_utf8_lossy(&body);
                let first = first.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
                return Err(format!("the admin API at {} answered {status} to GET {path}: {first}", self.addr));
            }
        }
        serde_json::from_slice(&body).map_err(|e| {
            format!("the answer of {} to GET {path} is not what hawser's admin API sends ({e}): is it hawser's admin API?", self.addr)
        })
    }

    /// One `GET path` with `Connection: close`: (status, body).
    fn get(&self, path: &str) -> Result<(u16, Vec<u8>), String> {
        let unreachable = |e: std::io::Error| {
            format!(
                "cannot reach hawser's admin API at {} ({}): {e}; is hawser running? Point to it with -c FILE (its configuration) or --admin ADDR",
                self.addr, self.source
            )
        };
        let mut s = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).map_err(unreachable)?;
        s.set_read_timeout(Some(IO_TIMEOUT)).map_err(unreachable)?;
        s.set_write_timeout(Some(IO_TIMEOUT)).map_err(unreachable)?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: hawser-explain/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.addr,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).map_err(unreachable)?;
        let broken = |e: String| format!("the admin API at {} sent a broken answer to GET {path}: {e}", self.addr);
        read_response(&mut s).map_err(broken)
    }
}

/// `0.0.0.0:p` → `127.0.0.1:p`, `[::]:p` → `[::1]:p`: a wildcard listen address is reached on
/// loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), listen.port()),
        _ => listen,
    }
}

/// `ip:port`, `[v6]:port`, `host:port`; an `http://` in front and a `/` after are allowed.
fn parse_admin_addr(a: &str) -> Result<SocketAddr, String> {
    let trimmed = a.trim();
    let trimmed = trimmed.strip_prefix("http://").unwrap_or(trimmed).trim_end_matches('/');
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(reachable(addr));
    }
    let bad = || format!("--admin {a:?} is not an address: use ip:port, e.g. 127.0.0.1:9900");
    if !trimmed.contains(':') {
        return Err(bad());
    }
    trimmed.to_socket_addrs().ok().and_then(|mut it| it.next()).map(reachable).ok_or_else(bad)
}

/// Reads one HTTP/1.x response: status and body (Content-Length, chunked, or up to EOF).
fn read_response(s: &mut impl Read) -> Result<(u16, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too long".into());
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err("connection closed before a complete response head".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .filter(|_| status_line.starts_with("HTTP/1."))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {status_line:?}"))?;
    let header = |name: &str| {
        head.split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let read_more = |s: &mut dyn Read, rest: &mut Vec<u8>| -> Result<bool, String> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    rest.extend_from_slice(&chunk[..n]);
                    if rest.len() > MAX_BODY {
                        return Err("response body too large".into());
                    }
                    return Ok(true);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    if let Some(cl) = header("content-length") {
        let n: usize = cl.parse().map_err(|_| format!("bad Content-Length {cl:?}"))?;
        if n > MAX_BODY {
            return Err("response body too large".into());
        }
        while rest.len() < n {
            if !read_more(s, &mut rest)? {
                return Err(format!("connection closed after {} of {n} body bytes", rest.len()));
            }
        }
        rest.truncate(n);
        return Ok((status, rest));
    }
    if header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        // Read to EOF (Connection: close), then decode.
        while read_more(s, &mut rest)? {}
        return decode_chunked(&rest).map(|b| (status, b));
    }
    while read_more(s, &mut rest)? {}
    Ok((status, rest))
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").ok_or("chunked body cut short")?;
        let size = String::from_utf8_lossy(&data[..line_end]);
        let size = size.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("bad chunk size {size:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or_default();
    }
}

// ---------------------------------------------------------------------------
// the admin API's views, as read (every field optional: older and newer hawsers)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ContainerView {
    container_id: String,
    container_name: String,
    service: Option<String>,
    routed: bool,
    reason: Option<String>,
    state: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ServiceView {
    name: String,
    /// `http` or `https`; empty from a hawser that predates it.
    scheme: String,
    hosts: Vec<String>,
    path_prefix: String,
    routes: Vec<RouteView>,
    backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RouteView {
    host: String,
    path_prefix: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct BackendView {
    container_id: String,
    container_name: String,
    address: String,
    weight: u64,
    state: String,
}

/// A container by full id, name, or unique id prefix (as the drain endpoint resolves it).
fn find<'a>(containers: &'a [ContainerView], who: &str) -> Result<&'a ContainerView, String> {
    let who = who.trim().trim_start_matches('/');
    if who.is_empty() {
        return Err("CONTAINER is empty".into());
    }
    if let Some(c) = containers.iter().find(|c| c.container_id == who || c.container_name == who) {
        return Ok(c);
    }
    let by_prefix: Vec<&ContainerView> = containers.iter().filter(|c| c.container_id.starts_with(who)).collect();
    match by_prefix.as_slice() {
        [one] => Ok(one),
        [] => Err(format!(
            "no container {who:?} is known to hawser (it knows {} container{}; `hawser explain` lists them)",
            containers.len(),
            if containers.len() == 1 { "" } else { "s" }
        )),
        several => Err(format!(
            "{who:?} is the start of several container ids ({}): give more of it, or the name",
            several.iter().map(|c| c.container_name.as_str()).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn or_dash(v: Option<&str>) -> &str {
    match v {
        Some(s) if !s.is_empty() => s,
        _ => "-",
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// Every container: the not-routed ones first, then by name; the reason is never cut.
fn render_table(containers: &[ContainerView]) -> String {
    if containers.is_empty() {
        return "hawser has seen no container.\n".to_string();
    }
    let mut rows: Vec<&ContainerView> = containers.iter().collect();
    rows.sort_by(|a, b| a.routed.cmp(&b.routed).then_with(|| a.container_name.cmp(&b.container_name)));
    let header = ["CONTAINER", "SERVICE", "ROUTED", "STATE", "REASON"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|c| {
            [
                or_dash(Some(&c.container_name)).to_string(),
                or_dash(c.service.as_deref()).to_string(),
                yes_no(c.routed).to_string(),
                or_dash(c.state.as_deref()).to_string(),
                // One line per row, whatever the reason holds.
                or_dash(c.reason.as_deref()).replace(['\n', '\r'], " "),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |row: [&str; 5]| {
        let mut s = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == row.len() - 1 {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &cells {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
    let routed = containers.iter().filter(|c| c.routed).count();
    out.push_str(&format!(
        "\n{} container{}: {routed} routed, {} not routed\n",
        containers.len(),
        if containers.len() == 1 { "" } else { "s" },
        containers.len() - routed
    ));
    out
}

/// One line of `/api/certificates`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct CertificateView {
    host: Option<String>,
    source: Option<String>,
    not_after: Option<String>,
    next_renewal: Option<String>,
    error: Option<String>,
    service: Option<String>,
}

impl CertificateView {
    fn describe(&self) -> String {
        let mut out = format!("{}: {}", or_dash(self.host.as_deref()), self.source.as_deref().unwrap_or("none (handshakes refused)"));
        if let Some(t) = &self.not_after {
            out.push_str(&format!(", valid until {t}"));
        }
        if let Some(t) = &self.next_renewal {
            out.push_str(&format!(", next renewal {t}"));
        }
        if let Some(e) = &self.error {
            out.push_str(&format!(", error: {}", e.replace(['\n', '\r'], " ")));
        }
        out
    }
}

/// One container in detail, with its backend entries from `/api/services` and the
/// certificates of its service's hosts from `/api/certificates`.
fn render_detail(c: &ContainerView, services: &[ServiceView], certificates: &[CertificateView]) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("container", or_dash(Some(&c.container_name)).to_string()),
        ("id", or_dash(Some(&c.container_id)).to_string()),
        ("service", or_dash(c.service.as_deref()).to_string()),
        ("routed", yes_no(c.routed).to_string()),
        ("state", or_dash(c.state.as_deref()).to_string()),
        ("reason", or_dash(c.reason.as_deref()).replace(['\n', '\r'], " ")),
    ];
    for svc in services {
        for b in svc.backends.iter().filter(|b| b.container_id == c.container_id) {
            rows.push((
                "backend",
                format!(
                    "{} (weight {}, state {}) of service {}",
                    or_dash(Some(&b.address)),
                    b.weight,
                    or_dash(Some(&b.state)),
                    svc.name
                ),
            ));
            let routes: Vec<String> = if svc.routes.is_empty() {
                svc.hosts.iter().map(|h| format!("{h}{}", svc.path_prefix)).collect()
            } else {
                svc.routes.iter().map(|r| format!("{}{}", r.host, r.path_prefix)).collect()
            };
            if !routes.is_empty() {
                rows.push(("routes", routes.join(", ")));
            }
            if !svc.scheme.is_empty() {
                rows.push(("scheme", format!("{} toward the backends", svc.scheme)));
            }
            if !b.container_name.is_empty() && b.container_name != c.container_name {
                rows.push(("as", b.container_name.clone()));
            }
        }
    }
    if let Some(service) = &c.service {
        for cert in certificates.iter().filter(|v| v.service.as_ref() == Some(service)) {
            rows.push(("certificate", cert.describe()));
        }
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments() {
        let a = parse_args(os(&["-c", "x.yaml", "--admin", "127.0.0.1:1", "--token=t", "web-1"])).unwrap();
        assert_eq!(a.conf, Some(PathBuf::from("x.yaml")));
        assert_eq!(a.admin.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(a.token.as_deref(), Some("t"));
        assert_eq!(a.container.as_deref(), Some("web-1"));
        assert_eq!(parse_args(os(&["--conf=y.yaml"])).unwrap().conf, Some(PathBuf::from("y.yaml")));
        assert_eq!(parse_args(os(&["-cz.yaml"])).unwrap().conf, Some(PathBuf::from("z.yaml")));
        assert!(parse_args(os(&["-h"])).unwrap().help);
        assert!(parse_args(os(&["--token"])).unwrap_err().contains("--token needs a value"));
        assert!(parse_args(os(&["--bogus"])).unwrap_err().contains("unknown option"));
        assert!(parse_args(os(&["a", "b"])).unwrap_err().contains("one CONTAINER at most"));
        assert_eq!(parse_args(os(&["--", "-odd"])).unwrap().container.as_deref(), Some("-odd"));
    }

    #[test]
    fn target_precedence() {
        let none = Args::default();
        let t = Target::from_args(&none, None).unwrap();
        assert_eq!(t.addr.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(t.token, None);
        let t = Target::from_args(&none, Some("env".into())).unwrap();
        assert_eq!(t.token.as_deref(), Some("env"));
        let flags = Args { admin: Some("0.0.0.0:7".into()), token: Some("flag".into()), ..Args::default() };
        let t = Target::from_args(&flags, Some("env".into())).unwrap();
        assert_eq!((t.addr.to_string().as_str(), t.token.as_deref()), ("127.0.0.1:7", Some("flag")));
        assert!(parse_admin_addr("nonsense").is_err());
        assert_eq!(parse_admin_addr("http://127.0.0.1:9/").unwrap().to_string(), "127.0.0.1:9");
        assert_eq!(parse_admin_addr("[::]:9").unwrap().to_string(), "[::1]:9");
    }

    #[test]
    fn target_from_file() {
        let dir = std::env::temp_dir().join(format!("hawser-explain-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, "admin: {listen: \"0.0.0.0:9911\", token: s3cret}\n").unwrap();
        let args = Args { conf: Some(path.clone()), ..Args::default() };
        let t = Target::from_args(&args, None).unwrap();
        assert_eq!((t.addr.to_string().as_str(), t.token.as_deref()), ("127.0.0.1:9911", Some("s3cret")));
        std::fs::write(&path, "admin: {listen: \"0.0.0.0:9911\"}\n").unwrap();
        let e = Target::from_args(&args, None).unwrap_err();
        assert!(e.contains("admin.listen") && !e.contains('\n'), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and more";
        assert_eq!(read_response(&mut &raw[..]).unwrap(), (200, b"hello".to_vec()));
        let raw = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(read_response(&mut &raw[..]).unwrap(), (401, b"abcde".to_vec()));
        let raw = b"HTTP/1.0 200 OK\r\n\r\nto the end";
        assert_eq!(read_response(&mut &raw[..]).unwrap(), (200, b"to the end".to_vec()));
        assert!(read_response(&mut &b"SSH-2.0-OpenSSH\r\n\r\n"[..]).is_err());
        assert!(read_response(&mut &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"[..]).is_err());
    }

    fn view(name: &str, id: &str, routed: bool, reason: Option<&str>) -> ContainerView {
        ContainerView {
            container_id: id.into(),
            container_name: name.into(),
            service: Some("web".into()),
            routed,
            reason: reason.map(str::to_string),
            state: routed.then(|| "ready".into()),
        }
    }

    #[test]
    fn finding() {
        let all = vec![view("a", "abc123", true, None), view("b", "abd456", false, Some("x"))];
        assert_eq!(find(&all, "b").unwrap().container_id, "abd456");
        assert_eq!(find(&all, "/a").unwrap().container_id, "abc123");
        assert_eq!(find(&all, "abd").unwrap().container_name, "b");
        assert_eq!(find(&all, "abc123").unwrap().container_name, "a");
        assert!(find(&all, "ab").unwrap_err().contains("several"));
        assert!(find(&all, "zz").unwrap_err().contains("no container \"zz\" is known to hawser"));
    }

    #[test]
    fn table_is_aligned_and_not_routed_first() {
        let long = "exposes 80 and 443: set hawser.port, and this reason goes on and on without being cut";
        let all = vec![view("routed-one", "1", true, None), view("b", "2", false, Some(long))];
        let t = render_table(&all);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CONTAINER   SERVICE  ROUTED  STATE  REASON"), "{t}");
        assert!(lines[1].starts_with("b           web      no      -      "), "{t}");
        assert!(lines[1].ends_with(long), "{t}");
        assert!(lines[2].starts_with("routed-one  web      yes     ready  -"), "{t}");
        assert!(t.contains("2 containers: 1 routed, 1 not routed"), "{t}");
    }

    #[test]
    fn detail_shows_the_backend() {
        let c = view("a", "abc123", true, None);
        let services = vec![ServiceView {
            name: "web".into(),
            scheme: "https".into(),
            hosts: vec!["web.test".into()],
            path_prefix: "/".into(),
            routes: vec![RouteView { host: "web.test".into(), path_prefix: "/".into() }],
            backends: vec![BackendView {
                container_id: "abc123".into(),
                container_name: "a".into(),
                address: "172.18.0.2:80".into(),
                weight: 3,
                state: "ready".into(),
            }],
        }];
        let certificates = vec![
            CertificateView {
                host: Some("web.test".into()),
                source: Some("acme".into()),
                not_after: Some("2027-01-01T00:00:00Z".into()),
                next_renewal: Some("2026-12-01T00:00:00Z".into()),
                error: Some("CA down\nretrying".into()),
                service: Some("web".into()),
            },
            CertificateView { host: Some("other.test".into()), service: Some("other".into()), ..CertificateView::default() },
        ];
        let d = render_detail(&c, &services, &certificates);
        assert!(d.contains("id:          abc123\n"), "{d}");
        assert!(d.contains("routed:      yes\n"), "{d}");
        assert!(d.contains("backend:     172.18.0.2:80 (weight 3, state ready) of service web\n"), "{d}");
        assert!(d.contains("routes:      web.test/\n"), "{d}");
        assert!(
            d.contains("certificate: web.test: acme, valid until 2027-01-01T00:00:00Z, next renewal 2026-12-01T00:00:00Z, error: CA down retrying\n"),
            "{d}"
        );
        assert!(!d.contains("other.test"), "{d}");
        assert!(d.contains("scheme:      https toward the backends\n"), "{d}");
    }
}
