//! What the edge does per request because of TLS: HTTP-01 answers, the redirect of cleartext
//! requests to https, HSTS.
//!
//! Invariants:
//! - An ACME challenge hawser has in flight is answered on cleartext before routing and before
//!   any redirect (a redirect to https would break HTTP-01 for a host without a certificate).
//! - The redirect is a 308 (method and body kept) to the same host, path and query on
//!   hawser's first TLS port (left out when it is 443); only over cleartext.
//! - HSTS is sent only over TLS (RFC 6797 §7.2: a cleartext answer must not carry it).

use std::sync::Arc;

use crate::tls::challenge::Challenges;

/// The TLS facts the proxy needs, when hawser has TLS listeners.
#[derive(Debug, Clone)]
pub struct HttpsEdge {
    pub challenges: Arc<Challenges>,
    /// The port redirects point at.
    pub port: u16,
}

impl HttpsEdge {
    /// The `Location` for a cleartext request to `host` with `path_and_query`.
    pub fn redirect_location(&self, host: &str, path_and_query: &str) -> String {
        // An IPv6 literal as the Host parser keeps it (`[::1]`) is already bracketed.
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() };
        let port = if self.port == 443 { String::new() } else { format!(":{}", self.port) };
        let pq = if path_and_query.starts_with('/') { path_and_query } else { "/" };
        format!("https://{host}{port}{pq}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let e = HttpsEdge { challenges: Arc::default(), port: 443 };
        assert_eq!(e.redirect_location("a.test", "/x?y=1"), "https://a.test/x?y=1");
        let e = HttpsEdge { port: 8443, ..e };
        assert_eq!(e.redirect_location("::1", "*"), "https://[::1]:8443/");
        assert_eq!(e.redirect_location("[::1]", "/a"), "https://[::1]:8443/a");
    }
}
