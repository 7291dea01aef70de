//! Plain `GET`s of the Engine API whose answers hawser decodes itself (Swarm's lists; see
//! [`super::swarm`] for why not through bollard), over the same endpoints bollard speaks to:
//! a Unix socket, or TCP.
//!
//! Invariants: every request has a deadline ([`REQUEST_TIMEOUT`]) covering the whole answer,
//! and every answer a size cap ([`MAX_ANSWER`]); a non-2xx answer is an error carrying the
//! engine's own message (`{"message": …}`), e.g. "This node is not a swarm manager".

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A manager's lists are read about every second; one that has not answered in this time is
/// treated as unreachable for this round.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// 64 MiB: about 30,000 tasks as a 20.10 manager lists them (about 2 KiB each).
pub const MAX_ANSWER: usize = 64 << 20;

/// Where the engine listens.
#[derive(Clone)]
enum Transport {
    Unix { socket: String, client: Client<hyperlocal::UnixConnector, Empty<Bytes>> },
    Http { base: String, client: Client<HttpConnector, Empty<Bytes>> },
    Https { base: String, client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>> },
}

/// Verified TLS with a client certificate, as the Docker CLI speaks to a remote engine: the
/// engine's certificate must chain to `tls.ca` (only), and hawser shows `tls.cert`.
fn client_tls(tls: &crate::config::EngineTls) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for root in crate::tls::pem::load_roots(&tls.ca)? {
        roots.add(root).map_err(|e| format!("{}: unusable root certificate ({e})", tls.ca.display()))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crate::tls::pem::read_bounded(&tls.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain ({e})", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&crate::tls::pem::read_bounded(&tls.key)?)
        .map_err(|e| format!("{}: not a PEM private key ({e})", tls.key.display()))?;
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", tls.cert.display(), tls.key.display()))
}

/// A client for raw `GET`s to one engine, at one API version.
#[derive(Clone)]
pub struct RawApi {
    transport: Transport,
    /// `1.41`: the version bollard negotiated with the engine.
    version: String,
}

impl RawApi {
    /// For `engine` as [`super::connect`] accepts it (`unix://`, `tcp://`, `http://`, and
    /// `tcp://` with TLS client certificates).
    pub fn new(engine: &super::Engine, version: &str) -> Result<RawApi, String> {
        let endpoint = engine.endpoint.as_str();
        let transport = if let Some(tls) = &engine.tls {
            let rest = endpoint.strip_prefix("tcp://").ok_or_else(|| format!("TLS needs a tcp:// endpoint, not {endpoint}"))?;
            let connector = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(client_tls(tls)?)
                .https_only()
                .enable_http1()
                .build();
            Transport::Https { base: format!("https://{}", rest.trim_end_matches('/')), client: Client::builder(TokioExecutor::new()).build(connector) }
        } else if let Some(path) = endpoint.strip_prefix("unix://") {
            Transport::Unix {
                socket: path.to_string(),
                client: Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector),
            }
        } else if let Some(rest) = endpoint.strip_prefix("tcp://").or_else(|| endpoint.strip_prefix("http://")) {
            Transport::Http {
                base: format!("http://{}", rest.trim_end_matches('/')),
                client: Client::builder(TokioExecutor::new()).build_http(),
            }
        } else {
            return Err(format!("unsupported Docker endpoint {endpoint:?}"));
        };
        Ok(RawApi { transport, version: version.to_string() })
    }

    /// `GET /v{version}{path_and_query}`, the whole answer.
    pub async fn get(&self, path_and_query: &str) -> Result<Bytes, String> {
        let path = format!("/v{}{path_and_query}", self.version);
        let what = format!("GET {path}");
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let sent = match &self.transport {
            Transport::Unix { socket, client } => client.get(hyperlocal::Uri::new(socket, &path).into()),
            Transport::Http { base, client } => {
                let uri = format!("{base}{path}").parse().map_err(|e| format!("{what}: {e}"))?;
                client.get(uri)
            }
            Transport::Https { base, client } => {
                let uri = format!("{base}{path}").parse().map_err(|e| format!("{what}: {e}"))?;
                client.get(uri)
            }
        };
        let rsp = match tokio::time::timeout_at(deadline, sent).await {
            Err(_) => return Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("{what}: {}", crate::tls::acme::http::chain(&e))),
            Ok(Ok(rsp)) => rsp,
        };
        let status = rsp.status();
        let body = match tokio::time::timeout_at(deadline, Limited::new(rsp.into_body(), MAX_ANSWER).collect()).await {
            Err(_) => return Err(format!("{what}: the answer did not arrive within {REQUEST_TIMEOUT:?}")),
            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                return Err(format!("{what}: the answer is larger than {} MiB", MAX_ANSWER >> 20));
            }
            Ok(Err(e)) => return Err(format!("{what}: {}", crate::tls::acme::http::chain(e.as_ref()))),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        if !status.is_success() {
            return Err(engine_message(status.as_u16(), &body));
        }
        Ok(body)
    }
}

/// The engine's own words for an error answer (`{"message": "…"}`), else its status.
fn engine_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => format!("{} (HTTP {status})", m.message.trim().escape_debug()),
        Err(_) => format!("HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_carry_the_engines_message() {
        assert_eq!(
            engine_message(503, br#"{"message":"This node is not a swarm manager. Use \"docker swarm init\"\n"}"#),
            "This node is not a swarm manager. Use \\\"docker swarm init\\\" (HTTP 503)"
        );
        assert_eq!(engine_message(500, b"<html>"), "HTTP 500");
        let engine = |e: &str| super::super::Engine { name: None, endpoint: e.into(), tls: None, address_host: None };
        assert!(RawApi::new(&engine("ssh://x"), "1.41").is_err());
        assert!(RawApi::new(&engine("unix:///var/run/docker.sock"), "1.41").is_ok());
    }
}
