//! The admin API, a pingora listening service of its own (default `127.0.0.1:9900`):
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /` | the status page (HTML) |
//! | `GET /healthz` | 200 while serving, and whether the Docker stream is connected |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /api/services` | services, their routes and backends with their states |
//! | `GET /api/containers` | every container seen: routed, or why not |
//! | `GET /api/certificates` | the certificate each TLS host gets: source, expiry, next renewal, last error |
//! | `POST /api/backends/{container}/drain`, `…/undrain` | manual drain (id, short id or name) |
//!
//! With `admin.token` set, every endpoint but `/healthz` needs `Authorization: Bearer <token>`;
//! the configuration refuses a non-loopback `admin.listen` without one. Before that, [`guard`]
//! refuses what browsers send on behalf of other sites (DNS rebinding, cross-site POSTs): 403.

pub mod guard;
pub mod page;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode, header};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::config::AdminConfig;
use guard::{Guard, RequestFacts};
use crate::metrics::metrics;
use crate::runtime::{DrainError, Runtime};
use crate::tls::files::unix_to_text;
use crate::tls::store::{CertStore, Source};

/// One line of `GET /api/certificates`; times in RFC 3339 (UTC).
#[derive(Debug, Clone, Serialize)]
pub struct CertificateJson {
    /// `null` for a certificate file that never loaded (its names are unknown).
    pub host: Option<String>,
    /// `file`, `acme` or `default`; `null` when nothing serves the host (handshakes refused).
    pub source: Option<Source>,
    pub not_after: Option<String>,
    pub next_renewal: Option<String>,
    pub error: Option<String>,
    /// The service whose route asks TLS for this host (`null`: a file certificate's name no
    /// route uses).
    pub service: Option<String>,
    /// The names of the certificate that serves the host.
    pub names: Vec<String>,
    /// Its file (or ACME storage path).
    pub file: Option<String>,
}

pub struct AdminApi {
    runtime: Arc<Runtime>,
    /// The TLS certificate table, when hawser has TLS listeners.
    certificates: Option<Arc<CertStore>>,
    /// The Docker engines' standing, for `/api/engines`.
    engines: Option<Arc<crate::docker::Fleet>>,
    token: Option<String>,
    guard: Guard,
    listen: std::net::SocketAddr,
}

impl AdminApi {
    pub fn new(runtime: Arc<Runtime>, config: &AdminConfig) -> AdminApi {
        AdminApi {
            runtime,
            certificates: None,
            engines: None,
            token: config.token.clone(),
            guard: Guard::new(config.listen, config.token.is_some()),
            listen: config.listen,
        }
    }

    /// Shows the standing of the engines `fleet` follows in `/api/engines`.
    pub fn with_engines(mut self, fleet: Arc<crate::docker::Fleet>) -> AdminApi {
        self.engines = Some(fleet);
        self
    }

    /// Shows the certificates of `store` in `/api/certificates`, the metrics and the page.
    pub fn with_certificates(mut self, store: Arc<CertStore>) -> AdminApi {
        self.certificates = Some(store);
        self
    }

    /// Every TLS host with the certificate it gets (empty without TLS listeners).
    pub fn certificates_view(&self) -> Vec<CertificateJson> {
        let Some(store) = &self.certificates else { return Vec::new() };
        let wanted = self.runtime.with_catalog(crate::catalog::tls::tls_hosts);
        let hosts: Vec<String> = wanted.iter().map(|w| w.host.clone()).collect();
        store
            .view(&hosts)
            .into_iter()
            .map(|v| CertificateJson {
                service: v.host.as_ref().and_then(|h| wanted.iter().find(|w| &w.host == h)).map(|w| w.service.clone()),
                host: v.host,
                source: v.source,
                not_after: v.not_after.map(unix_to_text),
                next_renewal: v.next_renewal.map(unix_to_text),
                error: v.error,
                names: v.names,
                file: v.file,
            })
            .collect()
    }

    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.token else { return true };
        let given = session
            .req_header()
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme name is case-insensitive (RFC 7235); the token is not.
            .and_then(|v| v.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer")))
            .map_or("", |(_, token)| token);
        constant_time_eq(given.trim().as_bytes(), token.as_bytes())
    }

    /// The answer to one request: status, content type, body.
    fn answer(&self, method: &Method, path: &str, session: &ServerSession) -> (StatusCode, &'static str, Vec<u8>) {
        let peer = session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        if let Err(refusal) = self.guard.check(&RequestFacts::of(session.req_header(), peer)) {
            return (StatusCode::FORBIDDEN, "text/plain; charset=utf-8", refusal.message(self.listen).into_bytes());
        }
        if path != "/healthz" && !self.authorized(session) {
            return text(StatusCode::UNAUTHORIZED, "hawser admin: missing or wrong `Authorization: Bearer <token>`\n");
        }
        let read = matches!(*method, Method::GET | Method::HEAD);
        match path {
            "/healthz" if read => {
                #[derive(Serialize)]
                struct Health {
                    status: &'static str,
                    docker_connected: bool,
                }
                json(StatusCode::OK, &Health { status: "serving", docker_connected: self.runtime.docker_connected() })
            }
            "/metrics" if read => (
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics()
                    .render(&self.runtime.services_view(), &self.certificates.as_ref().map(|s| s.expiries()).unwrap_or_default())
                    .into_bytes(),
            ),
            "/api/certificates" if read => json(StatusCode::OK, &self.certificates_view()),
            "/api/engines" if read => {
                json(StatusCode::OK, &self.engines.as_ref().map(|f| f.engines_view()).unwrap_or_default())
            }
            "/api/services" if read => json(StatusCode::OK, &self.runtime.services_view()),
            "/api/containers" if read => json(StatusCode::OK, &self.runtime.containers_view()),
            "/" if read => (
                StatusCode::OK,
                "text/html; charset=utf-8",
                page::render(
                    &self.runtime.services_view(),
                    &self.runtime.containers_view(),
                    self.runtime.docker_connected(),
                    &self.certificates_view(),
                )
                    .into_bytes(),
            ),
            "/healthz" | "/metrics" | "/api/services" | "/api/containers" | "/api/certificates" | "/api/engines" | "/" => {
                text(StatusCode::METHOD_NOT_ALLOWED, "hawser admin: use GET\n")
            }
            _ => match drain_target(path) {
                Some((who, drained)) if *method == Method::POST => self.drain(&who, drained),
                Some(_) => text(StatusCode::METHOD_NOT_ALLOWED, "hawser admin: use POST\n"),
                None => text(StatusCode::NOT_FOUND, "hawser admin: no such endpoint\n"),
            },
        }
    }

    fn drain(&self, who: &str, drained: bool) -> (StatusCode, &'static str, Vec<u8>) {
        #[derive(Serialize)]
        struct Done {
            container_name: String,
            drained: bool,
        }
        #[derive(Serialize)]
        struct Failed {
            error: String,
        }
        match self.runtime.set_drained(who, drained) {
            Ok(container_name) => json(StatusCode::OK, &Done { container_name, drained }),
            Err(e) => {
                let status = match e {
                    DrainError::NotFound(_) => StatusCode::NOT_FOUND,
                    DrainError::Ambiguous(_) | DrainError::NotABackend { .. } => StatusCode::CONFLICT,
                };
                json(status, &Failed { error: e.to_string() })
            }
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let (status, content_type, body) = self.answer(&method, &path, session);
        let mut resp = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_LENGTH, body.len())
            .header(header::CACHE_CONTROL, "no-store");
        if status == StatusCode::UNAUTHORIZED {
            resp = resp.header(header::WWW_AUTHENTICATE, "Bearer realm=\"hawser\"");
        }
        let body = if method == Method::HEAD { Vec::new() } else { body };
        resp.body(body).expect("valid response parts")
    }
}

/// `/api/backends/{container}/drain` → (container, true); `…/undrain` → (container, false).
fn drain_target(path: &str) -> Option<(String, bool)> {
    let rest = path.strip_prefix("/api/backends/")?;
    let (who, action) = rest.rsplit_once('/')?;
    // One `/` inside is an engine-qualified name (`ENGINE/NAME`, several engines).
    if who.is_empty() || who.matches('/').count() > 1 || who.starts_with('/') || who.ends_with('/') {
        return None;
    }
    let who = percent_decode(who)?;
    match action {
        "drain" => Some((who, true)),
        "undrain" => Some((who, false)),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> (StatusCode, &'static str, Vec<u8>) {
    let mut body = serde_json::to_vec_pretty(value).expect("views always serialise");
    body.push(b'\n');
    (status, "application/json", body)
}

fn text(status: StatusCode, body: &str) -> (StatusCode, &'static str, Vec<u8>) {
    (status, "text/plain; charset=utf-8", body.as_bytes().to_vec())
}

/// Comparison whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_paths() {
        assert_eq!(drain_target("/api/backends/web-1/drain"), Some(("web-1".into(), true)));
        assert_eq!(drain_target("/api/backends/0123abcd/undrain"), Some(("0123abcd".into(), false)));
        assert_eq!(drain_target("/api/backends/a%2Fb/drain"), Some(("a/b".into(), true)));
        assert_eq!(drain_target("/api/backends//drain"), None);
        assert_eq!(drain_target("/api/backends/web2/api-1/drain"), Some(("web2/api-1".into(), true)), "an engine-qualified name");
        assert_eq!(drain_target("/api/backends/x/y/z/drain"), None);
        assert_eq!(drain_target("/api/backends/x/stop"), None);
    }

    #[test]
    fn tokens_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
