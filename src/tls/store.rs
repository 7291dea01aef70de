//! Which certificate a TLS handshake gets: the table rustls asks on every full handshake.
//!
//! Invariants:
//! - The table is swapped whole ([`ArcSwap`]): a handshake sees one consistent table and never
//!   waits for a writer; a writer (file reload, ACME) rebuilds from its inputs under a mutex.
//! - Certificates from files win over ACME certificates for the same name (a user's explicit
//!   choice wins); among several files naming one host, the one that expires last.
//! - A name is matched exactly (lowercase, without a trailing dot), then as `*.` + its parent
//!   domain (one label only, RFC 6125 §6.4.3); otherwise the default certificate, or none
//!   (`default_certificate: refuse`: the handshake is aborted).
//! - An input that failed keeps its last good certificate in the table: the error is only
//!   recorded (shown by `/api/certificates`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Serialize;

use super::pem::Certificate;

/// Where a served certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    File,
    Acme,
    Default,
}

impl Source {
    /// The name `/api/certificates` gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Acme => "acme",
            Source::Default => "default",
        }
    }
}

/// One certificate in the table.
#[derive(Debug)]
pub struct Entry {
    pub cert: Certificate,
    pub source: Source,
    /// The file(s) or storage path it was read from.
    pub origin: String,
}

/// The state of one ACME-managed host, kept by [`super::acme`].
#[derive(Debug, Clone, Default)]
pub struct AcmeHost {
    pub cert: Option<Arc<Entry>>,
    /// Unix seconds of the next renewal attempt (or of the next retry after an error).
    pub next_renewal: Option<i64>,
    pub error: Option<String>,
}

#[derive(Default)]
struct Inputs {
    /// By origin (the certificate file's path).
    files: BTreeMap<String, Arc<Entry>>,
    /// Files that could not be read, by origin: why.
    file_errors: BTreeMap<String, String>,
    acme: BTreeMap<String, AcmeHost>,
}

#[derive(Default)]
struct Table {
    exact: HashMap<String, Arc<Entry>>,
    /// `*.example.com` is stored under `example.com`.
    wildcard: HashMap<String, Arc<Entry>>,
}

pub struct CertStore {
    table: ArcSwap<Table>,
    inputs: Mutex<Inputs>,
    default: Option<Arc<Entry>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

/// A host name as a handshake names it: lowercase, no trailing dot.
pub fn canonical(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl CertStore {
    /// `default`: the certificate for unknown or missing SNI, or `None` to refuse those
    /// handshakes.
    pub fn new(default: Option<Entry>) -> CertStore {
        CertStore { table: ArcSwap::default(), inputs: Mutex::default(), default: default.map(Arc::new) }
    }

    /// The certificate for a handshake that named `sni` (or none).
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.entry_for(sni).map(|e| Arc::clone(&e.cert.key))
    }

    fn entry_for(&self, sni: Option<&str>) -> Option<Arc<Entry>> {
        if let Some(name) = sni {
            let table = self.table.load();
            let name = canonical(name);
            if let Some(e) = table.exact.get(&name) {
                return Some(Arc::clone(e));
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(e) = table.wildcard.get(parent)
            {
                return Some(Arc::clone(e));
            }
        }
        self.default.clone()
    }

    /// Replaces the certificates read from files; `errors` are the files that could not be
    /// read this time (origin → why). A file that fails keeps its previous certificate.
    pub fn set_files(&self, loaded: BTreeMap<String, Arc<Entry>>, errors: BTreeMap<String, String>) {
        let mut inputs = self.inputs.lock().expect("certificate inputs");
        let mut files = loaded;
        for origin in errors.keys() {
            if let Some(old) = inputs.files.get(origin) {
                files.entry(origin.clone()).or_insert_with(|| Arc::clone(old));
            }
        }
        inputs.files = files;
        inputs.file_errors = errors;
        self.rebuild(&inputs);
    }

    /// Updates one ACME-managed host (its certificate, next renewal, last error).
    pub fn set_acme(&self, host: &str, state: AcmeHost) {
        let mut inputs = self.inputs.lock().expect("certificate inputs");
        inputs.acme.insert(canonical(host), state);
        self.rebuild(&inputs);
    }

    /// Forgets ACME hosts that are no longer wanted (no route asks for TLS any more).
    pub fn retain_acme(&self, keep: impl Fn(&str) -> bool) {
        let mut inputs = self.inputs.lock().expect("certificate inputs");
        let before = inputs.acme.len();
        inputs.acme.retain(|h, _| keep(h));
        if inputs.acme.len() != before {
            self.rebuild(&inputs);
        }
    }

    pub fn acme_host(&self, host: &str) -> Option<AcmeHost> {
        self.inputs.lock().expect("certificate inputs").acme.get(&canonical(host)).cloned()
    }

    /// Whether a certificate from a file serves `host` (then ACME orders none for it).
    pub fn has_file_certificate(&self, host: &str) -> bool {
        self.entry_for(Some(host)).is_some_and(|e| e.source == Source::File)
    }

    fn rebuild(&self, inputs: &Inputs) {
        let mut table = Table::default();
        // Files first; the latest expiry wins among files.
        let mut by_name: HashMap<String, Arc<Entry>> = HashMap::new();
        for e in inputs.files.values() {
            for name in &e.cert.names {
                match by_name.get(name) {
                    Some(other) if other.cert.not_after >= e.cert.not_after => {}
                    _ => {
                        by_name.insert(name.clone(), Arc::clone(e));
                    }
                }
            }
        }
        for (name, e) in by_name {
            match name.strip_prefix("*.") {
                Some(parent) => table.wildcard.insert(parent.to_string(), e),
                None => table.exact.insert(name, e),
            };
        }
        // ACME only where no file serves the name, exactly or by a wildcard: a file is the
        // user's explicit choice.
        for (host, state) in &inputs.acme {
            let by_wildcard = host.split_once('.').is_some_and(|(_, parent)| table.wildcard.contains_key(parent));
            if let Some(e) = &state.cert
                && !by_wildcard
            {
                table.exact.entry(host.clone()).or_insert_with(|| Arc::clone(e));
            }
        }
        self.table.store(Arc::new(table));
    }

    /// What serves each host: the hosts routes ask TLS for (`wanted`), every name of a file
    /// certificate, and files that could not be read.
    pub fn view(&self, wanted: &[String]) -> Vec<CertificateView> {
        let inputs = self.inputs.lock().expect("certificate inputs");
        let mut out: BTreeMap<String, CertificateView> = BTreeMap::new();
        let mut hosts: Vec<String> = wanted.iter().map(|h| canonical(h)).collect();
        for e in inputs.files.values() {
            hosts.extend(e.cert.names.iter().cloned());
        }
        hosts.extend(inputs.acme.keys().cloned());
        for host in hosts {
            if out.contains_key(&host) {
                continue;
            }
            let acme = inputs.acme.get(&host);
            let served = self.entry_for(Some(&host));
            let mut error = acme.and_then(|a| a.error.clone());
            if let Some(e) = served.as_ref().filter(|e| e.source == Source::File)
                && let Some(why) = inputs.file_errors.get(&e.origin)
            {
                error = Some(why.clone());
            }
            let view = CertificateView {
                host: Some(host.clone()),
                source: served.as_ref().map(|e| e.source),
                not_after: served.as_ref().map(|e| e.cert.not_after),
                next_renewal: acme.and_then(|a| a.next_renewal).filter(|_| served.as_ref().is_none_or(|e| e.source != Source::File)),
                error,
                names: served.as_ref().map(|e| e.cert.names.clone()).unwrap_or_default(),
                file: served.as_ref().filter(|e| e.source != Source::Default).map(|e| e.origin.clone()),
            };
            out.insert(host, view);
        }
        let mut list: Vec<CertificateView> = out.into_values().collect();
        for (origin, why) in &inputs.file_errors {
            if !inputs.files.contains_key(origin) {
                list.push(CertificateView {
                    host: None,
                    source: Some(Source::File),
                    not_after: None,
                    next_renewal: None,
                    error: Some(why.clone()),
                    names: Vec::new(),
                    file: Some(origin.clone()),
                });
            }
        }
        list
    }

    /// Every certificate served, by name, with its expiry (for the metrics).
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let table = self.table.load();
        let mut out: Vec<(String, i64)> = table.exact.iter().map(|(n, e)| (n.clone(), e.cert.not_after)).collect();
        out.extend(table.wildcard.iter().map(|(n, e)| (format!("*.{n}"), e.cert.not_after)));
        out.sort();
        out
    }
}

/// One line of `GET /api/certificates`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CertificateView {
    /// `None` for a file that never loaded (its names are unknown).
    pub host: Option<String>,
    /// `None`: nothing serves this host (`default_certificate: refuse` and none yet).
    pub source: Option<Source>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    /// Unix seconds; ACME hosts only.
    pub next_renewal: Option<i64>,
    pub error: Option<String>,
    /// The names of the certificate that serves the host.
    pub names: Vec<String>,
    /// Its file (or ACME storage path).
    pub file: Option<String>,
}

/// rustls asks this on every full handshake.
#[derive(Debug)]
pub struct Resolver(pub Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.lookup(hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::pem;

    fn entry(names: &[&str], source: Source, origin: &str) -> Arc<Entry> {
        let (c, k) = pem::self_signed(names, 30).unwrap();
        Arc::new(Entry { cert: pem::from_pem(c.as_bytes(), k.as_bytes()).unwrap(), source, origin: origin.into() })
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let default = entry(&["hawser.invalid"], Source::Default, "default");
        let store = CertStore { table: ArcSwap::default(), inputs: Mutex::default(), default: Some(Arc::clone(&default)) };
        let a = entry(&["a.test"], Source::File, "/a.crt");
        let w = entry(&["*.w.test"], Source::File, "/w.crt");
        store.set_files([("/a.crt".into(), Arc::clone(&a)), ("/w.crt".into(), Arc::clone(&w))].into(), BTreeMap::new());
        let key = |sni: Option<&str>| store.lookup(sni).unwrap();
        assert!(Arc::ptr_eq(&key(Some("A.TEST.")), &a.cert.key));
        assert!(Arc::ptr_eq(&key(Some("x.w.test")), &w.cert.key));
        // One label only, and not the parent itself.
        assert!(Arc::ptr_eq(&key(Some("y.x.w.test")), &default.cert.key));
        assert!(Arc::ptr_eq(&key(Some("w.test")), &default.cert.key));
        assert!(Arc::ptr_eq(&key(None), &default.cert.key));

        let refusing = CertStore::new(None);
        assert!(refusing.lookup(Some("a.test")).is_none());
    }

    #[test]
    fn files_win_and_a_failed_file_keeps_its_certificate() {
        let store = CertStore::new(None);
        let acme = entry(&["a.test"], Source::Acme, "acme");
        store.set_acme("a.test", AcmeHost { cert: Some(Arc::clone(&acme)), next_renewal: Some(1), error: None });
        assert!(Arc::ptr_eq(&store.lookup(Some("a.test")).unwrap(), &acme.cert.key));
        let file = entry(&["a.test"], Source::File, "/a.crt");
        store.set_files([("/a.crt".into(), Arc::clone(&file))].into(), BTreeMap::new());
        assert!(Arc::ptr_eq(&store.lookup(Some("a.test")).unwrap(), &file.cert.key));
        assert!(store.has_file_certificate("a.test"));
        store.set_files(BTreeMap::new(), [("/a.crt".to_string(), "bad".to_string())].into());
        assert!(Arc::ptr_eq(&store.lookup(Some("a.test")).unwrap(), &file.cert.key));
        let view = store.view(&[]);
        assert_eq!(view[0].error.as_deref(), Some("bad"));
        store.set_files(BTreeMap::new(), BTreeMap::new());
        assert!(Arc::ptr_eq(&store.lookup(Some("a.test")).unwrap(), &acme.cert.key));
        store.retain_acme(|_| false);
        assert!(store.lookup(Some("a.test")).is_none());

        // A wildcard file added later wins over an ACME certificate it covers.
        let acme = entry(&["x.w.test"], Source::Acme, "acme");
        store.set_acme("x.w.test", AcmeHost { cert: Some(Arc::clone(&acme)), next_renewal: None, error: None });
        assert!(Arc::ptr_eq(&store.lookup(Some("x.w.test")).unwrap(), &acme.cert.key));
        let wild = entry(&["*.w.test"], Source::File, "/w.crt");
        store.set_files([("/w.crt".into(), Arc::clone(&wild))].into(), BTreeMap::new());
        assert!(Arc::ptr_eq(&store.lookup(Some("x.w.test")).unwrap(), &wild.cert.key));
        assert!(store.has_file_certificate("x.w.test"));
    }
}
