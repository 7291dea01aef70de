//! hawser's configuration: the YAML file ([`file`]) turned into the model the runtime uses.
//!
//! `hawser` runs with no file at all: every value has an embedded default, listed in
//! `conf/hawser.yaml`. Errors name the file, line, column and key, and carry a snippet.

pub mod docker;
pub mod file;
pub mod tls;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pingora::server::configuration::ServerConf;

use crate::catalog::routes::{HostPattern, RouteKey};
pub use docker::{DockerConfig, DockerMode, EngineConfig, EngineTls};
pub use file::{AccessLogFormat, AddressMode, CheckKind};
pub use tls::{AcmeConfig, CertPair, DefaultCertificate, Scheme, SiteTls, TlsConfig, UpstreamTls};

/// Everything hawser's runtime reads from configuration (pingora's own part is kept aside in
/// [`Loaded::server`] because pingora takes ownership of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// Also accept cleartext HTTP/2 (prior knowledge) on the `listen` addresses.
    pub h2c: bool,
    pub docker: DockerConfig,
    /// Services declared in YAML, by name.
    pub services: BTreeMap<String, ServiceConfig>,
    /// Health-check defaults for every service.
    pub health: HealthPolicy,
    /// Proxy defaults for every service.
    pub proxy: ProxyPolicy,
    pub admin: AdminConfig,
    pub access_log: AccessLogFormat,
    /// Timeouts and limits for client connections, and whose forwarding headers to believe.
    pub clients: ClientPolicy,
    /// TLS listeners and certificates; empty `listen` when there is no `tls:` section.
    pub tls: TlsConfig,
}

/// What hawser allows a client. Defaults are nginx's where nginx has one (see README
/// "Security").
#[derive(Debug, Clone, PartialEq)]
pub struct ClientPolicy {
    /// The whole request head must arrive within this time of its first byte (of the
    /// connection, for a new one). nginx: `client_header_timeout 60s`.
    pub header_timeout: Duration,
    /// An idle keep-alive connection (HTTP/1.1 between requests, HTTP/2 with no stream) is
    /// closed after this. nginx: `keepalive_timeout 75s`.
    pub keepalive_timeout: Duration,
    /// Longest pause between two reads of a request body. nginx: `client_body_timeout 60s`.
    pub body_timeout: Duration,
    /// Longest time a write to the client may wait for the client to read (a client that
    /// stops reading holds its answer and the backend connection). nginx: `send_timeout 60s`.
    pub send_timeout: Duration,
    /// Request line plus header fields, in bytes; more → 431.
    pub max_header_size: usize,
    /// Header fields per request; more → 431.
    pub max_headers: usize,
    /// Request target length in bytes; longer → 414.
    pub max_uri_length: usize,
    /// Concurrent client connections; `None` derives it from the descriptor limit at start.
    pub max_connections: Option<usize>,
    /// Peers whose `Forwarded`, `X-Forwarded-*` and `X-Real-IP` are believed (appended to);
    /// from anyone else those headers are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// After the signal to stop (or hand over), how long a WebSocket or other tunnel may go on
    /// before hawser closes it (see [`crate::edge::tunnel`]). Below
    /// `pingora.grace_period_seconds`; by default all of it but the last second.
    pub tunnel_shutdown_timeout: Duration,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            header_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_header_size: 64 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            max_connections: None,
            trusted_proxies: Vec::new(),
            tunnel_shutdown_timeout: crate::edge::tunnel::default_timeout(DEFAULT_GRACE_PERIOD_SECONDS),
        }
    }
}

/// The admin API: metrics, verdicts, drain. Only loopback without a token.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// When set, every endpoint but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9900";


#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// Host × path prefix pairs this service answers for.
    pub routes: Vec<RouteKey>,
    pub port: Option<u16>,
    pub selector: Option<Selector>,
    pub health: HealthPolicy,
    pub proxy: ProxyPolicy,
    pub site: SiteTls,
    pub upstream: UpstreamTls,
}

/// Containers matching every given criterion join the service, even without routing labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    /// `key` (present) or `key=value`.
    pub label: Option<(String, Option<String>)>,
    /// `name` matches any tag of that image; `name:tag` only that tag.
    pub image: Option<String>,
    /// The `com.docker.compose.service` label.
    pub compose_service: Option<String>,
}

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>, image: &str) -> bool {
        let label_ok = self.label.as_ref().is_none_or(|(k, v)| match (labels.get(k), v) {
            (Some(_), None) => true,
            (Some(actual), Some(wanted)) => actual == wanted,
            (None, _) => false,
        });
        let image_ok = self.image.as_ref().is_none_or(|wanted| {
            image == wanted
                || (!wanted.contains(':') && image.strip_prefix(wanted.as_str()).is_some_and(|rest| rest.starts_with(':')))
        });
        let compose_ok = self
            .compose_service
            .as_ref()
            .is_none_or(|wanted| labels.get(crate::catalog::COMPOSE_SERVICE_LABEL) == Some(wanted));
        label_ok && image_ok && compose_ok
    }
}

/// How backends are probed. `kind: None` means "HTTP when a path is known, else TCP".
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPolicy {
    pub kind: Option<CheckKind>,
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy backend back.
    pub rise: u32,
    /// Consecutive failures that take a ready backend out.
    pub fall: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            kind: None,
            path: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyPolicy {
    /// Short by default: a dead container's IP times out instead of refusing.
    pub connect_timeout: Duration,
    /// Longest wait for the upstream between two reads. pingora has none by default, so a
    /// backend whose IP vanished (network disconnect) would hold a request forever.
    pub read_timeout: Duration,
    /// At most this many retries per request, each on another backend.
    pub retries: u32,
    pub retry_budget: RetryBudget,
    pub ejection: EjectionPolicy,
    /// Idle timeout of long-lived exchanges (WebSocket and other upgrades, server-sent
    /// events), in place of `read_timeout`, in both directions.
    pub stream_idle_timeout: Duration,
    /// Largest request body accepted; larger → 413. `None`: no limit.
    pub max_body_size: Option<u64>,
    /// Scheme `h2c`/`h2`: concurrent requests (streams) on one connection to a backend before
    /// hawser opens another. 100: the least RFC 9113 §6.5.2 recommends a server allows.
    pub h2_streams_per_connection: u32,
    /// Scheme `h2c`/`h2`: an HTTP/2 PING this often on each connection to a backend, which
    /// is closed when the backend does not answer. `None` (the default, like nginx's
    /// `grpc_pass`): no pings; `read_timeout` and health checks find a dead backend.
    pub h2_ping_interval: Option<Duration>,
}

impl Default for ProxyPolicy {
    fn default() -> Self {
        ProxyPolicy {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(60),
            retries: 2,
            retry_budget: RetryBudget::default(),
            ejection: EjectionPolicy::default(),
            stream_idle_timeout: Duration::from_secs(3600),
            max_body_size: None,
            h2_streams_per_connection: 100,
            h2_ping_interval: None,
        }
    }
}

/// Retries per service are limited to `ratio` × requests, plus `min_per_second` so that a
/// quiet service can still retry: a failing fleet is not hammered by its own retries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { ratio: 0.2, min_per_second: 10 }
    }
}

/// Passive ejection: `consecutive_failures` connect failures or gateway errors in a row take a
/// backend out for `duration`, after which an active probe must pass. 0 turns it off.
#[derive(Debug, Clone, PartialEq)]
pub struct EjectionPolicy {
    pub consecutive_failures: u32,
    pub duration: Duration,
}

impl Default for EjectionPolicy {
    fn default() -> Self {
        EjectionPolicy { consecutive_failures: 5, duration: Duration::from_secs(10) }
    }
}

impl Default for Config {
    fn default() -> Self {
        Loaded::from_file(file::FileConfig::default(), "<defaults>")
            .expect("embedded defaults are valid")
            .config
    }
}

/// Seconds between SIGTERM and shutting down (in-flight requests may finish meanwhile).
pub const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 5;
/// Seconds then allowed for pingora's runtimes to stop.
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 3;

/// A configuration as loaded: hawser's part and pingora's.
pub struct Loaded {
    pub config: Config,
    pub server: ServerConf,
}

/// A configuration error, located when the YAML parser or a value check knows where.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path, e.g. `services.api.port`; empty when the error is about the file.
    pub key: String,
    pub message: String,
    /// The offending lines with a caret, when known.
    pub snippet: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(snippet) = &self.snippet {
            write!(f, "\n{snippet}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Loaded {
    /// Reads and validates a YAML file.
    pub fn from_path(path: &Path) -> Result<Loaded, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: name.clone(),
            line: None,
            column: None,
            key: String::new(),
            message: format!("cannot read the configuration file: {e}"),
            snippet: None,
        })?;
        Loaded::from_yaml(&text, &name)
    }

    /// Parses YAML text; `name` is what errors call the file.
    pub fn from_yaml(text: &str, name: &str) -> Result<Loaded, ConfigError> {
        let only_comments = text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        });
        let file: file::FileConfig = if only_comments {
            file::FileConfig::default()
        } else {
            let mut key = String::new();
            serde_saphyr::with_deserializer_from_str(text, |de| {
                serde_path_to_error::deserialize(de).map_err(|e| {
                    // `Spanned` values add a `value` step that is not in the file.
                    key = e.path().to_string().replace(".value.", ".").replace(".value[", "[");
                    if let Some(k) = key.strip_suffix(".value") {
                        key = k.to_string();
                    }
                    e.into_inner()
                })
            })
            .map_err(|e| yaml_error(&e, name, key))?
        };
        let threads_given = !only_comments && sets_pingora_threads(text);
        let mut loaded = Loaded::from_file(file, name)?;
        if !threads_given {
            // pingora's default is one worker thread, whatever the machine. Like nginx's
            // `worker_processes auto`, hawser uses the CPUs it may run on (cgroup quota and
            // affinity included).
            loaded.server.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        Ok(loaded)
    }

    fn from_file(f: file::FileConfig, name: &str) -> Result<Loaded, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: name.to_string(),
            line: None,
            column: None,
            key: key.to_string(),
            message,
            snippet: None,
        };

        let listen: Vec<SocketAddr> = match f.listen {
            None => vec![SocketAddr::from(([0, 0, 0, 0], 8080))],
            Some(l) if l.is_empty() => return Err(err("listen", "must name at least one \"ip:port\"".into())),
            Some(l) => l.into_iter().map(|a| a.0).collect(),
        };


        let health = merge_health(&HealthPolicy::default(), &f.health_check);
        let proxy = merge_proxy(&ProxyPolicy::default(), &f.proxy);

        let mut services = BTreeMap::new();
        // Which YAML service owns each route, and where it was written, to report conflicts.
        let mut owners: BTreeMap<RouteKey, (String, Option<serde_saphyr::Location>)> = BTreeMap::new();
        for (svc_name, s) in f.services {
            let key = format!("services.{svc_name}");
            crate::catalog::validate_service_name(&svc_name).map_err(|m| err(&key, m))?;
            if s.hosts.is_empty() && s.path_prefix.is_none() {
                return Err(err(&key, "needs `hosts` or `path_prefix`: a service without either can never be reached".into()));
            }
            let prefix = s.path_prefix.map_or_else(|| "/".to_string(), |p| p.0);
            let hosts: Vec<(HostPattern, Option<serde_saphyr::Location>)> = if s.hosts.is_empty() {
                vec![(HostPattern::Any, None)]
            } else {
                s.hosts.iter().map(|h| (h.value.0.clone(), Some(h.referenced))).collect()
            };
            let mut routes = Vec::new();
            for (host, location) in hosts {
                let route = RouteKey { host, path_prefix: prefix.clone() };
                if let Some((other, _)) = owners.get(&route) {
                    let mut e = err(&format!("{key}.hosts"), format!("{route} is already routed to service {other:?}"));
                    if let Some(loc) = location {
                        e.line = Some(loc.line() as usize);
                        e.column = Some(loc.column() as usize);
                    }
                    return Err(e);
                }
                owners.insert(route.clone(), (svc_name.clone(), location));
                routes.push(route);
            }
            let selector = match s.selector {
                None => None,
                Some(sel) => {
                    if sel.label.is_none() && sel.image.is_none() && sel.compose_service.is_none() {
                        return Err(err(&format!("{key}.selector"), "needs at least one of `label`, `image`, `compose_service`".into()));
                    }
                    let label = sel.label.map(|l| match l.split_once('=') {
                        Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                        None => (l.trim().to_string(), None),
                    });
                    Some(Selector { label, image: sel.image, compose_service: sel.compose_service })
                }
            };
            let svc = ServiceConfig {
                name: svc_name.clone(),
                routes,
                port: s.port.map(|p| p.0),
                selector,
                health: s.health_check.as_ref().map_or_else(|| health.clone(), |h| merge_health(&health, h)),
                proxy: merge_proxy(
                    &proxy,
                    &file::ProxySection {
                        connect_timeout: s.connect_timeout,
                        read_timeout: s.read_timeout,
                        retries: s.retries,
                        retry_budget: s.retry_budget,
                        passive_ejection: s.passive_ejection,
                        stream_idle_timeout: s.stream_idle_timeout,
                        max_body_size: s.max_body_size,
                        h2_streams_per_connection: s.h2_streams_per_connection,
                        h2_ping_interval: s.h2_ping_interval,
                    },
                ),
                site: SiteTls {
                    tls: s.tls.unwrap_or(false),
                    redirect: s.redirect.unwrap_or(false),
                    hsts: s.hsts.map(|h| h.0),
                },
                upstream: upstream_tls(&key, s.scheme, s.server_name, s.ca, s.tls_verify, &err)?,
            };
            if svc.health.kind == Some(CheckKind::Grpc) && !svc.upstream.scheme.is_h2() {
                let at = if s.health_check.as_ref().is_some_and(|h| h.kind.is_some()) { "health_check.type" } else { "scheme" };
                let message = format!(
                    "health check type grpc needs scheme h2c or h2 (gRPC runs over HTTP/2), and the scheme is {}",
                    svc.upstream.scheme.as_str()
                );
                return Err(err(&format!("{key}.{at}"), message));
            }
            services.insert(svc_name, svc);
        }

        let admin = AdminConfig {
            listen: f.admin.listen.map_or_else(|| DEFAULT_ADMIN_LISTEN.parse().expect("valid default"), |l| l.0),
            token: f.admin.token.filter(|t| !t.is_empty()),
        };
        if !admin.listen.ip().is_loopback() && admin.token.is_none() {
            return Err(err(
                "admin.listen",
                format!(
                    "{} is reachable from other hosts: set admin.token (every admin request must then carry `Authorization: Bearer <token>`), or listen on 127.0.0.1",
                    admin.listen
                ),
            ));
        }

        let mut server = f.pingora.unwrap_or_default();
        // pingora waits 300 s after SIGTERM (or an upgrade handover) before it exits. hawser's
        // default fits `docker stop`'s 10 s, as Traefik's does; set values are kept.
        server.grace_period_seconds.get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
        server.graceful_shutdown_timeout_seconds.get_or_insert(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS);

        let located = |key: &str, message: String, at: Option<&serde_saphyr::Location>| {
            let mut e = err(key, message);
            if let Some(loc) = at {
                e.line = Some(loc.line() as usize);
                e.column = Some(loc.column() as usize);
            }
            e
        };
        let tls = tls::tls_config(f.tls, &located)?;
        let docker = docker::docker_config(f.docker, &located)?;
        // One socket cannot speak both: a TLS address that a cleartext one (or the admin API)
        // also covers would fail to bind at start, after the configuration was called valid.
        let overlaps = |a: &SocketAddr, b: &SocketAddr| {
            a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
        };
        for t in &tls.listen {
            if let Some(other) = listen.iter().chain([&admin.listen]).find(|l| overlaps(t, l)) {
                return Err(err("tls.listen", format!("{t} overlaps {other}, which serves cleartext (listen or admin.listen)")));
            }
        }
        if tls.listen.is_empty()
            && let Some(svc) = services.values().find(|s| s.site.tls || s.site.redirect)
        {
            return Err(err(
                &format!("services.{}.tls", svc.name),
                "serving over TLS needs a `tls:` section (tls.listen, certificates or acme)".into(),
            ));
        }
        let grace = server.grace_period_seconds.unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
        let clients = client_policy(&f.clients, grace);
        if f.clients.tunnel_shutdown_timeout.is_some() && clients.tunnel_shutdown_timeout >= Duration::from_secs(grace) {
            return Err(err(
                "clients.tunnel_shutdown_timeout",
                format!(
                    "{:?} is not below pingora.grace_period_seconds ({grace} s): tunnels must be closed before pingora drops the connections",
                    clients.tunnel_shutdown_timeout
                ),
            ));
        }
        let access_log = f.access_log.unwrap_or(AccessLogFormat::Off);
        let h2c = f.h2c.unwrap_or(true);
        Ok(Loaded { config: Config { listen, h2c, docker, services, health, proxy, admin, access_log, clients, tls }, server })
    }
}

/// A service's backend settings (`scheme`, `server_name`, `ca`, `tls_verify`), checked: the
/// CA file is read now, so that `-t` finds what a start would; settings that mean nothing
/// together are refused (see [`UpstreamTls::inconsistency`]).
fn upstream_tls(
    key: &str,
    scheme: Option<file::Scheme>,
    server_name: Option<file::ServerName>,
    ca: Option<serde_saphyr::Spanned<String>>,
    verify: Option<bool>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<UpstreamTls, ConfigError> {
    let at_ca = |message: String| {
        let mut e = err(&format!("{key}.ca"), message);
        if let Some(ca) = &ca {
            e.line = Some(ca.referenced.line() as usize);
            e.column = Some(ca.referenced.column() as usize);
        }
        e
    };
    let bundle = match &ca {
        Some(path) if path.value.trim().is_empty() => return Err(at_ca("needs the path of a PEM file".into())),
        Some(path) => Some(crate::upstream::CaBundle::load(std::path::Path::new(&path.value)).map_err(at_ca)?),
        None => None,
    };
    let upstream = UpstreamTls {
        scheme: scheme.map(|v| v.0).unwrap_or_default(),
        server_name: server_name.map(|n| n.0),
        ca: bundle,
        verify: verify.unwrap_or(true),
    };
    match upstream.inconsistency() {
        None => Ok(upstream),
        Some((name, tls::Inconsistency::NeedsTls)) => {
            let message = format!("applies to TLS backends only, and the scheme is {}: set scheme: https", upstream.scheme.as_str());
            Err(if name == "ca" { at_ca(message) } else { err(&format!("{key}.{name}"), message) })
        }
        Some((_, tls::Inconsistency::UnusedCa)) => Err(at_ca("is never used with tls_verify: false: drop one of them".into())),
    }
}

/// Whether the (already validated) YAML text sets `pingora.threads`. pingora's ServerConf
/// fills in 1 for a missing key, so the parsed value cannot tell.
fn sets_pingora_threads(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Keys {
        pingora: Option<BTreeMap<String, serde::de::IgnoredAny>>,
    }
    serde_saphyr::from_str::<Keys>(text)
        .ok()
        .and_then(|k| k.pingora)
        .is_some_and(|p| p.contains_key("threads"))
}

fn client_policy(s: &file::ClientsSection, grace_period_seconds: u64) -> ClientPolicy {
    let d = ClientPolicy::default();
    let bytes = |v: &Option<file::Size>, default: usize| v.map_or(default, |n| usize::try_from(n.0).unwrap_or(usize::MAX));
    ClientPolicy {
        header_timeout: s.header_timeout.as_ref().map_or(d.header_timeout, |t| t.0),
        keepalive_timeout: s.keepalive_timeout.as_ref().map_or(d.keepalive_timeout, |t| t.0),
        body_timeout: s.body_timeout.as_ref().map_or(d.body_timeout, |t| t.0),
        send_timeout: s.send_timeout.as_ref().map_or(d.send_timeout, |t| t.0),
        max_header_size: bytes(&s.max_header_size, d.max_header_size),
        max_headers: s.max_headers.map_or(d.max_headers, |n| n.0 as usize),
        max_uri_length: bytes(&s.max_uri_length, d.max_uri_length),
        max_connections: match s.max_connections {
            None | Some(file::MaxConnections::Auto) => None,
            Some(file::MaxConnections::Fixed(n)) => Some(n as usize),
        },
        trusted_proxies: s.trusted_proxies.iter().flatten().map(|c| c.0).collect(),
        tunnel_shutdown_timeout: s
            .tunnel_shutdown_timeout
            .as_ref()
            .map_or_else(|| crate::edge::tunnel::default_timeout(grace_period_seconds), |d| d.0),
    }
}

fn merge_health(base: &HealthPolicy, s: &file::HealthCheckSection) -> HealthPolicy {
    HealthPolicy {
        kind: s.kind.or(base.kind),
        path: s.path.as_ref().map(|p| p.0.clone()).or_else(|| base.path.clone()),
        interval: s.interval.as_ref().map_or(base.interval, |d| d.0),
        timeout: s.timeout.as_ref().map_or(base.timeout, |d| d.0),
        rise: s.rise.map_or(base.rise, |t| t.0),
        fall: s.fall.map_or(base.fall, |t| t.0),
    }
}

fn merge_proxy(base: &ProxyPolicy, s: &file::ProxySection) -> ProxyPolicy {
    let budget = s.retry_budget.clone().unwrap_or_default();
    let ejection = s.passive_ejection.clone().unwrap_or_default();
    ProxyPolicy {
        connect_timeout: s.connect_timeout.as_ref().map_or(base.connect_timeout, |d| d.0),
        read_timeout: s.read_timeout.as_ref().map_or(base.read_timeout, |d| d.0),
        retries: s.retries.unwrap_or(base.retries),
        retry_budget: RetryBudget {
            ratio: budget.ratio.map_or(base.retry_budget.ratio, |r| r.0),
            min_per_second: budget.min_per_second.unwrap_or(base.retry_budget.min_per_second),
        },
        ejection: EjectionPolicy {
            consecutive_failures: ejection.consecutive_failures.unwrap_or(base.ejection.consecutive_failures),
            duration: ejection.duration.map_or(base.ejection.duration, |d| d.0),
        },
        stream_idle_timeout: s.stream_idle_timeout.as_ref().map_or(base.stream_idle_timeout, |d| d.0),
        max_body_size: s.max_body_size.map(|n| n.0).or(base.max_body_size),
        h2_streams_per_connection: s.h2_streams_per_connection.as_ref().map_or(base.h2_streams_per_connection, |n| n.0),
        // pingora waits 5 s for each PING's answer; more than one PING a second buys nothing.
        h2_ping_interval: s.h2_ping_interval.as_ref().map(|d| d.0.max(Duration::from_secs(1))).or(base.h2_ping_interval),
    }
}

fn yaml_error(e: &serde_saphyr::Error, name: &str, key: String) -> ConfigError {
    let location = e.location();
    let mut message = e.without_snippet().to_string();
    // The parser appends "at line L, column C"; the location is already in front of the message.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let rendered = e.render();
    let snippet = rendered
        .split_once('\n')
        .map(|(_, rest)| rest.replace("<input>", name))
        .filter(|s| !s.trim().is_empty());
    ConfigError {
        file: name.to_string(),
        line: location.map(|l| l.line() as usize),
        column: location.map(|l| l.column() as usize),
        key: key.trim_end_matches(".?").trim_end_matches('?').to_string(),
        message,
        snippet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        Loaded::from_yaml(yaml, "test.yaml").map(|l| l.config)
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = load("# nothing here\n").unwrap();
        assert_eq!(c.listen, vec!["0.0.0.0:8080".parse().unwrap()]);
        assert_eq!(c.docker.label_prefix, "hawser");
        assert!(!c.docker.exposed_by_default);
        assert_eq!(c.docker.address, None);
        assert_eq!(c, Config::default());
    }

    #[test]
    fn full_file() {
        let c = load(
            r#"
listen: ["127.0.0.1:9000"]
docker: { endpoint: "unix:///tmp/d.sock", label_prefix: edge, network: web, exposed_by_default: true, address: published }
health_check: { type: http, path: /healthz, interval: 500ms, rise: 1 }
proxy: { connect_timeout: 300ms, read_timeout: 30s, retries: 1, retry_budget: {ratio: 0.5} }
services:
  api:
    hosts: [api.example.com, "*.api.example.com"]
    path_prefix: /v1
    port: 8080
    selector: { label: "app=api", image: "api" }
    health_check: { path: /ready }
    retries: 0
    passive_ejection: { consecutive_failures: 2 }
pingora:
  threads: 3
"#,
        )
        .unwrap();
        assert_eq!(c.docker.label_prefix, "edge");
        assert_eq!(c.docker.address, Some(AddressMode::Published));
        let api = &c.services["api"];
        assert_eq!(api.routes.len(), 2);
        assert_eq!(api.routes[0].path_prefix, "/v1");
        assert_eq!(api.port, Some(8080));
        assert_eq!(api.health.path.as_deref(), Some("/ready"));
        assert_eq!(api.health.interval, Duration::from_millis(500));
        assert_eq!(api.proxy.retries, 0);
        assert_eq!(api.proxy.connect_timeout, Duration::from_millis(300));
        assert_eq!(api.proxy.read_timeout, Duration::from_secs(30));
        // Nested policies merge key by key over the level above.
        assert_eq!(api.proxy.retry_budget, RetryBudget { ratio: 0.5, min_per_second: 10 });
        assert_eq!(api.proxy.ejection, EjectionPolicy { consecutive_failures: 2, duration: Duration::from_secs(10) });
        assert_eq!(c.proxy.ejection, EjectionPolicy::default());
        let sel = api.selector.as_ref().unwrap();
        assert_eq!(sel.label, Some(("app".into(), Some("api".into()))));
    }

    #[test]
    fn admin_needs_a_token_off_loopback() {
        let c = load("").unwrap();
        assert_eq!(c.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(c.admin.token, None);
        let e = load("admin: {listen: \"0.0.0.0:9900\"}").unwrap_err();
        assert_eq!(e.key, "admin.listen");
        assert!(e.message.contains("set admin.token"), "{e}");
        let c = load("admin: {listen: \"0.0.0.0:9900\", token: s3cret}").unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
        assert!(load("admin: {listen: \"[::1]:9900\"}").is_ok());
    }

    #[test]
    fn access_log_formats() {
        assert_eq!(load("").unwrap().access_log, AccessLogFormat::Off);
        assert_eq!(load("access_log: off").unwrap().access_log, AccessLogFormat::Off);
        assert!(load("").unwrap().h2c);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Loaded::from_yaml("", "t.yaml").unwrap().server.threads, cpus);
        assert_eq!(Loaded::from_yaml("pingora: {grace_period_seconds: 1}", "t.yaml").unwrap().server.threads, cpus);
        assert_eq!(Loaded::from_yaml("pingora: {threads: 1}", "t.yaml").unwrap().server.threads, 1);
        assert!(!load("h2c: false").unwrap().h2c);
        assert!(load("h2c: maybe").is_err());
        assert_eq!(load("access_log: json").unwrap().access_log, AccessLogFormat::Json);
        assert_eq!(load("access_log: text").unwrap().access_log, AccessLogFormat::Text);
        let e = load("access_log: xml").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("access_log", Some(1)), "{e}");
    }

    #[test]
    fn client_limits() {
        let c = load("").unwrap();
        assert_eq!(c.clients, ClientPolicy::default());
        assert_eq!(c.proxy.stream_idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.proxy.max_body_size, None);
        let c = load(
            "clients:\n  header_timeout: 2s\n  max_header_size: 16KiB\n  max_headers: 50\n  max_connections: 100\n  trusted_proxies: [10.0.0.0/8, \"::1\"]\nproxy: {max_body_size: 1m}\nservices:\n  a: {hosts: [a.com], stream_idle_timeout: 2h, max_body_size: 10}\n",
        )
        .unwrap();
        assert_eq!(c.clients.header_timeout, Duration::from_secs(2));
        assert_eq!(c.clients.max_header_size, 16 * 1024);
        assert_eq!(c.clients.max_headers, 50);
        assert_eq!(c.clients.max_connections, Some(100));
        assert_eq!(c.clients.trusted_proxies.len(), 2);
        assert_eq!(c.proxy.max_body_size, Some(1 << 20));
        assert_eq!(c.services["a"].proxy.max_body_size, Some(10));
        assert_eq!(c.services["a"].proxy.stream_idle_timeout, Duration::from_secs(7200));
        let e = load("clients:\n  trusted_proxies: [\"10.0.0.0/40\"]\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "clients.trusted_proxies[0]"), "{e}");
        let e = load("clients:\n  max_connections: lots\n").unwrap_err();
        assert_eq!(e.key, "clients.max_connections", "{e}");
    }

    #[test]
    fn pingora_section_reaches_pingora() {
        let l = Loaded::from_yaml("pingora:\n  threads: 3\n  grace_period_seconds: 1\n", "t.yaml").unwrap();
        assert_eq!(l.server.threads, 3);
        assert_eq!(l.server.grace_period_seconds, Some(1));
        assert_eq!(l.server.graceful_shutdown_timeout_seconds, Some(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS));
        let l = Loaded::from_yaml("", "t.yaml").unwrap();
        assert_eq!(l.server.grace_period_seconds, Some(DEFAULT_GRACE_PERIOD_SECONDS));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = load("services:\n  api:\n    hosts: [a.com]\n    hots: [b.com]\n").unwrap_err();
        assert_eq!((e.line, e.column), (Some(4), Some(5)));
        assert_eq!(e.key, "services.api.hots");
        let shown = e.to_string();
        assert!(shown.starts_with("test.yaml:4:5: services.api.hots: unknown field `hots`"), "{shown}");
        assert!(shown.contains("test.yaml:4:5"), "{shown}");
    }

    #[test]
    fn bad_values_are_located() {
        let e = load("listen: [\"nonsense\"]\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.key.starts_with("listen"), "{e}");
        assert!(e.message.contains("invalid listen address"), "{e}");

        let e = load("services:\n  api:\n    hosts: [a.com]\n    port: abc\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(4), "services.api.port"), "{e}");

        let e = load("health_check:\n  interval: 5\n").unwrap_err();
        assert_eq!(e.key, "health_check.interval");

        let e = load("proxy:\n  retry_budget: {ratio: 20}\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "proxy.retry_budget.ratio"), "{e}");

        let e = load("docker:\n  address: somewhere\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (Some(2), "docker.address"), "{e}");

        let e = load("listen: [\n").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn conflicting_yaml_routes_are_refused_with_the_line() {
        let e = load("services:\n  a:\n    hosts: [x.com]\n  b:\n    hosts: [y.com, x.com]\n").unwrap_err();
        assert_eq!(e.key, "services.b.hosts");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.message.contains("already routed to service \"a\""), "{e}");
    }

    #[test]
    fn backend_tls_settings_are_read_and_checked_at_load() {
        let test_ca = crate::upstream::TestCa::new("config-upstream");
        let ca = test_ca.path_text();
        let svc = |keys: &str| format!("services:\n  api:\n    hosts: [api.test]\n{keys}");
        let c = load(&svc(&format!("    scheme: https\n    server_name: API.internal\n    ca: {ca}\n"))).unwrap();
        let up = &c.services["api"].upstream;
        assert_eq!((up.scheme, up.server_name.as_deref(), up.verify), (Scheme::Https, Some("api.internal"), true));
        assert_eq!(up.ca.as_ref().map(|c| c.path.display().to_string()), Some(ca.clone()));
        assert!(!load(&svc("    scheme: https\n    tls_verify: false\n")).unwrap().services["api"].upstream.verify);
        assert!(load(&svc("    scheme: https\n")).unwrap().services["api"].upstream.verify, "on by default");

        // A file that cannot be used: file, line and key.
        let e = load(&svc("    scheme: https\n    ca: /nonexistent/ca.pem\n")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("services.api.ca", Some(5)), "{e}");
        assert!(e.to_string().starts_with("test.yaml:5:"), "{e}");
        assert!(e.message.contains("cannot read /nonexistent/ca.pem"), "{e}");
        let e = load(&svc("    scheme: https\n    ca: \"\"\n")).unwrap_err();
        assert_eq!(e.key, "services.api.ca", "{e}");
        // TLS-only settings on a cleartext service, and a CA that verification off ignores.
        let e = load(&svc(&format!("    ca: {ca}\n"))).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("services.api.ca", Some(4)), "{e}");
        assert!(e.message.ends_with("set scheme: https"), "{e}");
        assert_eq!(load(&svc("    server_name: a.test\n")).unwrap_err().key, "services.api.server_name");
        assert_eq!(load(&svc("    tls_verify: false\n")).unwrap_err().key, "services.api.tls_verify");
        let e = load(&svc(&format!("    scheme: https\n    tls_verify: false\n    ca: {ca}\n"))).unwrap_err();
        assert!(e.message.contains("never used with tls_verify: false"), "{e}");
        let e = load(&svc("    scheme: https\n    server_name: \"\"\n")).unwrap_err();
        assert_eq!(e.key, "services.api.server_name", "{e}");
        assert!(e.message.contains("verification off"), "{e}");
    }

    #[test]
    fn services_need_a_route_and_selectors_a_criterion() {
        assert!(load("services:\n  a:\n    port: 80\n").unwrap_err().message.contains("needs `hosts` or `path_prefix`"));
        assert_eq!(load("services:\n  a:\n    hosts: [a.com]\n    selector: {}\n").unwrap_err().key, "services.a.selector");
        // gRPC health checks need HTTP/2 toward the backend.
        let e = load("services:\n  a:\n    hosts: [a.com]\n    health_check: {type: grpc}\n").unwrap_err();
        assert_eq!(e.key, "services.a.health_check.type");
        assert!(e.message.contains("needs scheme h2c or h2"), "{e:?}");
        let e = load("health_check: {type: grpc}\nservices:\n  a:\n    hosts: [a.com]\n    scheme: https\n").unwrap_err();
        assert_eq!(e.key, "services.a.scheme");
        let c = load("services:\n  a:\n    hosts: [a.com]\n    scheme: h2c\n    health_check: {type: grpc}\n    h2_streams_per_connection: 10\n    h2_ping_interval: 30s\n").unwrap();
        assert_eq!(c.services["a"].proxy.h2_streams_per_connection, 10);
        assert_eq!(c.services["a"].proxy.h2_ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(c.proxy.h2_streams_per_connection, 100);
        assert!(load("proxy: {h2_streams_per_connection: 0}").is_err());
        // Tunnels are closed before pingora's grace period ends.
        assert_eq!(load("").unwrap().clients.tunnel_shutdown_timeout, Duration::from_secs(4));
        let c = Loaded::from_yaml("pingora: {grace_period_seconds: 30}", "t.yaml").unwrap().config;
        assert_eq!(c.clients.tunnel_shutdown_timeout, Duration::from_secs(29));
        assert_eq!(load("clients: {tunnel_shutdown_timeout: 1500ms}").unwrap().clients.tunnel_shutdown_timeout, Duration::from_millis(1500));
        // pingora.grace_period_seconds: 0 alone still loads: tunnels are closed at once.
        let c = Loaded::from_yaml("pingora: {grace_period_seconds: 0}", "t.yaml").unwrap().config;
        assert_eq!(c.clients.tunnel_shutdown_timeout, Duration::ZERO);
        let e = load("clients: {tunnel_shutdown_timeout: 5s}").unwrap_err();
        assert_eq!(e.key, "clients.tunnel_shutdown_timeout");
        assert!(e.message.contains("grace_period_seconds"), "{e:?}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A key of the file, as it may be nested: every value hawser reads from YAML.
        const KEYS: &[&str] = &[
            "listen", "h2c", "access_log", "docker.endpoint", "docker.label_prefix", "docker.address",
            "docker.exposed_by_default", "health_check.interval", "health_check.rise", "health_check.type",
            "proxy.read_timeout", "proxy.retries", "proxy.retry_budget.ratio", "proxy.max_body_size",
            "proxy.stream_idle_timeout", "proxy.h2_streams_per_connection", "proxy.h2_ping_interval", "admin.listen", "clients.header_timeout", "clients.send_timeout", "clients.max_header_size",
            "clients.max_headers", "clients.max_connections", "clients.trusted_proxies", "clients.tunnel_shutdown_timeout", "services.a.hosts",
            "services.a.path_prefix", "services.a.port", "services.a.max_body_size", "services.a.scheme",
            "services.a.server_name", "services.a.ca", "services.a.tls_verify",
        ];

        fn yaml_for(key: &str, value: &str) -> String {
            let parts: Vec<&str> = key.split('.').collect();
            let mut out = String::new();
            for (depth, part) in parts.iter().enumerate() {
                out.push_str(&"  ".repeat(depth));
                out.push_str(part);
                out.push(':');
                out.push(if depth + 1 == parts.len() { ' ' } else { '\n' });
            }
            out.push_str(value);
            out.push('\n');
            out
        }

        proptest! {
            /// Any value under any key: a configuration or an error, never a panic; and an
            /// error about a value names the key it was under (or a line to look at).
            #[test]
            fn every_value_error_names_its_key(
                key in proptest::sample::select(KEYS),
                value in prop_oneof![
                    "[ -~]{0,24}",
                    "\"[ -~]{0,16}\"",
                    "\\[[ -~]{0,16}\\]",
                    any::<i64>().prop_map(|n| n.to_string()),
                    "[0-9]{1,6}(ms|s|m|h|k|KiB|m|GiB|x)?",
                ],
            ) {
                let text = yaml_for(key, &value);
                if let Err(e) = Loaded::from_yaml(&text, "prop.yaml") {
                    prop_assert_eq!(&e.file, "prop.yaml");
                    let top = key.split('.').next().unwrap();
                    prop_assert!(e.key.starts_with(top) || e.line.is_some(), "{text:?}: {e}");
                }
            }

            #[test]
            fn arbitrary_text_never_panics(text in "[ -~\n]{0,200}") {
                let _ = Loaded::from_yaml(&text, "prop.yaml");
            }
        }
    }

    #[test]
    fn selectors_match() {
        let labels: BTreeMap<String, String> =
            [("app".to_string(), "api".to_string()), (crate::catalog::COMPOSE_SERVICE_LABEL.to_string(), "web".to_string())].into();
        let sel = |label: Option<(&str, Option<&str>)>, image: Option<&str>, compose: Option<&str>| Selector {
            label: label.map(|(k, v)| (k.to_string(), v.map(str::to_string))),
            image: image.map(str::to_string),
            compose_service: compose.map(str::to_string),
        };
        assert!(sel(Some(("app", None)), None, None).matches(&labels, "x"));
        assert!(sel(Some(("app", Some("api"))), None, None).matches(&labels, "x"));
        assert!(!sel(Some(("app", Some("web"))), None, None).matches(&labels, "x"));
        assert!(sel(None, Some("nginx"), None).matches(&labels, "nginx:1.25"));
        assert!(!sel(None, Some("nginx"), None).matches(&labels, "nginxx:1"));
        assert!(!sel(None, Some("nginx:1.24"), None).matches(&labels, "nginx:1.25"));
        assert!(sel(None, None, Some("web")).matches(&labels, "x"));
        assert!(!sel(Some(("app", None)), None, Some("db")).matches(&labels, "x"));
    }
}
