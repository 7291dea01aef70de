//! Docker Swarm, read from a manager's `/services`, `/tasks` and `/nodes`: each task a backend
//! candidate, as the catalog already understands containers ([`Container`]), so that verdicts,
//! reasons, routes, health checks and drains are the same for both.
//!
//! The Engine API objects are decoded here rather than through bollard: bollard 0.21's `Task`
//! has no `NetworksAttachments` (the task's IPs on its networks), which a 20.10 manager sends
//! (see ../shared/SWARM-NOTES.md). Only the fields hawser reads are declared; the rest is
//! ignored, and an absent field is its empty value.
//!
//! Invariants of [`tasks_as_containers`]:
//! - One [`Container`] per task whose desired state is `running` (or `ready`: prepared to
//!   replace a task still stopping), or that is still running while its desired state went
//!   past it: the latter is *draining*. The manager sets a task's
//!   desired state to `shutdown` before the node takes it out of the VIP, waits 2 s and stops
//!   the container, so a task leaves rotation before its SIGTERM when the manager is read
//!   often enough. Older tasks (history) and tasks never started are left out.
//! - A task is `running` for the catalog only when its own state is `running` and its node is
//!   `ready`; a task on a node that is down is not, whatever it last said.
//! - Its name is `SERVICE.SLOT` (replicated) or `SERVICE.NODE` (global), as `docker service ps`
//!   writes it; its labels are the service's (`deploy.labels`), over the container spec's.
//! - Addresses: the task's IPs on its networks (CIDR prefix dropped), by network name; its
//!   published ports in `mode: host` at its node's address. Nothing is guessed: a task with
//!   neither has none, and the catalog says why it is not routed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{Container, Departure, DockerHealth, Origin, PublishedPort, RunState, signal_number};
use crate::config::AddressMode;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: ServiceSpec,
    pub endpoint: ServiceEndpoint,
    pub update_status: Option<UpdateStatus>,
}

impl Service {
    /// Whether a rolling update (or its rollback) is under way: tasks change often then.
    pub fn updating(&self) -> bool {
        self.update_status.as_ref().is_some_and(|u| matches!(u.state.as_str(), "updating" | "rollback_started"))
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpdateStatus {
    pub state: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEndpoint {
    #[serde(rename = "VirtualIPs", deserialize_with = "nullable")]
    pub virtual_ips: Vec<VirtualIp>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VirtualIp {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// CIDR, e.g. `10.0.1.2/24`.
    pub addr: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceSpec {
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    pub task_template: TaskTemplate,
    pub endpoint_spec: EndpointSpec,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskTemplate {
    pub container_spec: ContainerSpec,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSpec {
    pub image: String,
    #[serde(deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds.
    pub stop_grace_period: Option<i64>,
    pub stop_signal: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSpec {
    pub mode: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub ports: Vec<PortConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortConfig {
    pub protocol: Option<String>,
    pub target_port: u16,
    pub published_port: Option<u16>,
    pub publish_mode: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub slot: Option<u64>,
    pub created_at: String,
    pub desired_state: String,
    pub status: TaskStatus,
    #[serde(deserialize_with = "nullable")]
    pub networks_attachments: Vec<NetworkAttachment>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskStatus {
    pub state: String,
    pub port_status: PortStatus,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortStatus {
    #[serde(deserialize_with = "nullable")]
    pub ports: Vec<PortConfig>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkAttachment {
    pub network: AttachedNetwork,
    /// CIDR strings, e.g. `10.0.1.5/24`.
    #[serde(deserialize_with = "nullable")]
    pub addresses: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AttachedNetwork {
    #[serde(rename = "ID")]
    pub id: String,
    pub spec: NetworkSpec,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkSpec {
    pub name: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub status: NodeStatus,
    pub manager_status: Option<ManagerStatus>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeStatus {
    pub state: String,
    pub addr: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ManagerStatus {
    /// `IP:PORT` of the manager's cluster endpoint.
    pub addr: String,
}

/// `null` where a list or map is expected reads as empty: the engine writes `"Labels": null`
/// for a service created without labels.
fn nullable<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Node {
    /// The node's address: `Status.Addr`, or for a manager that reports `0.0.0.0` there (a
    /// known engine quirk), the host of `ManagerStatus.Addr`.
    pub fn address(&self) -> Option<IpAddr> {
        let status = self.status.addr.parse::<IpAddr>().ok().filter(|a| !a.is_unspecified());
        status.or_else(|| {
            let m = self.manager_status.as_ref()?;
            let host = m.addr.rsplit_once(':').map_or(m.addr.as_str(), |(h, _)| h);
            host.trim_matches(['[', ']']).parse::<IpAddr>().ok().filter(|a| !a.is_unspecified())
        })
    }
}

/// What a manager said, listed at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub tasks: Vec<Task>,
    pub nodes: Vec<Node>,
    /// Elements left out because they could not be read, with why.
    pub skipped: Vec<String>,
    /// When the read began: what it says was decided no later than the answer, and no
    /// earlier than the read before it began.
    pub read_at: Option<tokio::time::Instant>,
}

impl Snapshot {
    /// Decodes the three lists (`GET /services`, `/tasks`, `/nodes`) as the engine sends them.
    /// A list that is not a JSON array is an error; an element hawser cannot read is left out
    /// (and counted in [`Snapshot::skipped`]), so one odd object costs only itself.
    pub fn from_json(services: &[u8], tasks: &[u8], nodes: &[u8]) -> Result<Snapshot, String> {
        let mut skipped = Vec::new();
        Ok(Snapshot {
            services: decode_list("services", services, &mut skipped)?,
            tasks: decode_list("tasks", tasks, &mut skipped)?,
            nodes: decode_list("nodes", nodes, &mut skipped)?,
            skipped,
            read_at: None,
        })
    }
}

fn decode_list<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8], skipped: &mut Vec<String>) -> Result<Vec<T>, String> {
    let items: Vec<serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| format!("{what}: cannot decode the manager's list: {e}"))?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let id = item.get("ID").and_then(|v| v.as_str()).unwrap_or("?").chars().take(64).collect::<String>();
        match serde_json::from_value(item) {
            Ok(v) => out.push(v),
            Err(e) => skipped.push(format!("{what} {id:?}: {e}")),
        }
    }
    Ok(out)
}

/// The labels hawser reads of a service: its own (`deploy.labels`) over its container spec's,
/// and the service's name as the engine labels a task's container with it.
fn service_labels(spec: &ServiceSpec) -> BTreeMap<String, String> {
    let mut labels = spec.task_template.container_spec.labels.clone();
    labels.extend(spec.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.insert(crate::catalog::SWARM_SERVICE_LABEL.to_string(), spec.name.clone());
    labels
}

/// Whether a service is reached through its VIP: its `address` label says `vip`, or it says
/// nothing and `docker.address` does. A label with another or a bad value is not `vip` (the
/// catalog reports a bad one).
fn through_vip(labels: &BTreeMap<String, String>, prefix: &str, default: Option<AddressMode>) -> bool {
    match labels.get(&format!("{prefix}.address")) {
        Some(v) => v.trim() == "vip",
        None => default == Some(AddressMode::Vip),
    }
}

/// The tasks of `snapshot` as the catalog's containers (see the module's invariants); a
/// service reached through its VIP as one container of [`Origin::ServiceVip`] instead.
pub fn tasks_as_containers(snapshot: &Snapshot, prefix: &str, default_mode: Option<AddressMode>) -> Vec<Container> {
    let services: HashMap<&str, &Service> = snapshot.services.iter().map(|s| (s.id.as_str(), s)).collect();
    let vip_services: HashSet<&str> = snapshot
        .services
        .iter()
        .filter(|s| through_vip(&service_labels(&s.spec), prefix, default_mode))
        .map(|s| s.id.as_str())
        .collect();
    let nodes: HashMap<&str, &Node> = snapshot.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut network_names: HashMap<&str, &str> = HashMap::new();
    // Services (of vip) with a task that can take requests.
    let mut serving: HashSet<&str> = HashSet::new();
    let mut out = Vec::new();
    for task in &snapshot.tasks {
        for a in &task.networks_attachments {
            network_names.insert(a.network.id.as_str(), a.network.spec.name.as_str());
        }
        let Some(service) = services.get(task.service_id.as_str()) else { continue };
        let running = task.status.state == "running";
        let departure = match task.desired_state.as_str() {
            // `ready`: prepared to replace a task that is still stopping (update stop-first).
            "running" | "ready" => Departure::Staying,
            // Shut down by the manager while it still runs: out of rotation before its SIGTERM.
            _ if running => Departure::Draining,
            _ => continue,
        };
        let node = nodes.get(task.node_id.as_str());
        let node_ready = node.is_some_and(|n| n.status.state == "ready");
        let state = match task.status.state.as_str() {
            "running" if node_ready => RunState::Running,
            "running" => RunState::Exited,
            // new, pending, assigned, accepted, preparing, starting: not up yet.
            "new" | "pending" | "assigned" | "accepted" | "preparing" | "ready" | "starting" => RunState::Created,
            _ => RunState::Exited,
        };
        if vip_services.contains(service.id.as_str()) {
            if state == RunState::Running && departure == Departure::Staying && task.desired_state == "running" {
                serving.insert(service.id.as_str());
            }
            continue;
        }
        let spec = &service.spec;
        let container = &spec.task_template.container_spec;
        let name = match task.slot {
            Some(slot) if slot > 0 => format!("{}.{slot}", spec.name),
            _ => format!("{}.{}", spec.name, task.node_id),
        };
        let networks = task
            .networks_attachments
            .iter()
            .filter(|a| a.network.spec.name != "ingress")
            .map(|a| {
                let ip = a.addresses.iter().find_map(|c| c.split('/').next()?.parse::<IpAddr>().ok());
                (a.network.spec.name.clone(), if state.is_up() { ip } else { None })
            })
            .collect();
        let node_addr = node.and_then(|n| n.address());
        // A 20.10 engine lists a host-mode port once per address family: kept once.
        let mut published: Vec<PublishedPort> = Vec::new();
        for p in &task.status.port_status.ports {
            if p.protocol.as_deref().is_some_and(|p| p != "tcp") || p.publish_mode.as_deref() != Some("host") {
                continue;
            }
            let Some(host_port) = p.published_port.filter(|&n| n > 0) else { continue };
            let port = PublishedPort { container_port: p.target_port, host_ip: node_addr, host_port };
            if !published.contains(&port) {
                published.push(port);
            }
        }
        out.push(Container {
            id: task.id.clone(),
            name,
            image: container.image.clone(),
            created: created_seconds(&task.created_at),
            labels: service_labels(spec),
            state,
            departure,
            // A task whose image has a HEALTHCHECK is `running` only once healthy.
            health: DockerHealth::None,
            network_mode: String::new(),
            networks,
            exposed_tcp: exposed_tcp(spec),
            published,
            stop_timeout: container.stop_grace_period.and_then(|ns| u64::try_from(ns).ok()).map(Duration::from_nanos),
            stop_signal: container.stop_signal.as_deref().and_then(signal_number),
            origin: Origin::Task,
            published_by_default: false,
        });
    }
    for service in snapshot.services.iter().filter(|s| vip_services.contains(s.id.as_str())) {
        let networks = service
            .endpoint
            .virtual_ips
            .iter()
            .filter_map(|v| {
                let name = network_names.get(v.network_id.as_str())?;
                let ip = v.addr.split('/').next()?.parse::<IpAddr>().ok()?;
                (*name != "ingress").then(|| (name.to_string(), Some(ip)))
            })
            .collect();
        let mut c = Container::unrouted(service.id.clone(), &service.spec.name, &service.spec.task_template.container_spec.image, service_labels(&service.spec));
        c.state = if serving.contains(service.id.as_str()) { RunState::Running } else { RunState::Created };
        c.networks = networks;
        c.exposed_tcp = exposed_tcp(&service.spec);
        c.origin = Origin::ServiceVip;
        out.push(c);
    }
    out
}

/// The target ports a service's endpoint spec names (TCP): its "exposed" ports.
fn exposed_tcp(spec: &ServiceSpec) -> Vec<u16> {
    let mut ports: Vec<u16> = spec
        .endpoint_spec
        .ports
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "tcp"))
        .map(|p| p.target_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Seconds since the epoch of an RFC 3339 time as the engine writes it; 0 when it does not
/// parse (the time only orders competing claims).
fn created_seconds(rfc3339: &str) -> i64 {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339).map_or(0, |t| t.unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &str = r#"[{"ID":"svc1","Spec":{"Name":"web","Labels":{"hawser.enable":"true","hawser.host":"web.test"},
        "TaskTemplate":{"ContainerSpec":{"Image":"sha256:abc","Labels":{"hawser.port":"8080","hawser.host":"ignored.test"},
        "StopGracePeriod":5000000000,"StopSignal":"SIGQUIT"}},
        "EndpointSpec":{"Mode":"dnsrr","Ports":[{"Protocol":"tcp","TargetPort":8080,"PublishedPort":30080,"PublishMode":"host"}]}}}]"#;
    const NODES: &str = r#"[{"ID":"n1","Status":{"State":"ready","Addr":"0.0.0.0"},"ManagerStatus":{"Addr":"127.0.0.1:2377"}},
        {"ID":"n2","Status":{"State":"down","Addr":"10.0.0.2"}}]"#;

    fn task(id: &str, slot: u64, node: &str, desired: &str, state: &str) -> String {
        format!(
            r#"{{"ID":"{id}","ServiceID":"svc1","NodeID":"{node}","Slot":{slot},"CreatedAt":"2026-12-01T03:00:0{slot}.123456789Z",
            "DesiredState":"{desired}","Status":{{"State":"{state}","PortStatus":{{"Ports":[{{"Protocol":"tcp","TargetPort":8080,"PublishedPort":30080,"PublishMode":"host"}}]}}}},
            "NetworksAttachments":[{{"Network":{{"ID":"ov","Spec":{{"Name":"backend"}}}},"Addresses":["10.0.1.{slot}/24"]}},
            {{"Network":{{"ID":"in","Spec":{{"Name":"ingress"}}}},"Addresses":["10.0.0.{slot}/24"]}}]}}"#
        )
    }

    fn containers(tasks: &[String]) -> Vec<Container> {
        let tasks = format!("[{}]", tasks.join(","));
        tasks_as_containers(&Snapshot::from_json(SERVICES.as_bytes(), tasks.as_bytes(), NODES.as_bytes()).unwrap(), "hawser", None)
    }

    #[test]
    fn a_running_task_is_a_running_container_with_its_addresses() {
        let c = &containers(&[task("t1", 1, "n1", "running", "running")])[0];
        assert_eq!(c.name, "web.1");
        assert_eq!(c.id, "t1");
        assert_eq!((c.state, c.departure), (RunState::Running, Departure::Staying));
        assert_eq!(c.labels["hawser.host"], "web.test", "the service's labels win over the container spec's");
        assert_eq!(c.labels["hawser.port"], "8080");
        assert_eq!(c.networks.len(), 1, "the ingress network is no address of a task: {:?}", c.networks);
        assert_eq!(c.networks["backend"], Some("10.0.1.1".parse().unwrap()));
        assert_eq!(c.published, vec![PublishedPort { container_port: 8080, host_ip: Some("127.0.0.1".parse().unwrap()), host_port: 30080 }]);
        assert_eq!(c.exposed_tcp, vec![8080]);
        assert_eq!(c.stop_timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.stop_signal, Some(3));
        assert_eq!(c.created, 1_796_094_001);
    }

    #[test]
    fn shut_down_tasks_drain_and_history_is_left_out() {
        let all = containers(&[
            task("t1", 1, "n1", "shutdown", "running"),
            task("t2", 2, "n1", "shutdown", "shutdown"),
            task("t3", 3, "n1", "running", "starting"),
            task("t4", 4, "n2", "running", "running"),
            task("t5", 5, "n1", "remove", "running"),
        ]);
        let by_id = |id: &str| all.iter().find(|c| c.id == id);
        assert_eq!(by_id("t1").map(|c| (c.state, c.departure)), Some((RunState::Running, Departure::Draining)));
        assert!(by_id("t2").is_none(), "a task that was shut down is history");
        assert_eq!(by_id("t3").map(|c| c.state), Some(RunState::Created));
        assert_eq!(by_id("t3").unwrap().networks["backend"], None, "no address before it runs");
        assert_eq!(by_id("t4").map(|c| c.state), Some(RunState::Exited), "its node is down");
        assert_eq!(by_id("t5").map(|c| c.departure), Some(Departure::Draining));
    }

    /// What a real single-node swarm (Docker 20.10, `docker swarm init --advertise-addr
    /// 127.0.0.1`) said during `docker service update --force` of a 2-replica dnsrr service
    /// with a host-mode published port on an attachable overlay: one new task running, one
    /// ready, one old task shut down and one still running with its desired state `shutdown`.
    #[test]
    fn a_real_managers_lists_mid_update() {
        let snapshot = Snapshot::from_json(
            include_bytes!("fixtures/services.json"),
            include_bytes!("fixtures/tasks.json"),
            include_bytes!("fixtures/nodes.json"),
        )
        .unwrap();
        assert_eq!(snapshot.nodes[0].address(), Some("127.0.0.1".parse().unwrap()));
        let mut all = tasks_as_containers(&snapshot, "hawser", None);
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let seen: Vec<(&str, &str, RunState, Departure)> =
            all.iter().map(|c| (&c.id[..4], c.name.as_str(), c.state, c.departure)).collect();
        assert_eq!(
            seen,
            vec![
                ("46ib", "capweb.2", RunState::Created, Departure::Staying),
                ("6a53", "capweb.1", RunState::Running, Departure::Staying),
                ("whqn", "capweb.2", RunState::Running, Departure::Draining),
            ],
            "the shut-down task fg0q is history"
        );
        let running = &all[1];
        assert_eq!(running.published, vec![PublishedPort { container_port: 80, host_ip: Some("127.0.0.1".parse().unwrap()), host_port: 32770 }]);
        assert_eq!(running.networks["hawser-cap-ov"], Some("10.0.1.5".parse().unwrap()));
        assert_eq!(running.labels["hawser.host"], "cap.test");
        assert_eq!(running.labels["hawser.port"], "80", "container-spec labels count where the service sets none");
        assert_eq!(running.stop_timeout, Some(Duration::from_secs(3)));
        // The draining task keeps its overlay address; its published port is already gone.
        assert_eq!(all[2].networks["hawser-cap-ov"], Some("10.0.1.3".parse().unwrap()));
        assert!(all[2].published.is_empty());
    }

    #[test]
    fn a_service_reached_through_its_vip_is_one_backend() {
        let services = SERVICES.replace(r#""hawser.enable":"true","#, r#""hawser.enable":"true","hawser.address":"vip","#).replace(
            r#""EndpointSpec":"#,
            r#""X":1}, "Endpoint":{"VirtualIPs":[{"NetworkID":"in","Addr":"10.0.0.2/24"},{"NetworkID":"ov","Addr":"10.0.1.2/24"}]}, "Spec2":{"EndpointSpec":"#,
        );
        // (The replacement above moves EndpointSpec out of Spec: the VIP needs none.)
        let tasks = format!("[{},{}]", task("t1", 1, "n1", "running", "running"), task("t2", 2, "n1", "running", "starting"));
        let snapshot = Snapshot::from_json(services.as_bytes(), tasks.as_bytes(), NODES.as_bytes()).unwrap();
        let all = tasks_as_containers(&snapshot, "hawser", None);
        assert_eq!(all.len(), 1, "{all:?}");
        let vip = &all[0];
        assert_eq!((vip.origin, vip.name.as_str(), vip.id.as_str(), vip.state), (Origin::ServiceVip, "web", "svc1", RunState::Running));
        assert_eq!(vip.networks, [("backend".to_string(), Some("10.0.1.2".parse().unwrap()))].into(), "ingress is left out");
        assert_eq!(vip.labels[crate::catalog::SWARM_SERVICE_LABEL], "web");
        // docker.address: vip makes it the default; a label says otherwise per service.
        let plain = Snapshot::from_json(SERVICES.as_bytes(), tasks.as_bytes(), NODES.as_bytes()).unwrap();
        assert_eq!(tasks_as_containers(&plain, "hawser", Some(AddressMode::Vip))[0].origin, Origin::ServiceVip);
        assert_eq!(tasks_as_containers(&plain, "hawser", None).len(), 2);
        // No task running: the VIP is listed, not running.
        let tasks = format!("[{}]", task("t2", 2, "n1", "running", "starting"));
        let snapshot = Snapshot::from_json(services.as_bytes(), tasks.as_bytes(), NODES.as_bytes()).unwrap();
        assert_eq!(tasks_as_containers(&snapshot, "hawser", None)[0].state, RunState::Created);
    }

    #[test]
    fn global_tasks_are_named_by_node_and_bad_input_is_an_error() {
        let global = task("g", 0, "n1", "running", "running").replace(r#""Slot":0,"#, "");
        assert_eq!(containers(&[global])[0].name, "web.n1");
        assert!(Snapshot::from_json(b"{", b"[]", b"[]").unwrap_err().contains("services"));
        assert!(Snapshot::from_json(b"[]", b"{}", b"[]").unwrap_err().starts_with("tasks"));
        // One odd element costs only itself.
        let s = Snapshot::from_json(b"[]", br#"[{"ID":"bad","Slot":"x"},{"ID":"good"}]"#, b"[]").unwrap();
        assert_eq!((s.tasks.len(), s.tasks[0].id.as_str()), (1, "good"));
        assert!(s.skipped[0].starts_with("tasks \"bad\""), "{:?}", s.skipped);
        // The engine writes null for a service without labels, ports or networks.
        let s = Snapshot::from_json(
            br#"[{"ID":"s","Spec":{"Labels":null,"TaskTemplate":{"ContainerSpec":{"Labels":null}},"EndpointSpec":{"Ports":null}},"Endpoint":{"VirtualIPs":null}}]"#,
            br#"[{"ID":"t","NetworksAttachments":null,"Status":{"PortStatus":{"Ports":null}}}]"#,
            b"[]",
        )
        .unwrap();
        assert!(s.skipped.is_empty() && s.services.len() == 1 && s.tasks.len() == 1, "{:?}", s.skipped);
        // Unknown fields and missing ones are fine: only what hawser reads is declared.
        let s = Snapshot::from_json(b"[{\"ID\":\"s\",\"Extra\":1}]", b"[]", b"[{}]").unwrap();
        assert_eq!(s.services[0].id, "s");
        assert_eq!(s.nodes[0].address(), None);
    }
}
