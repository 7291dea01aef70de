//! The live side of the catalog: one pingora `LoadBalancer<RoundRobin>` per service, the route
//! table the proxy reads, and the targets the health checker probes.
//!
//! Concurrency rules:
//! - The route table is swapped whole (`ArcSwap`); a request never sees half an update.
//! - Each service has exactly one updater task, the only caller of its `LoadBalancer::update()`
//!   (pingora: "calls on the same backend view must not overlap"). Changes store a new
//!   [`Snapshot`] and wake that task; wakes coalesce, and the task always reads the newest
//!   snapshot, so no change is lost and none waits for a polling interval.
//! - `State` is behind one mutex, held only for in-memory work (no I/O, no await).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use log::{debug, info, warn};
use pingora_load_balancing::selection::RoundRobin;
use pingora_load_balancing::{Backend, Backends, LoadBalancer};
use tokio::sync::{Notify, mpsc};

use crate::catalog::routes::{HostPattern, RouteTable};
use crate::catalog::{BackendPlan, Catalog, Change, Container, Environment, Gate, Probe, ServicePlan, Standing};
use crate::config::{Config, HealthPolicy, ProxyPolicy, SiteTls};
use crate::discovery::{Snapshot, SnapshotDiscovery, backend_key};
use crate::metrics::{ServiceMetrics, forget_backend, metrics};
use crate::passive::{BackendLive, RetryBudget};
use crate::upstream::Dial;

/// What active health checking says about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStatus {
    /// No probe has passed yet: no traffic (pingora would start it healthy; hawser does not).
    Starting,
    Ready,
    Unhealthy,
}

/// One backend to probe. Its key is (container, address): a new address starts over.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTarget {
    pub container_id: String,
    pub container_name: String,
    pub service: String,
    pub addr: SocketAddr,
    pub probe: Probe,
    pub policy: HealthPolicy,
    /// Host header for HTTP probes: the service's first exact host, else the address.
    pub host: String,
    /// Cleartext or TLS, as the service's requests (see [`crate::upstream`]); shared by the
    /// service's targets.
    pub dial: Arc<Dial>,
}

pub type ProbeKey = (String, SocketAddr);

impl ProbeTarget {
    pub fn key(&self) -> ProbeKey {
        (self.container_id.clone(), self.addr)
    }
}

/// Why a service's backends changed: logged with the time it took to go live.
#[derive(Debug, Clone)]
pub struct Cause {
    pub what: String,
    /// The Docker event's `timeNano`, when a Docker event caused it.
    pub event_nanos: Option<i64>,
}

/// A live service: what the proxy needs per request.
pub struct Service {
    pub name: String,
    pub lb: LoadBalancer<RoundRobin>,
    pub proxy: ProxyPolicy,
    /// TLS at the edge (`tls`, `redirect`, `hsts`): labels may change it while the service lives.
    pub site: ArcSwap<SiteTls>,
    /// How the backends are dialled (scheme, TLS name and roots); may change like `site`.
    pub upstream: ArcSwap<Dial>,
    pub retry_budget: RetryBudget,
    pub metrics: ServiceMetrics,
    snapshot: Arc<Mutex<Arc<Snapshot>>>,
    wake: Notify,
    pending: Mutex<Option<Cause>>,
    closed: AtomicBool,
    /// Snapshots published, and how many of them the load balancer has taken: the selector
    /// is live with the latest snapshot when the two are equal.
    published: AtomicU64,
    live: AtomicU64,
}

impl Service {
    fn new(plan: &ServicePlan) -> Arc<Service> {
        let snapshot = Arc::new(Mutex::new(Arc::new(Snapshot::default())));
        let discovery = SnapshotDiscovery::new(Arc::clone(&snapshot));
        let lb = LoadBalancer::from_backends(Backends::new(Box::new(discovery)));
        let svc = Arc::new(Service {
            name: plan.name.clone(),
            lb,
            proxy: plan.proxy.clone(),
            site: ArcSwap::from_pointee(plan.site.clone()),
            upstream: ArcSwap::from_pointee(dial_of(plan)),
            retry_budget: RetryBudget::new(&plan.proxy.retry_budget),
            metrics: ServiceMetrics::new(&plan.name),
            snapshot,
            wake: Notify::new(),
            pending: Mutex::new(None),
            closed: AtomicBool::new(false),
            published: AtomicU64::new(0),
            live: AtomicU64::new(0),
        });
        tokio::spawn(run_updates(Arc::clone(&svc)));
        svc
    }

    /// Stores a new snapshot and wakes the updater, if anything changed.
    fn publish(&self, next: Snapshot, cause: &Cause) {
        {
            let mut current = self.snapshot.lock().expect("snapshot lock");
            if **current == next {
                return;
            }
            *current = Arc::new(next);
        }
        self.published.fetch_add(1, Ordering::AcqRel);
        let mut pending = self.pending.lock().expect("pending lock");
        // Several changes before the updater runs: report the oldest event's delay.
        match pending.as_mut() {
            Some(p) if p.event_nanos.is_some() => {}
            _ => *pending = Some(cause.clone()),
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Whether the selector has taken the latest snapshot.
    fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire) >= self.published.load(Ordering::Acquire)
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.lock().expect("snapshot lock"))
    }

    fn close(&self) {
        self.metrics.remove();
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// The one updater of a service's load balancer.
async fn run_updates(svc: Arc<Service>) {
    loop {
        svc.wake.notified().await;
        if svc.closed.load(Ordering::Acquire) {
            debug!("service {}: updater stopped", svc.name);
            return;
        }
        let cause = svc.pending.lock().expect("pending lock").take();
        let started = Instant::now();
        // Read before the update reads the snapshot: a later publish leaves `live` behind
        // and wakes this loop again.
        let target = svc.published.load(Ordering::Acquire);
        if let Err(e) = svc.lb.update().await {
            warn!("service {}: load balancer update failed: {e}", svc.name);
            continue;
        }
        svc.live.store(target, Ordering::Release);
        let snapshot = svc.snapshot();
        let (total, ready) = (snapshot.backends.len(), snapshot.ready_count());
        let Some(cause) = cause else { continue };
        match cause.event_nanos {
            Some(event) => {
                let delay_ms = (unix_nanos() - event) as f64 / 1e6;
                metrics().discovery_latency.observe(delay_ms / 1e3);
                info!(
                    "service {}: selector live {delay_ms:.1} ms after Docker event ({}); {ready}/{total} backends ready",
                    svc.name, cause.what
                );
            }
            None => info!(
                "service {}: selector live in {:.1} ms ({}); {ready}/{total} backends ready",
                svc.name,
                started.elapsed().as_secs_f64() * 1e3,
                cause.what
            ),
        }
    }
}

pub fn unix_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

struct State {
    services: HashMap<String, Arc<Service>>,
    catalog: Catalog,
    probes: HashMap<ProbeKey, ProbeStatus>,
    /// For each probe target, the Docker event that made it appear (for the ready log).
    appeared: HashMap<ProbeKey, Cause>,
    /// The current probe targets.
    targets: HashMap<ProbeKey, ProbeTarget>,
    /// Every current backend's shared state with the proxy (failure runs, ejection).
    live: HashMap<ProbeKey, Arc<BackendLive>>,
    /// Why the last probe of a target failed, until one passes (for the admin API).
    probe_errors: HashMap<ProbeKey, String>,
    /// Container ids drained through the admin API.
    drained: std::collections::BTreeSet<String>,
}

/// A change of the set of backends to probe.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetChange {
    /// Start probing (or restart, if the key was probed with other settings).
    Add(ProbeTarget),
    Remove(ProbeKey),
}

/// The shared runtime. Docker discovery writes to it; the proxy and health checks read it.
pub struct Runtime {
    routes: ArcSwap<RouteTable<Arc<Service>>>,
    state: Mutex<State>,
    probe_changes: mpsc::UnboundedSender<TargetChange>,
    probe_changes_rx: Mutex<Option<mpsc::UnboundedReceiver<TargetChange>>>,
    docker_connected: AtomicBool,
}

impl Default for Runtime {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Runtime {
            routes: ArcSwap::from_pointee(RouteTable::default()),
            state: Mutex::new(State {
                services: HashMap::new(),
                catalog: Catalog::default(),
                probes: HashMap::new(),
                appeared: HashMap::new(),
                targets: HashMap::new(),
                live: HashMap::new(),
                probe_errors: HashMap::new(),
                drained: Default::default(),
            }),
            probe_changes: tx,
            probe_changes_rx: Mutex::new(Some(rx)),
            docker_connected: AtomicBool::new(false),
        }
    }
}

impl Runtime {
    pub fn new() -> Arc<Runtime> {
        Arc::new(Runtime::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("runtime state lock")
    }

    /// The service for a request, if any route matches. `host` must be normalised.
    pub fn route(&self, host: &str, path: &str) -> Option<Arc<Service>> {
        self.routes.load().lookup(host, path).cloned()
    }

    pub fn set_docker_connected(&self, connected: bool) {
        metrics().docker_connected.set(i64::from(connected));
        self.docker_connected.store(connected, Ordering::Relaxed);
    }

    pub fn docker_connected(&self) -> bool {
        self.docker_connected.load(Ordering::Relaxed)
    }

    /// The catalog currently applied.
    pub fn catalog(&self) -> Catalog {
        self.state().catalog.clone()
    }

    /// Reads the current catalog without copying it.
    pub fn with_catalog<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&self.state().catalog)
    }

    /// Makes a whole new `catalog` live (start-up, resynchronisation). Must run inside a tokio
    /// runtime (new services spawn their updater).
    pub fn apply(&self, catalog: Catalog, cause: &Cause) {
        let mut st = self.state();
        let old = std::mem::replace(&mut st.catalog, catalog);
        let change = Change {
            services: before_of(old.services, &st.catalog.services),
            verdicts: before_of(old.verdicts, &st.catalog.verdicts),
        };
        self.sync(&mut st, &change, cause);
    }

    /// Applies one container's change (it changed, appeared, or is gone from `containers`):
    /// only what it touches is re-planned and updated, so an event costs in proportion to
    /// its service, not to the fleet.
    pub fn update_container(
        &self,
        config: &Config,
        env: &Environment,
        containers: &BTreeMap<String, Container>,
        id: &str,
        cause: &Cause,
    ) {
        let mut st = self.state();
        let change = st.catalog.update(config, env, containers, id);
        self.sync(&mut st, &change, cause);
    }

    /// Brings the live side in line with `st.catalog` for what `change` names.
    fn sync(&self, st: &mut State, change: &Change, cause: &Cause) {
        // Verdict changes are what an operator wants in the log: say them once, when they change.
        for (id, before) in &change.verdicts {
            let Some(v) = st.catalog.verdicts.get(id) else {
                st.drained.remove(id);
                continue;
            };
            if before.as_ref() == Some(v) {
                continue;
            }
            let reason = v.reason.as_deref().unwrap_or("?");
            let name = &v.container_name;
            match v.standing {
                Standing::Routed => info!("container {name}: routed to service {}", v.service.as_deref().unwrap_or("?")),
                Standing::NotOptedIn => debug!("container {name}: not routed: {reason}"),
                Standing::Waiting => info!("container {name}: not routed: {reason}"),
                Standing::Refused => warn!("container {name}: not routed: {reason}"),
            }
        }

        let mut routes_changed = false;
        for (name, before) in &change.services {
            let now = st.catalog.services.get(name).cloned();
            routes_changed |= before.as_ref().map(|p| &p.routes) != now.as_ref().map(|p| &p.routes);

            // Probe targets: every backend that is or will soon be able to serve.
            let old_targets = before.as_ref().map(probe_targets_of).unwrap_or_default();
            let new_targets = now.as_ref().map(probe_targets_of).unwrap_or_default();
            for (key, t) in &old_targets {
                if new_targets.get(key) != Some(t) {
                    st.probes.remove(key);
                    st.probe_errors.remove(key);
                    st.appeared.remove(key);
                    st.targets.remove(key);
                    let _ = self.probe_changes.send(TargetChange::Remove(key.clone()));
                }
            }
            for (key, t) in new_targets {
                if old_targets.get(&key) != Some(&t) {
                    st.probes.insert(key.clone(), ProbeStatus::Starting);
                    st.appeared.insert(key.clone(), cause.clone());
                    st.targets.insert(key, t.clone());
                    let _ = self.probe_changes.send(TargetChange::Add(t));
                }
            }

            // The proxy's per-backend state lives as long as the backend.
            let new_keys: HashSet<ProbeKey> =
                now.iter().flat_map(|p| p.backends.iter().map(|b| (b.container_id.clone(), b.addr))).collect();
            for b in before.iter().flat_map(|p| p.backends.iter()) {
                let key = (b.container_id.clone(), b.addr);
                if !new_keys.contains(&key) {
                    if let Some(l) = st.live.remove(&key) {
                        forget_backend(&l.service, &l.container_name);
                    }
                }
            }

            match now {
                Some(plan) => {
                    for b in &plan.backends {
                        st.live.entry((b.container_id.clone(), b.addr)).or_insert_with(|| {
                            Arc::new(BackendLive::new(&b.container_id, &b.container_name, &plan.name, b.addr))
                        });
                    }
                    let snapshot = snapshot_of(&plan.backends, st);
                    let dial = dial_of(&plan);
                    if !st.services.contains_key(name) {
                        routes_changed = true;
                        st.services.insert(name.clone(), Service::new(&plan));
                        warn_unverified(name, None, &dial);
                    }
                    let svc = &st.services[name];
                    if **svc.site.load() != plan.site {
                        svc.site.store(Arc::new(plan.site.clone()));
                    }
                    let before = svc.upstream.load();
                    if **before != dial {
                        warn_unverified(name, Some(&before), &dial);
                        svc.upstream.store(Arc::new(dial));
                    }
                    svc.publish(snapshot, cause);
                }
                None => {
                    if let Some(svc) = st.services.remove(name) {
                        info!("service {name}: removed (no container or configuration declares it)");
                        svc.close();
                        routes_changed = true;
                    }
                }
            }
        }

        // The route table changes only when a service or its routes came or went.
        if routes_changed {
            let routes = RouteTable::build(st.catalog.services.values().flat_map(|plan| {
                let svc = &st.services[&plan.name];
                plan.routes.iter().map(move |r| (r.clone(), Arc::clone(svc)))
            }));
            self.routes.store(Arc::new(routes));
        }
    }

    /// The health checker's feed: every target added or removed since the start. Taken once.
    pub fn take_probe_changes(&self) -> Option<mpsc::UnboundedReceiver<TargetChange>> {
        self.probe_changes_rx.lock().expect("probe changes lock").take()
    }

    /// Every current probe target (for views and tests).
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        self.state().targets.values().cloned().collect()
    }

    /// Why the last probe of `target` failed (`None`: it passed), when that changed. A failed
    /// TLS handshake is said at warn, once per change: it is a configuration to fix (a name
    /// or CA that does not match), which a backend still starting never shows.
    pub fn probe_failure(&self, target: &ProbeTarget, failure: Option<&crate::health::ProbeFailure>) {
        let mut st = self.state();
        let key = target.key();
        // Only for a current target with these settings: a stale task must not speak for it.
        if st.targets.get(&key) != Some(target) {
            return;
        }
        match failure {
            Some(f) => {
                if f.tls {
                    warn!(
                        "backend {} ({}) of service {}: health check ({}) failed: {}",
                        target.container_name,
                        target.addr,
                        target.service,
                        target.dial.probe_words(&target.probe),
                        f.why
                    );
                }
                st.probe_errors.insert(key, f.why.clone());
            }
            None => {
                st.probe_errors.remove(&key);
            }
        }
    }

    /// A health state change from the checker.
    pub fn probe_changed(&self, target: &ProbeTarget, status: ProbeStatus) {
        let mut st = self.state();
        let key = target.key();
        match st.probes.get_mut(&key) {
            Some(s) if *s != status => *s = status,
            // Unknown (removed meanwhile) or unchanged.
            _ => return,
        }
        let appeared = st.appeared.get(&key).cloned();
        let Some(plan) = st.catalog.services.get(&target.service) else { return };
        let snapshot = snapshot_of(&plan.backends, &st);
        let Some(svc) = st.services.get(&target.service).cloned() else { return };
        let what = format!("container {} {}", target.container_name, status_word(status));
        // The first pass after a container appeared: report delay from the event that brought it.
        let event_nanos = match (status, appeared) {
            (ProbeStatus::Ready, Some(a)) => a.event_nanos,
            _ => None,
        };
        match status {
            ProbeStatus::Ready => info!("backend {} ({}) of service {}: ready", target.container_name, target.addr, target.service),
            _ => warn!(
                "backend {} ({}) of service {}: {} by {} check{}",
                target.container_name,
                target.addr,
                target.service,
                status_word(status),
                target.dial.probe_words(&target.probe),
                st.probe_errors.get(&key).map(|why| format!(": {why}")).unwrap_or_default()
            ),
        }
        if status == ProbeStatus::Ready {
            st.appeared.remove(&key);
        }
        svc.publish(snapshot, &Cause { what, event_nanos });
    }

    /// A connect failure or gateway error from `live`, seen by the proxy. A run of them as long
    /// as the service's `passive_ejection.consecutive_failures` ejects the backend for
    /// `passive_ejection.duration`; then an active probe must pass to bring it back. The last
    /// ready backend of a service is never ejected: a 503 for everyone would be no better.
    pub fn backend_failed(self: &Arc<Self>, svc: &Service, live: &Arc<BackendLive>) {
        let run = live.record_failure();
        let policy = &svc.proxy.ejection;
        if policy.consecutive_failures == 0 || run < policy.consecutive_failures || live.is_ejected() {
            return;
        }
        let st = self.state();
        let key = (live.container_id.clone(), live.addr);
        if !st.live.get(&key).is_some_and(|l| Arc::ptr_eq(l, live)) {
            return; // no longer a backend
        }
        let Some(plan) = st.catalog.services.get(&live.service) else { return };
        let current = snapshot_of(&plan.backends, &st);
        let others_ready = current
            .backends
            .iter()
            .filter(|b| b.addr.as_inet() != Some(&live.addr) && current.enabled.get(&backend_key(b)) == Some(&true))
            .count();
        if others_ready == 0 {
            debug!(
                "backend {} ({}) of service {}: {run} consecutive failures, but it is the last ready backend: not ejected",
                live.container_name, live.addr, live.service
            );
            return;
        }
        if !live.eject() {
            return;
        }
        live.metrics.ejections.inc();
        warn!(
            "backend {} ({}) of service {}: ejected for {:?} after {run} consecutive failures",
            live.container_name, live.addr, live.service, policy.duration
        );
        let snapshot = snapshot_of(&plan.backends, &st);
        let Some(service) = st.services.get(&live.service).cloned() else { return };
        service.publish(snapshot, &Cause { what: format!("ejection of {}", live.container_name), event_nanos: None });
        let target = st.targets.get(&key).cloned();
        drop(st);

        let (runtime, live, duration) = (Arc::clone(self), Arc::clone(live), policy.duration);
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            loop {
                if !runtime.is_current(&live) {
                    return;
                }
                let passed = match &target {
                    Some(t) => crate::health::probe_once(t).await.is_ok(),
                    // Not probed (e.g. draining): nothing to wait for.
                    None => true,
                };
                if passed {
                    runtime.restore(&live);
                    return;
                }
                tokio::time::sleep(target.as_ref().map_or(duration, |t| t.policy.interval)).await;
            }
        });
    }

    fn is_current(&self, live: &Arc<BackendLive>) -> bool {
        self.state().live.get(&(live.container_id.clone(), live.addr)).is_some_and(|l| Arc::ptr_eq(l, live))
    }

    /// Ends an ejection after its probe passed.
    fn restore(&self, live: &Arc<BackendLive>) {
        let st = self.state();
        if !st.live.get(&(live.container_id.clone(), live.addr)).is_some_and(|l| Arc::ptr_eq(l, live)) {
            return;
        }
        live.restore();
        info!("backend {} ({}) of service {}: back from ejection (probe passed)", live.container_name, live.addr, live.service);
        let (Some(plan), Some(service)) = (st.catalog.services.get(&live.service), st.services.get(&live.service)) else {
            return;
        };
        let snapshot = snapshot_of(&plan.backends, &st);
        service.publish(snapshot, &Cause { what: format!("return of {}", live.container_name), event_nanos: None });
    }

    /// Waits until no current probe target is still waiting for its first result and every
    /// service's selector is live with what the probes said, at most
    /// `limit`. Only used once, at start, so a short poll is simpler than a notification.
    pub async fn wait_initial_probes(&self, limit: std::time::Duration) {
        let deadline = Instant::now() + limit;
        // Until every first probe has an answer and every selector is live with it: a probe
        // that passed is no ready backend until its service's load balancer has taken it.
        let settled = || {
            let st = self.state();
            !st.probes.values().any(|s| *s == ProbeStatus::Starting) && st.services.values().all(|s| s.is_live())
        };
        while Instant::now() < deadline && !settled() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Every service with its routes and backends, by name.
    pub fn services_view(&self) -> Vec<ServiceView> {
        let st = self.state();
        st.catalog
            .services
            .values()
            .map(|plan| {
                let mut hosts: Vec<String> = Vec::new();
                for r in &plan.routes {
                    let h = r.host.to_string();
                    if !hosts.contains(&h) {
                        hosts.push(h);
                    }
                }
                ServiceView {
                    name: plan.name.clone(),
                    scheme: plan.upstream.scheme.as_str(),
                    hosts,
                    path_prefix: plan.routes.first().map_or_else(|| "/".to_string(), |r| r.path_prefix.clone()),
                    routes: plan
                        .routes
                        .iter()
                        .map(|r| RouteView { host: r.host.to_string(), path_prefix: r.path_prefix.clone() })
                        .collect(),
                    backends: plan
                        .backends
                        .iter()
                        .map(|b| BackendView {
                            container_id: b.container_id.clone(),
                            container_name: b.container_name.clone(),
                            address: b.addr.to_string(),
                            weight: b.weight,
                            state: backend_state(b, &st),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Every container hawser has seen, by name: routed (a ready backend) or why not.
    pub fn containers_view(&self) -> Vec<ContainerView> {
        let st = self.state();
        let backends: HashMap<&str, (&BackendPlan, &ServicePlan)> = st
            .catalog
            .services
            .values()
            .flat_map(|p| p.backends.iter().map(move |b| (b.container_id.as_str(), (b, p))))
            .collect();
        let mut views: Vec<ContainerView> = st
            .catalog
            .verdicts
            .iter()
            .map(|(id, v)| {
                let backend = backends.get(id.as_str());
                let state = backend.map(|(b, _)| backend_state(b, &st));
                // Docker's word first (the catalog's reason), then hawser's own.
                let reason = match (v.reason.clone(), state, backend) {
                    (Some(r), _, _) => Some(r),
                    (None, Some(state), Some((b, plan))) => state_reason(state, b, plan, &st),
                    (None, _, _) => None,
                };
                ContainerView {
                    container_id: id.clone(),
                    container_name: v.container_name.clone(),
                    service: v.service.clone(),
                    opted_in: v.standing != Standing::NotOptedIn,
                    routed: reason.is_none(),
                    reason,
                    state,
                }
            })
            .collect();
        views.sort_by(|a, b| a.container_name.cmp(&b.container_name));
        views
    }

    /// Takes a backend out of rotation (`drained`) or puts it back, by container id, unique id
    /// prefix or name. Lasts until undone or the container is gone. Returns its name.
    pub fn set_drained(&self, who: &str, drained: bool) -> Result<String, DrainError> {
        let mut st = self.state();
        let id = resolve_container(&st.catalog, who)?;
        let Some(plan) = st.catalog.services.values().find(|p| p.backends.iter().any(|b| b.container_id == id)) else {
            let v = &st.catalog.verdicts[&id];
            return Err(DrainError::NotABackend {
                name: v.container_name.clone(),
                reason: v.reason.clone().unwrap_or_else(|| "not a backend".into()),
            });
        };
        let name = st.catalog.verdicts[&id].container_name.clone();
        let service = plan.name.clone();
        let changed = if drained { st.drained.insert(id.clone()) } else { st.drained.remove(&id) };
        if changed {
            info!(
                "container {name}: {} through the admin API",
                if drained { "drained (no new requests)" } else { "undrained" }
            );
            let plan = &st.catalog.services[&service];
            let snapshot = snapshot_of(&plan.backends, &st);
            if let Some(svc) = st.services.get(&service) {
                let what = format!("{} of {name}", if drained { "drain" } else { "undrain" });
                svc.publish(snapshot, &Cause { what, event_nanos: None });
            }
        }
        Ok(name)
    }
}

/// Every key of `old` or `new`, with its value in `old` (`None`: only in `new`).
fn before_of<V>(old: BTreeMap<String, V>, new: &BTreeMap<String, V>) -> BTreeMap<String, Option<V>> {
    let mut before: BTreeMap<String, Option<V>> = new.keys().map(|k| (k.clone(), None)).collect();
    before.extend(old.into_iter().map(|(k, v)| (k, Some(v))));
    before
}

fn status_word(s: ProbeStatus) -> &'static str {
    match s {
        ProbeStatus::Starting => "starting",
        ProbeStatus::Ready => "ready",
        ProbeStatus::Unhealthy => "unhealthy",
    }
}

/// The backends of `plan` worth probing: every one that is or will soon be able to serve.
fn probe_targets_of(plan: &ServicePlan) -> HashMap<ProbeKey, ProbeTarget> {
    // HTTP probes carry the service's first exact host (else the address) as Host.
    let host = plan.routes.iter().find_map(|r| match &r.host {
        HostPattern::Exact(h) => Some(h.clone()),
        _ => None,
    });
    let dial = Arc::new(dial_of(plan).for_probes());
    plan.backends
        .iter()
        .filter(|b| b.gate.is_none_or(|g| g.probe_anyway()))
        .map(|b| {
            let t = ProbeTarget {
                container_id: b.container_id.clone(),
                container_name: b.container_name.clone(),
                service: plan.name.clone(),
                addr: b.addr,
                probe: b.probe.clone(),
                policy: plan.health.clone(),
                host: host.clone().unwrap_or_else(|| b.addr.to_string()),
                dial: Arc::clone(&dial),
            };
            (t.key(), t)
        })
        .collect()
}

/// Membership and enablement for one service: only a backend in state `ready` is enabled.
/// Each backend carries its [`BackendLive`] so that the proxy finds it in the selection.
fn snapshot_of(backends: &[BackendPlan], st: &State) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let states: Vec<BackendState> = backends.iter().map(|b| backend_state(b, st)).collect();
    // A leaving backend that still passes its probe is the fallback of a service with no
    // ready backend (Gate::Leaving).
    let any_ready = states.contains(&BackendState::Ready);
    for (b, state) in backends.iter().zip(states) {
        let mut backend = Backend { addr: pingora::protocols::l4::socket::SocketAddr::Inet(b.addr), weight: b.weight, ext: Default::default() };
        if let Some(l) = st.live.get(&(b.container_id.clone(), b.addr)) {
            backend.ext.insert(Arc::clone(l));
        }
        let fallback = !any_ready && b.gate == Some(Gate::Leaving) && ungated_state(b, st) == BackendState::Ready;
        snapshot.enabled.insert(backend_key(&backend), state == BackendState::Ready || fallback);
        snapshot.backends.insert(backend);
    }
    snapshot
}

/// The one place that decides a backend's state: Docker's word (draining, paused, its
/// HEALTHCHECK), then a manual drain, then the proxy's ejection, then the active probe.
fn backend_state(b: &BackendPlan, st: &State) -> BackendState {
    match b.gate {
        Some(Gate::Draining | Gate::Leaving) => BackendState::Draining,
        Some(Gate::Paused | Gate::DockerUnhealthy) => BackendState::Unhealthy,
        Some(Gate::Restarting | Gate::DockerStarting) => BackendState::Starting,
        None => ungated_state(b, st),
    }
}

/// A backend's state by hawser's own word alone, whatever Docker's gate says: a manual drain,
/// then the proxy's ejection, then the active probe.
fn ungated_state(b: &BackendPlan, st: &State) -> BackendState {
    if st.drained.contains(&b.container_id) {
        return BackendState::Draining;
    }
    let key = (b.container_id.clone(), b.addr);
    if st.live.get(&key).is_some_and(|l| l.is_ejected()) {
        return BackendState::Ejected;
    }
    match st.probes.get(&key) {
        Some(ProbeStatus::Ready) => BackendState::Ready,
        Some(ProbeStatus::Unhealthy) => BackendState::Unhealthy,
        Some(ProbeStatus::Starting) | None => BackendState::Starting,
    }
}

/// How requests and probes dial the backends of `plan`.
fn dial_of(plan: &ServicePlan) -> Dial {
    Dial::new(&plan.upstream, &plan.routes)
}

/// Says once, when a service starts or stops verifying its backends' certificates, that it
/// does not: an operator must be able to find every such service in the log.
fn warn_unverified(service: &str, before: Option<&Dial>, now: &Dial) {
    let unverified = |d: &Dial| d.is_tls() && !d.verify;
    if unverified(now) && !before.is_some_and(unverified) {
        warn!("service {service}: the certificates of its TLS backends are not verified (tls_verify: false)");
    }
}

/// Why a backend that Docker allows is not ready, in hawser's own terms: which check, and
/// what its last failure was (a TLS verification failure says so here).
fn state_reason(state: BackendState, b: &BackendPlan, plan: &ServicePlan, st: &State) -> Option<String> {
    let check = || dial_of(plan).probe_words(&b.probe);
    let why = || st.probe_errors.get(&(b.container_id.clone(), b.addr)).map(|w| format!(": {w}")).unwrap_or_default();
    match state {
        BackendState::Ready => None,
        BackendState::Starting => Some(format!("its first health check ({}) has not passed yet{}", check(), why())),
        BackendState::Unhealthy => Some(format!("health check failing ({}){}", check(), why())),
        BackendState::Draining if st.drained.contains(&b.container_id) => Some("drained through the admin API".into()),
        BackendState::Draining if b.gate == Some(Gate::Leaving) => Some(Gate::Leaving.to_string()),
        BackendState::Draining => Some("draining".into()),
        BackendState::Ejected => Some("ejected after consecutive failures: back when a health check passes".into()),
    }
}

/// A container by full id, unique id prefix (as `docker ps` shows, 12 characters) or name.
fn resolve_container(catalog: &Catalog, who: &str) -> Result<String, DrainError> {
    let who = who.trim_start_matches('/');
    if who.is_empty() {
        return Err(DrainError::NotFound(who.to_string()));
    }
    if catalog.verdicts.contains_key(who) {
        return Ok(who.to_string());
    }
    if let Some((id, _)) = catalog.verdicts.iter().find(|(_, v)| v.container_name == who) {
        return Ok(id.clone());
    }
    let matches: Vec<&String> = catalog.verdicts.keys().filter(|id| id.starts_with(who)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(DrainError::NotFound(who.to_string())),
        _ => Err(DrainError::Ambiguous(who.to_string())),
    }
}

/// Why a drain request cannot be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainError {
    NotFound(String),
    Ambiguous(String),
    NotABackend { name: String, reason: String },
}

impl std::fmt::Display for DrainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrainError::NotFound(w) => write!(f, "no container {w:?} is known to hawser"),
            DrainError::Ambiguous(w) => write!(f, "{w:?} is the start of several container ids: give more of it, or the name"),
            DrainError::NotABackend { name, reason } => write!(f, "container {name} is not a backend: {reason}"),
        }
    }
}

impl std::error::Error for DrainError {}

/// A backend's state as the admin API and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Ready,
    /// Not yet passed its first health check (or Docker's HEALTHCHECK is starting).
    Starting,
    /// Got its stop signal, or drained through the admin API: in-flight requests finish.
    Draining,
    /// Failing its health check, Docker's HEALTHCHECK, or paused.
    Unhealthy,
    /// Taken out by passive ejection.
    Ejected,
}

impl BackendState {
    pub const ALL: [BackendState; 5] =
        [BackendState::Ready, BackendState::Starting, BackendState::Draining, BackendState::Unhealthy, BackendState::Ejected];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Ready => "ready",
            BackendState::Starting => "starting",
            BackendState::Draining => "draining",
            BackendState::Unhealthy => "unhealthy",
            BackendState::Ejected => "ejected",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceView {
    pub name: String,
    /// How hawser speaks to its backends: `http` or `https`.
    pub scheme: &'static str,
    /// Distinct hosts of its routes (`*` for any host, `*.example.com` for wildcards).
    pub hosts: Vec<String>,
    /// The path prefix of its first route (all routes share it unless labels differ).
    pub path_prefix: String,
    pub routes: Vec<RouteView>,
    pub backends: Vec<BackendView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteView {
    pub host: String,
    pub path_prefix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendView {
    pub container_id: String,
    pub container_name: String,
    pub address: String,
    pub weight: usize,
    pub state: BackendState,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerView {
    pub container_id: String,
    pub container_name: String,
    pub service: Option<String>,
    /// It asked to be routed (a label, or a service's selector): false for the many
    /// containers that have nothing to do with hawser.
    pub opted_in: bool,
    /// A ready backend of its service.
    pub routed: bool,
    /// Why not, when not routed.
    pub reason: Option<String>,
    /// Its backend state, when it is a backend.
    pub state: Option<BackendState>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Container, Environment};
    use crate::config::Loaded;

    fn web(name: &str, ip: &str) -> Container {
        Container::sample(name, ip).label("hawser.enable", "true").label("hawser.host", "web.test").label("hawser.service", "web")
    }

    /// A runtime serving `containers`, every probe passed.
    fn ready_runtime(yaml: &str, containers: &[Container]) -> Arc<Runtime> {
        let config = Loaded::from_yaml(yaml, "t.yaml").unwrap().config;
        let rt = Runtime::new();
        let cause = Cause { what: "test".into(), event_nanos: None };
        rt.apply(Catalog::build(&config, containers, &Environment::default()), &cause);
        for t in rt.probe_targets() {
            rt.probe_changed(&t, ProbeStatus::Ready);
        }
        rt
    }

    fn live(rt: &Runtime, name: &str) -> Arc<BackendLive> {
        rt.state().live.values().find(|l| l.container_name == name).cloned().unwrap()
    }

    #[test]
    fn before_of_names_every_key_with_its_old_value() {
        let m = |kv: &[(&str, u8)]| kv.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>();
        let before = before_of(m(&[("gone", 1), ("kept", 2)]), &m(&[("kept", 3), ("new", 4)]));
        let want: BTreeMap<String, Option<u8>> =
            [("gone".to_string(), Some(1)), ("kept".to_string(), Some(2)), ("new".to_string(), None)].into();
        assert_eq!(before, want);
    }

    fn enabled(rt: &Runtime, name: &str) -> bool {
        let svc = rt.route("web.test", "/").unwrap();
        let snapshot = svc.snapshot();
        let b = snapshot.backends.iter().find(|b| b.ext.get::<Arc<BackendLive>>().unwrap().container_name == name).unwrap();
        snapshot.enabled[&backend_key(b)]
    }

    #[tokio::test]
    async fn a_run_of_failures_ejects_but_never_the_last_ready_backend() {
        let rt = ready_runtime(
            "proxy: {passive_ejection: {consecutive_failures: 3, duration: 1m}}",
            &[web("a", "10.0.0.2"), web("b", "10.0.0.3")],
        );
        let svc = rt.route("web.test", "/").unwrap();
        let (a, b) = (live(&rt, "a"), live(&rt, "b"));
        rt.backend_failed(&svc, &a);
        rt.backend_failed(&svc, &a);
        a.record_success();
        rt.backend_failed(&svc, &a);
        rt.backend_failed(&svc, &a);
        assert!(enabled(&rt, "a"), "a success ends the run");
        rt.backend_failed(&svc, &a);
        assert!(!enabled(&rt, "a") && a.is_ejected());
        for _ in 0..10 {
            rt.backend_failed(&svc, &b);
        }
        assert!(enabled(&rt, "b") && !b.is_ejected(), "b is the last ready backend");
    }

    #[tokio::test]
    async fn ejection_can_be_turned_off() {
        let rt = ready_runtime(
            "proxy: {passive_ejection: {consecutive_failures: 0}}",
            &[web("a", "10.0.0.2"), web("b", "10.0.0.3")],
        );
        let svc = rt.route("web.test", "/").unwrap();
        let a = live(&rt, "a");
        for _ in 0..100 {
            rt.backend_failed(&svc, &a);
        }
        assert!(enabled(&rt, "a"));
    }

    #[tokio::test]
    async fn an_ejected_backend_returns_when_its_probe_passes_after_the_duration() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let rt = ready_runtime(
            "proxy: {passive_ejection: {consecutive_failures: 1, duration: 100ms}}",
            &[web("a", "127.0.0.1").label("hawser.port", &port), web("b", "127.0.0.2").label("hawser.port", &port)],
        );
        let svc = rt.route("web.test", "/").unwrap();
        let a = live(&rt, "a");
        let ejected_at = Instant::now();
        rt.backend_failed(&svc, &a);
        assert!(!enabled(&rt, "a"));
        while !enabled(&rt, "a") {
            assert!(ejected_at.elapsed() < std::time::Duration::from_secs(5), "a never came back");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(ejected_at.elapsed() >= std::time::Duration::from_millis(100));
        assert!(!a.is_ejected());
        drop(listener);
    }
}
