//! Certificates from files: the pairs named in `tls.certificates` and every `NAME.crt` or
//! `NAME.pem` with its `NAME.key` in `tls.directory`, read again when they change.
//!
//! Invariants:
//! - Files are looked at every [`POLL`] and on SIGHUP; a pair is parsed again only when one
//!   of its two files changed (size, modification time, inode), so an idle poll costs a few
//!   `stat` calls.
//! - A pair that cannot be read (missing, half-written, key not matching) keeps the
//!   certificate it had, and the reason is recorded in the store (admin API, log once).
//! - A pair that disappears from the directory stops being served; a pair named in the YAML
//!   file keeps its last good certificate (it was promised by the configuration).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::{info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::pem;
use super::store::{CertStore, Entry, Source};
use crate::config::{CertPair, TlsConfig};

/// How often certificate files are looked at (besides SIGHUP).
pub const POLL: Duration = Duration::from_secs(5);

/// What identifies a version of a file.
type Stamp = Option<(u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.mtime(), m.mtime_nsec(), m.ino()))
}

/// The pairs to read now: the explicit ones, then the directory's.
pub fn pairs(tls: &TlsConfig) -> (Vec<CertPair>, BTreeMap<String, String>) {
    let mut out = tls.certificates.clone();
    let mut errors = BTreeMap::new();
    if let Some(dir) = &tls.directory {
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
                names.sort();
                for cert in names {
                    let ext = cert.extension().and_then(|e| e.to_str()).unwrap_or("");
                    if !matches!(ext, "crt" | "pem") || !cert.is_file() {
                        continue;
                    }
                    let key = cert.with_extension("key");
                    if key.is_file() {
                        out.push(CertPair { cert, key });
                    } else {
                        errors.insert(cert.display().to_string(), format!("{}: no key file {} beside it", cert.display(), key.display()));
                    }
                }
            }
            Err(e) => {
                errors.insert(dir.display().to_string(), format!("cannot read directory {}: {e}", dir.display()));
            }
        }
    }
    (out, errors)
}

/// Reads certificate files into a [`CertStore`], now and whenever they change.
pub struct FileCertificates {
    tls: TlsConfig,
    store: Arc<CertStore>,
    seen: std::sync::Mutex<BTreeMap<String, Seen>>,
}

impl FileCertificates {
    pub fn new(tls: &TlsConfig, store: Arc<CertStore>) -> FileCertificates {
        FileCertificates { tls: tls.clone(), store, seen: Default::default() }
    }

    /// Reads what changed and publishes the result. Returns how many pairs are served.
    pub fn reload(&self) -> usize {
        let (pairs, mut errors) = pairs(&self.tls);
        let mut seen = self.seen.lock().expect("file stamps");
        let mut loaded = BTreeMap::new();
        let mut next = BTreeMap::new();
        for pair in pairs {
            let origin = pair.cert.display().to_string();
            let stamps = (stamp(&pair.cert), stamp(&pair.key));
            let before = seen.get(&origin);
            let unchanged = before.is_some_and(|b| b.stamps == stamps);
            let last_good = before.and_then(|b| b.good.clone());
            let result = match before {
                Some(b) if unchanged => match &b.error {
                    None => Ok(b.good.clone().expect("a pair without error has a certificate")),
                    Some(why) => Err(why.clone()),
                },
                _ => pem::load_pair(&pair.cert, &pair.key).map(|cert| Arc::new(Entry { cert, source: Source::File, origin: origin.clone() })),
            };
            match result {
                Ok(e) => {
                    if !unchanged {
                        info!("certificate {origin}: serving {} (valid until {})", e.cert.names.join(", "), unix_to_text(e.cert.not_after));
                    }
                    next.insert(origin.clone(), Seen { stamps, good: Some(Arc::clone(&e)), error: None });
                    loaded.insert(origin, e);
                }
                Err(why) => {
                    // Said once per version of the files, not at every poll.
                    if !unchanged {
                        warn!("certificate {origin}: {why}; the certificate it had (if any) is kept");
                    }
                    next.insert(origin.clone(), Seen { stamps, good: last_good, error: Some(why.clone()) });
                    errors.insert(origin, why);
                }
            }
        }
        *seen = next;
        let count = loaded.len();
        self.store.set_files(loaded, errors);
        count
    }
}

/// What was read from a pair, and when its files looked like this.
struct Seen {
    stamps: (Stamp, Stamp),
    good: Option<Arc<Entry>>,
    error: Option<String>,
}

/// `2026-12-31T23:59:59Z` for unix seconds.
pub fn unix_to_text(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| t.to_string())
}

#[async_trait]
impl BackgroundService for FileCertificates {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot watch SIGHUP ({e}); certificate files are still looked at every {POLL:?}");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    info!("SIGHUP: reading certificate files again");
                }
                _ = shutdown.changed() => return,
            }
            self.reload();
        }
    }
}
