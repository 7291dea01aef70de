//! The YAML file as the user writes it. Every type here denies unknown keys, and every value
//! that can be wrong is checked while it is read, so the error carries the line and key.
//! [`super::Config`] is built from this; nothing else in hawser reads these types.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_saphyr::Spanned;

use crate::catalog::routes::{HostPattern, parse_path_prefix};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<Listen>>,
    pub h2c: Option<bool>,
    #[serde(default)]
    pub docker: super::docker::DockerSection,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSection>,
    #[serde(default)]
    pub health_check: HealthCheckSection,
    #[serde(default)]
    pub proxy: ProxySection,
    #[serde(default)]
    pub admin: AdminSection,
    #[serde(default)]
    pub clients: ClientsSection,
    pub tls: Option<TlsSection>,
    pub access_log: Option<AccessLogFormat>,
    /// pingora's own `ServerConf`, embedded as-is (threads, grace_period_seconds, pid_file, …).
    pub pingora: Option<pingora::server::configuration::ServerConf>,
}


/// Defences against hostile or broken clients: timeouts, limits, trusted proxies.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsSection {
    pub header_timeout: Option<Dur>,
    pub keepalive_timeout: Option<Dur>,
    pub body_timeout: Option<Dur>,
    pub send_timeout: Option<Dur>,
    pub max_header_size: Option<Size>,
    pub max_headers: Option<Threshold>,
    pub max_uri_length: Option<Size>,
    pub max_connections: Option<MaxConnections>,
    pub trusted_proxies: Option<Vec<Cidr>>,
    pub tunnel_shutdown_timeout: Option<Dur>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub listen: Option<Listen>,
    pub token: Option<String>,
}

/// One line per request on standard output, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Off,
    Text,
    Json,
}

impl<'de> Deserialize<'de> for AccessLogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML 1.1 readers take a bare `off` for false; accept both spellings.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(false) => Ok(AccessLogFormat::Off),
            Raw::Text(t) if t == "off" => Ok(AccessLogFormat::Off),
            Raw::Text(t) if t == "text" => Ok(AccessLogFormat::Text),
            Raw::Text(t) if t == "json" => Ok(AccessLogFormat::Json),
            Raw::Bool(true) => Err(D::Error::custom("expected off, text or json")),
            Raw::Text(t) => Err(D::Error::custom(format!("{t:?}: expected off, text or json"))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressMode {
    /// The container's (or Swarm task's) IP on the chosen network and the container port.
    Container,
    /// The host IP and published port of that container port; for a Swarm task, its node's
    /// address and the port it publishes in mode host.
    Published,
    /// A Swarm service's virtual IP on the chosen network: Swarm balances over its tasks.
    Vip,
}

impl AddressMode {
    /// The label's and YAML's spelling.
    pub fn parse(v: &str) -> Result<AddressMode, String> {
        match v {
            "container" => Ok(AddressMode::Container),
            "published" => Ok(AddressMode::Published),
            "vip" => Ok(AddressMode::Vip),
            _ => Err(format!("{v:?}: expected container, published or vip")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AddressMode::Container => "container",
            AddressMode::Published => "published",
            AddressMode::Vip => "vip",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    #[serde(default)]
    pub hosts: Vec<Spanned<Host>>,
    pub path_prefix: Option<PathPrefix>,
    pub port: Option<Port>,
    pub selector: Option<SelectorSection>,
    pub health_check: Option<HealthCheckSection>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    pub retries: Option<u32>,
    pub retry_budget: Option<RetryBudgetSection>,
    pub passive_ejection: Option<EjectionSection>,
    pub stream_idle_timeout: Option<Dur>,
    pub max_body_size: Option<Size>,
    pub h2_streams_per_connection: Option<Threshold>,
    pub h2_ping_interval: Option<Dur>,
    /// Serve this service's hosts over TLS (and order certificates with `tls.acme`).
    pub tls: Option<bool>,
    /// 308 from cleartext to https.
    pub redirect: Option<bool>,
    /// The Strict-Transport-Security value sent over TLS.
    pub hsts: Option<Hsts>,
    /// How hawser speaks to the backends.
    pub scheme: Option<Scheme>,
    /// SNI and verified name toward a TLS backend.
    pub server_name: Option<ServerName>,
    /// A PEM bundle of the roots a TLS backend's certificate must chain to.
    pub ca: Option<Spanned<String>>,
    /// `false` turns certificate verification toward TLS backends off.
    pub tls_verify: Option<bool>,
}

/// The `tls:` section: listeners, certificates from files, the default certificate, ACME.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: Option<Vec<Listen>>,
    #[serde(default)]
    pub certificates: Vec<Spanned<CertPairSection>>,
    pub directory: Option<Spanned<String>>,
    pub default_certificate: Option<Spanned<DefaultCertificateSection>>,
    pub acme: Option<Spanned<AcmeSection>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPairSection {
    pub cert: String,
    pub key: String,
}

/// `self_signed`, `refuse`, or `{cert, key}`.
#[derive(Debug, Clone)]
pub enum DefaultCertificateSection {
    SelfSigned,
    Refuse,
    Pair(CertPairSection),
}

impl<'de> Deserialize<'de> for DefaultCertificateSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Word(String),
            Pair(CertPairSection),
        }
        match Raw::deserialize(d).map_err(|_| D::Error::custom("expected self_signed, refuse, or {cert: PATH, key: PATH}"))? {
            Raw::Word(w) if w == "self_signed" => Ok(DefaultCertificateSection::SelfSigned),
            Raw::Word(w) if w == "refuse" => Ok(DefaultCertificateSection::Refuse),
            Raw::Word(w) => Err(D::Error::custom(format!("{w:?}: expected self_signed, refuse, or {{cert: PATH, key: PATH}}"))),
            Raw::Pair(p) => Ok(DefaultCertificateSection::Pair(p)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeSection {
    pub directory: AcmeDirectory,
    pub email: Option<Email>,
    pub storage: String,
    pub ca_root: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectorSection {
    pub label: Option<String>,
    pub image: Option<String>,
    pub compose_service: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    #[serde(rename = "type")]
    pub kind: Option<CheckKind>,
    pub path: Option<PathPrefix>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub rise: Option<Threshold>,
    pub fall: Option<Threshold>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    Tcp,
    /// The standard `grpc.health.v1.Health/Check` call (needs scheme `h2c` or `h2`).
    Grpc,
}

impl CheckKind {
    pub fn parse(s: &str) -> Result<CheckKind, String> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Ok(CheckKind::Http),
            "tcp" => Ok(CheckKind::Tcp),
            "grpc" => Ok(CheckKind::Grpc),
            _ => Err(format!("unknown health check type {s:?}: expected http, tcp or grpc")),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    pub retries: Option<u32>,
    pub retry_budget: Option<RetryBudgetSection>,
    pub passive_ejection: Option<EjectionSection>,
    pub stream_idle_timeout: Option<Dur>,
    pub max_body_size: Option<Size>,
    pub h2_streams_per_connection: Option<Threshold>,
    pub h2_ping_interval: Option<Dur>,
}

/// Retries a service may add on top of its requests.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSection {
    pub ratio: Option<Ratio>,
    pub min_per_second: Option<u32>,
}

/// When a backend is taken out on the proxy's own evidence.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EjectionSection {
    pub consecutive_failures: Option<u32>,
    pub duration: Option<Dur>,
}

/// Parses a value with `parse` and turns its error into a located serde error.
fn parsed<'de, D: Deserializer<'de>, T>(d: D, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error> {
    let raw = String::deserialize(d)?;
    parse(&raw).map_err(D::Error::custom)
}

macro_rules! parsed_newtype {
    ($(#[$doc:meta])* $name:ident($inner:ty) = $parse:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name(pub $inner);
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parsed(d, $parse).map($name)
            }
        }
    };
}

parsed_newtype!(
    /// A Strict-Transport-Security value (`max-age=N`, optionally `includeSubDomains`, `preload`).
    Hsts(String) = crate::config::tls::parse_hsts
);

parsed_newtype!(
    /// `http`, `h2c`, `https` or `h2`.
    Scheme(crate::config::tls::Scheme) = crate::config::tls::Scheme::parse
);

parsed_newtype!(
    /// A DNS name or IP address for SNI and certificate verification toward a backend.
    ServerName(String) = crate::config::tls::parse_server_name
);

parsed_newtype!(
    /// The ACME directory URL (https://…).
    AcmeDirectory(String) = crate::config::tls::parse_acme_directory
);

parsed_newtype!(
    /// A contact e-mail address for the ACME account.
    Email(String) = crate::config::tls::parse_email
);

parsed_newtype!(
    /// An `"ip:port"` to listen on.
    Listen(SocketAddr) = |s: &str| s.parse().map_err(|_| format!("invalid listen address {s:?}: expected \"ip:port\", e.g. \"0.0.0.0:8080\""))
);
parsed_newtype!(Host(HostPattern) = HostPattern::parse);
parsed_newtype!(PathPrefix(String) = parse_path_prefix);
parsed_newtype!(
    /// `unix:///path`, `tcp://host:port` or `http://host:port`.
    Endpoint(String) = parse_endpoint
);
parsed_newtype!(LabelPrefix(String) = parse_label_prefix);
parsed_newtype!(
    /// A duration: `500ms`, `2s`, `1m`.
    Dur(Duration) = parse_duration
);

parsed_newtype!(
    /// A CIDR block (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
    Cidr(ipnet::IpNet) = parse_cidr
);

/// A size in bytes: a number, or a number with `k`/`KiB`, `m`/`MiB`, `g`/`GiB` (powers of 1024,
/// as nginx reads `8k`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(pub u64);
impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(0) => Err(D::Error::custom("a size must be above 0")),
            Raw::Number(n) => Ok(Size(n)),
            Raw::Text(t) => parse_size(&t).map(Size).map_err(D::Error::custom),
        }
    }
}

/// `auto` (derived from the file-descriptor limit) or a number of connections.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxConnections {
    Auto,
    Fixed(u32),
}
impl<'de> Deserialize<'de> for MaxConnections {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(0) => Err(D::Error::custom("must be at least 1, or auto")),
            Raw::Number(n) => Ok(MaxConnections::Fixed(n)),
            Raw::Text(t) if t == "auto" => Ok(MaxConnections::Auto),
            Raw::Text(t) => Err(D::Error::custom(format!("{t:?}: expected a number of connections or auto"))),
        }
    }
}

/// A TCP port, 1–65535, written as a number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Port(pub u16);
impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u16::deserialize(d)? {
            0 => Err(D::Error::custom("port must be 1-65535")),
            p => Ok(Port(p)),
        }
    }
}

/// A fraction from 0 to 1 (`0.2` = 20 %).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(pub f64);
impl<'de> Deserialize<'de> for Ratio {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match f64::deserialize(d)? {
            r if (0.0..=1.0).contains(&r) => Ok(Ratio(r)),
            r => Err(D::Error::custom(format!("{r} is not a ratio from 0 to 1 (0.2 means 20 %)"))),
        }
    }
}

/// A count that must be at least 1: health-check rise/fall, clients.max_headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold(pub u32);
impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            0 => Err(D::Error::custom("must be at least 1")),
            n => Ok(Threshold(n)),
        }
    }
}

pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {raw:?}: expected e.g. \"500ms\", \"2s\", \"1m\""))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration {raw:?}: unit must be ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 86_400.0 {
        return Err(format!("invalid duration {raw:?}: must be above 0 and at most a day"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn parse_size(raw: &str) -> Result<u64, String> {
    let s = raw.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || format!("invalid size {raw:?}: expected bytes, or e.g. \"64KiB\", \"8k\", \"10MiB\", \"1g\"");
    let value: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "b" | "B" => 1,
        "k" | "K" | "KiB" | "kb" | "KB" => 1 << 10,
        "m" | "M" | "MiB" | "mb" | "MB" => 1 << 20,
        "g" | "G" | "GiB" | "gb" | "GB" => 1 << 30,
        _ => return Err(bad()),
    };
    match value.checked_mul(factor) {
        Some(0) => Err(format!("invalid size {raw:?}: must be above 0")),
        Some(n) => Ok(n),
        None => Err(format!("invalid size {raw:?}: too large")),
    }
}

fn parse_cidr(raw: &str) -> Result<ipnet::IpNet, String> {
    let s = raw.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("invalid address block {raw:?}: expected e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"192.0.2.7\""))
}

fn parse_endpoint(raw: &str) -> Result<String, String> {
    if raw.starts_with("unix://") || raw.starts_with("tcp://") || raw.starts_with("http://") {
        Ok(raw.to_string())
    } else {
        Err(format!("invalid Docker endpoint {raw:?}: expected unix:///path, tcp://host:port or http://host:port"))
    }
}

fn parse_label_prefix(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && !raw.starts_with('.')
        && !raw.ends_with('.')
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(raw.to_string()) } else { Err(format!("invalid label prefix {raw:?}: use letters, digits, '.', '_' and '-'")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
    }

    #[test]
    fn sizes_and_cidrs() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("8k").unwrap(), 8192);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("0k").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999999999999g").is_err());
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(parse_cidr("2001:db8::/32").unwrap().to_string(), "2001:db8::/32");
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("example.com").is_err());
    }
}
