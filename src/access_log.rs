//! The access log: one line per request on standard output, as `text` (key=value) or `json`.
//!
//! The request path only formats its line and hands it to a channel; one writer thread wakes
//! every 50 ms and writes what queued up in large writes. When the writer falls behind (stdout blocked), lines are
//! dropped and counted (`hawser_access_log_dropped_total`) rather than slowing requests.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::AccessLogFormat;
use crate::metrics::metrics;

/// Lines that may wait for the writer before new ones are dropped.
const QUEUE: usize = 65_536;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub client: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    /// 0 when the client went away before an answer.
    pub status: u16,
    pub duration_ms: f64,
    /// Empty when no route matched.
    pub service: &'a str,
    /// Container name of the last backend tried; empty when none was.
    pub backend: &'a str,
    pub upstream: &'a str,
    pub retries: u32,
    pub bytes: usize,
}

pub struct AccessLog {
    format: AccessLogFormat,
    tx: SyncSender<String>,
}

impl AccessLog {
    /// Starts the writer; `None` when the log is off.
    pub fn start(format: AccessLogFormat) -> Option<AccessLog> {
        if format == AccessLogFormat::Off {
            return None;
        }
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("hawser-access-log".into())
            .spawn(move || write_lines(rx))
            .expect("spawn the access log writer");
        Some(AccessLog { format, tx })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let line = match self.format {
            AccessLogFormat::Json => serde_json::to_string(entry).expect("an entry always serialises"),
            _ => text_line(entry),
        };
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics().access_log_dropped.inc(),
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// How often the writer wakes to write what has queued up.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer sleeps between batches rather than blocking on the channel: a blocked receiver
/// would make every request's send a futex wake-up, and every line its own write(2). Measured
/// with bench/access-log.sh, that cost the request path more than the formatting does.
fn write_lines(rx: Receiver<String>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    loop {
        std::thread::sleep(FLUSH_EVERY);
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(line.as_bytes());
                    let _ = out.write_all(b"\n");
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        let _ = out.flush();
    }
}

/// `time=… client=… method=GET host=… path="/x" status=200 …`: logfmt, quoted where needed.
fn text_line(e: &Entry<'_>) -> String {
    let mut s = String::with_capacity(200);
    let _ = write!(s, "{} client={} method={} host=", e.time, e.client, e.method);
    push_value(&mut s, e.host);
    s.push_str(" path=");
    push_value(&mut s, e.path);
    let _ = write!(s, " status={} duration_ms={:.3} service=", e.status, e.duration_ms);
    push_value(&mut s, e.service);
    s.push_str(" backend=");
    push_value(&mut s, e.backend);
    let _ = write!(s, " upstream={} retries={} bytes={}", or_dash(e.upstream), e.retries, e.bytes);
    s
}

fn or_dash(v: &str) -> &str {
    if v.is_empty() { "-" } else { v }
}

/// A value as is when it is plain, else in quotes with `"`, `\` and controls escaped: a
/// client-chosen path can never forge a field or a line.
fn push_value(s: &mut String, v: &str) {
    if v.is_empty() {
        s.push('-');
        return;
    }
    if v.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' && b != b'=') {
        s.push_str(v);
        return;
    }
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{{{:x}}}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

/// `2026-11-25T06:16:17.123Z`.
pub fn rfc3339_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(path: &str) -> Entry<'_> {
        Entry {
            time: "2026-11-25T06:16:17.123Z".into(),
            client: "127.0.0.1",
            method: "GET",
            host: "web.test",
            path,
            status: 200,
            duration_ms: 1.5,
            service: "web",
            backend: "web-1",
            upstream: "172.18.0.2:80",
            retries: 0,
            bytes: 12,
        }
    }

    #[test]
    fn text_lines_cannot_be_forged() {
        assert_eq!(
            text_line(&entry("/a")),
            "2026-11-25T06:16:17.123Z client=127.0.0.1 method=GET host=web.test path=/a status=200 duration_ms=1.500 service=web backend=web-1 upstream=172.18.0.2:80 retries=0 bytes=12"
        );
        let line = text_line(&entry("/a b\"\nstatus=500"));
        assert!(line.contains(r#"path="/a b\"\u{a}status=500""#), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_lines() {
        let v: serde_json::Value = serde_json::to_value(entry("/x")).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["backend"], "web-1");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_574_581_123);
        assert_eq!(rfc3339_millis(t), "2026-11-25T02:43:01.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_millis(leap), "2000-02-29T00:00:00.000Z");
    }
}
