//! Certificates and keys in PEM: read, checked, and turned into what rustls serves.
//!
//! Invariants:
//! - A pair is accepted only whole: at least one certificate, exactly one private key, the
//!   key matching the first (leaf) certificate, the leaf parseable as X.509 and carrying at
//!   least one DNS name or IP address. Anything else is an error that names the file.
//! - Files are bounded in size before they are read: a certificate directory is input too.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Larger PEM files than this are refused (a long chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A certificate ready to serve, with what the admin API shows of it.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names (lowercase, `*.` wildcards kept) and IP addresses from the leaf's SANs; the
    /// subject's CN only when there are no SANs.
    pub names: Vec<String>,
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// The leaf in PEM, as read (kept for storage and `/api/certificates`).
    pub chain_pem: Vec<u8>,
}

pub fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(format!("{} is larger than {} KiB", path.display(), MAX_PEM_BYTES / 1024));
    }
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Reads and checks a certificate chain file and its key file.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Certificate, String> {
    let cert_pem = read_bounded(cert)?;
    let key_pem = read_bounded(key)?;
    from_pem(&cert_pem, &key_pem).map_err(|e| match e {
        PairError::Cert(m) => format!("{}: {m}", cert.display()),
        PairError::Key(m) => format!("{}: {m}", key.display()),
        PairError::Mismatch(m) => format!("{} and {}: {m}", cert.display(), key.display()),
    })
}

/// What is wrong with a pair, by file.
#[derive(Debug)]
pub enum PairError {
    Cert(String),
    Key(String),
    Mismatch(String),
}

/// Checks a PEM chain and key held in memory (files, or a certificate just issued).
pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Certificate, PairError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| PairError::Cert(format!("not a PEM certificate chain ({e})")))?;
    let Some(leaf) = chain.first() else {
        return Err(PairError::Cert("no certificate in it (expected -----BEGIN CERTIFICATE-----)".into()));
    };
    let (names, not_before, not_after) = describe(leaf).map_err(PairError::Cert)?;
    let mut keys = PrivateKeyDer::pem_slice_iter(key_pem);
    let key = match keys.next() {
        Some(Ok(k)) => k,
        Some(Err(e)) => return Err(PairError::Key(format!("not a PEM private key ({e})"))),
        None => return Err(PairError::Key("no private key in it (expected -----BEGIN PRIVATE KEY-----)".into())),
    };
    if keys.next().is_some() {
        return Err(PairError::Key("holds more than one private key".into()));
    }
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => PairError::Mismatch("the private key does not match the certificate".into()),
        other => PairError::Key(format!("unusable private key ({other})")),
    })?;
    Ok(Certificate { key: Arc::new(certified), names, not_before, not_after, chain_pem: cert_pem.to_vec() })
}

/// The names a leaf certificate serves and its validity, in unix seconds.
pub fn describe(leaf: &CertificateDer<'_>) -> Result<(Vec<String>, i64, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.trim_end_matches('.').to_ascii_lowercase()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")).to_string()),
                    16 => names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        // Clients have ignored the CN for years; a certificate without SANs is still listed.
        if let Some(cn) = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()) {
            names.push(cn.to_ascii_lowercase());
        }
    }
    if names.is_empty() {
        return Err("names no host (no DNS name or IP address in its subjectAltName)".into());
    }
    names.sort();
    names.dedup();
    let validity = cert.validity();
    Ok((names, validity.not_before.timestamp(), validity.not_after.timestamp()))
}

/// Reads a PEM bundle of trusted roots (for the ACME server's HTTPS, or a backend's CA).
pub fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_bounded(path)?;
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate bundle ({e})", path.display()))?;
    if roots.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(roots)
}

/// A self-signed certificate for `names`, valid from now for `days`; ECDSA P-256.
pub fn self_signed(names: &[&str], days: i64) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).map_err(|e| e.to_string())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, "hawser default certificate");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_pairs_load_and_mismatches_are_named() {
        let (cert, key) = self_signed(&["a.test", "*.b.test"], 30).unwrap();
        let c = from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(c.names, vec!["*.b.test".to_string(), "a.test".to_string()]);
        assert!(c.not_after > c.not_before);
        let (_, other_key) = self_signed(&["a.test"], 30).unwrap();
        assert!(matches!(from_pem(cert.as_bytes(), other_key.as_bytes()), Err(PairError::Mismatch(_))));
        assert!(matches!(from_pem(b"garbage", key.as_bytes()), Err(PairError::Cert(_))));
        assert!(matches!(from_pem(cert.as_bytes(), b""), Err(PairError::Key(_))));
        let two = format!("{key}{key}");
        assert!(matches!(from_pem(cert.as_bytes(), two.as_bytes()), Err(PairError::Key(_))));
    }
}
