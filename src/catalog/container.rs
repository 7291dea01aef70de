//! hawser's own view of a Docker container: only what routing needs, in plain types.
//! The Docker module builds these from API objects; everything after it reads only these.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub image: String,
    /// Creation time, seconds since the epoch: orders competing claims deterministically.
    pub created: i64,
    pub labels: BTreeMap<String, String>,
    pub state: RunState,
    /// Whether it is going away, from Docker's `kill` events while it still runs.
    pub departure: Departure,
    pub health: DockerHealth,
    /// `HostConfig.NetworkMode`: `bridge`, `host`, `none`, `container:<id>` or a network name.
    pub network_mode: String,
    /// Network name → the container's IP on it (none while not running).
    pub networks: BTreeMap<String, Option<IpAddr>>,
    /// Exposed TCP ports (from the image and `--expose`), sorted.
    pub exposed_tcp: Vec<u16>,
    pub published: Vec<PublishedPort>,
    /// `Config.StopTimeout`: how long `docker stop` waits before SIGKILL (Docker's default when
    /// unset is 10 s).
    pub stop_timeout: Option<Duration>,
    /// `Config.StopSignal` as a number, when the image or `--stop-signal` sets one.
    pub stop_signal: Option<i32>,
    pub origin: Origin,
    /// Reached by its published ports unless its labels say otherwise: a container of one of
    /// several engines (`docker.endpoints`), whose bridge IPs another host cannot reach.
    pub published_by_default: bool,
}

/// What a [`Container`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// A plain container of an engine.
    #[default]
    Container,
    /// A Swarm task: a container the manager placed on some node. Its addresses come from the
    /// manager (overlay IPs, node address + ports published in mode host).
    Task,
    /// A Swarm service reached through its virtual IP (`address: vip`): Swarm balances over its
    /// tasks, so hawser's per-backend health and drain see only the VIP.
    ServiceVip,
}

impl Container {
    /// A container known only by name, image and labels: enough to say why it is not routed.
    /// (Docker is asked for more only about containers that may be routed.)
    pub fn unrouted(id: impl Into<String>, name: &str, image: &str, labels: BTreeMap<String, String>) -> Container {
        Container {
            id: id.into(),
            name: name.to_string(),
            image: image.to_string(),
            created: 0,
            labels,
            state: RunState::Created,
            departure: Departure::Staying,
            health: DockerHealth::None,
            network_mode: String::new(),
            networks: BTreeMap::new(),
            exposed_tcp: Vec::new(),
            published: Vec::new(),
            stop_timeout: None,
            stop_signal: None,
            origin: Origin::Container,
            published_by_default: false,
        }
    }
}

/// Docker's default stop timeout, used when a container sets none.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// How far a running container is in going away; later variants are further along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Departure {
    Staying,
    /// Its orchestrator decided to stop it (a Swarm task whose desired state went past
    /// `running`), and its stop signal has not come yet: the manager's node takes it out of
    /// DNS and waits 2 s first. It serves only while its service has no ready backend, which
    /// covers the moment between a replacement running and its first probe passing.
    Leaving,
    /// Got its stop signal: no new requests; those in flight finish. Lasts until it exits or
    /// its stop timeout passes.
    Draining,
    /// Still running when its stop timeout passed: out of its service.
    Overdue,
    /// Got SIGKILL: out at once.
    Killed,
}

impl Container {
    /// Whether signal `signal` (a number) tells this container to go away: SIGTERM, its own
    /// stop signal (e.g. SIGQUIT for nginx images), or SIGKILL. HUP, USR1 … are for the app.
    pub fn departure_for(&self, signal: i32) -> Option<Departure> {
        match signal {
            SIGKILL => Some(Departure::Killed),
            s if s == SIGTERM || Some(s) == self.stop_signal => Some(Departure::Draining),
            _ => None,
        }
    }
}

/// A signal as Docker writes it (`15`, `SIGTERM`, `TERM`) → its number on Linux.
pub fn signal_number(raw: &str) -> Option<i32> {
    let raw = raw.trim();
    if let Ok(n) = raw.parse::<i32>() {
        return Some(n);
    }
    let name = raw.strip_prefix("SIG").unwrap_or(raw);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => SIGKILL,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => SIGTERM,
        "WINCH" => 28,
        "PWR" => 30,
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Created,
    Running,
    Paused,
    Restarting,
    Exited,
    Dead,
    Removing,
}

impl RunState {
    /// Whether the container has a live process (and so, maybe, a reachable address).
    pub fn is_up(self) -> bool {
        matches!(self, RunState::Running | RunState::Paused | RunState::Restarting)
    }

    /// From Docker's state word (`running`, `paused`, …), as both the list and the inspect
    /// APIs write it. Anything unknown counts as exited: never routed.
    pub fn from_docker(state: &str) -> RunState {
        match state {
            "created" => RunState::Created,
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "restarting" => RunState::Restarting,
            "dead" => RunState::Dead,
            "removing" => RunState::Removing,
            _ => RunState::Exited,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Restarting => "restarting",
            RunState::Exited => "exited",
            RunState::Dead => "dead",
            RunState::Removing => "removing",
        }
    }
}

/// Docker's HEALTHCHECK status; `None` when the container has no health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerHealth {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    pub container_port: u16,
    /// `None` or unspecified (`0.0.0.0`, `::`) means every host address.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_state_words_round_trip() {
        for state in [
            RunState::Created,
            RunState::Running,
            RunState::Paused,
            RunState::Restarting,
            RunState::Exited,
            RunState::Dead,
            RunState::Removing,
        ] {
            assert_eq!(RunState::from_docker(state.as_str()), state);
        }
        assert_eq!(RunState::from_docker("something new"), RunState::Exited);
    }

    #[test]
    fn stop_signals() {
        assert_eq!(signal_number("15"), Some(15));
        assert_eq!(signal_number("SIGQUIT"), Some(3));
        assert_eq!(signal_number("KILL"), Some(9));
        assert_eq!(signal_number("SIGRTMIN+3"), None);
        let mut c = Container::sample("c", "10.0.0.2");
        assert_eq!(c.departure_for(15), Some(Departure::Draining));
        assert_eq!(c.departure_for(9), Some(Departure::Killed));
        assert_eq!(c.departure_for(1), None);
        assert_eq!(c.departure_for(3), None);
        c.stop_signal = Some(3);
        assert_eq!(c.departure_for(3), Some(Departure::Draining));
    }
}

#[cfg(test)]
impl Container {
    /// A running container on one network with one exposed port, for tests.
    pub fn sample(name: &str, ip: &str) -> Container {
        Container {
            id: format!("{name}-id"),
            name: name.to_string(),
            image: "sample:latest".into(),
            created: 1,
            labels: BTreeMap::new(),
            state: RunState::Running,
            departure: Departure::Staying,
            health: DockerHealth::None,
            network_mode: "net".into(),
            networks: [("net".to_string(), Some(ip.parse().unwrap()))].into(),
            exposed_tcp: vec![80],
            published: Vec::new(),
            stop_timeout: None,
            stop_signal: None,
            origin: Origin::Container,
            published_by_default: false,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Container {
        self.labels.insert(k.into(), v.into());
        self
    }
}
