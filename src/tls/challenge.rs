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
//! - A token is matched exactly (base64url characters only, at most [`MAX_TOKEN`] bytes);
//!   nothing else of the request is read, so a challenge answer cannot be turned into a
//!   reflection of client input, nor a token into a path outside the challenges directory.
//! - What is read from the storage is input: at most [`MAX_ANSWER`] bytes, and answered
//!   only when it has a key authorization's form for that very token (`<token>.<base64url>`).
//! - A file is removed with the order's answers; files a crashed process left are removed
//!   when they are an hour old ([`Challenges::sweep`]).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

pub const PREFIX: &str = "/.well-known/acme-challenge/";
/// The longest token looked up (RFC 8555 tokens are 43 characters; Let's Encrypt's too).
pub const MAX_TOKEN: usize = 128;
/// The largest stored answer read (a key authorization is the token, a dot and 43 characters).
pub const MAX_ANSWER: u64 = 512;
/// Stored answers older than this are a crashed order's leftovers.
const STALE: Duration = Duration::from_secs(3_600);

#[derive(Debug, Default)]
pub struct Challenges {
    answers: RwLock<HashMap<String, String>>,
    /// `<storage>/challenges`, shared with other hawsers; `None` without ACME.
    shared: Option<PathBuf>,
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Challenges {
    /// Answers kept in memory and, with `shared`, in that directory (created 0700 if missing).
    pub fn new(shared: Option<PathBuf>) -> Challenges {
        if let Some(dir) = &shared
            && let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
        {
            log::warn!("ACME: cannot create {} ({e}); challenges are answered by the hawser that ordered only", dir.display());
        }
        Challenges { answers: RwLock::default(), shared }
    }

    /// The key authorization to answer for `path`, when it is one of an order in flight.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(PREFIX)?;
        if token.len() > MAX_TOKEN || !is_base64url(token) {
            return None;
        }
        if let Some(a) = self.answers.read().expect("challenge answers").get(token) {
            return Some(a.clone());
        }
        read_shared(self.shared.as_deref()?, token)
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.answers.write().expect("challenge answers").insert(token.to_string(), key_authorization.to_string());
        if let Some(dir) = &self.shared
            && is_base64url(token)
            && let Err(e) = crate::tls::acme::storage::write_atomic(&dir.join(token), key_authorization.as_bytes())
        {
            log::warn!("ACME: {e}; only this hawser can answer the challenge");
        }
    }

    pub fn remove(&self, token: &str) {
        self.answers.write().expect("challenge answers").remove(token);
        if let Some(dir) = &self.shared
            && is_base64url(token)
        {
            let _ = std::fs::remove_file(dir.join(token));
        }
    }

    /// Removes stored answers over an hour old: orders of a process that died mid-way.
    pub fn sweep(&self) {
        let Some(dir) = &self.shared else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let now = SystemTime::now();
        for e in entries.flatten() {
            let old = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > STALE);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Whether no challenge is pending in memory (the tests check that answers are removed).
    pub fn is_empty(&self) -> bool {
        self.answers.read().expect("challenge answers").is_empty()
    }
}

/// A stored answer for `token`, when it has the form of one.
fn read_shared(dir: &Path, token: &str) -> Option<String> {
    let file = std::fs::File::open(dir.join(token)).ok()?;
    let mut text = String::new();
    file.take(MAX_ANSWER + 1).read_to_string(&mut text).ok()?;
    let thumbprint = text.strip_prefix(token)?.strip_prefix('.')?;
    (text.len() as u64 <= MAX_ANSWER && is_base64url(thumbprint)).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_tokens_are_answered() {
        let c = Challenges::default();
        c.insert("abc-_1", "abc-_1.thumb");
        assert_eq!(c.answer("/.well-known/acme-challenge/abc-_1").as_deref(), Some("abc-_1.thumb"));
        assert_eq!(c.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(c.answer("/.well-known/acme-challenge/abc-_1/x"), None);
        assert_eq!(c.answer("/.well-known/acme-challenge/"), None);
        c.remove("abc-_1");
        assert!(c.is_empty());
    }

    #[test]
    fn answers_are_shared_through_the_storage() {
        let dir = std::env::temp_dir().join(format!("hawser-challenges-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Challenges::new(Some(dir.clone()));
        let b = Challenges::new(Some(dir.clone()));
        a.insert("tok_1", "tok_1.thumb-print");
        assert_eq!(b.answer("/.well-known/acme-challenge/tok_1").as_deref(), Some("tok_1.thumb-print"), "the other hawser answers");
        a.remove("tok_1");
        assert_eq!(b.answer("/.well-known/acme-challenge/tok_1"), None, "gone with the order");
        // Only what has a key authorization's form for that token is answered.
        std::fs::write(dir.join("tok2"), "tok2.abc").unwrap();
        assert_eq!(b.answer("/.well-known/acme-challenge/tok2").as_deref(), Some("tok2.abc"));
        for bad in ["other.abc", "tok2.a b", "tok2.", "tok2", "<script>"] {
            std::fs::write(dir.join("tok2"), bad).unwrap();
            assert_eq!(b.answer("/.well-known/acme-challenge/tok2"), None, "{bad:?}");
        }
        std::fs::write(dir.join("tok2"), format!("tok2.{}", "a".repeat(600))).unwrap();
        assert_eq!(b.answer("/.well-known/acme-challenge/tok2"), None, "too long");
        // A token is never a path.
        std::fs::write(dir.parent().unwrap().join("outside"), "x.y").unwrap();
        assert_eq!(b.answer("/.well-known/acme-challenge/../outside"), None);
        assert_eq!(b.answer(&format!("/.well-known/acme-challenge/{}", "a".repeat(200))), None);
        // Fresh files survive a sweep.
        b.sweep();
        assert!(dir.join("tok2").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
