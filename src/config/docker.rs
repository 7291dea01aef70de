//! The `docker:` section: which engines hawser watches, in which mode, and how it addresses
//! what it finds there. Built and checked here, so that `hawser -t` finds what a start would.
//!
//! Invariants:
//! - Either `docker.endpoint` (one engine, `DOCKER_HOST` and friends when absent) or
//!   `docker.endpoints` (named engines), never both; engine names are unique and usable in
//!   qualified container names (`ENGINE/NAME`).
//! - A `tls` block names three readable PEM files (CA, client certificate, key) and needs a
//!   `tcp://` endpoint; it is checked at load, not at the first connection.
//! - `address_host` is an IP address: backends are `SocketAddr`s, and hawser resolves no names.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::ConfigError;
use super::file::{AddressMode, Dur, Endpoint, LabelPrefix};

/// How long a lost engine's backends stay, by default: long enough to ride out a daemon
/// restart (seconds), short enough that a host that is gone does not linger. They keep their
/// health checks and passive ejection meanwhile.
pub const DEFAULT_ENDPOINT_GRACE: Duration = Duration::from_secs(60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSection {
    pub endpoint: Option<Endpoint>,
    pub endpoints: Option<Spanned<Vec<Spanned<EndpointSection>>>>,
    pub endpoint_grace: Option<Dur>,
    pub mode: Option<DockerMode>,
    pub label_prefix: Option<LabelPrefix>,
    pub network: Option<String>,
    pub exposed_by_default: Option<bool>,
    pub address: Option<AddressMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    pub name: String,
    pub endpoint: Endpoint,
    pub tls: Option<EngineTlsSection>,
    pub address_host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineTlsSection {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

/// `containers`, `swarm` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DockerMode {
    /// Plain containers only, whatever the engine is.
    Containers,
    /// Swarm services (on a manager), and plain containers as well.
    Swarm,
    /// Swarm when the engine is a swarm manager, plain containers otherwise.
    #[default]
    Auto,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// `None`: `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub endpoint: Option<String>,
    /// Named engines (`docker.endpoints`); empty when one engine is watched.
    pub endpoints: Vec<EngineConfig>,
    /// How long a lost engine's last known backends are kept.
    pub endpoint_grace: Duration,
    pub mode: DockerMode,
    pub label_prefix: String,
    /// Preferred network for container addresses.
    pub network: Option<String>,
    /// Route containers that carry no `<prefix>.enable` label.
    pub exposed_by_default: bool,
    /// `None`: containers by their IP; Swarm tasks by the first that fits of a network shared
    /// with hawser, then a port published in mode host.
    pub address: Option<AddressMode>,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            endpoint: None,
            endpoints: Vec::new(),
            endpoint_grace: DEFAULT_ENDPOINT_GRACE,
            mode: DockerMode::Auto,
            label_prefix: "hawser".into(),
            network: None,
            exposed_by_default: false,
            address: None,
        }
    }
}

/// One engine of `docker.endpoints`.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub name: String,
    pub endpoint: String,
    pub tls: Option<EngineTls>,
    /// The engine's host address: replaces a `0.0.0.0`/`::` port binding, and loopback ones.
    pub address_host: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EngineTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A name for an engine: it prefixes container names (`ENGINE/NAME`) in the admin API, metrics
/// and `hawser explain`.
fn validate_engine_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
    if ok { Ok(()) } else { Err(format!("invalid engine name {name:?}: use 1-64 letters, digits, '_' or '-'")) }
}

/// The host of a TCP endpoint that is not this machine: its IP, or (as an error) its name.
/// `None` for Unix sockets, loopback addresses and `localhost`.
pub fn remote_host(endpoint: &str) -> Option<Result<IpAddr, String>> {
    let rest = endpoint.strip_prefix("tcp://").or_else(|| endpoint.strip_prefix("http://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        // Connecting to 0.0.0.0 reaches this machine.
        Ok(ip) if ip.is_loopback() || ip.is_unspecified() => None,
        Ok(ip) => Some(Ok(ip)),
        Err(_) if host.eq_ignore_ascii_case("localhost") => None,
        Err(_) => Some(Err(host.to_string())),
    }
}

pub(super) fn docker_config(s: DockerSection, err: &dyn Fn(&str, String, Option<&Location>) -> ConfigError) -> Result<DockerConfig, ConfigError> {
    let mut endpoints = Vec::new();
    if let Some(list) = &s.endpoints {
        if s.endpoint.is_some() {
            return Err(err(
                "docker.endpoints",
                "set docker.endpoint (one engine) or docker.endpoints (several), not both".into(),
                Some(&list.referenced),
            ));
        }
        if list.value.is_empty() {
            return Err(err("docker.endpoints", "must name at least one engine".into(), Some(&list.referenced)));
        }
        for (i, e) in list.value.iter().enumerate() {
            let at = Some(&e.referenced);
            let key = format!("docker.endpoints[{i}]");
            let e = &e.value;
            validate_engine_name(&e.name).map_err(|m| err(&format!("{key}.name"), m, at))?;
            if endpoints.iter().any(|o: &EngineConfig| o.name == e.name) {
                return Err(err(&format!("{key}.name"), format!("engine {:?} is named twice", e.name), at));
            }
            let tls = match &e.tls {
                None => None,
                Some(t) => {
                    if !e.endpoint.0.starts_with("tcp://") {
                        return Err(err(&format!("{key}.tls"), format!("TLS needs a tcp:// endpoint, not {}", e.endpoint.0), at));
                    }
                    let tls = EngineTls { ca: t.ca.clone().into(), cert: t.cert.clone().into(), key: t.key.clone().into() };
                    crate::tls::pem::load_roots(&tls.ca).map_err(|m| err(&format!("{key}.tls.ca"), m, at))?;
                    crate::tls::pem::load_pair(&tls.cert, &tls.key).map_err(|m| err(&format!("{key}.tls.cert"), m, at))?;
                    Some(tls)
                }
            };
            let address_host = match &e.address_host {
                Some(h) => Some(h.trim().parse::<IpAddr>().map_err(|_| {
                    err(&format!("{key}.address_host"), format!("{h:?}: expected the engine host's IP address"), at)
                })?),
                // A remote engine's containers are reached at its host: its IP, when the
                // endpoint names one; a name must be given as an IP here.
                None => match remote_host(&e.endpoint.0) {
                    None => None,
                    Some(Ok(ip)) => Some(ip),
                    Some(Err(host)) => {
                        return Err(err(
                            &format!("{key}.address_host"),
                            format!("engine {:?} is on host {host:?}: set address_host to its IP address, where its published ports are reached", e.name),
                            at,
                        ));
                    }
                },
            };
            endpoints.push(EngineConfig { name: e.name.clone(), endpoint: e.endpoint.0.clone(), tls, address_host });
        }
    }
    Ok(DockerConfig {
        endpoint: s.endpoint.map(|e| e.0),
        endpoints,
        endpoint_grace: s.endpoint_grace.map_or(DEFAULT_ENDPOINT_GRACE, |d| d.0),
        mode: s.mode.unwrap_or_default(),
        label_prefix: s.label_prefix.map_or_else(|| "hawser".to_string(), |p| p.0),
        network: s.network,
        exposed_by_default: s.exposed_by_default.unwrap_or(false),
        address: s.address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;

    fn load(yaml: &str) -> Result<DockerConfig, ConfigError> {
        Loaded::from_yaml(yaml, "test.yaml").map(|l| l.config.docker)
    }

    #[test]
    fn modes_addresses_and_defaults() {
        let d = load("").unwrap();
        assert_eq!((d.mode, d.address, d.endpoint_grace), (DockerMode::Auto, None, DEFAULT_ENDPOINT_GRACE));
        let d = load("docker: {mode: swarm, address: vip, endpoint_grace: 5s}").unwrap();
        assert_eq!((d.mode, d.address, d.endpoint_grace), (DockerMode::Swarm, Some(AddressMode::Vip), Duration::from_secs(5)));
        assert_eq!(load("docker: {mode: containers}").unwrap().mode, DockerMode::Containers);
        let e = load("docker:\n  mode: cluster\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("docker.mode", Some(2)), "{e}");
    }

    #[test]
    fn several_engines() {
        let d = load(
            "docker:\n  endpoints:\n    - {name: a, endpoint: \"unix:///run/a.sock\"}\n    - {name: b-2, endpoint: \"tcp://192.0.2.7:2375\", address_host: 192.0.2.7}\n",
        )
        .unwrap();
        assert_eq!(d.endpoints.len(), 2);
        assert_eq!(d.endpoints[1].address_host, Some("192.0.2.7".parse().unwrap()));
        let d = load("docker:\n  endpoints:\n    - {name: a, endpoint: \"tcp://192.0.2.8:2376\"}\n    - {name: b, endpoint: \"tcp://127.0.0.1:2375\"}\n").unwrap();
        assert_eq!(d.endpoints[0].address_host, Some("192.0.2.8".parse().unwrap()), "the endpoint's IP by default");
        assert_eq!(d.endpoints[1].address_host, None, "loopback: as Docker bound it");
        let e = load("docker:\n  endpoints:\n    - {name: a, endpoint: \"tcp://docker.example:2376\"}\n").unwrap_err();
        assert_eq!(e.key, "docker.endpoints[0].address_host", "{e}");
        assert_eq!(d.endpoints[0].tls, None);
        let err = |yaml: &str| load(yaml).unwrap_err();
        let e = err("docker:\n  endpoint: \"unix:///a\"\n  endpoints:\n    - {name: a, endpoint: \"unix:///a\"}\n");
        assert_eq!(e.key, "docker.endpoints", "{e}");
        assert!(e.message.contains("not both"), "{e}");
        let e = err("docker:\n  endpoints:\n    - {name: a, endpoint: \"unix:///a\"}\n    - {name: a, endpoint: \"unix:///b\"}\n");
        assert_eq!((e.key.as_str(), e.line), ("docker.endpoints[1].name", Some(4)), "{e}");
        let e = err("docker:\n  endpoints:\n    - {name: \"a/b\", endpoint: \"unix:///a\"}\n");
        assert_eq!(e.key, "docker.endpoints[0].name", "{e}");
        let e = err("docker:\n  endpoints:\n    - {name: a, endpoint: \"unix:///a\", address_host: host.example}\n");
        assert_eq!(e.key, "docker.endpoints[0].address_host", "{e}");
        let e = err("docker:\n  endpoints:\n    - {name: a, endpoint: \"unix:///a\", tls: {ca: /x, cert: /y, key: /z}}\n");
        assert!(e.message.contains("tcp://"), "{e}");
        let e = err("docker:\n  endpoints:\n    - {name: a, endpoint: \"tcp://192.0.2.7:2376\", tls: {ca: /nonexistent/ca.pem, cert: /y, key: /z}}\n");
        assert_eq!(e.key, "docker.endpoints[0].tls.ca", "{e}");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        assert_eq!(err("docker: {endpoints: []}").key, "docker.endpoints");
        assert_eq!(err("docker:\n  endpoints:\n    - {name: a, endpoint: \"unix:///a\", color: red}\n").key, "docker.endpoints[0].color");
    }

    #[test]
    fn remote_hosts() {
        for local in ["unix:///var/run/docker.sock", "tcp://127.0.0.1:2375", "tcp://localhost:2375", "tcp://[::1]:2375", "http://127.0.0.2", "tcp://LOCALHOST"] {
            assert_eq!(remote_host(local), None, "{local}");
        }
        assert_eq!(remote_host("tcp://192.0.2.7:2375"), Some(Ok("192.0.2.7".parse().unwrap())));
        assert_eq!(remote_host("tcp://[2001:db8::1]:2376"), Some(Ok("2001:db8::1".parse().unwrap())));
        assert_eq!(remote_host("tcp://0.0.0.0:2375"), None, "connecting to 0.0.0.0 reaches this machine");
        assert_eq!(remote_host("tcp://docker.example:2376"), Some(Err("docker.example".to_string())));
    }
}
