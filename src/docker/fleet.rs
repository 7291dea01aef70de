//! The containers of every watched engine as one map for the catalog, and each engine's
//! standing for the admin API (`/api/engines`).
//!
//! Invariants:
//! - Each engine's watcher keeps its own map, keyed by the engine's container (and task) ids;
//!   the fleet holds a *view* of each entry, keyed by [`Engine::key`]: the bare id when one
//!   engine is watched, `ENGINE/ID` when `docker.endpoints` names several, so that ids and
//!   names never collide between engines and the admin API, metrics and `hawser explain` show
//!   which engine a backend is on (`ENGINE/NAME`).
//! - Only an engine's own watcher changes that engine's entries ([`Fleet::update`],
//!   [`Fleet::replace`], [`Fleet::forget`]); the catalog is always planned over the whole map,
//!   so backends of several engines join one service.
//! - A view of a container of a named engine is reached by its published port unless its
//!   labels say otherwise, at the engine's `address_host` where Docker bound every address or
//!   loopback (a `0.0.0.0` binding means the engine's address).
//! - Lock order: the fleet, then the runtime. The runtime never calls back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Mutex;

use serde::Serialize;

use crate::catalog::{Catalog, Container, Environment, Origin};
use crate::config::{Config, EngineTls};
use crate::runtime::{Cause, Runtime};

/// One engine hawser watches.
#[derive(Debug, Clone, PartialEq)]
pub struct Engine {
    /// `docker.endpoints[].name`; `None` for the single `docker.endpoint`.
    pub name: Option<String>,
    pub endpoint: String,
    pub tls: Option<EngineTls>,
    pub address_host: Option<IpAddr>,
}

impl Engine {
    /// How logs name it: `Docker NAME (ENDPOINT)`, or `Docker ENDPOINT`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("Docker {n} ({})", self.endpoint),
            None => format!("Docker {}", self.endpoint),
        }
    }

    fn id(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The fleet's key for this engine's container `id`.
    pub fn key(&self, id: &str) -> String {
        match &self.name {
            Some(n) => format!("{n}/{id}"),
            None => id.to_string(),
        }
    }

    /// What the catalog sees of this engine's container `c` (see the module's invariants).
    pub fn view(&self, c: &Container) -> Container {
        let Some(name) = &self.name else { return c.clone() };
        let mut v = c.clone();
        v.id = format!("{name}/{}", c.id);
        v.name = format!("{name}/{}", c.name);
        if c.origin == Origin::Container {
            v.published_by_default = true;
            if let Some(host) = self.address_host.filter(|h| !h.is_loopback()) {
                // A port bound to the engine host's loopback cannot be reached from here.
                v.published.retain(|p| !p.host_ip.is_some_and(|ip| ip.is_loopback()));
                for p in &mut v.published {
                    if p.host_ip.is_none_or(|ip| ip.is_unspecified()) {
                        p.host_ip = Some(host);
                    }
                }
            }
        }
        v
    }
}

/// An engine's standing, as `/api/engines` shows it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct EngineView {
    pub name: Option<String>,
    pub endpoint: String,
    pub connected: bool,
    /// `manager` while its swarm is read, `off` when not, or why it cannot be.
    pub swarm: String,
    /// Entries (containers, tasks) it contributes now (counted when shown).
    pub containers: usize,
    /// The last error talking to it, if the last attempt failed.
    pub error: Option<String>,
    /// Seconds since it was lost, while it is.
    pub lost_for_seconds: Option<u64>,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, Container>,
    /// Engine id → the keys it owns.
    owned: BTreeMap<String, BTreeSet<String>>,
    /// Engine id → hawser's place in it (its own container's networks, when it runs there).
    envs: BTreeMap<String, Environment>,
    views: BTreeMap<String, (EngineView, Option<std::time::Instant>)>,
}

impl State {
    /// The environment the catalog plans with: that of the engine hawser runs a container
    /// on, else the first engine's.
    fn env(&self) -> Environment {
        self.envs.values().find(|e| !e.own_networks.is_empty()).or_else(|| self.envs.values().next()).cloned().unwrap_or_default()
    }

    fn set(&mut self, engine: &Engine, id: &str, c: Option<&Container>) {
        let key = engine.key(id);
        let owned = self.owned.entry(engine.id().to_string()).or_default();
        match c {
            Some(c) => {
                owned.insert(key.clone());
                self.containers.insert(key, engine.view(c));
            }
            None => {
                owned.remove(&key);
                self.containers.remove(&key);
            }
        }
    }
}

/// Every engine's containers, as one map (see the module's invariants).
#[derive(Default)]
pub struct Fleet {
    state: Mutex<State>,
}

impl Fleet {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Engine `engine`'s containers `ids` changed in `local` (its own map): re-plans what they
    /// touch.
    pub fn update(
        &self,
        runtime: &Runtime,
        config: &Config,
        engine: &Engine,
        local: &BTreeMap<String, Container>,
        env: &Environment,
        ids: &[String],
        cause: &Cause,
    ) {
        let mut st = self.state();
        st.envs.insert(engine.id().to_string(), env.clone());
        for id in ids {
            st.set(engine, id, local.get(id));
        }
        let env = st.env();
        for id in ids {
            runtime.update_container(config, &env, &st.containers, &engine.key(id), cause);
        }
    }

    /// Engine `engine`'s whole map is `local` now (after a fresh list): rebuilds the catalog.
    pub fn replace(&self, runtime: &Runtime, config: &Config, engine: &Engine, local: &BTreeMap<String, Container>, env: &Environment, cause: &Cause) {
        let mut st = self.state();
        st.envs.insert(engine.id().to_string(), env.clone());
        for key in st.owned.remove(engine.id()).unwrap_or_default() {
            st.containers.remove(&key);
        }
        for (id, c) in local {
            st.set(engine, id, Some(c));
        }
        let env = st.env();
        runtime.apply(Catalog::build(config, st.containers.values(), &env), cause);
    }

    /// Drops everything engine `engine` contributed (it was lost for longer than
    /// `docker.endpoint_grace`). Returns how many entries went.
    pub fn forget(&self, runtime: &Runtime, config: &Config, engine: &Engine, cause: &Cause) -> usize {
        let mut st = self.state();
        let keys = st.owned.remove(engine.id()).unwrap_or_default();
        for key in &keys {
            st.containers.remove(key);
        }
        st.envs.remove(engine.id());
        if !keys.is_empty() {
            let env = st.env();
            runtime.apply(Catalog::build(config, st.containers.values(), &env), cause);
        }
        keys.len()
    }

    /// Lists `engine` in `/api/engines` before its first attempt ends (not connected yet, not
    /// lost either).
    pub fn register(&self, engine: &Engine) {
        let mut st = self.state();
        st.views.entry(engine.id().to_string()).or_insert_with(|| {
            let view = EngineView { name: engine.name.clone(), endpoint: engine.endpoint.clone(), swarm: "unknown yet".into(), ..EngineView::default() };
            (view, None)
        });
    }

    /// Records engine `engine`'s standing; `runtime`'s `docker_connected` (for `/healthz`)
    /// is whether at least one engine is connected.
    pub fn set_standing(&self, runtime: &Runtime, engine: &Engine, connected: bool, swarm: Option<String>, error: Option<String>) {
        let mut st = self.state();
        let entry = st.views.entry(engine.id().to_string()).or_insert_with(|| {
            (EngineView { name: engine.name.clone(), endpoint: engine.endpoint.clone(), swarm: "off".into(), ..EngineView::default() }, None)
        });
        let (view, lost) = entry;
        view.connected = connected;
        if let Some(s) = swarm {
            view.swarm = s;
        }
        if connected {
            view.error = None;
            *lost = None;
        } else {
            view.error = error.or(view.error.take());
            lost.get_or_insert_with(std::time::Instant::now);
        }
        let any = st.views.values().any(|(v, _)| v.connected);
        runtime.set_docker_connected(any);
    }

    pub fn engines_view(&self) -> Vec<EngineView> {
        let st = self.state();
        st.views
            .iter()
            .map(|(id, (v, lost))| EngineView {
                containers: st.owned.get(id).map_or(0, BTreeSet::len),
                lost_for_seconds: lost.map(|t| t.elapsed().as_secs()),
                ..v.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::PublishedPort;

    fn engine(name: Option<&str>, host: Option<&str>) -> Engine {
        Engine { name: name.map(str::to_string), endpoint: "unix:///x".into(), tls: None, address_host: host.map(|h| h.parse().unwrap()) }
    }

    #[test]
    fn named_engines_qualify_and_publish_at_their_address() {
        let mut c = Container::sample("web", "172.17.0.2");
        c.published = vec![
            PublishedPort { container_port: 80, host_ip: Some("0.0.0.0".parse().unwrap()), host_port: 32768 },
            PublishedPort { container_port: 81, host_ip: Some("10.9.9.9".parse().unwrap()), host_port: 32769 },
            PublishedPort { container_port: 82, host_ip: Some("127.0.0.1".parse().unwrap()), host_port: 32770 },
        ];
        let single = engine(None, None).view(&c);
        assert_eq!(single, c, "one engine: the container as it is");
        let v = engine(Some("b"), Some("192.0.2.7")).view(&c);
        assert_eq!((v.id.as_str(), v.name.as_str()), ("b/web-id", "b/web"));
        assert!(v.published_by_default);
        assert_eq!(v.published[0].host_ip, Some("192.0.2.7".parse().unwrap()), "0.0.0.0 means the engine's address");
        assert_eq!(v.published[1].host_ip, Some("10.9.9.9".parse().unwrap()), "a specific binding is kept");
        assert_eq!(v.published.len(), 2, "a loopback binding of another host is unreachable: left out");
        let v = engine(Some("b"), None).view(&c);
        assert_eq!(v.published[0].host_ip, Some("0.0.0.0".parse().unwrap()), "no address_host: as bound");
    }

    #[test]
    fn engines_own_their_entries() {
        let (runtime, config) = (Runtime::new(), Config::default());
        let fleet = Fleet::default();
        let (a, b) = (engine(Some("a"), None), engine(Some("b"), None));
        let cause = Cause { what: "test".into(), event_nanos: None };
        let one: BTreeMap<String, Container> = [("web-id".to_string(), Container::sample("web", "10.0.0.2"))].into();
        fleet.replace(&runtime, &config, &a, &one, &Environment::default(), &cause);
        fleet.replace(&runtime, &config, &b, &one, &Environment::default(), &cause);
        assert_eq!(fleet.state().containers.keys().cloned().collect::<Vec<_>>(), ["a/web-id", "b/web-id"]);
        fleet.register(&a);
        assert_eq!(fleet.engines_view()[0].containers, 1, "what it owns, counted when shown");
        assert_eq!(fleet.forget(&runtime, &config, &a, &cause), 1);
        assert_eq!(fleet.engines_view()[0].containers, 0);
        assert_eq!(fleet.state().containers.keys().cloned().collect::<Vec<_>>(), ["b/web-id"]);
        fleet.update(&runtime, &config, &b, &BTreeMap::new(), &Environment::default(), &["web-id".to_string()], &cause);
        assert!(fleet.state().containers.is_empty());
        fleet.set_standing(&runtime, &a, false, None, Some("refused".into()));
        fleet.set_standing(&runtime, &b, true, Some("manager".into()), None);
        assert!(runtime.docker_connected(), "one engine connected is enough for /healthz");
        let views = fleet.engines_view();
        assert_eq!(views[0].error.as_deref(), Some("refused"));
        assert!(views[0].lost_for_seconds.is_some() && views[1].lost_for_seconds.is_none());
    }
}
