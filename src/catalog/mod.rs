//! The catalog: containers × configuration → services, their routes and backends, and a verdict
//! for every container saying whether it is routed and, if not, why.
//!
//! Pure and synchronous: no Docker client, no tokio, no I/O, so every rule is unit-tested here
//! with plain structs. The runtime ([`crate::runtime`]) turns a catalog into live load balancers.

pub mod address;
pub mod container;
pub mod labels;
pub mod routes;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

pub use address::Environment;
pub use container::{Container, DEFAULT_STOP_TIMEOUT, Departure, DockerHealth, Origin, PublishedPort, RunState, signal_number};
pub use labels::{Labels, validate_service_name};
use routes::{HostPattern, RouteKey};

use crate::config::{CheckKind, Config, HealthPolicy, ProxyPolicy, SiteTls, UpstreamTls};

/// Docker Compose's service label: the default service name of a compose container.
pub const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// The label the engine puts on a Swarm task's container (and hawser on a task): its service.
pub const SWARM_SERVICE_LABEL: &str = "com.docker.swarm.service.name";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub services: BTreeMap<String, ServicePlan>,
    /// Container id → verdict, for every container seen.
    pub verdicts: BTreeMap<String, Verdict>,
    index: Index,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub name: String,
    pub routes: Vec<RouteKey>,
    /// Declared under `services:` in the YAML file (else made from labels).
    pub from_config: bool,
    /// Sorted by container name.
    pub backends: Vec<BackendPlan>,
    pub health: HealthPolicy,
    pub proxy: ProxyPolicy,
    /// TLS at the edge for this service's hosts (see [`tls`]).
    pub site: SiteTls,
    /// How hawser speaks to the backends.
    pub upstream: UpstreamTls,
    /// Which container's label set each TLS key (label-made services).
    pub tls_set_by: tls::SetBy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BackendPlan {
    pub container_id: String,
    pub container_name: String,
    pub addr: SocketAddr,
    pub weight: usize,
    pub probe: Probe,
    /// Why Docker's own state forbids traffic now.
    pub gate: Option<Gate>,
    pub stop_timeout: Option<Duration>,
}

/// Docker's reasons to send a running backend no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Its orchestrator is stopping it: only while its service has no ready backend.
    Leaving,
    /// Got its stop signal: no new requests, those in flight finish.
    Draining,
    Paused,
    Restarting,
    /// HEALTHCHECK has not passed yet.
    DockerStarting,
    DockerUnhealthy,
}

impl Gate {
    /// Whether active probing still makes sense (the process is meant to serve soon).
    pub fn probe_anyway(self) -> bool {
        matches!(self, Gate::DockerStarting | Gate::DockerUnhealthy | Gate::Restarting | Gate::Leaving)
    }
}

impl std::fmt::Display for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Gate::Leaving => "leaving: its task is being shut down (serves only while no other backend is ready)",
            Gate::Draining => "draining: got its stop signal",
            Gate::Paused => "paused",
            Gate::Restarting => "restarting",
            Gate::DockerStarting => "Docker health: starting",
            Gate::DockerUnhealthy => "Docker health: unhealthy",
        })
    }
}

/// How hawser actively checks a backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Probe {
    Tcp,
    Http { path: String },
    /// `grpc.health.v1.Health/Check` with an empty service name: the server's own health.
    Grpc,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp => f.write_str("TCP connect"),
            Probe::Http { path } => write!(f, "HTTP GET {path}"),
            Probe::Grpc => f.write_str("gRPC Health/Check"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub container_name: String,
    pub service: Option<String>,
    pub standing: Standing,
    /// Why it is not routed; `None` when it is.
    pub reason: Option<String>,
}

impl Verdict {
    /// A backend that Docker's state allows traffic to (active probes decide the rest).
    pub fn routed(&self) -> bool {
        self.standing == Standing::Routed
    }
}

/// What [`Catalog::update`] replaced: the plans and verdicts as they were before.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    /// Every service the change touched, with its plan before (`None`: it did not exist).
    pub services: BTreeMap<String, Option<ServicePlan>>,
    /// Every container the change touched, with its verdict before.
    pub verdicts: BTreeMap<String, Option<Verdict>>,
}

/// Where a container stands, and so how loudly its verdict is worth saying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Routed,
    /// Did not ask to be routed (no opt-in label, or `enable=false`): the normal case.
    NotOptedIn,
    /// A passing state: created, exited, draining, paused, health check starting …
    Waiting,
    /// Asked to be routed but cannot be: a fault for the user to fix (a bad label, an ambiguous
    /// port, no shared network, a host taken, Docker health unhealthy).
    Refused,
}

/// A container that opted in: its service and parsed labels.
#[derive(Debug, Clone, PartialEq)]
struct Admitted {
    service: String,
    labels: Labels,
    /// Routes its labels claim (none when its service is declared in YAML).
    claims: Vec<RouteKey>,
}

/// What lets one container's change be re-planned without touching the rest of the fleet:
/// which containers were admitted, and who shares a service or claims a route with whom.
/// Containers interact only through a shared service (address uniqueness, the service's
/// routes) or a shared route (ownership), so a change can only affect the connected part of
/// that graph; [`Catalog::update`] re-plans exactly that part.
#[derive(Debug, Clone, Default, PartialEq)]
struct Index {
    admitted: BTreeMap<String, Admitted>,
    by_service: BTreeMap<String, BTreeSet<String>>,
    by_route: BTreeMap<RouteKey, BTreeSet<String>>,
    /// Routes of YAML services: owned whatever the containers say.
    yaml_owners: HashMap<RouteKey, String>,
}

impl Index {
    fn insert(&mut self, id: &str, a: Admitted) {
        self.by_service.entry(a.service.clone()).or_default().insert(id.to_string());
        for r in &a.claims {
            self.by_route.entry(r.clone()).or_default().insert(id.to_string());
        }
        self.admitted.insert(id.to_string(), a);
    }

    fn remove(&mut self, id: &str) -> Option<Admitted> {
        let a = self.admitted.remove(id)?;
        if let Some(set) = self.by_service.get_mut(&a.service) {
            set.remove(id);
            if set.is_empty() {
                self.by_service.remove(&a.service);
            }
        }
        for r in &a.claims {
            if let Some(set) = self.by_route.get_mut(r) {
                set.remove(id);
                if set.is_empty() {
                    self.by_route.remove(r);
                }
            }
        }
        Some(a)
    }

    /// The admitted containers connected to `services` and `routes`, and their services.
    fn component(&self, mut services: Vec<String>, mut routes: Vec<RouteKey>) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut ids, mut seen_services, mut seen_routes) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        loop {
            let members: Vec<&String> = if let Some(s) = services.pop() {
                if !seen_services.insert(s.clone()) {
                    continue;
                }
                self.by_service.get(&s).into_iter().flatten().collect()
            } else if let Some(r) = routes.pop() {
                if !seen_routes.insert(r.clone()) {
                    continue;
                }
                self.by_route.get(&r).into_iter().flatten().collect()
            } else {
                break;
            };
            for id in members {
                if ids.insert(id.clone()) {
                    let a = &self.admitted[id];
                    services.push(a.service.clone());
                    routes.extend(a.claims.iter().cloned());
                }
            }
        }
        (ids, seen_services)
    }
}

impl Catalog {
    /// Builds the catalog. Deterministic: the same containers and config give the same catalog
    /// whatever order they come in, so a restart of hawser routes exactly as before.
    pub fn build<'a>(config: &Config, containers: impl IntoIterator<Item = &'a Container>, env: &Environment) -> Catalog {
        let mut catalog = Catalog::default();
        for svc in config.services.values() {
            for route in &svc.routes {
                catalog.index.yaml_owners.insert(route.clone(), svc.name.clone());
            }
            catalog.services.insert(svc.name.clone(), yaml_plan(svc));
        }
        let mut by_id: HashMap<&str, &Container> = HashMap::new();
        for c in containers {
            by_id.insert(&c.id, c);
            catalog.admit(config, c);
        }
        let ids: Vec<String> = catalog.index.admitted.keys().cloned().collect();
        let services: BTreeSet<String> = catalog.services.keys().cloned().chain(catalog.index.by_service.keys().cloned()).collect();
        catalog.plan(config, env, &ids, |id| by_id.get(id).copied());
        catalog.finish(config, &services);
        catalog
    }

    /// Re-plans after container `id` changed, appeared or (absent from `containers`) went
    /// away: only the services and containers connected to it, old and new. Gives the same
    /// catalog as [`Catalog::build`] on all containers (a property test checks it). Returns
    /// what it replaced, so that the runtime can update exactly that.
    pub fn update(
        &mut self,
        config: &Config,
        env: &Environment,
        containers: &BTreeMap<String, Container>,
        id: &str,
    ) -> Change {
        let mut change = Change::default();
        let (mut seed_services, mut seed_routes) = (Vec::new(), Vec::new());
        if let Some(old) = self.index.remove(id) {
            seed_services.push(old.service);
            seed_routes.extend(old.claims);
        }
        change.verdicts.insert(id.to_string(), self.verdicts.remove(id));
        if let Some(c) = containers.get(id) {
            self.admit(config, c);
            if let Some(new) = self.index.admitted.get(id) {
                seed_services.push(new.service.clone());
                seed_routes.extend(new.claims.iter().cloned());
            }
        }
        let (ids, services) = self.index.component(seed_services, seed_routes);
        for name in &services {
            let old = match config.services.get(name) {
                Some(svc) => self.services.insert(name.clone(), yaml_plan(svc)),
                None => self.services.remove(name),
            };
            change.services.insert(name.clone(), old);
        }
        let ids: Vec<String> = ids.into_iter().collect();
        for id in &ids {
            let old = self.verdicts.remove(id);
            change.verdicts.entry(id.clone()).or_insert(old);
        }
        self.plan(config, env, &ids, |id| containers.get(id));
        self.finish(config, &services);
        change
    }

    /// Opt-in and labels of one container: into the index, or a refusal.
    fn admit(&mut self, config: &Config, c: &Container) {
        match admit(config, c) {
            Ok((service, labels)) => {
                // YAML services own their routes; labels add routes only to label-made services.
                let claims = if config.services.contains_key(&service) { Vec::new() } else { label_routes(&labels) };
                self.index.insert(&c.id, Admitted { service, labels, claims });
            }
            Err((standing, reason)) => self.refuse(c, None, standing, reason),
        }
    }

    /// Plans the admitted containers `ids` into their services, claiming routes in a fixed
    /// order: running containers before stopped ones (a leftover exited container must never
    /// take a host from a live one), then the oldest first, then by id.
    fn plan<'c>(&mut self, config: &Config, env: &Environment, ids: &[String], lookup: impl Fn(&str) -> Option<&'c Container>) {
        let prefix = config.docker.label_prefix.as_str();
        let mut candidates: Vec<(&'c Container, Admitted)> =
            ids.iter().filter_map(|id| Some((lookup(id)?, self.index.admitted.get(id)?.clone()))).collect();
        candidates.sort_by(|(a, _), (b, _)| (!a.state.is_up(), a.created, &a.id).cmp(&(!b.state.is_up(), b.created, &b.id)));
        // Owners of label routes in this part of the graph; YAML routes are in the index.
        let mut owners: HashMap<RouteKey, String> = HashMap::new();

        for (c, cand) in candidates {
            let svc_config = config.services.get(&cand.service);
            // Resolve the address first: a container that cannot be reached is skipped whole and
            // claims nothing, so it never turns another route into a 503.
            let addr = if c.state.is_up() {
                let mode = address::effective_mode(
                    c,
                    cand.labels.address,
                    config.docker.address,
                    cand.labels.network.as_deref(),
                    env,
                    prefix,
                );
                let port = mode.and_then(|mode| {
                    let choice =
                        address::PortChoice { label: cand.labels.port, service: svc_config.and_then(|s| s.port), prefix };
                    Ok((mode, address::choose_port(c, &choice, mode)?))
                });
                match port.and_then(|(mode, port)| {
                    address::choose_address(
                        c,
                        port,
                        mode,
                        cand.labels.network.as_deref(),
                        config.docker.network.as_deref(),
                        env,
                        prefix,
                    )
                })
                .and_then(|addr| refuse_own_listener(config, addr))
                {
                    Ok(a) => Some(a),
                    Err(reason) => {
                        self.refuse(c, Some(&cand.service), Standing::Refused, reason);
                        continue;
                    }
                }
            } else {
                None
            };

            let owner_of = |r: &RouteKey| self.index.yaml_owners.get(r).or_else(|| owners.get(r));
            if let Some((route, owner)) =
                cand.claims.iter().find_map(|r| owner_of(r).filter(|o| **o != cand.service).map(|o| (r, o.clone())))
            {
                let reason = format!("{route} is already routed to service {owner}");
                self.refuse(c, Some(&cand.service), Standing::Refused, reason);
                continue;
            }

            let plan = self.services.entry(cand.service.clone()).or_insert_with(|| ServicePlan {
                name: cand.service.clone(),
                routes: Vec::new(),
                from_config: false,
                backends: Vec::new(),
                health: config.health.clone(),
                proxy: config.proxy.clone(),
                site: SiteTls::default(),
                upstream: UpstreamTls::default(),
                tls_set_by: tls::SetBy::new(),
            });
            // TLS settings before routes: a container that contradicts them claims nothing.
            let (mut site, mut upstream, mut set_by) = (plan.site.clone(), plan.upstream.clone(), plan.tls_set_by.clone());
            let probe = probe_for(&plan.health, cand.labels.health_kind, cand.labels.health_path.as_deref());
            if let Err(reason) = tls::merge(&mut site, &mut upstream, &mut set_by, plan.from_config, prefix, &c.name, &cand.labels, &env.ca_files)
                .and_then(|()| tls::probe_fits(&probe, upstream.scheme))
            {
                if plan.routes.is_empty() && plan.backends.is_empty() && !plan.from_config {
                    self.services.remove(&cand.service);
                }
                self.refuse(c, Some(&cand.service), Standing::Refused, reason);
                continue;
            }
            (plan.site, plan.upstream, plan.tls_set_by) = (site, upstream, set_by);
            for route in &cand.claims {
                if !plan.routes.contains(route) {
                    owners.insert(route.clone(), cand.service.clone());
                    plan.routes.push(route.clone());
                }
            }

            let Some(addr) = addr else {
                let reason = format!("container is {}", c.state.as_str());
                self.refuse(c, Some(&cand.service), Standing::Waiting, reason);
                continue;
            };
            if let Some(other) = plan.backends.iter().find(|b| b.addr == addr) {
                let reason = format!("address {addr} is already used by container {}", other.container_name);
                self.refuse(c, Some(&cand.service), Standing::Refused, reason);
                continue;
            }
            // Past draining: out of the service, though the process may still run.
            match c.departure {
                Departure::Killed => {
                    self.refuse(c, Some(&cand.service), Standing::Waiting, "container is being killed (SIGKILL)".into());
                    continue;
                }
                Departure::Overdue => {
                    let timeout = c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
                    let reason = format!("container is still running {timeout:?} after its stop signal (its stop timeout)");
                    self.refuse(c, Some(&cand.service), Standing::Waiting, reason);
                    continue;
                }
                Departure::Staying | Departure::Leaving | Departure::Draining => {}
            }
            let gate = docker_gate(c);
            plan.backends.push(BackendPlan {
                container_id: c.id.clone(),
                container_name: c.name.clone(),
                addr,
                weight: cand.labels.weight.unwrap_or(1),
                probe,
                gate,
                stop_timeout: c.stop_timeout,
            });
            self.verdicts.insert(
                c.id.clone(),
                Verdict {
                    container_name: c.name.clone(),
                    service: Some(cand.service),
                    standing: match gate {
                        None => Standing::Routed,
                        Some(Gate::DockerUnhealthy) => Standing::Refused,
                        Some(_) => Standing::Waiting,
                    },
                    reason: gate.map(|g| g.to_string()),
                },
            );
        }
    }

    /// Final touches on the services just planned: a label-made service that no container gave
    /// a host or path can never be reached, so it is dropped with a reason; the rest is sorted.
    fn finish(&mut self, config: &Config, services: &BTreeSet<String>) {
        let prefix = config.docker.label_prefix.as_str();
        for name in services {
            let Some(plan) = self.services.get_mut(name) else { continue };
            if plan.routes.is_empty() {
                let plan = self.services.remove(name).expect("just seen");
                for b in plan.backends {
                    if let Some(v) = self.verdicts.get_mut(&b.container_id) {
                        v.standing = Standing::Refused;
                        v.reason = Some(format!(
                            "service {name} has no route: set {prefix}.host or {prefix}.path, or declare it under services:"
                        ));
                    }
                }
                continue;
            }
            plan.backends.sort_by(|a, b| a.container_name.cmp(&b.container_name));
            plan.routes.sort();
        }
    }

    fn refuse(&mut self, c: &Container, service: Option<&str>, standing: Standing, reason: String) {
        self.verdicts.insert(
            c.id.clone(),
            Verdict {
                container_name: c.name.clone(),
                service: service.map(str::to_string),
                standing,
                reason: Some(reason),
            },
        );
    }

    /// Containers that are not routed, with their reasons (for logs).
    pub fn refusals(&self) -> impl Iterator<Item = (&String, &Verdict)> {
        self.verdicts.iter().filter(|(_, v)| !v.routed())
    }
}

/// Opt-in, label parsing and service choice for one container.
fn admit(config: &Config, c: &Container) -> Result<(String, Labels), (Standing, String)> {
    let prefix = config.docker.label_prefix.as_str();
    let labels = Labels::parse(prefix, &c.labels).map_err(|e| (Standing::Refused, e.to_string()))?;
    if labels.enable == Some(false) {
        return Err((Standing::NotOptedIn, format!("label {prefix}.enable=false")));
    }
    let selected: Vec<&str> = config
        .services
        .values()
        .filter(|s| s.selector.as_ref().is_some_and(|sel| sel.matches(&c.labels, &c.image)))
        .map(|s| s.name.as_str())
        .collect();
    let opted_in = labels.enable == Some(true) || config.docker.exposed_by_default || !selected.is_empty();
    if !opted_in {
        return Err((Standing::NotOptedIn, format!("no {prefix}.enable=true label")));
    }
    let service = match (&labels.service, selected.as_slice()) {
        (Some(s), _) => s.clone(),
        (None, [one]) => one.to_string(),
        // A Swarm task (or VIP) belongs to its Swarm service.
        (None, []) => match c.labels.get(SWARM_SERVICE_LABEL).or_else(|| c.labels.get(COMPOSE_SERVICE_LABEL)) {
            Some(s) if validate_service_name(s).is_ok() => s.clone(),
            _ => c.name.clone(),
        },
        (None, several) => {
            let reason = format!("matches the selectors of services {}: set {prefix}.service", several.join(" and "));
            return Err((Standing::Refused, reason));
        }
    };
    validate_service_name(&service)
        .map_err(|e| (Standing::Refused, format!("cannot name its service: {e}: set {prefix}.service")))?;
    Ok((service, labels))
}

/// `addr`, unless it is one of hawser's own listeners (see [`address::own_listener`]).
fn refuse_own_listener(config: &Config, addr: SocketAddr) -> Result<SocketAddr, String> {
    let what = |listener: SocketAddr, kind: &str| {
        let via = if listener == addr { String::new() } else { format!(" (address {addr})") };
        Err(format!("routes to hawser's own {kind}listener {listener}{via}"))
    };
    if let Some(listener) = address::own_listener(addr, config.listen.iter().copied()) {
        return what(listener, "");
    }
    if let Some(listener) = address::own_listener(addr, [config.admin.listen]) {
        return what(listener, "admin ");
    }
    Ok(addr)
}

/// The routes a container's labels ask for: each host × the path (a path alone means any host).
fn label_routes(labels: &Labels) -> Vec<RouteKey> {
    let path = labels.path.clone().unwrap_or_else(|| "/".to_string());
    match (&labels.hosts, &labels.path) {
        (Some(hosts), _) => {
            hosts.iter().map(|h| RouteKey { host: h.clone(), path_prefix: path.clone() }).collect()
        }
        (None, Some(_)) => vec![RouteKey { host: HostPattern::Any, path_prefix: path }],
        (None, None) => Vec::new(),
    }
}

fn yaml_plan(svc: &crate::config::ServiceConfig) -> ServicePlan {
    ServicePlan {
        name: svc.name.clone(),
        routes: svc.routes.clone(),
        from_config: true,
        backends: Vec::new(),
        health: svc.health.clone(),
        proxy: svc.proxy.clone(),
        site: svc.site.clone(),
        upstream: svc.upstream.clone(),
        tls_set_by: tls::SetBy::new(),
    }
}

/// Docker's own word on whether a running container may get traffic.
fn docker_gate(c: &Container) -> Option<Gate> {
    match c.departure {
        Departure::Draining => return Some(Gate::Draining),
        Departure::Leaving => return Some(Gate::Leaving),
        _ => {}
    }
    match c.state {
        RunState::Paused => return Some(Gate::Paused),
        RunState::Restarting => return Some(Gate::Restarting),
        _ => {}
    }
    match c.health {
        DockerHealth::Starting => Some(Gate::DockerStarting),
        DockerHealth::Unhealthy => Some(Gate::DockerUnhealthy),
        DockerHealth::None | DockerHealth::Healthy => None,
    }
}

/// The label's type, else the service's or the defaults'; HTTP when a path is known (label,
/// then service or defaults) unless TCP or gRPC was asked for.
fn probe_for(health: &HealthPolicy, label_kind: Option<CheckKind>, label_path: Option<&str>) -> Probe {
    let path = label_path.map(str::to_string).or_else(|| health.path.clone());
    match (label_kind.or(health.kind), path) {
        (Some(CheckKind::Tcp), _) => Probe::Tcp,
        (Some(CheckKind::Grpc), _) => Probe::Grpc,
        (_, Some(path)) => Probe::Http { path },
        (Some(CheckKind::Http), None) => Probe::Http { path: "/".into() },
        (None, None) => Probe::Tcp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;

    fn config(yaml: &str) -> Config {
        Loaded::from_yaml(yaml, "t.yaml").unwrap().config
    }

    fn web(name: &str, ip: &str, host: &str) -> Container {
        Container::sample(name, ip).label("hawser.enable", "true").label("hawser.host", host).label("hawser.service", "web")
    }

    fn reason<'a>(cat: &'a Catalog, id: &str) -> &'a str {
        cat.verdicts[id].reason.as_deref().unwrap_or("")
    }

    #[test]
    fn labelled_containers_form_a_service() {
        let cs = [web("w1", "10.0.0.2", "web.test"), web("w2", "10.0.0.3", "web.test")];
        let cat = Catalog::build(&config(""), &cs, &Environment::default());
        let svc = &cat.services["web"];
        assert_eq!(svc.routes, vec![RouteKey { host: HostPattern::Exact("web.test".into()), path_prefix: "/".into() }]);
        assert_eq!(svc.backends.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>(), ["10.0.0.2:80", "10.0.0.3:80"]);
        assert!(cat.verdicts.values().all(|v| v.routed()));
        assert_eq!(svc.backends[0].probe, Probe::Tcp);
    }

    #[test]
    fn a_control_character_in_a_label_refuses_only_that_container() {
        let good = web("good", "10.0.0.2", "web.test");
        let bad = web("bad", "10.0.0.3", "web.test").label("hawser.healthcheck.path", "/healthz\r\nX-Evil: 1");
        let cat = Catalog::build(&config(""), [&good, &bad], &Environment::default());
        let why = reason(&cat, "bad-id");
        assert!(why.starts_with("label hawser.healthcheck.path=") && why.contains("contains a control character"), "{why}");
        assert_eq!(cat.verdicts["bad-id"].standing, Standing::Refused);
        assert!(cat.verdicts["good-id"].routed());
        assert_eq!(cat.services["web"].backends.len(), 1);
    }

    #[test]
    fn a_backend_at_hawsers_own_listener_is_refused() {
        let host_mode = |name: &str, port: &str| {
            let mut c = web(name, "10.0.0.9", &format!("{name}.test")).label("hawser.port", port);
            c.network_mode = "host".into();
            c.networks = [("host".to_string(), None)].into();
            c
        };
        let cs = [host_mode("loop", "8080"), host_mode("admin", "9900"), host_mode("fine", "8081"), web("w", "10.0.0.2", "w.test")];
        let cat = Catalog::build(&config("listen: [\"0.0.0.0:8080\"]\n"), &cs, &Environment::default());
        assert_eq!(reason(&cat, "loop-id"), "routes to hawser's own listener 0.0.0.0:8080 (address 127.0.0.1:8080)");
        assert_eq!(cat.verdicts["loop-id"].standing, Standing::Refused);
        assert_eq!(reason(&cat, "admin-id"), "routes to hawser's own admin listener 127.0.0.1:9900");
        assert!(cat.verdicts["fine-id"].routed(), "{:?}", cat.verdicts["fine-id"]);
        assert!(cat.verdicts["w-id"].routed());
        let web = &cat.services["web"];
        let addrs: Vec<String> = web.backends.iter().map(|b| b.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:8081", "10.0.0.2:80"]);
        // The refused ones claimed nothing: their hosts are not routes that answer 503 for ever.
        let hosts: Vec<String> = web.routes.iter().map(|r| r.host.to_string()).collect();
        assert_eq!(hosts, ["fine.test", "w.test"]);
        let cat = Catalog::build(&config("listen: [\"127.0.0.1:8080\"]\n"), &cs[..1], &Environment::default());
        assert_eq!(reason(&cat, "loop-id"), "routes to hawser's own listener 127.0.0.1:8080");
    }

    #[test]
    fn opt_in_is_required_unless_exposed_by_default() {
        let c = Container::sample("plain", "10.0.0.2").label("hawser.host", "a.test");
        let cat = Catalog::build(&config(""), [&c], &Environment::default());
        assert_eq!(reason(&cat, "plain-id"), "no hawser.enable=true label");
        let cat = Catalog::build(&config("docker: {exposed_by_default: true}"), [&c], &Environment::default());
        assert!(cat.verdicts["plain-id"].routed());
        assert_eq!(cat.verdicts["plain-id"].service.as_deref(), Some("plain"));
        let off = c.clone().label("hawser.enable", "false");
        let cat = Catalog::build(&config("docker: {exposed_by_default: true}"), [&off], &Environment::default());
        assert_eq!(reason(&cat, "plain-id"), "label hawser.enable=false");
    }

    #[test]
    fn service_name_defaults_to_compose_then_container_name() {
        let a = Container::sample("proj-api-1", "10.0.0.2")
            .label("hawser.enable", "true")
            .label("hawser.host", "a.test")
            .label(COMPOSE_SERVICE_LABEL, "api");
        let b = Container::sample("lonely", "10.0.0.3").label("hawser.enable", "true").label("hawser.host", "b.test");
        let cat = Catalog::build(&config(""), [&a, &b], &Environment::default());
        assert!(cat.services.contains_key("api"));
        assert!(cat.services.contains_key("lonely"));
    }

    #[test]
    fn a_bad_label_skips_only_that_container() {
        let good = web("good", "10.0.0.2", "web.test");
        let bad = web("bad", "10.0.0.3", "web.test").label("hawser.port", "abc");
        let cat = Catalog::build(&config(""), [&good, &bad], &Environment::default());
        assert_eq!(reason(&cat, "bad-id"), "label hawser.port=\"abc\": not a port number (1-65535)");
        assert_eq!(cat.services["web"].backends.len(), 1);
        let net = web("net", "10.0.0.4", "web.test").label("hawser.network", "nowhere");
        let cat = Catalog::build(&config(""), [&good, &net], &Environment::default());
        assert!(reason(&cat, "net-id").contains("not on network nowhere"));
        assert_eq!(cat.services["web"].backends.len(), 1);
    }

    #[test]
    fn a_claimed_host_is_refused_to_another_service_and_the_owner_keeps_it() {
        let mut older = web("w1", "10.0.0.2", "web.test");
        older.created = 1;
        let mut intruder = Container::sample("x", "10.0.0.3")
            .label("hawser.enable", "true")
            .label("hawser.host", "web.test")
            .label("hawser.service", "other");
        intruder.created = 2;
        for order in [[&older, &intruder], [&intruder, &older]] {
            let cat = Catalog::build(&config(""), order, &Environment::default());
            assert_eq!(reason(&cat, "x-id"), "host web.test is already routed to service web");
            assert!(cat.verdicts["w1-id"].routed());
            assert!(!cat.services.contains_key("other"));
        }
        // A YAML service owns its hosts over any label.
        let cat = Catalog::build(&config("services:\n  yaml:\n    hosts: [web.test]\n"), [&older], &Environment::default());
        assert_eq!(reason(&cat, "w1-id"), "host web.test is already routed to service yaml");
        // A live container wins over an older, exited one.
        let mut exited = intruder.clone();
        exited.created = 0;
        exited.state = RunState::Exited;
        let cat = Catalog::build(&config(""), [&exited, &older], &Environment::default());
        assert!(cat.verdicts["w1-id"].routed());
        assert_eq!(reason(&cat, "x-id"), "host web.test is already routed to service web");
    }

    #[test]
    fn stopped_containers_keep_the_route_without_backends() {
        let mut c = web("w1", "10.0.0.2", "web.test");
        c.state = RunState::Exited;
        c.networks.insert("net".into(), None);
        let cat = Catalog::build(&config(""), [&c], &Environment::default());
        assert_eq!(cat.services["web"].backends.len(), 0);
        assert_eq!(cat.services["web"].routes.len(), 1);
        assert_eq!(reason(&cat, "w1-id"), "container is exited");
    }

    #[test]
    fn docker_state_gates_traffic() {
        let mut c = web("w1", "10.0.0.2", "web.test");
        c.health = DockerHealth::Starting;
        let cat = Catalog::build(&config(""), [&c], &Environment::default());
        assert_eq!(cat.services["web"].backends[0].gate, Some(Gate::DockerStarting));
        assert!(!cat.verdicts["w1-id"].routed());
        c.health = DockerHealth::Healthy;
        c.departure = Departure::Draining;
        let cat = Catalog::build(&config(""), [&c], &Environment::default());
        assert_eq!(cat.services["web"].backends[0].gate, Some(Gate::Draining));
        // Killed, or still running past its stop timeout: no longer a backend at all.
        for (departure, why) in [(Departure::Killed, "SIGKILL"), (Departure::Overdue, "stop timeout")] {
            c.departure = departure;
            let cat = Catalog::build(&config(""), [&c], &Environment::default());
            assert!(cat.services["web"].backends.is_empty());
            assert!(reason(&cat, "w1-id").contains(why), "{}", reason(&cat, "w1-id"));
        }
        c.departure = Departure::Staying;
        c.state = RunState::Paused;
        let cat = Catalog::build(&config(""), [&c], &Environment::default());
        assert_eq!(cat.services["web"].backends[0].gate, Some(Gate::Paused));
    }

    #[test]
    fn standing_says_how_loud_a_verdict_is() {
        let standing = |c: &Container| Catalog::build(&config(""), [c], &Environment::default()).verdicts[&c.id].standing;
        let ok = web("w1", "10.0.0.2", "web.test");
        assert_eq!(standing(&ok), Standing::Routed);
        assert_eq!(standing(&Container::sample("plain", "10.0.0.3")), Standing::NotOptedIn);
        assert_eq!(standing(&ok.clone().label("hawser.port", "x")), Standing::Refused);
        let mut c = ok.clone();
        c.departure = Departure::Draining;
        assert_eq!(standing(&c), Standing::Waiting);
        c.departure = Departure::Staying;
        c.health = DockerHealth::Starting;
        assert_eq!(standing(&c), Standing::Waiting);
        c.health = DockerHealth::Unhealthy;
        assert_eq!(standing(&c), Standing::Refused);
        c.health = DockerHealth::None;
        c.state = RunState::Exited;
        assert_eq!(standing(&c), Standing::Waiting);
    }

    /// A tiny deterministic generator (xorshift): the property test needs no crate.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
            options[(self.next() % options.len() as u64) as usize]
        }
    }

    /// A random container among a small pool of names, so that changes hit shared hosts,
    /// services, addresses and YAML-owned routes often.
    fn random_container(rng: &mut Rng, n: usize) -> Container {
        let ip = rng.pick(&["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]);
        let mut c = Container::sample(&format!("c{n}"), ip);
        c.created = (rng.next() % 5) as i64;
        c.state = match rng.next() % 6 {
            0 => RunState::Exited,
            1 => RunState::Paused,
            _ => RunState::Running,
        };
        if rng.next() % 5 == 0 {
            c.departure = Departure::Draining;
        }
        if rng.next() % 7 != 0 {
            c = c.label("hawser.enable", "true");
        }
        match rng.next() % 4 {
            0 => {}
            1 => c = c.label("hawser.host", rng.pick(&["a.test", "b.test", "yaml.test"])),
            2 => c = c.label("hawser.host", "a.test,b.test"),
            _ => c = c.label("hawser.path", rng.pick(&["/api", "/"])),
        }
        match rng.next() % 4 {
            0 => c = c.label("hawser.service", rng.pick(&["s1", "s2", "yaml"])),
            1 => c = c.label("role", "pick-me"),
            _ => {}
        }
        if rng.next() % 9 == 0 {
            c = c.label("hawser.port", "not-a-port");
        }
        if rng.next() % 8 == 0 {
            c.exposed_tcp = vec![80, 443];
        }
        c
    }

    #[test]
    fn incremental_updates_equal_a_full_build() {
        let cfg = config("services:\n  yaml:\n    hosts: [yaml.test]\n    selector: {label: role=pick-me}\n");
        let env = Environment::default();
        for seed in 1..=40u64 {
            let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
            let mut containers: BTreeMap<String, Container> = BTreeMap::new();
            let mut incremental = Catalog::build(&cfg, containers.values(), &env);
            for step in 0..60 {
                let n = (rng.next() % 10) as usize;
                let id = format!("c{n}-id");
                if rng.next() % 6 == 0 {
                    containers.remove(&id);
                } else {
                    containers.insert(id.clone(), random_container(&mut rng, n));
                }
                let before = incremental.clone();
                let change = incremental.update(&cfg, &env, &containers, &id);
                let full = Catalog::build(&cfg, containers.values(), &env);
                assert_eq!(incremental, full, "seed {seed}, step {step}: change of {id}\ncontainers: {containers:#?}");
                // The change names everything that differs, with what it was before.
                let names: BTreeSet<&String> = before.services.keys().chain(full.services.keys()).collect();
                for name in names {
                    match change.services.get(name) {
                        Some(old) => assert_eq!(old.as_ref(), before.services.get(name), "seed {seed}, step {step}: {name}"),
                        None => assert_eq!(before.services.get(name), full.services.get(name), "seed {seed}, step {step}: {name} changed unannounced"),
                    }
                }
                let ids: BTreeSet<&String> = before.verdicts.keys().chain(full.verdicts.keys()).collect();
                for v in ids {
                    match change.verdicts.get(v) {
                        Some(old) => assert_eq!(old.as_ref(), before.verdicts.get(v), "seed {seed}, step {step}: {v}"),
                        None => assert_eq!(before.verdicts.get(v), full.verdicts.get(v), "seed {seed}, step {step}: {v} changed unannounced"),
                    }
                }
            }
        }
    }

    #[test]
    fn an_update_touches_only_its_part_of_the_fleet() {
        let cfg = config("");
        let mut containers: BTreeMap<String, Container> = BTreeMap::new();
        for i in 0..50 {
            let c = Container::sample(&format!("c{i}"), &format!("10.0.{}.{}", i / 200, i % 200 + 2))
                .label("hawser.enable", "true")
                .label("hawser.host", &format!("s{}.test", i / 5))
                .label("hawser.service", &format!("s{}", i / 5));
            containers.insert(c.id.clone(), c);
        }
        let mut cat = Catalog::build(&cfg, containers.values(), &Environment::default());
        containers.get_mut("c7-id").unwrap().state = RunState::Exited;
        let change = cat.update(&cfg, &Environment::default(), &containers, "c7-id");
        assert_eq!(change.services.keys().collect::<Vec<_>>(), ["s1"]);
        assert_eq!(change.verdicts.len(), 5, "the five containers of s1");
        assert!(change.verdicts["c7-id"].as_ref().is_some_and(|v| v.routed()));
        // A host claimed by another service pulls that service in too.
        let intruder = Container::sample("x", "10.9.0.2").label("hawser.enable", "true").label("hawser.host", "s2.test");
        containers.insert(intruder.id.clone(), intruder);
        let change = cat.update(&cfg, &Environment::default(), &containers, "x-id");
        assert_eq!(change.services.keys().collect::<Vec<_>>(), ["s2", "x"]);
        assert_eq!(change.services["x"], None, "x did not exist before");
        assert_eq!(change.verdicts["x-id"], None);
        assert_eq!(reason(&cat, "x-id"), "host s2.test is already routed to service s2");
    }

    #[test]
    fn yaml_selectors_pull_containers_in() {
        let cfg = config(
            "services:\n  api:\n    hosts: [api.test]\n    port: 8080\n    selector: {label: role=api}\n    health_check: {path: /ready}\n  img:\n    path_prefix: /img\n    selector: {image: sample}\n",
        );
        let mut by_label = Container::sample("a", "10.0.0.2").label("role", "api");
        by_label.image = "other:2".into();
        let mut by_image = Container::sample("b", "10.0.0.3");
        by_image.image = "other:1".into();
        let both = Container::sample("c", "10.0.0.4").label("role", "api");
        let cat = Catalog::build(&cfg, [&by_label], &Environment::default());
        let api = &cat.services["api"].backends[0];
        assert_eq!(api.addr.to_string(), "10.0.0.2:8080");
        assert_eq!(api.probe, Probe::Http { path: "/ready".into() });
        // "sample:latest" matches both selectors: refused rather than guessed.
        let cat = Catalog::build(&cfg, [&both, &by_image], &Environment::default());
        assert!(reason(&cat, "c-id").starts_with("matches the selectors of services api and img"));
        assert_eq!(reason(&cat, "b-id"), "no hawser.enable=true label");
        let pinned = both.clone().label("hawser.service", "api");
        let cat = Catalog::build(&cfg, [&pinned], &Environment::default());
        assert!(cat.verdicts["c-id"].routed());
    }

    #[test]
    fn routes_need_a_host_or_path() {
        let c = Container::sample("a", "10.0.0.2").label("hawser.enable", "true");
        let cat = Catalog::build(&config(""), [&c], &Environment::default());
        assert!(reason(&cat, "a-id").contains("has no route"));
        assert!(cat.services.is_empty());
        let p = c.clone().label("hawser.path", "/api");
        let cat = Catalog::build(&config(""), [&p], &Environment::default());
        assert_eq!(cat.services["a"].routes[0], RouteKey { host: HostPattern::Any, path_prefix: "/api".into() });
    }

    #[test]
    fn weights_and_health_paths_come_from_labels() {
        let c = web("w1", "10.0.0.2", "web.test").label("hawser.weight", "3").label("hawser.healthcheck.path", "/hz");
        let cat = Catalog::build(&config("health_check: {path: /default}"), [&c], &Environment::default());
        let b = &cat.services["web"].backends[0];
        assert_eq!(b.weight, 3);
        assert_eq!(b.probe, Probe::Http { path: "/hz".into() });
        let cat = Catalog::build(&config("health_check: {path: /default, type: tcp}"), [&c], &Environment::default());
        assert_eq!(cat.services["web"].backends[0].probe, Probe::Tcp);
    }
}
