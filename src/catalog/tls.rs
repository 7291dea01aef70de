//! A service's TLS settings from its containers' labels: edge (`tls`, `tls.redirect`,
//! `tls.hsts`) and backend (`scheme`, `tls.server_name`).
//!
//! Invariants:
//! - A YAML service's settings are the YAML file's; a label on one of its containers may
//!   repeat them but not contradict them.
//! - In a label-made service, the first container (in planning order: running first, then
//!   oldest) that sets a key decides it; a container whose label says otherwise is refused
//!   with a reason naming the other container, and changes nothing. Containers that set
//!   nothing join as they are.

use std::collections::BTreeMap;

use super::labels::Labels;
use crate::config::{Scheme, SiteTls, UpstreamTls};

/// Who set each TLS key of a label-made service: key → (value as text, container name).
pub type SetBy = BTreeMap<&'static str, (String, String)>;

/// The keys `labels` sets, with their values as text (for comparison and messages).
fn keys_of(labels: &Labels) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(v) = labels.tls {
        out.push(("tls", v.to_string()));
    }
    if let Some(v) = labels.redirect {
        out.push(("tls.redirect", v.to_string()));
    }
    if let Some(v) = &labels.hsts {
        out.push(("tls.hsts", v.clone()));
    }
    if let Some(v) = labels.scheme {
        out.push(("scheme", v.as_str().to_string()));
    }
    if let Some(v) = &labels.server_name {
        out.push(("tls.server_name", v.clone()));
    }
    out
}

fn current(site: &SiteTls, upstream: &UpstreamTls, key: &str) -> String {
    match key {
        "tls" => site.tls.to_string(),
        "tls.redirect" => site.redirect.to_string(),
        "tls.hsts" => site.hsts.clone().unwrap_or_default(),
        "scheme" => upstream.scheme.as_str().to_string(),
        "tls.server_name" => upstream.server_name.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// Merges one container's TLS labels into its service, or says why they cannot join.
pub fn merge(
    site: &mut SiteTls,
    upstream: &mut UpstreamTls,
    set_by: &mut SetBy,
    from_config: bool,
    prefix: &str,
    container: &str,
    labels: &Labels,
) -> Result<(), String> {
    let keys = keys_of(labels);
    for (key, value) in &keys {
        if from_config {
            let yaml = current(site, upstream, key);
            if *value != yaml {
                return Err(format!(
                    "label {prefix}.{key}={value:?} contradicts the service's YAML settings ({key}: {yaml:?})"
                ));
            }
        } else if let Some((other, who)) = set_by.get(key)
            && other != value
        {
            return Err(format!("label {prefix}.{key}={value:?} contradicts {prefix}.{key}={other:?} of container {who}"));
        }
    }
    if from_config {
        return Ok(());
    }
    for (key, value) in keys {
        set_by.entry(key).or_insert_with(|| (value, container.to_string()));
    }
    if let Some(v) = labels.tls {
        site.tls = v;
    }
    if let Some(v) = labels.redirect {
        site.redirect = v;
    }
    if let Some(v) = &labels.hsts {
        site.hsts = Some(v.clone());
    }
    if let Some(v) = labels.scheme {
        upstream.scheme = v;
    }
    if let Some(v) = &labels.server_name {
        upstream.server_name = Some(v.clone());
    }
    Ok(())
}

/// A host a route asks TLS for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TlsHost {
    /// Lowercase; `*.example.com` for a wildcard route.
    pub host: String,
    pub service: String,
}

/// Every host of every service with `tls` on, sorted, without duplicates. Path-only routes
/// (any host) have no name to serve a certificate for and are left out.
pub fn tls_hosts(catalog: &super::Catalog) -> Vec<TlsHost> {
    let mut out: Vec<TlsHost> = catalog
        .services
        .values()
        .filter(|s| s.site.tls)
        .flat_map(|s| {
            s.routes.iter().filter_map(move |r| {
                let host = match &r.host {
                    super::routes::HostPattern::Exact(h) => h.clone(),
                    super::routes::HostPattern::Wildcard(suffix) => format!("*{suffix}"),
                    super::routes::HostPattern::Any => return None,
                };
                Some(TlsHost { host, service: s.name.clone() })
            })
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.host == b.host);
    out
}

/// Whether `scheme` is one this build can speak to a backend.
pub fn supported(scheme: Scheme) -> Result<(), String> {
    match scheme {
        Scheme::Http | Scheme::Https => Ok(()),
        other => Err(format!("scheme {} toward backends is not supported yet (http or https)", other.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let map = pairs.iter().map(|(k, v)| (format!("hawser.{k}"), v.to_string())).collect();
        Labels::parse("hawser", &map).unwrap()
    }

    #[test]
    fn first_setter_wins_and_contradictions_are_refused() {
        let (mut site, mut up, mut by) = (SiteTls::default(), UpstreamTls::default(), SetBy::new());
        merge(&mut site, &mut up, &mut by, false, "hawser", "a", &labels(&[("tls", "true"), ("tls.hsts", "max-age=60")])).unwrap();
        assert!(site.tls);
        merge(&mut site, &mut up, &mut by, false, "hawser", "b", &labels(&[])).unwrap();
        merge(&mut site, &mut up, &mut by, false, "hawser", "c", &labels(&[("tls", "yes")])).unwrap();
        let e = merge(&mut site, &mut up, &mut by, false, "hawser", "d", &labels(&[("tls", "false")])).unwrap_err();
        assert_eq!(e, "label hawser.tls=\"false\" contradicts hawser.tls=\"true\" of container a");
        assert!(site.tls);
    }

    #[test]
    fn yaml_services_keep_their_settings() {
        let mut site = SiteTls { tls: true, ..SiteTls::default() };
        let (mut up, mut by) = (UpstreamTls::default(), SetBy::new());
        merge(&mut site, &mut up, &mut by, true, "hawser", "a", &labels(&[("tls", "true")])).unwrap();
        assert!(merge(&mut site, &mut up, &mut by, true, "hawser", "a", &labels(&[("scheme", "https")])).is_err());
        assert_eq!(up.scheme, Scheme::Http);
    }
}
