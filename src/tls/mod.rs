//! HTTPS at the edge: TLS listeners, the certificates they serve, and where those come from.
//!
//! - [`store`]: the table of certificates by host name that every handshake asks (SNI, exact
//!   then `*.` wildcard, then the default certificate or a refused handshake).
//! - [`pem`]: reading and checking PEM certificates and keys.
//! - [`files`]: certificates from `tls.certificates` and `tls.directory`, reloaded on change.
//! - [`challenge`]: HTTP-01 answers, served on the cleartext listener before any routing.
//! - [`acme`]: certificates ordered from an ACME CA for the hosts routes ask TLS for.
//!
//! Invariants:
//! - The rustls configuration is built once; what changes (certificates) lives in the store
//!   and is swapped whole, so a handshake never waits on a reload or an order.
//! - One crypto provider, ring (as pingora's rustls uses), installed before any TLS object is
//!   built.
//! - The TLS handshake is done by hawser's connection layer ([`crate::edge::conn`]), inside the
//!   connection cap and the `clients.header_timeout` deadline, not by pingora's listener
//!   (which allows 60 s outside any cap).

pub mod acme;
pub mod challenge;
pub mod files;
pub mod pem;
pub mod store;

use std::sync::Arc;

use pingora::listeners::tls::Acceptor;

use crate::config::{DefaultCertificate, TlsConfig};
use store::{CertStore, Entry, Source};

/// The name of the self-signed default certificate: a reserved TLD (RFC 6761) no client
/// would ever verify.
pub const SELF_SIGNED_NAME: &str = "hawser.invalid";

/// What the TLS listeners and the ACME manager share.
pub struct Tls {
    pub store: Arc<CertStore>,
    pub acceptor: Arc<Acceptor>,
}

/// Installs ring as the process's rustls provider; call before building any TLS object.
pub fn install_crypto_provider() {
    // Err only when one is installed already, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Tls {
    /// The store (with its default certificate) and the acceptor for `config`. Files named
    /// in the configuration were checked when it was loaded; they are read again here.
    pub fn new(config: &TlsConfig) -> Result<Tls, String> {
        install_crypto_provider();
        let default = match &config.default_certificate {
            DefaultCertificate::Refuse => None,
            DefaultCertificate::SelfSigned => {
                let (cert, key) = pem::self_signed(&[SELF_SIGNED_NAME], 3650)?;
                let cert = pem::from_pem(cert.as_bytes(), key.as_bytes()).map_err(|e| format!("self-signed certificate: {e:?}"))?;
                Some(Entry { cert, source: Source::Default, origin: "self-signed".into() })
            }
            DefaultCertificate::File(pair) => {
                let cert = pem::load_pair(&pair.cert, &pair.key)?;
                Some(Entry { cert, source: Source::Default, origin: pair.cert.display().to_string() })
            }
        };
        let store = Arc::new(CertStore::new(default));
        let acceptor = Arc::new(acceptor(Arc::clone(&store))?);
        Ok(Tls { store, acceptor })
    }
}

/// TLS 1.2 and 1.3 (ring's default suites: AEAD with forward secrecy only), ALPN `h2` then
/// `http/1.1`, certificates from `store`.
fn acceptor(store: Arc<CertStore>) -> Result<Acceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(store::Resolver(store)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Session tickets (stateless resumption) as nginx and Caddy offer them; the ticket key
    // rotates every 6 hours and lives only in memory.
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?;
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

/// Why a TLS handshake failed, for `hawser_tls_handshake_errors_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// No ClientHello (or no end of the handshake) within `clients.header_timeout`.
    Timeout,
    /// No certificate for the SNI and `default_certificate: refuse`.
    NoCertificate,
    /// The client spoke no TLS, or offered nothing hawser accepts (versions, suites, ALPN).
    Protocol,
    /// The client closed or reset the connection, or refused hawser's certificate.
    Closed,
}

impl HandshakeError {
    pub const ALL: [HandshakeError; 4] =
        [HandshakeError::Timeout, HandshakeError::NoCertificate, HandshakeError::Protocol, HandshakeError::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeError::Timeout => "timeout",
            HandshakeError::NoCertificate => "no_certificate",
            HandshakeError::Protocol => "protocol",
            HandshakeError::Closed => "closed",
        }
    }

    /// Classifies pingora's handshake error. pingora flattens rustls' error into its own
    /// error's text (the root cause is not the `rustls::Error`), so the text decides when
    /// the cause is not an I/O error of the socket.
    pub fn classify(e: &pingora::Error) -> HandshakeError {
        if let Some(io) = e.root_cause().downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return match tls {
                    rustls::Error::General(m) if m.contains("no server certificate") => HandshakeError::NoCertificate,
                    rustls::Error::AlertReceived(_) => HandshakeError::Closed,
                    _ => HandshakeError::Protocol,
                };
            }
            if io.kind() != std::io::ErrorKind::InvalidData {
                return HandshakeError::Closed;
            }
        }
        let text = e.to_string();
        if text.contains("no server certificate") {
            HandshakeError::NoCertificate
        } else if text.contains("received fatal alert") || text.contains("eof") || text.contains("reset") || text.contains("Broken pipe") {
            HandshakeError::Closed
        } else {
            HandshakeError::Protocol
        }
    }
}
