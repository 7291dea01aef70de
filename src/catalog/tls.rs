//! A service's TLS settings from its containers' labels: edge (`tls`, `tls.redirect`,
//! `tls.hsts`) and backend (`scheme`, `tls.server_name`, `tls.ca`, `tls.verify`).
//!
//! Invariants:
//! - A YAML service's settings are the YAML file's; a label on one of its containers may
//!   repeat them but not contradict them.
//! - In a label-made service, the first container (in planning order: running first, then
//!   oldest) that sets a key decides it; a container whose label says otherwise is refused
//!   with a reason naming the other container, and changes nothing. Containers that set
//!   nothing join as they are.
//! - A container whose labels would leave its service's backend settings meaningless (a
//!   `tls.ca`, `tls.server_name` or `tls.verify=false` on a cleartext service, a CA with
//!   verification off) is refused, as is one whose `tls.ca` file cannot be used: traffic that
//!   reads as verified TLS must be so.

use std::collections::BTreeMap;

use std::path::Path;

use super::labels::Labels;
use crate::config::tls::Inconsistency;
use crate::config::{Scheme, SiteTls, UpstreamTls};
use crate::upstream::CaFiles;

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
    if let Some(v) = &labels.ca {
        out.push(("tls.ca", v.clone()));
    }
    if let Some(v) = labels.verify {
        out.push(("tls.verify", v.to_string()));
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
        "tls.ca" => upstream.ca.as_ref().map(|ca| ca.path.display().to_string()).unwrap_or_default(),
        "tls.verify" => upstream.verify.to_string(),
        _ => String::new(),
    }
}

/// Merges one container's TLS labels into its service, or says why they cannot join (and
/// then changes nothing). `ca_files` reads a `tls.ca` file the first time a path is seen.
#[allow(clippy::too_many_arguments)]
pub fn merge(
    site: &mut SiteTls,
    upstream: &mut UpstreamTls,
    set_by: &mut SetBy,
    from_config: bool,
    prefix: &str,
    container: &str,
    labels: &Labels,
    ca_files: &CaFiles,
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
    let ca = match &labels.ca {
        Some(path) => Some(ca_files.get(Path::new(path)).map_err(|e| format!("label {prefix}.tls.ca={path:?}: {e}"))?),
        None => None,
    };
    let mut merged = upstream.clone();
    if let Some(v) = labels.scheme {
        merged.scheme = v;
    }
    if let Some(v) = &labels.server_name {
        merged.server_name = Some(v.clone());
    }
    if ca.is_some() {
        merged.ca = ca;
    }
    if let Some(v) = labels.verify {
        merged.verify = v;
    }
    consistent(&merged, prefix)?;
    *upstream = merged;
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
    Ok(())
}

/// [`UpstreamTls::inconsistency`] in labels' words.
fn consistent(upstream: &UpstreamTls, prefix: &str) -> Result<(), String> {
    let Some((key, problem)) = upstream.inconsistency() else { return Ok(()) };
    let label = match key {
        "ca" => "tls.ca",
        "server_name" => "tls.server_name",
        _ => "tls.verify",
    };
    Err(match problem {
        Inconsistency::NeedsTls => {
            format!("label {prefix}.{label} applies to TLS backends only, and the service's scheme is http: add {prefix}.scheme=https")
        }
        Inconsistency::UnusedCa => {
            format!("label {prefix}.tls.ca is never used with {prefix}.tls.verify=false: drop one of them")
        }
    })
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

/// Whether a backend can be probed the way `probe` asks when hawser speaks `scheme` to it:
/// gRPC runs over HTTP/2 only.
pub fn probe_fits(probe: &crate::catalog::Probe, scheme: Scheme) -> Result<(), String> {
    match (probe, scheme) {
        (crate::catalog::Probe::Grpc, Scheme::Http | Scheme::Https) => Err(format!(
            "health check type grpc needs scheme h2c or h2 (gRPC runs over HTTP/2), and this service's scheme is {}",
            scheme.as_str()
        )),
        _ => Ok(()),
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
        merge(&mut site, &mut up, &mut by, false, "hawser", "a", &labels(&[("tls", "true"), ("tls.hsts", "max-age=60")]), &CaFiles::default()).unwrap();
        assert!(site.tls);
        merge(&mut site, &mut up, &mut by, false, "hawser", "b", &labels(&[]), &CaFiles::default()).unwrap();
        merge(&mut site, &mut up, &mut by, false, "hawser", "c", &labels(&[("tls", "yes")]), &CaFiles::default()).unwrap();
        let e = merge(&mut site, &mut up, &mut by, false, "hawser", "d", &labels(&[("tls", "false")]), &CaFiles::default()).unwrap_err();
        assert_eq!(e, "label hawser.tls=\"false\" contradicts hawser.tls=\"true\" of container a");
        assert!(site.tls);
    }

    #[test]
    fn yaml_services_keep_their_settings() {
        let mut site = SiteTls { tls: true, ..SiteTls::default() };
        let (mut up, mut by) = (UpstreamTls::default(), SetBy::new());
        merge(&mut site, &mut up, &mut by, true, "hawser", "a", &labels(&[("tls", "true")]), &CaFiles::default()).unwrap();
        assert!(merge(&mut site, &mut up, &mut by, true, "hawser", "a", &labels(&[("scheme", "https")]), &CaFiles::default()).is_err());
        assert_eq!(up.scheme, Scheme::Http);
    }

    #[test]
    fn backend_tls_labels_are_checked_before_they_join() {
        let test_ca = crate::upstream::TestCa::new("catalog-tls");
        let ca = test_ca.path_text();
        let files = CaFiles::default();
        let (mut site, mut up, mut by) = (SiteTls::default(), UpstreamTls::default(), SetBy::new());
        // A CA on a cleartext service would look verified and go in the clear: refused,
        // and nothing changes.
        let e = merge(&mut site, &mut up, &mut by, false, "hawser", "a", &labels(&[("tls.ca", &ca)]), &files).unwrap_err();
        assert!(e.starts_with("label hawser.tls.ca applies to TLS backends only") && e.ends_with("add hawser.scheme=https"), "{e}");
        assert_eq!((&up, by.len()), (&UpstreamTls::default(), 0));
        let all = [("scheme", "https"), ("tls.ca", ca.as_str()), ("tls.server_name", "api.internal")];
        merge(&mut site, &mut up, &mut by, false, "hawser", "b", &labels(&all), &files).unwrap();
        assert_eq!(up.ca.as_ref().map(|c| c.path.display().to_string()), Some(ca.clone()));
        assert!(up.verify && up.scheme == Scheme::Https);
        let e = merge(&mut site, &mut up, &mut by, false, "hawser", "c", &labels(&[("tls.verify", "false")]), &files).unwrap_err();
        assert_eq!(e, "label hawser.tls.ca is never used with hawser.tls.verify=false: drop one of them");
        assert!(up.verify);
        // A file that cannot be used names the label and the file's problem.
        let (mut up, mut by) = (UpstreamTls::default(), SetBy::new());
        let missing = [("scheme", "https"), ("tls.ca", "/nonexistent/ca.pem")];
        let e = merge(&mut site, &mut up, &mut by, false, "hawser", "d", &labels(&missing), &files).unwrap_err();
        assert!(e.starts_with("label hawser.tls.ca=\"/nonexistent/ca.pem\": cannot read /nonexistent/ca.pem"), "{e}");
        assert_eq!(up, UpstreamTls::default());
        // Verification off, asked for explicitly.
        let off = [("scheme", "https"), ("tls.verify", "no")];
        merge(&mut site, &mut up, &mut by, false, "hawser", "e", &labels(&off), &files).unwrap();
        assert!(!up.verify);
    }
}
