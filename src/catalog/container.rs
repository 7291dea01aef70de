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
    /// A `kill` with SIGTERM or SIGKILL was seen while it still runs: it is going away.
    pub leaving: bool,
    pub health: DockerHealth,
    /// `HostConfig.NetworkMode`: `bridge`, `host`, `none`, `container:<id>` or a network name.
    pub network_mode: String,
    /// Network name → the container's IP on it (none while not running).
    pub networks: BTreeMap<String, Option<IpAddr>>,
    /// Exposed TCP ports (from the image and `--expose`), sorted.
    pub exposed_tcp: Vec<u16>,
    pub published: Vec<PublishedPort>,
    pub stop_timeout: Option<Duration>,
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
            leaving: false,
            health: DockerHealth::None,
            network_mode: String::new(),
            networks: BTreeMap::new(),
            exposed_tcp: Vec::new(),
            published: Vec::new(),
            stop_timeout: None,
        }
    }
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
    use super::RunState;

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
            leaving: false,
            health: DockerHealth::None,
            network_mode: "net".into(),
            networks: [("net".to_string(), Some(ip.parse().unwrap()))].into(),
            exposed_tcp: vec![80],
            published: Vec::new(),
            stop_timeout: None,
        }
    }

    pub fn label(mut self, k: &str, v: &str) -> Container {
        self.labels.insert(k.into(), v.into());
        self
    }
}
