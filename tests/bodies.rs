//! Bodies far larger than memory pass through hawser as streams, against the real Docker
//! engine, with curl as the client:
//!
//! - a 1 GiB request body, once with `Content-Length` and once chunked, reaches the backend
//!   whole (its `/sink` counts the bytes without holding them);
//! - a 1 GiB response, once with `Content-Length` and once chunked (the backend's `/bytes`),
//!   reaches the client whole and unchanged (every byte checked against the backend's pattern);
//! - all the while hawser's peak resident memory (`VmHWM` of `/proc/<pid>/status`) grows by
//!   less than [`MAX_GROWTH`]: it never holds a body, only buffers of a bounded size.
//!
//! The figures (peak RSS before and after, seconds and throughput of each transfer) are
//! printed; speed is not asserted, only bounded (curl's `--max-time`).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const HOST: &str = "bodies.test";
const SERVICE: &str = "bodies";
const GIB: u64 = 1 << 30;
/// How much hawser's peak RSS may grow over 4 GiB of bodies.
const MAX_GROWTH: u64 = 64 << 20;
/// curl's bound for one transfer (1 GiB over loopback and a Docker bridge takes seconds).
const MAX_TIME: &str = "120";

/// A line of `/proc/<pid>/status` in bytes, e.g. `VmHWM` (the peak resident set).
fn proc_status_bytes(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap_or_else(|_| panic!("{key}: {line:?}"));
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn curl(h: &Hawser) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", MAX_TIME])
        .args(["--resolve", &format!("{HOST}:{}:127.0.0.1", h.addr.port())])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

fn url(h: &Hawser, path: &str) -> String {
    format!("http://{HOST}:{}{path}", h.addr.port())
}

/// PUTs `file` (its size) through hawser to `/sink`, chunked or with `Content-Length`; the
/// byte count the backend answered and how long it took.
fn upload(h: &Hawser, file: &std::path::Path, chunked: bool) -> (u64, Duration) {
    let mut c = curl(h);
    c.arg("-T").arg(file);
    if chunked {
        // curl sends the file chunked instead of with its Content-Length.
        c.args(["-H", "Transfer-Encoding: chunked"]);
    }
    let t = Instant::now();
    let out = c.arg(url(h, "/sink")).output().expect("run curl");
    let took = t.elapsed();
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl upload (chunked: {chunked}) failed ({}) after {took:?}: {body:?}\nhawser log:\n{}", out.status, h.log());
    let n = body.trim().parse().unwrap_or_else(|_| panic!("/sink answered {body:?}"));
    (n, took)
}

/// GETs `/bytes?n=N` through hawser with curl, reading curl's output as it comes and checking
/// every byte against the backend's pattern (byte i is i % 251); the count and the time.
fn download(h: &Hawser, n: u64, chunked: bool) -> (u64, Duration) {
    let path = format!("/bytes?n={n}{}", if chunked { "&chunked=1" } else { "" });
    let t = Instant::now();
    let mut child = curl(h).arg(url(h, &path)).stdout(Stdio::piped()).spawn().expect("run curl");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 1 << 20];
    // The pattern from any offset 0..251 on, as long as a read.
    let pattern: Vec<u8> = (0..buf.len() + 251).map(|i| (i % 251) as u8).collect();
    let mut got: u64 = 0;
    loop {
        let k = match out.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) => panic!("read curl's output after {got} bytes: {e}"),
        };
        let off = (got % 251) as usize;
        if buf[..k] != pattern[off..off + k] {
            let i = (0..k).find(|&i| buf[i] != pattern[off + i]).unwrap_or(0);
            panic!("byte {} of the download (chunked: {chunked}) differs from the backend's pattern", got + i as u64);
        }
        got += k as u64;
    }
    let status = child.wait().expect("wait for curl");
    let took = t.elapsed();
    assert!(status.success(), "curl download (chunked: {chunked}) failed ({status}) after {got} bytes, {took:?}\nhawser log:\n{}", h.log());
    (got, took)
}

#[test]
fn a_gib_each_way_streams_through_hawser_in_flat_memory() {
    let env = TestEnv::new("bodies-gib");
    let backend = web(&env, "sink", HOST, SERVICE);
    let h = env.hawser(&env.default_config());
    env.wait_routed(&h, HOST, "/", &backend, SECS_10);

    // A sparse file: 1 GiB to read, no disk used.
    let dir = TempDir::new("hawser-bodies");
    let big = dir.0.join("gib");
    std::fs::File::create(&big).and_then(|f| f.set_len(GIB)).expect("create a sparse 1 GiB file");
    let small = dir.0.join("small");
    std::fs::File::create(&small).and_then(|f| f.set_len(8 << 20)).expect("create an 8 MiB file");

    // Warm up with 8 MiB each way, so that buffers and pools that hawser keeps anyway are in
    // the baseline.
    assert_eq!(upload(&h, &small, false).0, 8 << 20);
    assert_eq!(download(&h, 8 << 20, false).0, 8 << 20);
    let pid = h.pid();
    let before = proc_status_bytes(pid, "VmHWM");

    let mut report = Vec::new();
    for chunked in [false, true] {
        let (n, took) = upload(&h, &big, chunked);
        assert_eq!(n, GIB, "bytes the backend received of a 1 GiB request body (chunked: {chunked})");
        report.push(format!("upload {}: {took:.2?} ({:.0} MiB/s)", if chunked { "chunked" } else { "Content-Length" }, mib(GIB) / took.as_secs_f64()));
        let (n, took) = download(&h, GIB, chunked);
        assert_eq!(n, GIB, "bytes the client received of a 1 GiB response (chunked: {chunked})");
        report.push(format!("download {}: {took:.2?} ({:.0} MiB/s)", if chunked { "chunked" } else { "Content-Length" }, mib(GIB) / took.as_secs_f64()));
    }

    let after = proc_status_bytes(pid, "VmHWM");
    let rss_now = proc_status_bytes(pid, "VmRSS");
    eprintln!(
        "bodies through hawser: {}; hawser peak RSS (VmHWM) {:.1} MiB before, {:.1} MiB after 4 GiB (growth {:.1} MiB), RSS now {:.1} MiB",
        report.join(", "),
        mib(before),
        mib(after),
        mib(after - before),
        mib(rss_now)
    );
    assert!(
        after - before < MAX_GROWTH,
        "hawser's peak RSS grew by {:.1} MiB (from {:.1} to {:.1} MiB) over 4 GiB of bodies: does it hold bodies?",
        mib(after - before),
        mib(before),
        mib(after)
    );
}
