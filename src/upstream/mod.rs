//! How hawser dials a service's backends: in cleartext, or over TLS with a name to send (SNI)
//! and to verify the backend's certificate against, and the roots to verify it with.
//! Requests ([`crate::proxy`]) and active health checks ([`crate::health`]) both get their
//! pingora `HttpPeer` from [`Dial::peer`], so a backend that passes its probe is spoken to
//! the same way by requests, and a TLS backend is never probed in cleartext.
//!
//! Schemes `h2c` and `h2` speak HTTP/2 to the backend (prior knowledge, or ALPN `h2` alone
//! over TLS); requests share connections, up to the service's `h2_streams_per_connection`
//! each, which the proxy sets on the peer with the ping interval.
//!
//! A bodyless HTTP/1.1 upgrade request (WebSocket) gets a fresh connection whose reads wait
//! until pingora is ready for the backend's `101`: see [`hold`].
//!
//! Invariants:
//! - Certificates are verified unless the service says `tls_verify: false`. The SNI is never
//!   empty: pingora's rustls connector silently skips all verification for an empty SNI.
//! - The name verified is one the operator wrote (`server_name`, or an exact host of the
//!   service) or the address hawser dials, never a name only a client chose (a host matched
//!   by a wildcard or an any-host route). A client-chosen name would let a client pick the
//!   name a man in the middle holds a certificate for, or fail handshakes at will and so
//!   eject backends (a TLS failure counts against the backend like a refused connect).
//! - pingora pools upstream connections by address, scheme, SNI and verification flags, but
//!   not by the roots they were verified with: a `ca` bundle's fingerprint is the peer's
//!   group key, so a connection verified with one bundle is never reused under another.
//! - A CA bundle is read and checked once, where it is configured (the YAML file at load
//!   time, a label when the catalog first meets its path, through [`CaFiles`]); peers share
//!   the parsed certificates, so no connection touches the file system. A changed file takes
//!   effect at hawser's next start.

pub mod hold;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::utils::tls::{WrappedX509, parse_x509};
use pingora::{Error, ErrorType};
use rustls::pki_types::ServerName;

use crate::catalog::routes::{HostPattern, RouteKey};
use crate::config::{Scheme, UpstreamTls};

/// The trusted roots of a service's backends, read from a PEM bundle and checked.
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    certs: Arc<CaType>,
    /// Of the DER bytes: tells bundles apart in pingora's connection pool.
    fingerprint: u64,
}

impl PartialEq for CaBundle {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.fingerprint == other.fingerprint
    }
}

impl Eq for CaBundle {}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaBundle({}, {} certificates, {:016x})", self.path.display(), self.certs.len(), self.fingerprint)
    }
}

impl CaBundle {
    /// Reads a PEM bundle. Every certificate must parse as X.509 and be usable as a trust
    /// anchor: pingora's connector would otherwise fail every handshake (or panic: it parses
    /// the certificates again with an `expect`).
    pub fn load(path: &Path) -> Result<CaBundle, String> {
        let ders = crate::tls::pem::load_roots(path)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut certs = Vec::with_capacity(ders.len());
        for (i, der) in ders.iter().enumerate() {
            let which = || format!("{}: certificate {} of {}", path.display(), i + 1, ders.len());
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("{}: not an X.509 certificate ({e})", which()))?;
            rustls::RootCertStore::empty()
                .add(der.clone())
                .map_err(|e| format!("{}: cannot be a trusted root ({e})", which()))?;
            der.as_ref().hash(&mut hasher);
            certs.push(WrappedX509::new(der.as_ref().to_vec(), parse_x509));
        }
        Ok(CaBundle { path: path.to_path_buf(), certs: Arc::from(certs), fingerprint: hasher.finish() })
    }
}

/// The CA bundles that labels name, each read once: the catalog's only way to the file system
/// (it is otherwise pure), handed to it in [`crate::catalog::Environment`]. A file that cannot
/// be read is not remembered, so a fixed file is found at the container's next change.
#[derive(Clone, Default)]
pub struct CaFiles {
    read: Arc<Mutex<HashMap<PathBuf, CaBundle>>>,
}

impl CaFiles {
    pub fn get(&self, path: &Path) -> Result<CaBundle, String> {
        if let Some(ca) = self.read.lock().expect("CA files lock").get(path) {
            return Ok(ca.clone());
        }
        // Read outside the lock; two planners racing on one new path both read it, harmlessly.
        let ca = CaBundle::load(path)?;
        self.read.lock().expect("CA files lock").insert(path.to_path_buf(), ca.clone());
        Ok(ca)
    }
}

impl std::fmt::Debug for CaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaFiles")
    }
}

impl PartialEq for CaFiles {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.read, &other.read)
    }
}

/// How requests and probes reach one service's backends: its [`UpstreamTls`] settings and
/// the names its routes allow (see the module's invariants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    pub scheme: Scheme,
    pub verify: bool,
    ca: Option<CaBundle>,
    /// `server_name`, else the service's first exact host that is a DNS name: what a probe
    /// sends, and a request whose host is none of `hosts`.
    default_name: Option<String>,
    /// With no `server_name`: the exact hosts that are DNS names, sorted. A request for one
    /// of them sends its own host, so a backend serving several names picks the right one.
    hosts: Vec<String>,
}

impl Default for Dial {
    fn default() -> Self {
        Dial::new(&UpstreamTls::default(), &[])
    }
}

impl Dial {
    /// The dial a health probe uses: probes send `default_name` only, so the list of hosts
    /// is dropped. A probe target that kept it would look changed whenever a host is added
    /// to the service, and be probed again from `starting`, out of rotation.
    pub fn for_probes(mut self) -> Dial {
        self.hosts.clear();
        self
    }

    pub fn new(upstream: &UpstreamTls, routes: &[RouteKey]) -> Dial {
        let dns = |h: &&String| matches!(ServerName::try_from(h.as_str()), Ok(ServerName::DnsName(_)));
        let exact = routes.iter().filter_map(|r| match &r.host {
            HostPattern::Exact(h) => Some(h),
            _ => None,
        });
        let (default_name, mut hosts) = match &upstream.server_name {
            Some(name) => (Some(name.clone()), Vec::new()),
            None => {
                let hosts: Vec<String> = exact.filter(dns).cloned().collect();
                (hosts.first().cloned(), hosts)
            }
        };
        hosts.sort();
        hosts.dedup();
        Dial { scheme: upstream.scheme, verify: upstream.verify, ca: upstream.ca.clone(), default_name, hosts }
    }

    pub fn is_tls(&self) -> bool {
        self.scheme.is_tls()
    }

    /// The name sent and verified toward `addr` for a request routed on `host` (`None` for a
    /// probe): `server_name`; else `host` if it is one of the service's exact hosts; else the
    /// service's first exact host; else the backend's IP address, which rustls verifies
    /// against the certificate's IP addresses (and sends no SNI for, as RFC 6066 asks).
    pub fn name_for(&self, host: Option<&str>, addr: SocketAddr) -> String {
        if let Some(h) = host.filter(|h| self.hosts.binary_search_by(|x| x.as_str().cmp(h)).is_ok()) {
            return h.to_string();
        }
        match &self.default_name {
            Some(name) => name.clone(),
            None => addr.ip().to_string(),
        }
    }

    /// The pingora peer for `addr`, for a request routed on `host` (`None` for a probe).
    /// Timeouts are the caller's to set.
    pub fn peer(&self, addr: SocketAddr, host: Option<&str>) -> HttpPeer {
        let mut peer = self.peer_of_scheme(addr, host);
        if self.scheme.is_h2() {
            // HTTP/2 only: with prior knowledge in cleartext (pingora speaks h2c when the least
            // version is 2 and there is no TLS), by ALPN `h2` alone over TLS.
            peer.options.set_http_version(2, 2);
        }
        peer
    }

    fn peer_of_scheme(&self, addr: SocketAddr, host: Option<&str>) -> HttpPeer {
        if !self.is_tls() {
            return HttpPeer::new(addr, false, String::new());
        }
        let mut peer = HttpPeer::new(addr, true, self.name_for(host, addr));
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        if let Some(ca) = &self.ca {
            peer.options.ca = Some(Arc::clone(&ca.certs));
            peer.group_key = ca.fingerprint;
        }
        peer
    }

    /// What the admin API and logs call how this service's backends are checked, e.g.
    /// `HTTPS GET /healthz`.
    pub fn probe_words(&self, probe: &crate::catalog::Probe) -> String {
        use crate::catalog::Probe;
        let over = match self.scheme {
            Scheme::Http => "",
            Scheme::H2c => " over h2c",
            Scheme::Https => "",
            Scheme::H2 => " over TLS (h2)",
        };
        match (probe, self.scheme) {
            (Probe::Tcp, Scheme::Https | Scheme::H2) => "TLS handshake".to_string(),
            (Probe::Http { path }, Scheme::Https) => format!("HTTPS GET {path}"),
            (Probe::Tcp, _) => probe.to_string(),
            (probe, _) => format!("{probe}{over}"),
        }
    }
}

/// A failed TLS handshake toward a backend (as opposed to a refused or timed-out connect).
pub fn is_tls_error(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::TLSWantX509Lookup | ErrorType::HandshakeError
    )
}

/// A connect error as an operator reads it: what failed, toward which name, and rustls' own
/// words for why (e.g. `invalid peer certificate: certificate not valid for name "x"; ...`).
pub fn describe_connect_error(e: &Error) -> String {
    let Some(context) = e.context.as_ref().map(|c| c.as_str()).filter(|_| is_tls_error(e)) else {
        return e.to_string().trim().to_string();
    };
    // pingora 0.9 nests the handshake error's display in its context:
    // "TLS connect() failed: <etype> context: tls connect error cause: <rustls>, SNI: <name>".
    let (body, name) = match context.rsplit_once(", SNI: ") {
        Some((body, name)) => (body, format!(" (server name {name})")),
        None => (context, String::new()),
    };
    let why = body.rsplit_once(" cause: ").map_or(body, |(_, why)| why).trim();
    format!("TLS handshake failed{name}: {why}")
}

/// A CA bundle (one self-signed certificate) in a directory of its own, removed on drop: for
/// the tests of every module that reads `ca`.
#[cfg(test)]
pub(crate) struct TestCa {
    pub dir: PathBuf,
    pub path: PathBuf,
}

#[cfg(test)]
impl TestCa {
    pub fn new(test: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!("hawser-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        std::fs::write(&path, crate::tls::pem::self_signed(&[&format!("{test}.test")], 1).unwrap().0).unwrap();
        TestCa { dir, path }
    }

    pub fn path_text(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tls::Inconsistency;
    use pingora::upstreams::peer::Peer;

    fn route(host: &str) -> RouteKey {
        RouteKey { host: HostPattern::parse_list(host).unwrap().remove(0), path_prefix: "/".into() }
    }

    fn https(server_name: Option<&str>) -> UpstreamTls {
        UpstreamTls { scheme: Scheme::Https, server_name: server_name.map(str::to_string), ..UpstreamTls::default() }
    }

    const ADDR: &str = "10.0.0.7:443";

    #[test]
    fn the_name_is_the_operators_or_the_backends_never_a_clients_alone() {
        let addr: SocketAddr = ADDR.parse().unwrap();
        let routes = [route("b.test"), route("a.test"), route("*.wild.test"), route("10.1.1.1")];
        let dial = Dial::new(&https(None), &routes);
        // A request for one of the service's exact hosts sends that host.
        assert_eq!(dial.name_for(Some("a.test"), addr), "a.test");
        assert_eq!(dial.name_for(Some("b.test"), addr), "b.test");
        // A host the client chose (wildcard match, any-host route, IP literal) is not used:
        // the service's first exact host is, as for probes.
        assert_eq!(dial.name_for(Some("x.wild.test"), addr), "b.test");
        assert_eq!(dial.name_for(Some("evil.example"), addr), "b.test");
        assert_eq!(dial.name_for(Some("10.1.1.1"), addr), "b.test");
        assert_eq!(dial.name_for(None, addr), "b.test");
        // server_name wins over everything.
        let dial = Dial::new(&https(Some("api.internal")), &routes);
        assert_eq!(dial.name_for(Some("a.test"), addr), "api.internal");
        assert_eq!(dial.name_for(None, addr), "api.internal");
        // No name of the operator's: the backend's own address, never an empty SNI.
        let dial = Dial::new(&https(None), &[route("*.wild.test"), route("10.1.1.1")]);
        assert_eq!(dial.name_for(Some("x.wild.test"), addr), "10.0.0.7");
        assert_eq!(dial.name_for(None, "[fd00::7]:443".parse().unwrap()), "fd00::7");
        assert_eq!(Dial::new(&https(None), &[]).name_for(Some(""), addr), "10.0.0.7");
    }

    #[test]
    fn peers_verify_by_default_and_never_with_an_empty_sni() {
        let addr: SocketAddr = ADDR.parse().unwrap();
        let plain = Dial::new(&UpstreamTls::default(), &[route("a.test")]).peer(addr, Some("a.test"));
        assert!(!plain.is_tls());
        let peer = Dial::new(&https(None), &[route("a.test")]).peer(addr, Some("a.test"));
        assert!(peer.is_tls() && peer.verify_cert() && peer.verify_hostname());
        assert_eq!(peer.sni(), "a.test");
        assert!(peer.get_ca().is_none(), "the system roots (or pingora's ca_file)");
        let off = Dial::new(&UpstreamTls { verify: false, ..https(None) }, &[]).peer(addr, None);
        assert!(!off.verify_cert() && !off.verify_hostname());
        assert_eq!(off.sni(), "10.0.0.7");
        assert_ne!(off.reuse_hash(), Dial::new(&https(None), &[]).peer(addr, None).reuse_hash());
    }

    #[test]
    fn ca_bundles_are_checked_and_kept_apart_in_the_pool() {
        let (ca_a, ca_b) = (TestCa::new("upstream-ca-a"), TestCa::new("upstream-ca-b"));
        let (a, b, dir) = (&ca_a.path, &ca_b.path, &ca_a.dir);
        let addr: SocketAddr = ADDR.parse().unwrap();
        let peer = |path: &Path| {
            let ca = CaBundle::load(path).unwrap();
            Dial::new(&UpstreamTls { ca: Some(ca), ..https(Some("x.test")) }, &[]).peer(addr, None)
        };
        let (pa, pb) = (peer(a), peer(b));
        assert_eq!(pa.get_ca().map(|c| c.len()), Some(1));
        assert_ne!(pa.reuse_hash(), pb.reuse_hash(), "connections verified with one bundle serve no other");
        assert_eq!(pa.reuse_hash(), peer(a).reuse_hash());

        for (content, want) in [
            ("", "no certificate in it"),
            ("garbage", "no certificate in it"),
            ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not an X.509 certificate"),
        ] {
            let bad = dir.join("bad.pem");
            std::fs::write(&bad, content).unwrap();
            let e = CaBundle::load(&bad).unwrap_err();
            assert!(e.contains(&bad.display().to_string()) && e.contains(want), "{content:?}: {e}");
        }
        let e = CaBundle::load(&dir.join("missing.pem")).unwrap_err();
        assert!(e.starts_with("cannot read ") && e.contains("missing.pem"), "{e}");
        assert!(CaBundle::load(dir).unwrap_err().contains("is not a file"));

        // Read once: a file replaced later is not read again.
        let files = CaFiles::default();
        let first = files.get(a).unwrap();
        std::fs::write(a, "replaced").unwrap();
        assert_eq!(files.get(a).unwrap(), first);
        assert!(files.get(&dir.join("missing.pem")).is_err());
    }

    #[test]
    fn tls_errors_are_told_in_rustls_words() {
        let context = "TLS connect() failed:  TLSHandshakeFailure context: tls connect error cause: invalid peer certificate: \
                       certificate not valid for name \"w.test\"; certificate is only valid for DnsName(\"a.test\"), SNI: w.test";
        let e = Error::explain(ErrorType::TLSHandshakeFailure, context);
        assert!(is_tls_error(&e));
        assert_eq!(
            describe_connect_error(&e),
            "TLS handshake failed (server name w.test): invalid peer certificate: certificate not valid for name \"w.test\"; \
             certificate is only valid for DnsName(\"a.test\")"
        );
        let e = Error::explain(ErrorType::InvalidCert, "per-peer CA list is empty");
        assert_eq!(describe_connect_error(&e), "TLS handshake failed: per-peer CA list is empty");
        let e = Error::explain(ErrorType::ConnectRefused, "refused");
        assert!(!is_tls_error(&e));
        assert_eq!(describe_connect_error(&e), e.to_string().trim());
    }

    #[test]
    fn inconsistent_settings_are_named() {
        let test_ca = TestCa::new("upstream-inconsistent");
        let ca = || Some(CaBundle::load(&test_ca.path).unwrap());
        assert_eq!(UpstreamTls::default().inconsistency(), None);
        assert_eq!(https(Some("a.test")).inconsistency(), None);
        let plain_sni = UpstreamTls { server_name: Some("a.test".into()), ..UpstreamTls::default() };
        assert_eq!(plain_sni.inconsistency(), Some(("server_name", Inconsistency::NeedsTls)));
        let plain_ca = UpstreamTls { ca: ca(), ..UpstreamTls::default() };
        assert_eq!(plain_ca.inconsistency(), Some(("ca", Inconsistency::NeedsTls)));
        let plain_off = UpstreamTls { verify: false, ..UpstreamTls::default() };
        assert_eq!(plain_off.inconsistency(), Some(("tls_verify", Inconsistency::NeedsTls)));
        let off_with_ca = UpstreamTls { verify: false, ca: ca(), ..https(None) };
        assert_eq!(off_with_ca.inconsistency(), Some(("ca", Inconsistency::UnusedCa)));
    }
}
