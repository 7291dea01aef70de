//! HTTP-01 challenge answers (RFC 8555 §8.3): `GET /.well-known/acme-challenge/<token>` on the
//! cleartext listener, answered before routing and before any redirect to https.
//!
//! Several hawsers behind one load balancer share one ACME storage directory; the CA's
//! validation request can reach any of them, not only the one that ordered (Caddy solves
//! this the same way, through its storage). So an order's answers are also written to
//! `<storage>/challenges/<token>`, and a token not known in memory is looked up there.
//!
//! Invariants:
//! - Only tokens of orders in flight are answered: this hawser's own, or those another
//!   hawser sharing its storage wrote there. Any other path under the prefix goes on to
//!   routing as usual (a backend may run its own ACME client).
//! - A token is matched exactly (base64url characters only); nothing else of the request is
//!   read, so a challenge answer cannot be turned into a reflection of client input, nor a
//!   token into a path outside the challenges directory.
//! - The storage lookup never blocks a proxy thread: it runs on tokio's blocking pool, at
//!   most [`LOOKUPS`] at once (a request finding none free is routed as a miss), each
//!   awaited for at most [`LOOKUP_TIMEOUT`]; a hung shared file system holds at most
//!   [`LOOKUPS`] blocking threads. Only tokens of at most [`MAX_TOKEN`] bytes are looked up.
//! - What is read from the storage is input: a regular file only (no FIFO, device or
//!   symlink is opened for reading), at most [`MAX_ANSWER`] bytes, answered only when it has
//!   a key authorization's form for that very token (`<token>.<base64url>`).
//! - Nothing touches the storage at start-up: the directory is made by the first answer
//!   written, and leftovers of a process that died mid-order are removed, once a day old,
//!   when an ACME manager sharing the storage sets up ([`Challenges::sweep`]).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;

pub const PREFIX: &str = "/.well-known/acme-challenge/";
/// The longest token looked up in the storage (RFC 8555 tokens are 43 characters).
pub const MAX_TOKEN: usize = 128;
/// The largest stored answer read (a key authorization is the token, a dot and 43 characters).
pub const MAX_ANSWER: u64 = 512;
/// Storage lookups at once.
pub const LOOKUPS: usize = 4;
/// How long a request waits for a storage lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// Stored answers older than this are a dead order's leftovers (orders take minutes; a day
/// also leaves room for clocks that differ between hawsers and their file server).
const STALE: Duration = Duration::from_secs(86_400);

#[derive(Debug)]
pub struct Challenges {
    answers: RwLock<HashMap<String, String>>,
    /// `<storage>/challenges`, shared with other hawsers; `None` without ACME.
    shared: Option<PathBuf>,
    lookups: Arc<Semaphore>,
}

impl Default for Challenges {
    fn default() -> Challenges {
        Challenges::new(None)
    }
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    /// Answers kept in memory and, with `shared`, in that directory.
    pub fn new(shared: Option<PathBuf>) -> Challenges {
        Challenges { answers: RwLock::default(), shared, lookups: Arc::new(Semaphore::new(LOOKUPS)) }
    }

    /// The key authorization for `path` among this hawser's own orders.
    pub fn answer_local(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(PREFIX).filter(|t| is_base64url(t))?;
        self.answers.read().expect("challenge answers").get(token).cloned()
    }

    /// The key authorization for `path`: this hawser's own, else one another hawser sharing
    /// the storage wrote there.
    pub async fn answer(&self, path: &str) -> Option<String> {
        if let Some(a) = self.answer_local(path) {
            return Some(a);
        }
        let token = path.strip_prefix(PREFIX).filter(|t| t.len() <= MAX_TOKEN && is_base64url(t))?;
        let file = self.shared.as_ref()?.join(token);
        // All lookups busy (a flood of guesses, or a slow file system): a miss.
        let permit = Arc::clone(&self.lookups).try_acquire_owned().ok()?;
        let token = token.to_string();
        let lookup = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            read_shared(&file, &token)
        });
        tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await.ok()?.ok()?
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.answers.write().expect("challenge answers").insert(token.to_string(), key_authorization.to_string());
        let Some(dir) = self.shared.as_ref().filter(|_| is_base64url(token)) else { return };
        use crate::tls::acme::storage::{make_private_dir, write_atomic};
        let written = make_private_dir(dir).and_then(|()| write_atomic(&dir.join(token), key_authorization.as_bytes()));
        if let Err(e) = written {
            log::warn!("ACME: {e}; only this hawser can answer the challenge");
        }
    }

    pub fn remove(&self, token: &str) {
        self.answers.write().expect("challenge answers").remove(token);
        if let Some(dir) = self.shared.as_ref().filter(|_| is_base64url(token)) {
            let _ = std::fs::remove_file(dir.join(token));
        }
    }

    /// Removes stored answers over a day old: orders of a process that died mid-way.
    pub fn sweep(&self) {
        let Some(dir) = &self.shared else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let now = SystemTime::now();
        for e in entries.flatten() {
            let stale = e
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE);
            if stale {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Whether no challenge is pending in memory (the tests check that answers are removed).
    pub fn is_empty(&self) -> bool {
        self.answers.read().expect("challenge answers").is_empty()
    }
}

/// A stored answer for `token` at `file`, when it is a regular file with the form of one.
fn read_shared(file: &Path, token: &str) -> Option<String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(file)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    f.take(MAX_ANSWER + 1).read_to_string(&mut text).ok()?;
    let thumbprint = text.strip_prefix(token)?.strip_prefix('.')?;
    (text.len() as u64 <= MAX_ANSWER && is_base64url(thumbprint)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::acme::TestDir;

    fn path(token: &str) -> String {
        format!("{PREFIX}{token}")
    }

    #[test]
    fn only_known_tokens_are_answered() {
        let c = Challenges::default();
        c.insert("abc-_1", "abc-_1.thumb");
        assert_eq!(c.answer_local(&path("abc-_1")).as_deref(), Some("abc-_1.thumb"));
        assert_eq!(c.answer_local(&path("other")), None);
        assert_eq!(c.answer_local(&path("abc-_1/x")), None);
        assert_eq!(c.answer_local(&path("")), None);
        c.remove("abc-_1");
        assert!(c.is_empty());
    }

    #[tokio::test]
    async fn answers_are_shared_through_the_storage() {
        let d = TestDir::new("challenges");
        let dir = d.0.join("challenges");
        let a = Challenges::new(Some(dir.clone()));
        let b = Challenges::new(Some(dir.clone()));
        assert_eq!(b.answer(&path("tok_1")).await, None, "no directory yet: a miss");
        a.insert("tok_1", "tok_1.thumb-print");
        assert_eq!(b.answer(&path("tok_1")).await.as_deref(), Some("tok_1.thumb-print"), "the other hawser answers");
        a.remove("tok_1");
        assert_eq!(b.answer(&path("tok_1")).await, None, "gone with the order");
        // Only what has a key authorization's form for that token is answered.
        std::fs::write(dir.join("tok2"), "tok2.abc").unwrap();
        assert_eq!(b.answer(&path("tok2")).await.as_deref(), Some("tok2.abc"));
        for bad in ["other.abc", "tok2.a b", "tok2.", "tok2", "<script>"] {
            std::fs::write(dir.join("tok2"), bad).unwrap();
            assert_eq!(b.answer(&path("tok2")).await, None, "{bad:?}");
        }
        std::fs::write(dir.join("tok2"), format!("tok2.{}", "a".repeat(600))).unwrap();
        assert_eq!(b.answer(&path("tok2")).await, None, "too long");
        // A long token is looked up in memory only.
        let long = "a".repeat(200);
        std::fs::write(dir.join(&long), format!("{long}.x")).unwrap();
        assert_eq!(b.answer(&path(&long)).await, None);
        a.insert(&long, &format!("{long}.x"));
        assert_eq!(a.answer(&path(&long)).await, Some(format!("{long}.x")), "its own order's token, whatever its length");
        // Only regular files are read: a symlink, a FIFO (which would block an open) or a
        // directory is a miss.
        std::fs::write(d.0.join("elsewhere"), "tok3.abc").unwrap();
        std::os::unix::fs::symlink(d.0.join("elsewhere"), dir.join("tok3")).unwrap();
        assert_eq!(b.answer(&path("tok3")).await, None, "symlink");
        let fifo = std::ffi::CString::new(dir.join("tok4").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(b.answer(&path("tok4")).await, None, "fifo");
        std::fs::create_dir(dir.join("tok5")).unwrap();
        assert_eq!(b.answer(&path("tok5")).await, None, "directory");
    }

    #[test]
    fn sweep_removes_only_day_old_answers() {
        let d = TestDir::new("challenges-sweep");
        let c = Challenges::new(Some(d.0.clone()));
        c.insert("fresh", "fresh.x");
        c.insert("old", "old.x");
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
        std::fs::File::options().write(true).open(d.0.join("old")).unwrap().set_modified(two_days_ago).unwrap();
        c.sweep();
        assert!(d.0.join("fresh").exists());
        assert!(!d.0.join("old").exists());
    }
}
