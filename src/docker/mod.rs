//! Everything hawser says to the Docker engine lives here: connect, list, inspect, follow
//! `/events`, and turn API objects into [`Container`]s. Nothing else uses bollard types.
//!
//! Docker facts this module relies on (checked on Docker 20.10, API 1.41):
//! - `docker stop` emits `kill` (signal=15) → maybe `kill` (signal=9) → `die` and `stop` (either
//!   order) → `network disconnect`. `kill` with other signals (HUP, USR1) means nothing here.
//! - A HEALTHCHECK emits `exec_*` events every interval (ignored) and `health_status: <state>`
//!   when the state changes.
//! - `/events?since=T` replays events after T, so a reconnect loses nothing between the
//!   resync list and the live stream; handling is idempotent, so replays are harmless.

pub mod api;
pub mod fleet;
pub mod swarm;
pub mod swarm_poll;
pub mod tasks;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    ContainerInspectResponse, ContainerSummary, EventMessage, EventMessageTypeEnum, HealthStatusEnum,
};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use log::{debug, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::ServiceReadyNotifier;
use pingora::services::background::BackgroundService;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{
    Container, DEFAULT_STOP_TIMEOUT, Departure, DockerHealth, Environment, Origin, PublishedPort, RunState,
    signal_number,
};
use crate::config::{Config, DockerMode, EngineTls};
pub use fleet::{Engine, EngineView, Fleet};
use crate::metrics::metrics;
use crate::runtime::{Cause, Runtime, unix_nanos};

const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
/// Per-request timeout for list/inspect; the event stream itself is not bounded by it.
const REQUEST_TIMEOUT_SECS: u64 = 30;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// At start, how long to let the first probes of the listed backends pass before accepting
/// requests. Bounded so that one broken container cannot hold hawser back.
const INITIAL_PROBE_WAIT: Duration = Duration::from_secs(2);
/// At start, how long one engine's first attempt may hold back the others' routes (an
/// unreachable remote engine can take a connect timeout to say so).
const INITIAL_ENGINE_WAIT: Duration = Duration::from_secs(5);

/// Follows the Docker engines (one, or `docker.endpoints`) and keeps the runtime's catalog
/// current: one watcher loop per engine, each with its own event stream, resync and back-off,
/// all feeding one [`Fleet`]. A pingora background service: it starts after daemonisation and
/// stops with the server.
pub struct DockerWatcher {
    config: Arc<Config>,
    runtime: Arc<Runtime>,
    fleet: Arc<Fleet>,
}

/// Where the last session left off.
struct Cursor {
    engine: Engine,
    containers: BTreeMap<String, Container>,
    env: Environment,
    /// Events at or after this time (ns since the epoch) have not been handled for sure.
    since_nanos: i64,
    /// Draining containers → when their stop timeout passes.
    drains: HashMap<String, tokio::time::Instant>,
    /// Reads the swarm while this engine is watched as a swarm manager.
    poller: Option<swarm_poll::Poller>,
    /// The last error reading the swarm, said once until it changes.
    swarm_error: Option<String>,
    /// Swarm reads that failed in a row.
    swarm_failures: u32,
    /// The elements of the last swarm read that could not be read (said once).
    swarm_skipped: Vec<String>,
    /// Tasks whose container died on this node: the manager may still list them as running
    /// for a moment, but a task never runs again once its container has exited.
    dead_tasks: std::collections::HashSet<String>,
}

/// The label the engine puts on a swarm task's container: such a container is routed as its
/// task (from the manager's lists) while the swarm is read, never a second time as itself.
const TASK_LABEL: &str = "com.docker.swarm.task.id";

/// Under `docker.mode: auto`, how often an engine that is no swarm manager is asked again.
const SWARM_RECHECK: Duration = Duration::from_secs(10);
/// How often a connected engine is pinged, and how long it has to answer: a host that died or
/// a cut network would otherwise leave the event stream silent, and the engine never lost.
const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Swarm reads that may fail in a row before the connection is started again.
const SWARM_FAILURES: u32 = 5;

impl DockerWatcher {
    pub fn new(config: Arc<Config>, runtime: Arc<Runtime>, fleet: Arc<Fleet>) -> Self {
        DockerWatcher { config, runtime, fleet }
    }

    /// The engines to watch: `docker.endpoints`, else one: `docker.endpoint`, else
    /// `DOCKER_HOST` (with `DOCKER_TLS_VERIFY` and `DOCKER_CERT_PATH` as the Docker CLI reads
    /// them), else the local socket.
    pub fn engines(&self) -> Vec<Engine> {
        if !self.config.docker.endpoints.is_empty() {
            return self
                .config
                .docker
                .endpoints
                .iter()
                .map(|e| Engine { name: Some(e.name.clone()), endpoint: e.endpoint.clone(), tls: e.tls.clone(), address_host: e.address_host })
                .collect();
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = match (&self.config.docker.endpoint, env("DOCKER_HOST")) {
            (Some(e), _) => e.clone(),
            (None, Some(h)) => h,
            (None, None) => DEFAULT_SOCKET.to_string(),
        };
        // The CLI's rule (for `-H` as for DOCKER_HOST): DOCKER_TLS_VERIFY set to anything turns
        // tcp:// into verified TLS, with ca.pem, cert.pem and key.pem from DOCKER_CERT_PATH
        // (default ~/.docker).
        let tls = (endpoint.starts_with("tcp://") && env("DOCKER_TLS_VERIFY").is_some()).then(|| {
            let dir = env("DOCKER_CERT_PATH")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::path::PathBuf::from(env("HOME").unwrap_or_default()).join(".docker"));
            EngineTls { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") }
        });
        vec![Engine { name: None, endpoint, tls, address_host: None }]
    }

    /// Follows one engine forever. `first` is told when the first attempt has either
    /// synchronised or failed: then hawser knows all it is going to know of it for now. An
    /// engine of several that stays lost longer than `docker.endpoint_grace` has its backends
    /// dropped; they come back with its next successful list.
    async fn run(&self, engine: Engine, mut first: Option<oneshot::Sender<()>>) {
        let endpoint = engine.label();
        let grace = self.config.docker.endpoint_grace;
        let several = engine.name.is_some();
        let mut lost_at: Option<tokio::time::Instant> = None;
        let mut cursor = Cursor {
            engine: engine.clone(),
            containers: BTreeMap::new(),
            env: Environment::default(),
            since_nanos: unix_nanos(),
            drains: HashMap::new(),
            poller: None,
            swarm_error: None,
            dead_tasks: Default::default(),
            swarm_failures: 0,
            swarm_skipped: Vec::new(),
        };
        let mut backoff = BACKOFF_MIN;
        let mut forgotten = false;
        loop {
            // Set by the session once it has listed the engine: the engine is back.
            let synced = AtomicBool::new(false);
            let result = {
                let session = self.session(&mut cursor, &mut backoff, &mut first, &synced);
                tokio::pin!(session);
                // An attempt can take a connect timeout: the grace still ends on time.
                let mut forget_at = lost_at.map(|t| t + grace).filter(|_| several && !forgotten);
                loop {
                    tokio::select! {
                        r = &mut session => break r,
                        _ = tokio::time::sleep_until(forget_at.unwrap_or_else(tokio::time::Instant::now)), if forget_at.is_some() => {
                            forget_at = None;
                            if !synced.load(Ordering::Relaxed) {
                                self.forget_engine(&engine);
                                forgotten = true;
                            }
                        }
                    }
                }
            };
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            cursor.poller = None;
            let now = tokio::time::Instant::now();
            if synced.load(Ordering::Relaxed) {
                // Lost now, after a time in sync: the grace starts again.
                lost_at = Some(now);
                forgotten = false;
            } else if forgotten {
                cursor.containers.clear();
            }
            lost_at.get_or_insert(now);
            let error = match &result {
                Ok(()) => "event stream ended".to_string(),
                Err(e) => e.clone(),
            };
            self.fleet.set_standing(&self.runtime, &engine, false, None, Some(error.clone()));
            let keeping = if several { format!("keeping its backends for {grace:?} at most") } else { "serving the last known routes".into() };
            warn!("{endpoint}: {error}; {keeping}, retrying in {backoff:?}");
            // Sleep, but wake to drop a lost engine's backends on time.
            let give_up = lost_at.map(|t| t + grace).filter(|_| several && !forgotten);
            let wake = now + backoff;
            match give_up.filter(|at| *at < wake) {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    self.forget_engine(&engine);
                    forgotten = true;
                    cursor.containers.clear();
                    tokio::time::sleep_until(wake).await;
                }
                None => tokio::time::sleep_until(wake).await,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            metrics().docker_reconnects.inc();
        }
    }

    /// Drops what engine `engine` contributed: it was lost for `docker.endpoint_grace`.
    fn forget_engine(&self, engine: &Engine) {
        let grace = self.config.docker.endpoint_grace;
        let cause = Cause { what: format!("{} lost for {grace:?}", engine.label()), event_nanos: None };
        let dropped = self.fleet.forget(&self.runtime, &self.config, engine, &cause);
        warn!(
            "{}: unreachable for {grace:?} (docker.endpoint_grace): its {dropped} backends and containers are dropped",
            engine.label()
        );
    }

    /// One connection: subscribe, resynchronise from a full list, then follow events. Sets
    /// `synced` once the engine is listed. Ends with an error when the engine stops answering
    /// its pings, or its swarm cannot be read several times in a row.
    async fn session(
        &self,
        cursor: &mut Cursor,
        backoff: &mut Duration,
        first: &mut Option<oneshot::Sender<()>>,
        synced: &AtomicBool,
    ) -> Result<(), String> {
        let engine = cursor.engine.clone();
        let endpoint = engine.label();
        let endpoint = endpoint.as_str();
        let docker = connect(&engine)?
            .negotiate_version()
            .await
            .map_err(|e| format!("cannot reach the Docker engine: {e}"))?;

        // Replay from where the last session was sure; the list below is newer than that.
        let mut filters = HashMap::new();
        // Swarm's service and node events only trigger a read of the manager's lists.
        let types = ["container", "network", "service", "node"];
        filters.insert("type".to_string(), types.iter().map(|t| t.to_string()).collect());
        let since = format!("{}.{:09}", cursor.since_nanos / 1_000_000_000, cursor.since_nanos % 1_000_000_000);
        let mut events = docker.events(Some(EventsOptions { since: Some(since), until: None, filters: Some(filters) }));

        let listed_at = unix_nanos();
        // hawser's own container can only be on an engine of this machine.
        cursor.env = if crate::config::docker::remote_host(&engine.endpoint).is_some() {
            Environment::default()
        } else {
            own_environment(&docker).await
        };
        let (swarm, swarm_standing) = self.reads_swarm(&docker, endpoint).await?;
        // Tasks stay as last read until the manager says otherwise.
        let tasks: Vec<Container> = cursor.containers.values().filter(|c| c.origin != Origin::Container).cloned().collect();
        cursor.containers = self.list(&docker, swarm).await?;
        let (swarm_tx, mut swarm_rx) = mpsc::channel(1);
        // A fresh list knows nothing of stop signals: the replayed `kill` events restart drains.
        cursor.drains.clear();
        cursor.swarm_failures = 0;
        if swarm {
            let api = api::RawApi::new(&engine, &docker.client_version().to_string())?;
            cursor.containers.extend(tasks.into_iter().map(|c| (c.id.clone(), c)));
            // The first read before hawser says it is ready: it must know the tasks too.
            self.apply_swarm(cursor, swarm_poll::round(&api).await, false);
            // The read just made was the first round.
            cursor.poller = Some(swarm_poll::Poller::start(api, swarm_tx, swarm_poll::INTERVAL));
        }
        synced.store(true, Ordering::Relaxed);
        cursor.since_nanos = cursor.since_nanos.max(listed_at - 1_000_000_000);
        self.fleet.set_standing(&self.runtime, &engine, true, Some(swarm_standing), None);
        *backoff = BACKOFF_MIN;
        info!(
            "{endpoint}: connected (API {}), {} containers listed{}{}",
            docker.client_version(),
            cursor.containers.values().filter(|c| c.origin == Origin::Container).count(),
            if swarm {
                let tasks = cursor.containers.values().filter(|c| c.origin != Origin::Container).count();
                format!(", swarm manager: {tasks} tasks (and VIP services) listed")
            } else {
                String::new()
            },
            if cursor.env.own_networks.is_empty() {
                String::new()
            } else {
                format!("; hawser runs on networks {}", cursor.env.own_networks.join(", "))
            }
        );
        self.rebuild(cursor, &Cause { what: "resynchronised from a full list".into(), event_nanos: None });
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }

        let mut inspections = Inspections::default();
        // docker.mode: auto decides per connection; an engine that becomes a manager (swarm
        // init, promotion) or stops being one ends the connection, and the next decides again.
        let auto = self.config.docker.mode == DockerMode::Auto;
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + SWARM_RECHECK, SWARM_RECHECK);
        // A host that dies or a network cut without a reset leaves the event stream silent.
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
        loop {
            let next_deadline = cursor.drains.values().min().copied();
            let event = tokio::select! {
                event = events.next() => event,
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, docker.ping()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => return Err(format!("the engine's ping failed: {e}")),
                        Err(_) => return Err(format!("the engine did not answer a ping within {PING_TIMEOUT:?}")),
                    }
                }
                _ = recheck.tick(), if auto && !swarm => {
                    let standing = tokio::time::timeout(PING_TIMEOUT, manager_standing(&docker)).await;
                    if standing.ok().and_then(Result::ok).is_some_and(|(manager, _)| manager) {
                        return Err("the engine is a swarm manager now: reconnecting to read its swarm (docker.mode: auto)".into());
                    }
                    continue;
                }
                Some((id, cause, answer)) = inspections.running.next(), if !inspections.running.is_empty() => {
                    self.inspected(&docker, cursor, &mut inspections, id, &cause, answer);
                    continue;
                }
                Some(outcome) = swarm_rx.recv(), if cursor.poller.is_some() => {
                    if auto && outcome.as_ref().is_err_and(|e| e.contains("not a swarm manager")) {
                        let tasks: Vec<String> = cursor.containers.iter().filter(|(_, c)| c.origin != Origin::Container).map(|(id, _)| id.clone()).collect();
                        for id in &tasks {
                            cursor.containers.remove(id);
                            cursor.drains.remove(id);
                        }
                        self.publish(cursor, &tasks, &Cause { what: "the engine left the swarm".into(), event_nanos: None });
                        return Err("the engine is no swarm manager any more: its tasks are dropped; reconnecting (docker.mode: auto)".into());
                    }
                    if outcome.is_err() {
                        cursor.swarm_failures += 1;
                        if cursor.swarm_failures >= SWARM_FAILURES {
                            let e = outcome.err().unwrap_or_default();
                            return Err(format!("the swarm could not be read {SWARM_FAILURES} times in a row: {e}"));
                        }
                    } else {
                        cursor.swarm_failures = 0;
                    }
                    self.apply_swarm(cursor, outcome, true);
                    continue;
                }
                _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(tokio::time::Instant::now)), if next_deadline.is_some() => {
                    if let Some((cause, ids)) = expire_drains(cursor) {
                        self.publish(cursor, &ids, &cause);
                    }
                    continue;
                }
            };
            let Some(event) = event else { break };
            let event = event.map_err(|e| format!("event stream broken: {e}"))?;
            let time = event.time_nano.unwrap_or_else(unix_nanos);
            match event_container(&event).and_then(|id| inspections.waiting.get_mut(&id)) {
                // Its container is being inspected: the event applies after the answer.
                Some((_, later)) => later.push_back(event),
                None => self.step(&docker, cursor, &mut inspections, &event),
            }
            // Replays start strictly after the last handled event's second boundary, so
            // take a small margin: handling twice is harmless, missing one is not. Events
            // still waiting on an inspect are not handled yet.
            let unsettled = inspections.waiting.values().map(|(t, _)| *t).min().unwrap_or(time);
            cursor.since_nanos = cursor.since_nanos.max(time.min(unsettled) - 1_000_000_000);
        }
        Ok(())
    }

    /// Handles one event: applies it, or starts the inspect it needs.
    fn step(&self, docker: &Docker, cursor: &mut Cursor, inspections: &mut Inspections, event: &EventMessage) {
        match self.handle(cursor, event) {
            // One container changed: only what it touches is re-planned.
            Some(Step::Replan(cause, id)) => {
                self.publish(cursor, &[id], &cause);
            }
            Some(Step::Inspect(cause, id)) => {
                let time = event.time_nano.unwrap_or_else(unix_nanos);
                inspections.waiting.insert(id.clone(), (time, VecDeque::new()));
                let docker = docker.clone();
                inspections.running.push(
                    async move {
                        let answer = docker.inspect_container(&id, None).await;
                        (id, cause, answer)
                    }
                    .boxed(),
                );
            }
            None => {}
        }
    }

    /// Applies an inspect's answer, then the events of that container that came meanwhile.
    fn inspected(
        &self,
        docker: &Docker,
        cursor: &mut Cursor,
        inspections: &mut Inspections,
        id: String,
        cause: &Cause,
        answer: Result<ContainerInspectResponse, bollard::errors::Error>,
    ) {
        let changed = match answer {
            Ok(inspected) => match container_from_inspect(inspected) {
                Some(c) if cursor.poller.is_some() && c.labels.contains_key(TASK_LABEL) => false,
                Some(c) => {
                    cursor.containers.insert(id.clone(), c);
                    true
                }
                None => false,
            },
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                cursor.containers.remove(&id).is_some()
            }
            Err(e) => {
                warn!("Docker: cannot inspect the container after {}: {e}", cause.what);
                false
            }
        };
        if changed {
            self.publish(cursor, std::slice::from_ref(&id), cause);
        }
        let Some((_, mut later)) = inspections.waiting.remove(&id) else { return };
        while let Some(event) = later.pop_front() {
            self.step(docker, cursor, inspections, &event);
            if let Some((_, queue)) = inspections.waiting.get_mut(&id) {
                // It needs another inspect: the rest waits for that one.
                *queue = later;
                return;
            }
        }
    }

    /// This engine's whole map changed: the catalog is rebuilt.
    fn rebuild(&self, cursor: &Cursor, cause: &Cause) {
        self.fleet.replace(&self.runtime, &self.config, &cursor.engine, &cursor.containers, &cursor.env, cause);
    }

    /// This engine's containers `ids` changed: only what they touch is re-planned.
    fn publish(&self, cursor: &Cursor, ids: &[String], cause: &Cause) {
        self.fleet.update(&self.runtime, &self.config, &cursor.engine, &cursor.containers, &cursor.env, ids, cause);
    }

    /// Applies one event to the container map. Returns what routing needs next: a re-plan of
    /// the container, or an inspect first.
    fn handle(&self, cursor: &mut Cursor, event: &EventMessage) -> Option<Step> {
        let action = event.action.as_deref().unwrap_or_default();
        let attrs = event.actor.as_ref()?.attributes.as_ref();
        let attr = |k: &str| attrs.and_then(|a| a.get(k)).map(String::as_str);
        if matches!(event.typ, Some(EventMessageTypeEnum::SERVICE | EventMessageTypeEnum::NODE)) {
            debug!("Docker event: {action} {:?} (swarm): reading the swarm now", event.typ);
            cursor.poller.as_ref()?.wake();
            return None;
        }
        let id = event_container(event)?;
        if let (Some(poller), Some(task)) = (&cursor.poller, attr(TASK_LABEL).filter(|_| event.typ == Some(EventMessageTypeEnum::CONTAINER))) {
            // A task's container on this node: its stop signal takes the task out at once; its
            // start, end and health say the manager's lists are about to change (its execs,
            // a HEALTHCHECK's every second, say nothing).
            if matches!(action, "start" | "die" | "kill" | "destroy") || action.starts_with("health_status") {
                poller.wake();
            }
            let c = cursor.containers.get_mut(task)?;
            if action == "die" {
                cursor.dead_tasks.insert(task.to_string());
            }
            if action == "die" && c.state.is_up() {
                c.state = RunState::Exited;
                c.networks.values_mut().for_each(|ip| *ip = None);
                let cause = Cause { what: format!("die {}", c.name), event_nanos: event.time_nano };
                return Some(Step::Replan(cause, task.to_string()));
            }
            let departure = (action == "kill").then(|| signal_number(attr("signal")?).and_then(|s| c.departure_for(s))).flatten()?;
            if !c.state.is_up() || c.departure >= departure {
                return None;
            }
            info!("task {}: {departure:?} (signal {} to its container on this node): no new requests", c.name, attr("signal").unwrap_or("?"));
            c.departure = departure;
            if departure == Departure::Draining {
                cursor.drains.insert(task.to_string(), tokio::time::Instant::now() + c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT));
            } else {
                cursor.drains.remove(task);
            }
            let cause = Cause { what: format!("kill {}", c.name), event_nanos: event.time_nano };
            return Some(Step::Replan(cause, task.to_string()));
        }
        if action.starts_with("exec_") {
            return None;
        }
        // `health_status: healthy` → one series per action, not per status text.
        metrics().docker_events.with_label_values(&[action.split(':').next().unwrap_or_default()]).inc();
        let name = cursor.containers.get(&id).map_or_else(|| short(&id).to_string(), |c| c.name.clone());
        let cause = Cause { what: format!("{action} {name}"), event_nanos: event.time_nano };
        let signal = attr("signal").unwrap_or_default();
        // How late an event reaches hawser is the floor of every discovery delay it logs.
        let late_ms = event.time_nano.map_or(0.0, |t| (unix_nanos() - t) as f64 / 1e6);
        if action == "kill" {
            debug!("Docker event: kill {name} (signal {signal}), received {late_ms:.1} ms after it");
        } else {
            debug!("Docker event: {action} {name}, received {late_ms:.1} ms after it");
        }
        // Its process ended or a new one started: whatever the stop signal began is over.
        if matches!(action, "die" | "stop" | "destroy" | "start" | "restart") {
            cursor.drains.remove(&id);
        }

        match action {
            "kill" => {
                let c = cursor.containers.get_mut(&id)?;
                let departure = signal_number(signal).and_then(|s| c.departure_for(s))?;
                if !c.state.is_up() || c.departure == departure || c.departure == Departure::Killed {
                    return None;
                }
                if departure == Departure::Draining {
                    if c.departure != Departure::Staying {
                        return None;
                    }
                    let timeout = c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT);
                    cursor.drains.insert(id.clone(), tokio::time::Instant::now() + timeout);
                    info!(
                        "container {name}: draining (signal {signal}): no new requests; removed when it exits or after its stop timeout ({timeout:?})"
                    );
                } else {
                    cursor.drains.remove(&id);
                }
                c.departure = departure;
            }
            "die" | "stop" => {
                let c = cursor.containers.get_mut(&id)?;
                if c.state == RunState::Exited && c.departure == Departure::Staying {
                    return None;
                }
                c.state = RunState::Exited;
                c.departure = Departure::Staying;
                c.networks.values_mut().for_each(|ip| *ip = None);
            }
            "destroy" => {
                cursor.containers.remove(&id)?;
            }
            "pause" => cursor.containers.get_mut(&id)?.state = RunState::Paused,
            "unpause" => cursor.containers.get_mut(&id)?.state = RunState::Running,
            a if a.starts_with("health_status") => {
                let health = match a.rsplit(':').next().map(str::trim) {
                    Some("healthy") => DockerHealth::Healthy,
                    Some("unhealthy") => DockerHealth::Unhealthy,
                    Some("starting") => DockerHealth::Starting,
                    _ => return None,
                };
                let c = cursor.containers.get_mut(&id)?;
                if c.health == health {
                    return None;
                }
                c.health = health;
            }
            "connect" | "disconnect"
                if event.typ == Some(EventMessageTypeEnum::NETWORK)
                    && !network_change_matters(cursor.containers.get(&id).map(|c| c.state)) =>
            {
                return None;
            }
            "create" | "start" | "restart" | "rename" | "update" | "connect" | "disconnect" => {
                // Container events carry the labels (and image, name) as attributes: a
                // container that can never be routed is recorded from them, without asking
                // Docker for more. On a busy engine an inspect per start is what slows events.
                let known = cursor.containers.get(&id).map(|c| self.may_route(&c.labels, &c.image));
                let from_event = (event.typ == Some(EventMessageTypeEnum::CONTAINER))
                    .then(|| attrs.cloned().unwrap_or_default().into_iter().collect::<BTreeMap<_, _>>());
                let by_event = from_event.as_ref().map(|a| self.may_route(a, attr("image").unwrap_or_default()));
                if known != Some(true) && by_event != Some(true) && (known.is_some() || by_event.is_some()) {
                    let c = cursor.containers.entry(id.clone()).or_insert_with(|| {
                        let mut labels = from_event.clone().unwrap_or_default();
                        labels.remove("name");
                        labels.remove("image");
                        Container::unrouted(id.clone(), attr("name").unwrap_or_default(), attr("image").unwrap_or_default(), labels)
                    });
                    if let Some(name) = attr("name").filter(|_| from_event.is_some()) {
                        c.name = name.to_string();
                    }
                    c.state = match action {
                        "create" => RunState::Created,
                        "start" | "restart" => RunState::Running,
                        _ => c.state,
                    };
                    return Some(Step::Replan(cause, id));
                }
                return Some(Step::Inspect(cause, id));
            }
            _ => return None,
        }
        Some(Step::Replan(cause, id))
    }

    /// Every container, inspected when it could matter to hawser (the rest only summarised).
    /// While the swarm is read (`swarm`), its tasks' containers are left to the task list.
    async fn list(&self, docker: &Docker, swarm: bool) -> Result<BTreeMap<String, Container>, String> {
        let summaries = docker
            .list_containers(Some(ListContainersOptions { all: true, ..Default::default() }))
            .await
            .map_err(|e| format!("cannot list containers: {e}"))?;
        let mut containers = BTreeMap::new();
        for s in summaries {
            let Some(id) = s.id.clone() else { continue };
            let labels: BTreeMap<String, String> = s.labels.clone().unwrap_or_default().into_iter().collect();
            if swarm && labels.contains_key(TASK_LABEL) {
                continue;
            }
            let container = if self.may_route(&labels, s.image.as_deref().unwrap_or_default()) {
                match docker.inspect_container(&id, None).await {
                    Ok(inspected) => container_from_inspect(inspected),
                    // Removed between list and inspect.
                    Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => None,
                    Err(e) => return Err(format!("cannot inspect container {}: {e}", short(&id))),
                }
            } else {
                Some(container_from_summary(s))
            };
            if let Some(c) = container {
                containers.insert(id, c);
            }
        }
        Ok(containers)
    }

    /// Whether a container can matter to routing, and so is worth a full inspect: it carries a
    /// label under our prefix, or exposed_by_default is on, or a YAML selector matches it.
    fn may_route(&self, labels: &BTreeMap<String, String>, image: &str) -> bool {
        let prefix = format!("{}.", self.config.docker.label_prefix);
        self.config.docker.exposed_by_default
            || labels.keys().any(|k| k.starts_with(&prefix))
            || self.config.services.values().any(|svc| svc.selector.as_ref().is_some_and(|sel| sel.matches(&labels, image)))
    }

    /// Whether this engine's swarm is read (`docker.mode`), and its standing in words for
    /// `/api/engines`: `auto` reads it when the engine is a swarm manager; `swarm` says why it
    /// cannot (a worker, no swarm) and routes the engine's plain containers meanwhile.
    async fn reads_swarm(&self, docker: &Docker, endpoint: &str) -> Result<(bool, String), String> {
        let mode = self.config.docker.mode;
        if mode == DockerMode::Containers {
            return Ok((false, "off (docker.mode: containers)".into()));
        }
        // Not knowing would drop the tasks kept from the last connection: try again later.
        let (manager, state) =
            manager_standing(docker).await.map_err(|e| format!("cannot ask whether the engine is a swarm manager: {e}"))?;
        Ok(match (manager, mode) {
            (true, _) => (true, "manager".into()),
            (false, DockerMode::Swarm) => {
                let why = format!("not a swarm manager (swarm state: {state})");
                warn!(
                    "{endpoint}: docker.mode is swarm, but this engine is {why}: only its plain containers are \
                     routed; point the endpoint at a manager"
                );
                (false, why)
            }
            (false, _) => (false, format!("off (swarm state: {state})")),
        })
    }

    /// Applies one read of the swarm: its tasks replace the last ones. A task that was going
    /// away stays so (a local stop signal may have come before the manager's word).
    fn apply_swarm(&self, cursor: &mut Cursor, outcome: Result<swarm::Snapshot, String>, replan: bool) {
        let snapshot = match outcome {
            Ok(s) => s,
            Err(e) => {
                if cursor.swarm_error.as_ref() != Some(&e) {
                    warn!("Docker swarm: cannot read services and tasks: {e}; keeping the last known tasks");
                    cursor.swarm_error = Some(e);
                }
                return;
            }
        };
        if cursor.swarm_error.take().is_some() {
            info!("Docker swarm: services and tasks readable again");
        }
        if snapshot.skipped != cursor.swarm_skipped {
            for why in &snapshot.skipped {
                warn!("Docker swarm: left out of the manager's lists, as unreadable: {why}");
            }
            cursor.swarm_skipped = snapshot.skipped.clone();
        }
        let fresh: BTreeMap<String, Container> =
            swarm::tasks_as_containers(&snapshot, &self.config.docker.label_prefix, self.config.docker.address)
                .into_iter()
                .map(|c| (c.id.clone(), c))
                .collect();
        // The fallback window counts from when the read began, however long it took.
        let now = snapshot.read_at.unwrap_or_else(tokio::time::Instant::now);
        let changed = tasks::merge(&mut cursor.containers, &mut cursor.drains, &mut cursor.dead_tasks, fresh, now);
        if changed.is_empty() || !replan {
            return;
        }
        let mut names: Vec<&str> = changed.iter().map(|(_, n)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let shown = if names.len() > 5 { format!("{} and {} more", names[..5].join(", "), names.len() - 5) } else { names.join(", ") };
        let cause = Cause { what: format!("swarm read: {shown} changed"), event_nanos: None };
        // One re-plan per task while few change; a whole rebuild is cheaper for many.
        if changed.len() > 32 {
            self.rebuild(cursor, &cause);
        } else {
            let ids: Vec<String> = changed.into_iter().map(|(id, _)| id).collect();
            self.publish(cursor, &ids, &cause);
        }
    }
}

/// The proxy service depends on this one, so hawser accepts requests only once it knows the
/// containers and their first probes had a chance to pass. That makes a start, and above all a
/// zero-downtime upgrade (`-u`: the old process keeps accepting meanwhile), answer no request
/// with a 404 or 503 that only reflects hawser not having looked yet.
#[async_trait]
impl BackgroundService for DockerWatcher {
    async fn start_with_ready_notifier(&self, mut shutdown: ShutdownWatch, ready: ServiceReadyNotifier) {
        let engines = self.engines();
        let several = engines.len() > 1 || engines.iter().any(|e| e.name.is_some());
        for engine in &engines {
            self.fleet.register(engine);
        }
        let (firsts, watchers): (Vec<_>, Vec<_>) = engines
            .into_iter()
            .map(|engine| {
                let (tx, rx) = oneshot::channel();
                (rx, self.run(engine, Some(tx)))
            })
            .unzip();
        let runtime = Arc::clone(&self.runtime);
        let announce = async move {
            // Every engine's first attempt; of several, one slow engine holds the others back
            // only so long. One engine is waited for as long as its first list takes.
            let all = futures_util::future::join_all(firsts);
            if several {
                let _ = tokio::time::timeout(INITIAL_ENGINE_WAIT, all).await;
            } else {
                all.await;
            }
            runtime.wait_initial_probes(INITIAL_PROBE_WAIT).await;
            ready.notify_ready();
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = futures_util::future::join_all(watchers) => {}
            _ = announce => {}
            _ = shutdown.changed() => info!("Docker watcher: shutting down"),
        }
    }
}

/// Whether a container's network `connect` or `disconnect` needs an inspect: not when the
/// container is known not to run. It has no address on any network until it starts, and its
/// `start` event brings an inspect then. That saves an inspect per `docker start` (which emits
/// `connect` while the engine still holds the container: the inspect would wait for the whole
/// start, about 200 ms here, and the container's own `start` event behind it) and one per
/// `docker stop` (`disconnect` comes after `die`).
fn network_change_matters(state: Option<RunState>) -> bool {
    state.is_none_or(RunState::is_up)
}

/// What an event asks for once it is applied to the container map.
enum Step {
    /// The container changed: re-plan what it touches.
    Replan(Cause, String),
    /// Only an inspect can tell what changed (labels, networks, addresses).
    Inspect(Cause, String),
}

type Inspection = BoxFuture<'static, (String, Cause, Result<ContainerInspectResponse, bollard::errors::Error>)>;

/// Inspects run side by side: an inspect waits while the engine holds the container, and a
/// busy engine answers slowly. Handled one at a time, events waited behind every inspect:
/// during 20 simultaneous `docker start`s on the 2-core VM, a container was routed up to a
/// second after its `start` event, and another container's `kill` could wait tens of ms.
/// One container's events still apply in order: those that come while it is inspected wait.
#[derive(Default)]
struct Inspections {
    running: FuturesUnordered<Inspection>,
    /// Container id → the time of the event being inspected for, and its later events.
    waiting: HashMap<String, (i64, VecDeque<EventMessage>)>,
}

/// The container an event is about: container events name it as actor, network events in
/// an attribute.
fn event_container(event: &EventMessage) -> Option<String> {
    let actor = event.actor.as_ref()?;
    match event.typ {
        Some(EventMessageTypeEnum::CONTAINER) => actor.id.clone(),
        Some(EventMessageTypeEnum::NETWORK) if matches!(event.action.as_deref(), Some("connect" | "disconnect")) => {
            actor.attributes.as_ref()?.get("container").cloned()
        }
        _ => None,
    }
}

/// Takes containers whose stop timeout passed while they still run out of their service.
fn expire_drains(cursor: &mut Cursor) -> Option<(Cause, Vec<String>)> {
    let now = tokio::time::Instant::now();
    let due: Vec<String> = cursor.drains.iter().filter(|(_, at)| **at <= now).map(|(id, _)| id.clone()).collect();
    let (mut names, mut ids) = (Vec::new(), Vec::new());
    for id in due {
        cursor.drains.remove(&id);
        let Some(c) = cursor.containers.get_mut(&id) else { continue };
        if c.departure == Departure::Leaving {
            // A task past its fallback window: gone, as the manager said.
            names.push(c.name.clone());
            cursor.containers.remove(&id);
            ids.push(id);
            continue;
        }
        if c.departure == Departure::Draining && c.state.is_up() {
            c.departure = Departure::Overdue;
            info!(
                "container {}: still running {:?} after its stop signal (its stop timeout): removed from its service",
                c.name,
                c.stop_timeout.unwrap_or(DEFAULT_STOP_TIMEOUT)
            );
            names.push(c.name.clone());
            ids.push(id);
        }
    }
    (!names.is_empty()).then(|| (Cause { what: format!("stop timeout of {}", names.join(", ")), event_nanos: None }, ids))
}

/// A client for `engine`: `unix://…`, `http://…`, or `tcp://…` (TLS with client
/// certificates when the engine has a `tls` block). Plain TCP to an address that is not
/// loopback is allowed, with a warning: whoever reaches that port owns the engine.
pub fn connect(engine: &Engine) -> Result<Docker, String> {
    let endpoint = engine.endpoint.as_str();
    if let Some(tls) = &engine.tls {
        let Some(addr) = endpoint.strip_prefix("tcp://") else {
            return Err(format!("TLS needs a tcp:// endpoint, not {endpoint}"));
        };
        return Docker::connect_with_ssl(addr, &tls.key, &tls.cert, &tls.ca, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            .map_err(|e| format!("cannot use Docker endpoint {endpoint} with TLS: {e}"));
    }
    static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    if crate::config::docker::remote_host(endpoint).is_some() {
        let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
        if !warned.contains(&engine.endpoint) {
            warned.push(engine.endpoint.clone());
            warn!(
                "{}: plain TCP to a host that is not loopback: anyone who can reach it controls the engine; use TLS (docker.endpoints[].tls, or DOCKER_TLS_VERIFY)",
                engine.label()
            );
        }
    }
    let result = if endpoint.starts_with("unix://") {
        Docker::connect_with_unix(endpoint, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else if let Some(rest) = endpoint.strip_prefix("tcp://") {
        Docker::connect_with_http(&format!("http://{rest}"), REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else if endpoint.starts_with("http://") {
        Docker::connect_with_http(endpoint, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
    } else {
        return Err(format!("unsupported Docker endpoint {endpoint:?}: use unix://, tcp:// or http://"));
    };
    result.map_err(|e| format!("cannot use Docker endpoint {endpoint}: {e}"))
}

/// Whether the engine is a swarm manager, and its node's swarm state in words (`active`,
/// `inactive`, `pending`…; `unknown` when the engine does not say).
async fn manager_standing(docker: &Docker) -> Result<(bool, String), bollard::errors::Error> {
    let swarm = docker.info().await?.swarm.unwrap_or_default();
    let state = swarm.local_node_state.map_or_else(|| "unknown".to_string(), |s| s.to_string());
    Ok((swarm.control_available.unwrap_or(false), state))
}

/// hawser's own container, if it runs in one on this engine: its networks decide which
/// container addresses it can reach.
async fn own_environment(docker: &Docker) -> Environment {
    let mut candidates = Vec::new();
    if let Ok(h) = std::env::var("HOSTNAME") {
        candidates.push(h);
    }
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        candidates.push(h.trim().to_string());
    }
    // cgroup v1 and the overlay mount name the full container id.
    for file in ["/proc/self/cgroup", "/proc/self/mountinfo"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            for word in text.split(|c: char| !c.is_ascii_hexdigit()) {
                if word.len() == 64 && !candidates.iter().any(|c| c == word) {
                    candidates.push(word.to_string());
                }
            }
        }
    }
    for candidate in candidates.iter().filter(|c| !c.is_empty()) {
        let Ok(c) = docker.inspect_container(candidate, None).await else { continue };
        // A hostname can name another container by chance; the id must agree.
        if c.id.as_deref().is_some_and(|id| id.starts_with(candidate.as_str())) {
            let networks = c.network_settings.and_then(|n| n.networks).map(|n| n.into_keys().collect()).unwrap_or_default();
            return Environment { own_networks: networks, ..Environment::default() };
        }
    }
    Environment::default()
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn container_from_summary(s: ContainerSummary) -> Container {
    let name = s.names.and_then(|n| n.into_iter().next()).unwrap_or_default();
    let labels = s.labels.unwrap_or_default().into_iter().collect();
    let mut c = Container::unrouted(
        s.id.unwrap_or_default(),
        name.trim_start_matches('/'),
        s.image.as_deref().unwrap_or_default(),
        labels,
    );
    c.created = s.created.unwrap_or_default();
    c.network_mode = s.host_config.and_then(|h| h.network_mode).unwrap_or_default();
    c.state = s.state.as_ref().map_or(RunState::Exited, |st| RunState::from_docker(st.as_ref()));
    c
}

/// Converts an inspect response. `None` when it lacks an id (never seen in practice).
pub fn container_from_inspect(c: ContainerInspectResponse) -> Option<Container> {
    let id = c.id?;
    let config = c.config.unwrap_or_default();
    let state = c.state.unwrap_or_default();
    let settings = c.network_settings.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let networks = settings
        .networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, ep)| {
            let ip = ep.ip_address.filter(|ip| !ip.is_empty()).and_then(|ip| ip.parse::<IpAddr>().ok());
            (name, if running { ip } else { None })
        })
        .collect();
    let mut exposed_tcp: Vec<u16> = config
        .exposed_ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| tcp_port(p))
        .collect();
    exposed_tcp.sort_unstable();
    exposed_tcp.dedup();
    let mut published = Vec::new();
    for (port, bindings) in settings.ports.unwrap_or_default() {
        let Some(container_port) = tcp_port(&port) else { continue };
        for b in bindings.unwrap_or_default() {
            let Some(host_port) = b.host_port.and_then(|p| p.parse().ok()) else { continue };
            let host_ip = b.host_ip.filter(|ip| !ip.is_empty()).and_then(|ip| ip.parse().ok());
            published.push(PublishedPort { container_port, host_ip, host_port });
        }
    }
    published.sort_by_key(|p| (p.container_port, p.host_port));
    Some(Container {
        name: c.name.unwrap_or_default().trim_start_matches('/').to_string(),
        image: config.image.unwrap_or_default(),
        created: c.created.as_deref().and_then(parse_rfc3339_seconds).unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        state: state.status.as_ref().map_or(RunState::Exited, |st| RunState::from_docker(st.as_ref())),
        departure: Departure::Staying,
        health: match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::STARTING) => DockerHealth::Starting,
            Some(HealthStatusEnum::HEALTHY) => DockerHealth::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => DockerHealth::Unhealthy,
            _ => DockerHealth::None,
        },
        network_mode: c.host_config.and_then(|h| h.network_mode).unwrap_or_default(),
        networks,
        exposed_tcp,
        published,
        stop_timeout: config.stop_timeout.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs),
        stop_signal: config.stop_signal.as_deref().and_then(signal_number),
        origin: Origin::Container,
        published_by_default: false,
        id,
    })
}

/// `"80/tcp"` → 80; other protocols → None.
fn tcp_port(spec: &str) -> Option<u16> {
    let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    if proto == "tcp" { port.parse().ok() } else { None }
}

/// Seconds since the epoch of an RFC 3339 UTC time as Docker writes it
/// (`2026-11-25T02:43:01.123456789Z`); only the seconds matter for ordering.
fn parse_rfc3339_seconds(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_times() {
        assert_eq!(parse_rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_seconds("2026-11-25T02:43:01.123456789Z"), Some(1_795_574_581));
        assert_eq!(parse_rfc3339_seconds("garbage"), None);
    }

    #[test]
    fn network_events_of_containers_that_do_not_run_need_no_inspect() {
        assert!(!network_change_matters(Some(RunState::Created)), "connect during docker start");
        assert!(!network_change_matters(Some(RunState::Exited)), "disconnect after die");
        assert!(!network_change_matters(Some(RunState::Dead)));
        assert!(network_change_matters(Some(RunState::Running)), "docker network connect/disconnect");
        assert!(network_change_matters(Some(RunState::Paused)));
        assert!(network_change_matters(None), "a container not seen yet");
    }

    #[test]
    fn ports() {
        assert_eq!(tcp_port("80/tcp"), Some(80));
        assert_eq!(tcp_port("53/udp"), None);
        assert_eq!(tcp_port("8080"), Some(8080));
    }
}
