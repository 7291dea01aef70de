//! Host and path matching: the values a route is made of and the table a request is looked up in.
//!
//! Pure data, no I/O. The table is generic over its target so the catalog can build it with
//! service names and the runtime with live service handles.

use std::collections::HashMap;
use std::fmt;

/// A host a route answers for, as written in a `hawser.host` label or a service's `hosts:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `api.example.com` (stored lowercase, without a trailing dot).
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`: matches any name below it, at any
    /// depth, but not `example.com` itself (as nginx's `server_name *.example.com`).
    Wildcard(String),
    /// No host given (a route with only a path): matches every host, after exact and wildcard.
    Any,
}

impl HostPattern {
    /// Parses one host as a user writes it. Errors say what is wrong with it.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let host = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err("empty host name".into());
        }
        if host == "*" {
            return Ok(HostPattern::Any);
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "invalid host name {raw:?}: use letters, digits, '-' and '.', optionally starting with '*.'"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Parses a comma-separated list (the `hawser.host` label form).
    pub fn parse_list(raw: &str) -> Result<Vec<HostPattern>, String> {
        let mut hosts = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let host = HostPattern::parse(part)?;
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        if hosts.is_empty() {
            return Err("no host name given".into());
        }
        Ok(hosts)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

/// Validates and normalises a path prefix: it must start with `/`; a trailing `/` is kept
/// because `/api/` and `/api` mean different things to a user (see [`prefix_matches`]).
pub fn parse_path_prefix(raw: &str) -> Result<String, String> {
    let p = raw.trim();
    if !p.starts_with('/') {
        return Err(format!("path prefix {raw:?} must start with '/'"));
    }
    if p.contains(['?', '#', ' ']) {
        return Err(format!("path prefix {raw:?} must not contain '?', '#' or spaces"));
    }
    Ok(p.to_string())
}

/// Segment-aware prefix match: `/api` matches `/api`, `/api/` and `/api/x`, but not `/apix`;
/// `/api/` and `/` match everything below them.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// One (host, path prefix) pair a service answers for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub host: HostPattern,
    pub path_prefix: String,
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path_prefix == "/" {
            write!(f, "host {}", self.host)
        } else {
            write!(f, "host {} path {}", self.host, self.path_prefix)
        }
    }
}

/// The routes of one host pattern, longest prefix first.
#[derive(Debug, Clone)]
struct Routes<T> {
    by_prefix: Vec<(String, T)>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Routes { by_prefix: Vec::new() }
    }
}

impl<T> Routes<T> {
    fn find(&self, path: &str) -> Option<&T> {
        self.by_prefix
            .iter()
            .find(|(prefix, _)| prefix_matches(prefix, path))
            .map(|(_, t)| t)
    }
}

/// Host + path → target. Lookup order: exact host, then the most specific wildcard, then routes
/// with no host; within each, the longest matching path prefix. A host whose routes have no
/// matching prefix falls through to the next, less specific group (as Traefik's rule priority
/// does), so `*.example.com /` still serves `/other` on `api.example.com` when that host only
/// routes `/api`.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: HashMap<String, Routes<T>>,
    /// Longest suffix first.
    wildcard: Vec<(String, Routes<T>)>,
    any: Routes<T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable { exact: HashMap::new(), wildcard: Vec::new(), any: Routes::default() }
    }
}

impl<T> RouteTable<T> {
    /// Builds the table. Keys must be unique (the catalog refuses conflicting claims before).
    pub fn build(entries: impl IntoIterator<Item = (RouteKey, T)>) -> Self {
        let mut table = RouteTable::default();
        for (key, target) in entries {
            let routes = match key.host {
                HostPattern::Exact(h) => table.exact.entry(h).or_default(),
                HostPattern::Wildcard(suffix) => {
                    match table.wildcard.iter().position(|(s, _)| *s == suffix) {
                        Some(i) => &mut table.wildcard[i].1,
                        None => {
                            table.wildcard.push((suffix, Routes::default()));
                            &mut table.wildcard.last_mut().expect("just pushed").1
                        }
                    }
                }
                HostPattern::Any => &mut table.any,
            };
            routes.by_prefix.push((key.path_prefix, target));
        }
        // Longest prefix first; equal lengths by text so the order never depends on input order.
        let sort = |r: &mut Routes<T>| {
            r.by_prefix.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)))
        };
        table.exact.values_mut().for_each(sort);
        table.wildcard.iter_mut().for_each(|(_, r)| sort(r));
        sort(&mut table.any);
        table.wildcard.sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        table
    }

    /// Finds the target for a request. `host` must already be lowercase and without a port
    /// or trailing dot, as [`crate::edge::host::parse_host`] gives it.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&T> {
        if let Some(t) = self.exact.get(host).and_then(|r| r.find(path)) {
            return Some(t);
        }
        for (suffix, routes) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(t) = routes.find(path) {
                    return Some(t);
                }
            }
        }
        self.any.find(path)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.by_prefix.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(host: &str, prefix: &str) -> RouteKey {
        RouteKey { host: HostPattern::parse(host).unwrap(), path_prefix: prefix.into() }
    }

    #[test]
    fn host_patterns_parse_and_normalise() {
        assert_eq!(HostPattern::parse("API.Example.com.").unwrap(), HostPattern::Exact("api.example.com".into()));
        assert_eq!(HostPattern::parse("*.example.com").unwrap(), HostPattern::Wildcard(".example.com".into()));
        assert_eq!(HostPattern::parse("*").unwrap(), HostPattern::Any);
        assert!(HostPattern::parse("a b.com").is_err());
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("-a.com").is_err());
        assert_eq!(HostPattern::parse_list("a.com, b.com,a.com").unwrap().len(), 2);
        assert!(HostPattern::parse_list(" , ").is_err());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api/", "/api"));
        assert!(parse_path_prefix("api").is_err());
    }

    #[test]
    fn exact_beats_wildcard_beats_any_and_longest_prefix_wins() {
        let t = RouteTable::build([
            (key("a.example.com", "/"), "exact-root"),
            (key("a.example.com", "/api"), "exact-api"),
            (key("*.example.com", "/"), "wild"),
            (key("*.b.example.com", "/"), "wild-deeper"),
            (key("*", "/static"), "any-static"),
        ]);
        assert_eq!(t.lookup("a.example.com", "/api/x"), Some(&"exact-api"));
        assert_eq!(t.lookup("a.example.com", "/apix"), Some(&"exact-root"));
        assert_eq!(t.lookup("z.example.com", "/"), Some(&"wild"));
        assert_eq!(t.lookup("x.b.example.com", "/"), Some(&"wild-deeper"));
        assert_eq!(t.lookup("example.com", "/"), None);
        assert_eq!(t.lookup("other.org", "/static/a.css"), Some(&"any-static"));
        assert_eq!(t.lookup("other.org", "/"), None);
    }

    #[test]
    fn a_host_without_matching_prefix_falls_through() {
        let t = RouteTable::build([(key("a.example.com", "/api"), "api"), (key("*.example.com", "/"), "wild")]);
        assert_eq!(t.lookup("a.example.com", "/other"), Some(&"wild"));
    }
}
