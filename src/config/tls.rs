//! The TLS part of the configuration: the `tls:` section (listeners, certificate files, the
//! default certificate, ACME) and the per-service keys (`tls`, `redirect`, `hsts`, `scheme`,
//! `server_name`), which labels share.
//!
//! Invariants:
//! - Every value is checked where it is read, so an error names the file, line and key; the
//!   same parsers serve labels ([`crate::catalog::labels`]), whose errors name the label.
//! - Certificate files named in the YAML file are read and checked at load time (readable,
//!   PEM, key matching the certificate): `hawser -t` reports what a start would find. Files
//!   in `tls.directory` are read by [`crate::tls::files`] at run time, one bad pair at a time.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::ConfigError;
use super::file::{self, DefaultCertificateSection};

/// hawser's TLS listener when a `tls:` section names none (beside the cleartext 8080).
pub const DEFAULT_TLS_LISTEN: &str = "0.0.0.0:8443";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsConfig {
    /// Empty: no TLS listener (no `tls:` section).
    pub listen: Vec<SocketAddr>,
    pub certificates: Vec<CertPair>,
    pub directory: Option<PathBuf>,
    pub default_certificate: DefaultCertificate,
    pub acme: Option<AcmeConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a handshake gets whose SNI names no host hawser has a certificate for (or that sent
/// no SNI at all, e.g. a client that dialled an IP address).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum DefaultCertificate {
    /// A certificate hawser makes at start (for the name `hawser.invalid`): the handshake
    /// completes, and a client that verifies refuses it. Traefik's behaviour.
    #[default]
    SelfSigned,
    /// The handshake is aborted (Caddy's behaviour): nothing about hawser is revealed.
    Refuse,
    File(CertPair),
}

#[derive(Debug, Clone, PartialEq)]
pub struct AcmeConfig {
    pub directory: String,
    pub email: Option<String>,
    pub storage: PathBuf,
    /// A PEM file with the root(s) to trust for the ACME server's own HTTPS (a test CA).
    pub ca_root: Option<PathBuf>,
}

/// How hawser speaks to a service's backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scheme {
    #[default]
    Http,
    H2c,
    Https,
    H2,
}

impl Scheme {
    pub fn parse(s: &str) -> Result<Scheme, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Ok(Scheme::Http),
            "h2c" => Ok(Scheme::H2c),
            "https" => Ok(Scheme::Https),
            "h2" => Ok(Scheme::H2),
            _ => Err(format!("{s:?}: expected http, h2c, https or h2")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::H2c => "h2c",
            Scheme::Https => "https",
            Scheme::H2 => "h2",
        }
    }

    /// TLS toward the backend.
    pub fn is_tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::H2)
    }

    /// HTTP/2 toward the backend: with prior knowledge (`h2c`) or by ALPN over TLS (`h2`).
    pub fn is_h2(self) -> bool {
        matches!(self, Scheme::H2c | Scheme::H2)
    }
}

/// The edge side of a service's TLS: whether its hosts are served over TLS, redirected, and
/// told to stay on HTTPS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteTls {
    pub tls: bool,
    pub redirect: bool,
    pub hsts: Option<String>,
}

/// The backend side: scheme, the name to send and verify, the roots to verify with, and
/// whether to verify at all. See [`crate::upstream`] for how a connection uses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub scheme: Scheme,
    pub server_name: Option<String>,
    /// The roots that backends' certificates must chain to, instead of the system's.
    pub ca: Option<crate::upstream::CaBundle>,
    /// Off only when asked (`tls_verify: false`, label `tls.verify=false`).
    pub verify: bool,
}

impl Default for UpstreamTls {
    fn default() -> Self {
        UpstreamTls { scheme: Scheme::Http, server_name: None, ca: None, verify: true }
    }
}

impl UpstreamTls {
    /// A setting that only means something toward a TLS backend, or two that contradict each
    /// other, by its YAML key; YAML and labels word the error each their own way. A `ca` or
    /// `server_name` on a cleartext service would read as "verified TLS" while the traffic
    /// goes in the clear.
    pub fn inconsistency(&self) -> Option<(&'static str, Inconsistency)> {
        if !self.scheme.is_tls() {
            if self.ca.is_some() {
                return Some(("ca", Inconsistency::NeedsTls));
            }
            if self.server_name.is_some() {
                return Some(("server_name", Inconsistency::NeedsTls));
            }
            if !self.verify {
                return Some(("tls_verify", Inconsistency::NeedsTls));
            }
        } else if !self.verify && self.ca.is_some() {
            return Some(("ca", Inconsistency::UnusedCa));
        }
        None
    }
}

/// See [`UpstreamTls::inconsistency`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inconsistency {
    /// Set on a service whose scheme is cleartext.
    NeedsTls,
    /// A `ca` with verification off.
    UnusedCa,
}

/// Checks a Strict-Transport-Security value (RFC 6797 §6.1): `max-age` once, with digits;
/// `includeSubDomains` and `preload` at most once; nothing else.
pub fn parse_hsts(s: &str) -> Result<String, String> {
    let value = s.trim();
    let mut max_age = false;
    let mut seen: Vec<String> = Vec::new();
    for directive in value.split(';').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let (name, arg) = match directive.split_once('=') {
            Some((n, a)) => (n.trim().to_ascii_lowercase(), Some(a.trim().trim_matches('"'))),
            None => (directive.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return Err(format!("{value:?}: {name} is given twice"));
        }
        match (name.as_str(), arg) {
            ("max-age", Some(a)) if !a.is_empty() && a.len() <= 10 && a.bytes().all(|b| b.is_ascii_digit()) => max_age = true,
            ("max-age", _) => return Err(format!("{value:?}: max-age needs a number of seconds, e.g. max-age=31536000")),
            ("includesubdomains" | "preload", None) => {}
            _ => return Err(format!("{value:?}: unknown directive {directive:?} (known: max-age=N, includeSubDomains, preload)")),
        }
        seen.push(name);
    }
    if !max_age {
        return Err(format!("{value:?}: needs max-age=N, e.g. max-age=31536000"));
    }
    Ok(value.to_string())
}

/// A DNS name or an IP address, as rustls accepts it for SNI and verification.
pub fn parse_server_name(s: &str) -> Result<String, String> {
    let name = s.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return Err("empty server name: an empty SNI would turn certificate verification off".into());
    }
    rustls::pki_types::ServerName::try_from(name.as_str())
        .map_err(|_| format!("{s:?}: not a DNS name or IP address"))?;
    Ok(name)
}

/// An ACME directory URL: https, or http to a loopback address (a local test CA).
pub fn parse_acme_directory(s: &str) -> Result<String, String> {
    let url = s.trim();
    let uri: http::Uri = url.parse().map_err(|_| format!("{url:?}: not a URL"))?;
    let host = uri.host().unwrap_or("");
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(url.to_string()),
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(url.to_string()),
        _ => Err(format!("{url:?}: the ACME directory must be an https:// URL")),
    }
}

pub fn parse_email(s: &str) -> Result<String, String> {
    let e = s.trim();
    let ok = e.split_once('@').is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control() || "<>,;".contains(c));
    if ok { Ok(e.to_string()) } else { Err(format!("{e:?}: not an e-mail address")) }
}

/// Builds the checked [`TlsConfig`]: certificate files are read now, so `-t` finds what a
/// start would.
pub(super) fn tls_config(section: Option<file::TlsSection>, err: &dyn Fn(&str, String, Option<&serde_saphyr::Location>) -> ConfigError) -> Result<TlsConfig, ConfigError> {
    let Some(s) = section else {
        return Ok(TlsConfig::default());
    };
    let listen: Vec<SocketAddr> = match s.listen {
        None => vec![DEFAULT_TLS_LISTEN.parse().expect("valid default")],
        Some(l) if l.is_empty() => return Err(err("tls.listen", "must name at least one \"ip:port\"".into(), None)),
        Some(l) => l.into_iter().map(|a| a.0).collect(),
    };
    let pair = |key: &str, p: &Spanned<file::CertPairSection>| -> Result<CertPair, ConfigError> {
        let pair = CertPair { cert: PathBuf::from(&p.value.cert), key: PathBuf::from(&p.value.key) };
        crate::tls::pem::load_pair(&pair.cert, &pair.key).map_err(|e| err(key, e, Some(&p.referenced)))?;
        Ok(pair)
    };
    let mut certificates = Vec::new();
    for (i, p) in s.certificates.iter().enumerate() {
        certificates.push(pair(&format!("tls.certificates[{i}]"), p)?);
    }
    let directory = match s.directory {
        None => None,
        Some(d) => {
            let path = PathBuf::from(&d.value);
            match std::fs::read_dir(&path) {
                Ok(_) => Some(path),
                Err(e) => return Err(err("tls.directory", format!("cannot read directory {}: {e}", path.display()), Some(&d.referenced))),
            }
        }
    };
    let default_certificate = match s.default_certificate {
        None => DefaultCertificate::SelfSigned,
        Some(d) => match &d.value {
            DefaultCertificateSection::SelfSigned => DefaultCertificate::SelfSigned,
            DefaultCertificateSection::Refuse => DefaultCertificate::Refuse,
            DefaultCertificateSection::Pair(p) => DefaultCertificate::File(pair(
                "tls.default_certificate",
                &Spanned { value: p.clone(), referenced: d.referenced, defined: d.defined },
            )?),
        },
    };
    let acme = match s.acme {
        None => None,
        Some(a) => {
            let storage = PathBuf::from(&a.value.storage);
            if a.value.storage.trim().is_empty() {
                return Err(err("tls.acme.storage", "needs a directory for the account key and certificates".into(), Some(&a.referenced)));
            }
            match std::fs::metadata(&storage) {
                Ok(m) if !m.is_dir() => {
                    return Err(err("tls.acme.storage", format!("{} is not a directory", storage.display()), Some(&a.referenced)));
                }
                Ok(_) => {}
                // Created at start (0700); its parent must exist.
                Err(_) => {
                    let parent = storage.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
                    if !parent.is_dir() {
                        return Err(err(
                            "tls.acme.storage",
                            format!("neither {} nor its parent directory exists", storage.display()),
                            Some(&a.referenced),
                        ));
                    }
                }
            }
            let ca_root = match &a.value.ca_root {
                None => None,
                Some(path) => {
                    let path = PathBuf::from(path);
                    crate::tls::pem::load_roots(&path).map_err(|e| err("tls.acme.ca_root", e, Some(&a.referenced)))?;
                    Some(path)
                }
            };
            Some(AcmeConfig { directory: a.value.directory.0.clone(), email: a.value.email.as_ref().map(|e| e.0.clone()), storage, ca_root })
        }
    };
    Ok(TlsConfig { listen, certificates, directory, default_certificate, acme })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsts_values() {
        assert_eq!(parse_hsts("max-age=31536000; includeSubDomains").unwrap(), "max-age=31536000; includeSubDomains");
        assert!(parse_hsts("max-age=0").is_ok());
        assert!(parse_hsts("includeSubDomains").is_err());
        assert!(parse_hsts("max-age=abc").is_err());
        assert!(parse_hsts("max-age=1; max-age=2").is_err());
        assert!(parse_hsts("max-age=1; evil=1").is_err());
    }

    #[test]
    fn schemes_and_names() {
        assert_eq!(Scheme::parse("HTTPS").unwrap(), Scheme::Https);
        assert!(Scheme::parse("ftp").is_err());
        assert_eq!(parse_server_name("Api.Example.COM.").unwrap(), "api.example.com");
        assert!(parse_server_name("").is_err());
        assert!(parse_server_name("a b").is_err());
        assert_eq!(parse_server_name("10.0.0.1").unwrap(), "10.0.0.1");
    }

    #[test]
    fn acme_directories_and_emails() {
        assert!(parse_acme_directory("https://acme-v02.api.letsencrypt.org/directory").is_ok());
        assert!(parse_acme_directory("http://example.com/dir").is_err());
        assert!(parse_acme_directory("http://127.0.0.1:14000/dir").is_ok());
        assert!(parse_acme_directory("nonsense").is_err());
        assert!(parse_email("ops@example.com").is_ok());
        assert!(parse_email("ops").is_err());
        assert!(parse_email("a@b.c\r\nX: y").is_err());
    }
}
