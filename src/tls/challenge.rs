//! HTTP-01 challenge answers (RFC 8555 §8.3): `GET /.well-known/acme-challenge/<token>` on the
//! cleartext listener, answered before routing and before any redirect to https.
//!
//! Invariants:
//! - Only tokens of orders hawser itself has in flight are answered; any other path under
//!   the prefix goes on to routing as usual (a backend may run its own ACME client).
//! - A token is matched exactly (base64url characters only); nothing else of the request is
//!   read, so a challenge answer cannot be turned into a reflection of client input.

use std::collections::HashMap;
use std::sync::RwLock;

pub const PREFIX: &str = "/.well-known/acme-challenge/";

#[derive(Debug, Default)]
pub struct Challenges {
    answers: RwLock<HashMap<String, String>>,
}

impl Challenges {
    /// The key authorization to answer for `path`, when it is one of ours.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(PREFIX)?;
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return None;
        }
        self.answers.read().expect("challenge answers").get(token).cloned()
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.answers.write().expect("challenge answers").insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.answers.write().expect("challenge answers").remove(token);
    }

    /// Whether no challenge is pending (the tests check that answers are removed).
    pub fn is_empty(&self) -> bool {
        self.answers.read().expect("challenge answers").is_empty()
    }
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
}
