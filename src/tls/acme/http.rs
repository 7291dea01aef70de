//! The HTTP client hawser hands instant-acme: every request to the CA has a deadline and every
//! answer a size cap, so a CA that hangs or floods can neither wedge the manager nor fill its
//! memory. (instant-acme's own client has neither.)
//!
//! Invariants:
//! - One deadline per request, [`REQUEST_TIMEOUT`], covering connect, TLS, headers and the
//!   whole body.
//! - Bodies larger than [`MAX_BODY`] are refused while they arrive, not after.
//! - TLS with ring (the process's only provider); the CA's certificate is verified against
//!   `tls.acme.ca_root` when set, otherwise against the system's roots. Plain HTTP only when
//!   the configured directory itself is `http://` (loopback, as the configuration allows).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesBody, BytesResponse, Error, HttpClient};

use crate::config::AcmeConfig;

/// The longest one request to the CA may take, answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from the CA (a directory, an order, a chain: a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

/// Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct CaClient {
    inner: Inner,
    timeout: Duration,
    limit: usize,
}

impl CaClient {
    pub fn new(config: &AcmeConfig) -> Result<CaClient, String> {
        Self::with_limits(config, REQUEST_TIMEOUT, MAX_BODY)
    }

    pub fn with_limits(config: &AcmeConfig, timeout: Duration, limit: usize) -> Result<CaClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = match &config.ca_root {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for root in crate::tls::pem::load_roots(path)? {
                    roots.add(root).map_err(|e| format!("{}: unusable root certificate ({e})", path.display()))?;
                }
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(tls)
            }
            None => HttpsConnectorBuilder::new()
                .with_provider_and_platform_verifier(provider)
                .map_err(|e| format!("cannot load the system's root certificates: {e}"))?,
        };
        let builder = if config.directory.starts_with("http://") { builder.https_or_http() } else { builder.https_only() };
        let connector = builder.enable_http1().enable_http2().build();
        Ok(CaClient { inner: Client::builder(TokioExecutor::new()).build(connector), timeout, limit })
    }
}

impl HttpClient for CaClient {
    fn request(&self, req: Request<BodyWrapper<Bytes>>) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let what = format!("{} {}", req.method(), req.uri());
        let sent = self.inner.request(req);
        let (timeout, limit) = (self.timeout, self.limit);
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            let rsp = match tokio::time::timeout_at(deadline, sent).await {
                Err(_) => return Err(Error::Other(format!("{what}: no answer within {timeout:?}").into())),
                Ok(Err(e)) => return Err(Error::Other(format!("{what}: {}", chain(&e)).into())),
                Ok(Ok(rsp)) => rsp,
            };
            let (parts, body) = rsp.into_parts();
            Ok(BytesResponse { parts, body: Box::new(Capped { body: Some(body), deadline, limit, what }) })
        })
    }
}

/// A body read whole, within the request's deadline and the size cap.
struct Capped<B> {
    body: Option<B>,
    deadline: tokio::time::Instant,
    limit: usize,
    what: String,
}

#[async_trait]
impl<B> BytesBody for Capped<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    async fn into_bytes(&mut self) -> Result<Bytes, Box<dyn StdError + Send + Sync + 'static>> {
        let Some(body) = self.body.take() else { return Ok(Bytes::new()) };
        match tokio::time::timeout_at(self.deadline, Limited::new(body, self.limit).collect()).await {
            Err(_) => Err(format!("{}: the answer did not arrive in time", self.what).into()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                Err(format!("{}: the answer is larger than {} KiB", self.what, self.limit / 1024).into())
            }
            Ok(Err(e)) => Err(format!("{}: {}", self.what, chain(e.as_ref())).into()),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
        }
    }
}

/// An error with its causes, `a: b: c` (hyper's own messages say little without them).
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn config(port: u16) -> AcmeConfig {
        AcmeConfig {
            directory: format!("http://127.0.0.1:{port}/dir"),
            email: None,
            storage: std::env::temp_dir(),
            ca_root: None,
        }
    }

    /// A one-connection server that reads a request and answers with `answer` (then holds the
    /// connection open for `hold`).
    fn serve(answer: Vec<u8>, hold: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(&answer);
                std::thread::sleep(hold);
            }
        });
        port
    }

    fn get(port: u16) -> Request<BodyWrapper<Bytes>> {
        Request::get(format!("http://127.0.0.1:{port}/dir")).body(BodyWrapper::default()).unwrap()
    }

    #[tokio::test]
    async fn huge_answers_are_refused_while_they_arrive() {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n".to_vec();
        answer.extend(vec![b'x'; 64 * 1024]);
        let port = serve(answer, Duration::from_secs(5));
        let client = CaClient::with_limits(&config(port), Duration::from_secs(5), 16 * 1024).unwrap();
        let rsp = client.request(get(port)).await.unwrap();
        let mut body = rsp.body;
        let err = body.into_bytes().await.unwrap_err().to_string();
        assert!(err.contains("larger than 16 KiB"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_ca_runs_into_the_deadline() {
        // Headers arrive, the body never does.
        let port = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(), Duration::from_secs(5));
        let client = CaClient::with_limits(&config(port), Duration::from_millis(300), MAX_BODY).unwrap();
        let started = std::time::Instant::now();
        let mut body = client.request(get(port)).await.unwrap().body;
        let err = body.into_bytes().await.unwrap_err().to_string();
        assert!(err.contains("did not arrive in time"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));

        // Nothing at all arrives.
        let port = serve(Vec::new(), Duration::from_secs(5));
        let client = CaClient::with_limits(&config(port), Duration::from_millis(300), MAX_BODY).unwrap();
        let err = client.request(get(port)).await.err().expect("must fail").to_string();
        assert!(err.contains("no answer within"), "{err}");
    }

    #[tokio::test]
    async fn refused_connections_say_why() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = CaClient::new(&config(port)).unwrap();
        let err = client.request(get(port)).await.err().expect("must fail").to_string();
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }
}
