//! Where to send a container's traffic: which port, which network, which IP. Every "no" comes
//! back as the reason a user reads, because picking a wrong network or port silently is the
//! failure hawser exists to avoid.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::container::{Container, Origin};
use crate::config::AddressMode;

/// What the catalog knows about hawser's own place in Docker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    /// Networks of hawser's own container; empty when hawser does not run in a container.
    pub own_networks: Vec<String>,
    /// Reads the CA files that `tls.ca` labels name: the catalog's one way to the file system.
    pub ca_files: crate::upstream::CaFiles,
}

/// Where a container port is asked for, in the order they are consulted.
pub struct PortChoice<'a> {
    pub label: Option<u16>,
    pub service: Option<u16>,
    pub prefix: &'a str,
}

/// Port: label → service `port` → the single exposed TCP port. In published mode, when that
/// is ambiguous, the single *published* port is used.
pub fn choose_port(c: &Container, choice: &PortChoice<'_>, mode: AddressMode) -> Result<u16, String> {
    if let Some(p) = choice.label.or(choice.service) {
        return Ok(p);
    }
    let p = choice.prefix;
    match c.exposed_tcp.as_slice() {
        [one] => Ok(*one),
        exposed => {
            if mode == AddressMode::Published {
                let mut published: Vec<u16> = c.published.iter().map(|b| b.container_port).collect();
                published.sort_unstable();
                published.dedup();
                if let [one] = published.as_slice() {
                    return Ok(*one);
                }
            }
            if exposed.is_empty() {
                Err(format!("exposes no TCP port: set {p}.port"))
            } else {
                Err(format!("exposes {}: set {p}.port", list_ports(exposed)))
            }
        }
    }
}

fn list_ports(ports: &[u16]) -> String {
    let mut s: Vec<String> = ports.iter().map(u16::to_string).collect();
    let last = s.pop().unwrap_or_default();
    if s.is_empty() { last } else { format!("{} and {last}", s.join(", ")) }
}

/// The one of hawser's own listeners that `addr` would reach, if any: the same address, or a
/// loopback address on the port of a wildcard listener (`0.0.0.0`, `[::]`, which on Linux
/// also takes IPv4 unless v6only). Such a backend is refused: every request to it would come
/// back to hawser, and go round until something times out. It happens to a `network_mode:
/// host` container (routed to `127.0.0.1:PORT`) labelled with hawser's own port.
pub fn own_listener(addr: SocketAddr, listeners: impl IntoIterator<Item = SocketAddr>) -> Option<SocketAddr> {
    let ip = addr.ip().to_canonical();
    // Connecting to 0.0.0.0 or [::] reaches the local host on Linux.
    let local = ip.is_loopback() || ip.is_unspecified();
    listeners.into_iter().find(|l| {
        let lip = l.ip().to_canonical();
        l.port() == addr.port() && (lip == ip || (lip.is_unspecified() && local) || (ip.is_unspecified() && lip.is_loopback()))
    })
}

/// How `c` is reached: its `address` label, else `docker.address`, else by what it is. A plain
/// container by its IP; a Swarm task, in this order of preference, by its IP on a network it
/// shares with hawser, then by a port it publishes in mode host. A Swarm service seen through
/// its VIP is always `vip` (it exists only in that mode).
pub fn effective_mode(
    c: &Container,
    label: Option<AddressMode>,
    config: Option<AddressMode>,
    label_network: Option<&str>,
    env: &Environment,
    prefix: &str,
) -> Result<AddressMode, String> {
    match (c.origin, label.or(config)) {
        (Origin::ServiceVip, _) => Ok(AddressMode::Vip),
        (Origin::Container, Some(AddressMode::Vip)) if label.is_some() => {
            Err(format!("label {prefix}.address=vip applies to Swarm services only; this is a plain container"))
        }
        // `docker.address: vip` is the Swarm services' default; plain containers keep theirs.
        (Origin::Container, Some(AddressMode::Vip) | None) if c.published_by_default => Ok(AddressMode::Published),
        (Origin::Container, Some(AddressMode::Vip) | None) => Ok(AddressMode::Container),
        (_, Some(mode)) => Ok(mode),
        (Origin::Task, None) => {
            let shared = c.networks.keys().any(|n| env.own_networks.contains(n) || label_network == Some(n.as_str()));
            if shared && !env.own_networks.is_empty() {
                Ok(AddressMode::Container)
            } else if !c.published.is_empty() || !c.state.is_up() {
                Ok(AddressMode::Published)
            } else {
                Err(format!("{}, and publishes no port in mode host: {}", no_shared_network(c, env), TASK_ADDRESS_HELP))
            }
        }
    }
}

const TASK_ADDRESS_HELP: &str = "run hawser on one of the task's overlay networks, or publish the port with mode: host";

fn no_shared_network(c: &Container, env: &Environment) -> String {
    let on = c.networks.keys().cloned().collect::<Vec<_>>().join(", ");
    if env.own_networks.is_empty() {
        format!("hawser runs outside Docker, where overlay IPs cannot be reached (task on: {on})")
    } else {
        format!("shares no network with hawser (task on: {on}; hawser on: {})", env.own_networks.join(", "))
    }
}

/// The socket address for `port` of container `c`.
pub fn choose_address(
    c: &Container,
    port: u16,
    mode: AddressMode,
    label_network: Option<&str>,
    config_network: Option<&str>,
    env: &Environment,
    prefix: &str,
) -> Result<SocketAddr, String> {
    if mode == AddressMode::Published {
        return published_address(c, port);
    }
    if c.origin != Origin::Container && env.own_networks.is_empty() {
        // The host has no route into overlay networks (moby#18357).
        let what = if c.origin == Origin::ServiceVip { "the service's VIP" } else { "the task's IP" };
        return Err(format!(
            "{} ({what} is unreachable): {TASK_ADDRESS_HELP}, or set {prefix}.address=published",
            no_shared_network(c, env)
        ));
    }
    if mode == AddressMode::Vip && c.origin != Origin::ServiceVip {
        return Err(format!("label {prefix}.address=vip applies to Swarm services only"));
    }
    if c.network_mode == "host" {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(other) = c.network_mode.strip_prefix("container:") {
        return Err(format!(
            "shares the network of container {}: route that container instead",
            other.get(..12).unwrap_or(other)
        ));
    }
    if c.origin == Origin::ServiceVip && c.networks.is_empty() {
        return Err("has no virtual IP on a network (endpoint mode dnsrr?): use address container or published".into());
    }
    let network = choose_network(c, label_network, config_network, env, prefix)?;
    match c.networks.get(network).copied().flatten() {
        Some(ip) => Ok(SocketAddr::new(ip, port)),
        None => Err(format!("has no IP address on network {network}")),
    }
}

/// Network: label → `docker.network` (if the container is on it) → the one network shared with
/// hawser's own container → the container's only network.
fn choose_network<'a>(
    c: &'a Container,
    label_network: Option<&str>,
    config_network: Option<&str>,
    env: &Environment,
    prefix: &str,
) -> Result<&'a str, String> {
    let on = |n: &str| c.networks.get_key_value(n).map(|(k, _)| k.as_str());
    let names = || c.networks.keys().cloned().collect::<Vec<_>>().join(", ");
    if let Some(wanted) = label_network {
        return on(wanted).ok_or_else(|| {
            format!("label {prefix}.network={wanted:?}, but the container is not on network {wanted} (it is on: {})", names())
        });
    }
    if let Some(n) = config_network.and_then(on) {
        return Ok(n);
    }
    if c.networks.is_empty() {
        return Err("is on no network".into());
    }
    if !env.own_networks.is_empty() {
        let shared: Vec<&str> =
            c.networks.keys().map(String::as_str).filter(|n| env.own_networks.iter().any(|o| o == n)).collect();
        return match shared.as_slice() {
            [one] => Ok(one),
            [] => Err(format!(
                "not on a network shared with hawser (container on: {}; hawser on: {})",
                names(),
                env.own_networks.join(", ")
            )),
            several => Err(format!(
                "on several networks shared with hawser ({}): set {prefix}.network or docker.network",
                several.join(", ")
            )),
        };
    }
    if c.networks.len() == 1 {
        return Ok(c.networks.keys().next().expect("one network").as_str());
    }
    Err(format!("on several networks ({}): set {prefix}.network or docker.network", names()))
}

fn published_address(c: &Container, port: u16) -> Result<SocketAddr, String> {
    let binding = c
        .published
        .iter()
        .filter(|b| b.container_port == port)
        // Prefer an IPv4 binding: loopback v4 always works where Docker published on 0.0.0.0.
        .min_by_key(|b| matches!(b.host_ip, Some(IpAddr::V6(_))))
        .ok_or_else(|| {
            if c.origin == Origin::Task {
                format!("port {port} is not published in mode host (address: published)")
            } else {
                format!("port {port} is not published (address: published)")
            }
        })?;
    let ip = match binding.host_ip {
        // A task's port is bound on its node: an unknown node address is no address here.
        None if c.origin == Origin::Task => return Err("its node's address is unknown to the swarm manager".into()),
        None | Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(IpAddr::V6(v6)) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Some(ip) => ip,
    };
    Ok(SocketAddr::new(ip, binding.host_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::container::PublishedPort;

    const P: &str = "hawser";

    fn port(c: &Container, label: Option<u16>, service: Option<u16>, mode: AddressMode) -> Result<u16, String> {
        choose_port(c, &PortChoice { label, service, prefix: P }, mode)
    }

    fn addr(c: &Container, label_net: Option<&str>, cfg_net: Option<&str>, own: &[&str]) -> Result<SocketAddr, String> {
        let env = Environment { own_networks: own.iter().map(|s| s.to_string()).collect(), ..Environment::default() };
        choose_address(c, 80, AddressMode::Container, label_net, cfg_net, &env, P)
    }

    fn two_nets() -> Container {
        let mut c = Container::sample("a", "10.0.0.2");
        c.networks.insert("back".into(), Some("10.1.0.2".parse().unwrap()));
        c
    }

    #[test]
    fn port_precedence_and_reasons() {
        let mut c = Container::sample("a", "10.0.0.2");
        assert_eq!(port(&c, None, None, AddressMode::Container), Ok(80));
        assert_eq!(port(&c, None, Some(81), AddressMode::Container), Ok(81));
        assert_eq!(port(&c, Some(82), Some(81), AddressMode::Container), Ok(82));
        c.exposed_tcp = vec![80, 443];
        assert_eq!(port(&c, None, None, AddressMode::Container), Err("exposes 80 and 443: set hawser.port".into()));
        c.exposed_tcp = vec![];
        assert_eq!(port(&c, None, None, AddressMode::Container), Err("exposes no TCP port: set hawser.port".into()));
        c.exposed_tcp = vec![80, 443];
        c.published = vec![PublishedPort { container_port: 443, host_ip: None, host_port: 8443 }];
        assert_eq!(port(&c, None, None, AddressMode::Published), Ok(443));
    }

    #[test]
    fn network_precedence_and_reasons() {
        let c = two_nets();
        assert_eq!(addr(&c, Some("back"), None, &[]).unwrap().ip().to_string(), "10.1.0.2");
        assert!(addr(&c, Some("nope"), None, &[]).unwrap_err().contains("not on network nope (it is on: back, net)"));
        assert_eq!(addr(&c, None, Some("back"), &[]).unwrap().ip().to_string(), "10.1.0.2");
        // docker.network the container is not on falls through to the next rule.
        assert!(addr(&c, None, Some("other"), &[]).unwrap_err().starts_with("on several networks (back, net)"));
        assert_eq!(addr(&c, None, None, &["net", "x"]).unwrap().ip().to_string(), "10.0.0.2");
        assert!(addr(&c, None, None, &["x"]).unwrap_err().starts_with("not on a network shared with hawser"));
        assert!(addr(&c, None, None, &["net", "back"]).unwrap_err().starts_with("on several networks shared with hawser"));
        assert_eq!(addr(&Container::sample("b", "10.0.0.3"), None, None, &[]).unwrap().to_string(), "10.0.0.3:80");
    }

    #[test]
    fn own_listeners_are_recognised() {
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let own = |addr: &str, listeners: &[&str]| own_listener(sa(addr), listeners.iter().map(|l| sa(l)));
        assert_eq!(own("127.0.0.1:8080", &["127.0.0.1:8080"]), Some(sa("127.0.0.1:8080")));
        assert_eq!(own("127.0.0.1:8080", &["127.0.0.1:9900", "0.0.0.0:8080"]), Some(sa("0.0.0.0:8080")));
        assert_eq!(own("127.0.0.2:8080", &["0.0.0.0:8080"]), Some(sa("0.0.0.0:8080")));
        assert_eq!(own("127.0.0.1:8080", &["[::]:8080"]), Some(sa("[::]:8080")));
        assert_eq!(own("[::1]:8080", &["0.0.0.0:8080"]), Some(sa("0.0.0.0:8080")));
        assert_eq!(own("[::ffff:127.0.0.1]:8080", &["127.0.0.1:8080"]), Some(sa("127.0.0.1:8080")));
        assert_eq!(own("0.0.0.0:8080", &["127.0.0.1:8080"]), Some(sa("127.0.0.1:8080")));
        assert_eq!(own("127.0.0.1:8081", &["0.0.0.0:8080", "127.0.0.1:8080"]), None);
        // Another loopback address than the listener's is another socket.
        assert_eq!(own("127.0.0.2:8080", &["127.0.0.1:8080"]), None);
        // A container's own address is not hawser's, even on the same port.
        assert_eq!(own("172.17.0.2:8080", &["0.0.0.0:8080"]), None);
        assert_eq!(own("10.0.0.5:8080", &["10.0.0.6:8080"]), None);
    }

    #[test]
    fn host_mode_and_missing_ip() {
        let mut c = Container::sample("a", "10.0.0.2");
        c.network_mode = "host".into();
        c.networks = [("host".to_string(), None)].into();
        assert_eq!(addr(&c, None, None, &[]).unwrap().to_string(), "127.0.0.1:80");
        let mut c = Container::sample("a", "10.0.0.2");
        c.networks.insert("net".into(), None);
        assert_eq!(addr(&c, None, None, &[]).unwrap_err(), "has no IP address on network net");
    }

    #[test]
    fn published_mode_uses_the_host_binding() {
        let mut c = Container::sample("a", "10.0.0.2");
        let env = Environment::default();
        let pub_addr = |c: &Container| choose_address(c, 80, AddressMode::Published, None, None, &env, P);
        assert!(pub_addr(&c).unwrap_err().contains("port 80 is not published"));
        c.published = vec![
            PublishedPort { container_port: 80, host_ip: Some("::".parse().unwrap()), host_port: 32768 },
            PublishedPort { container_port: 80, host_ip: Some("0.0.0.0".parse().unwrap()), host_port: 32768 },
        ];
        assert_eq!(pub_addr(&c).unwrap().to_string(), "127.0.0.1:32768");
        c.published = vec![PublishedPort { container_port: 80, host_ip: Some("192.0.2.7".parse().unwrap()), host_port: 9000 }];
        assert_eq!(pub_addr(&c).unwrap().to_string(), "192.0.2.7:9000");
    }

    fn task(ip: &str, published: bool) -> Container {
        let mut c = Container::sample("web.1", ip);
        c.origin = Origin::Task;
        c.networks = [("overlay".to_string(), Some(ip.parse().unwrap()))].into();
        if published {
            c.published = vec![PublishedPort { container_port: 80, host_ip: Some("192.0.2.9".parse().unwrap()), host_port: 30080 }];
        }
        c
    }

    fn env_on(own: &[&str]) -> Environment {
        Environment { own_networks: own.iter().map(|s| s.to_string()).collect(), ..Environment::default() }
    }

    #[test]
    fn swarm_tasks_are_reached_by_a_shared_network_then_a_host_mode_port() {
        use AddressMode::{Container as ByIp, Published, Vip};
        let mode = |c: &Container, label: Option<AddressMode>, config: Option<AddressMode>, own: &[&str]| {
            effective_mode(c, label, config, None, &env_on(own), P)
        };
        // A shared overlay first, then the port published in mode host.
        assert_eq!(mode(&task("10.0.1.5", true), None, None, &["overlay"]), Ok(ByIp));
        assert_eq!(mode(&task("10.0.1.5", true), None, None, &[]), Ok(Published));
        assert_eq!(mode(&task("10.0.1.5", true), None, None, &["other"]), Ok(Published));
        let none = mode(&task("10.0.1.5", false), None, None, &[]).unwrap_err();
        assert!(none.contains("hawser runs outside Docker") && none.contains("mode: host"), "{none}");
        let none = mode(&task("10.0.1.5", false), None, None, &["other"]).unwrap_err();
        assert!(none.contains("shares no network with hawser (task on: overlay; hawser on: other)"), "{none}");
        // The label, then docker.address, choose.
        assert_eq!(mode(&task("10.0.1.5", true), Some(Published), Some(ByIp), &["overlay"]), Ok(Published));
        assert_eq!(mode(&task("10.0.1.5", true), None, Some(Published), &["overlay"]), Ok(Published));
        // A plain container: vip is for Swarm services only.
        let plain = Container::sample("a", "10.0.0.2");
        assert_eq!(mode(&plain, None, Some(Vip), &[]), Ok(ByIp), "docker.address: vip is the services' default");
        assert!(mode(&plain, Some(Vip), None, &[]).unwrap_err().contains("Swarm services only"));
        let mut vip = task("10.0.1.2", false);
        vip.origin = Origin::ServiceVip;
        assert_eq!(mode(&vip, Some(ByIp), None, &["overlay"]), Ok(Vip));
    }

    #[test]
    fn task_addresses() {
        let env = env_on(&["overlay"]);
        let at = |c: &Container, mode, env: &Environment| choose_address(c, 80, mode, None, None, env, P);
        assert_eq!(at(&task("10.0.1.5", true), AddressMode::Container, &env).unwrap().to_string(), "10.0.1.5:80");
        assert_eq!(at(&task("10.0.1.5", true), AddressMode::Published, &env).unwrap().to_string(), "192.0.2.9:30080");
        let e = at(&task("10.0.1.5", false), AddressMode::Published, &env).unwrap_err();
        assert_eq!(e, "port 80 is not published in mode host (address: published)");
        // Asked for explicitly, a task IP from outside Docker is refused with the reason.
        let e = at(&task("10.0.1.5", true), AddressMode::Container, &Environment::default()).unwrap_err();
        assert!(e.contains("unreachable") && e.contains("hawser.address=published"), "{e}");
        let mut vip = task("10.0.1.2", false);
        vip.origin = Origin::ServiceVip;
        assert_eq!(at(&vip, AddressMode::Vip, &env).unwrap().to_string(), "10.0.1.2:80");
        vip.networks.clear();
        assert!(at(&vip, AddressMode::Vip, &env).unwrap_err().contains("no virtual IP"));
    }
}
