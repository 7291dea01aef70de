//! The routing labels of one container (`<prefix>.enable`, `<prefix>.host`, …), parsed and
//! checked. A bad value is reported with the full label name so the user can find it.

use std::collections::BTreeMap;
use std::fmt;

use super::routes::{HostPattern, parse_path_prefix};

/// Largest accepted `weight`: pingora's weighted round robin expands each backend by its
/// weight, so the bound keeps a selector small.
pub const MAX_WEIGHT: usize = 1000;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Labels {
    pub enable: Option<bool>,
    pub service: Option<String>,
    pub hosts: Option<Vec<HostPattern>>,
    pub path: Option<String>,
    pub port: Option<u16>,
    pub network: Option<String>,
    pub weight: Option<usize>,
    pub health_path: Option<String>,
    pub health_kind: Option<crate::config::CheckKind>,
    /// `tls`, `tls.redirect`, `tls.hsts`, `scheme`, `tls.server_name`, `tls.ca`,
    /// `tls.verify`: see [`super::tls`].
    pub tls: Option<bool>,
    pub redirect: Option<bool>,
    pub hsts: Option<String>,
    pub scheme: Option<crate::config::Scheme>,
    pub server_name: Option<String>,
    /// A path in hawser's own file system (absolute), read by the catalog through
    /// [`crate::upstream::CaFiles`].
    pub ca: Option<String>,
    pub verify: Option<bool>,
    /// `address`: how this container (or Swarm service) is reached.
    pub address: Option<crate::config::AddressMode>,
}

/// A label hawser could not use; the container carrying it is skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is Docker's as much as the value is: escaped too, should it hold a control
        // character (it reads as typed otherwise).
        write!(f, "label {}={:?}: {}", self.label.escape_debug(), self.value, self.problem)
    }
}

const KEYS: &[&str] = &[
    "enable",
    "service",
    "host",
    "path",
    "port",
    "network",
    "weight",
    "healthcheck.path",
    "healthcheck.type",
    "tls",
    "tls.redirect",
    "tls.hsts",
    "scheme",
    "tls.server_name",
    "tls.ca",
    "tls.verify",
    "address",
];

impl Labels {
    /// Reads the labels under `prefix`. An unknown key under the prefix is an error too: a typo
    /// such as `hawser.hots` must not silently leave a container unrouted. So is a control
    /// character in any value, before it is trimmed: a CR/LF in a path or host would otherwise
    /// reach requests, probes and logs, and anyone who may label a container could inject a
    /// header or a log line through it.
    pub fn parse(prefix: &str, labels: &BTreeMap<String, String>) -> Result<Labels, LabelError> {
        let mut out = Labels::default();
        for (label, value) in labels {
            let Some(key) = label.strip_prefix(prefix).and_then(|k| k.strip_prefix('.')) else {
                continue;
            };
            let fail = |problem: String| LabelError { label: label.clone(), value: value.clone(), problem };
            // `char::is_control`: C0 (CR, LF, TAB, NUL …), DEL and C1 (NEL is a line break too).
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(fail(format!("contains a control character (U+{:04X})", u32::from(c))));
            }
            let v = value.trim();
            match key {
                "enable" => out.enable = Some(parse_bool(v).ok_or_else(|| fail("expected true or false".into()))?),
                "service" => {
                    validate_service_name(v).map_err(fail)?;
                    out.service = Some(v.to_string());
                }
                "host" => out.hosts = Some(HostPattern::parse_list(v).map_err(fail)?),
                "path" => out.path = Some(parse_path_prefix(v).map_err(fail)?),
                "port" => match v.parse::<u16>() {
                    Ok(p) if p > 0 => out.port = Some(p),
                    _ => return Err(fail("not a port number (1-65535)".into())),
                },
                "network" if !v.is_empty() => out.network = Some(v.to_string()),
                "network" => return Err(fail("empty network name".into())),
                "weight" => match v.parse::<usize>() {
                    Ok(w) if (1..=MAX_WEIGHT).contains(&w) => out.weight = Some(w),
                    _ => return Err(fail(format!("weight must be a whole number from 1 to {MAX_WEIGHT}"))),
                },
                "healthcheck.path" => out.health_path = Some(parse_path_prefix(v).map_err(fail)?),
                "healthcheck.type" => out.health_kind = Some(crate::config::CheckKind::parse(v).map_err(fail)?),
                "tls" => out.tls = Some(parse_bool(v).ok_or_else(|| fail("expected true or false".into()))?),
                "tls.redirect" => out.redirect = Some(parse_bool(v).ok_or_else(|| fail("expected true or false".into()))?),
                "tls.hsts" => out.hsts = Some(crate::config::tls::parse_hsts(v).map_err(fail)?),
                "scheme" => out.scheme = Some(crate::config::Scheme::parse(v).map_err(fail)?),
                "tls.server_name" => out.server_name = Some(crate::config::tls::parse_server_name(v).map_err(fail)?),
                // Absolute: hawser's working directory is no place a label's author can know.
                "tls.ca" if v.starts_with('/') => out.ca = Some(v.to_string()),
                "tls.ca" => return Err(fail("expected the absolute path of a PEM file in hawser's file system".into())),
                "tls.verify" => out.verify = Some(parse_bool(v).ok_or_else(|| fail("expected true or false".into()))?),
                "address" => out.address = Some(crate::config::AddressMode::parse(v).map_err(fail)?),
                _ => return Err(fail(format!("unknown label (known: {})", KEYS.join(", ")))),
            }
        }
        Ok(out)
    }
}

/// Booleans as Docker users write them in labels.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A service name as used in labels, YAML, logs and the admin API.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(format!("invalid service name {name:?}: use 1-128 letters, digits, '.', '_' or '-'")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Labels, LabelError> {
        let labels = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Labels::parse("hawser", &labels)
    }

    #[test]
    fn reads_every_label() {
        let l = parse(&[
            ("hawser.enable", "TRUE"),
            ("hawser.service", "api"),
            ("hawser.host", "a.example.com, *.b.example.com"),
            ("hawser.path", "/v1"),
            ("hawser.port", "8080"),
            ("hawser.network", "web"),
            ("hawser.weight", "3"),
            ("hawser.healthcheck.path", "/healthz"),
            ("hawser.healthcheck.type", "GRPC"),
            ("hawser.address", "published"),
            ("other.label", "ignored"),
            ("hawserx.port", "not ours"),
        ])
        .unwrap();
        assert_eq!(l.enable, Some(true));
        assert_eq!(l.service.as_deref(), Some("api"));
        assert_eq!(l.hosts.as_ref().unwrap().len(), 2);
        assert_eq!(l.path.as_deref(), Some("/v1"));
        assert_eq!((l.port, l.weight), (Some(8080), Some(3)));
        assert_eq!(l.network.as_deref(), Some("web"));
        assert_eq!(l.health_path.as_deref(), Some("/healthz"));
        assert_eq!(l.health_kind, Some(crate::config::CheckKind::Grpc));
        assert_eq!(l.address, Some(crate::config::AddressMode::Published));
        let e = parse(&[("hawser.address", "ingress")]).unwrap_err();
        assert_eq!(e.to_string(), "label hawser.address=\"ingress\": \"ingress\": expected container, published or vip");
        let e = parse(&[("hawser.healthcheck.type", "udp")]).unwrap_err();
        assert!(e.to_string().contains("expected http, tcp or grpc"), "{e}");
    }

    #[test]
    fn bad_values_name_the_label() {
        let e = parse(&[("hawser.port", "abc")]).unwrap_err();
        assert_eq!(e.label, "hawser.port");
        assert_eq!(e.to_string(), "label hawser.port=\"abc\": not a port number (1-65535)");
        assert_eq!(parse(&[("hawser.port", "0")]).unwrap_err().label, "hawser.port");
        assert_eq!(parse(&[("hawser.weight", "0")]).unwrap_err().label, "hawser.weight");
        assert_eq!(parse(&[("hawser.weight", "1001")]).unwrap_err().label, "hawser.weight");
        assert_eq!(parse(&[("hawser.enable", "maybe")]).unwrap_err().label, "hawser.enable");
        assert_eq!(parse(&[("hawser.host", "bad host")]).unwrap_err().label, "hawser.host");
        assert_eq!(parse(&[("hawser.path", "api")]).unwrap_err().label, "hawser.path");
        assert_eq!(parse(&[("hawser.service", "a/b")]).unwrap_err().label, "hawser.service");
        let typo = parse(&[("hawser.hots", "a.com")]).unwrap_err();
        assert!(typo.problem.starts_with("unknown label"), "{typo}");
    }

    #[test]
    fn backend_tls_labels() {
        let l = parse(&[
            ("hawser.scheme", "HTTPS"),
            ("hawser.tls.server_name", "API.internal."),
            ("hawser.tls.ca", " /etc/hawser/ca.pem "),
            ("hawser.tls.verify", "false"),
        ])
        .unwrap();
        assert_eq!(l.scheme, Some(crate::config::Scheme::Https));
        assert_eq!(l.server_name.as_deref(), Some("api.internal"));
        assert_eq!(l.ca.as_deref(), Some("/etc/hawser/ca.pem"));
        assert_eq!(l.verify, Some(false));
        let e = parse(&[("hawser.tls.ca", "ca.pem")]).unwrap_err();
        assert_eq!(e.to_string(), "label hawser.tls.ca=\"ca.pem\": expected the absolute path of a PEM file in hawser's file system");
        assert_eq!(parse(&[("hawser.tls.ca", "")]).unwrap_err().label, "hawser.tls.ca");
        assert_eq!(parse(&[("hawser.tls.verify", "sometimes")]).unwrap_err().label, "hawser.tls.verify");
        // An empty server name would turn verification off in pingora: refused.
        let e = parse(&[("hawser.tls.server_name", " ")]).unwrap_err();
        assert!(e.problem.contains("empty server name"), "{e}");
    }

    #[test]
    fn a_control_character_in_any_value_is_refused() {
        for key in KEYS.iter().chain(&["unknown"]) {
            for bad in ["\n", "\r", "\t", "\0", "\x7f", "\u{85}"] {
                let label = format!("hawser.{key}");
                let e = parse(&[(label.as_str(), &format!("/ok{bad}"))]).unwrap_err();
                assert_eq!(e.label, label);
                assert!(e.problem.starts_with("contains a control character"), "{e}");
                // Shown escaped: the message itself must not carry the character.
                assert!(!e.to_string().contains(bad), "{e:?}");
            }
        }
        // Trimming must not hide it.
        assert!(parse(&[("hawser.host", "a.com\r\n")]).is_err());
        let e = parse(&[("hawser.healthcheck.path", "/x\r\nHost: evil")]).unwrap_err();
        assert!(e.to_string().starts_with("label hawser.healthcheck.path="), "{e}");
        // Another prefix's labels are not hawser's business.
        assert!(parse(&[("other.path", "\n")]).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics_and_every_error_names_its_label(
            key in proptest::sample::select(KEYS.iter().copied().chain(["typo", ""]).collect::<Vec<_>>()),
            value in proptest::prelude::any::<String>(),
            other in proptest::prelude::any::<String>(),
            odd_key in proptest::prelude::any::<String>(),
        ) {
            let label = format!("hawser.{key}");
            let labels: BTreeMap<String, String> =
                [(label, value), ("hawser.enable".to_string(), other), (format!("hawser.{odd_key}"), "1".to_string())]
                    .into_iter()
                    .collect();
            if let Err(e) = Labels::parse("hawser", &labels) {
                proptest::prop_assert!(labels.contains_key(&e.label), "{e}");
                let named = format!("label {}=", e.label.escape_debug());
                proptest::prop_assert!(e.to_string().starts_with(&named), "{e}");
                proptest::prop_assert!(!e.to_string().chars().any(char::is_control), "{e:?}");
            }
        }
    }
}
