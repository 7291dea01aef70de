//! The pure routing path at fleet scale (issue 5): 10,000 containers in 1,000 services.
//!
//! - `catalog/build`: planning everything, as at start-up or after a resync;
//! - `catalog/update`: one container event (a container stops, then starts again), which must
//!   cost in proportion to its service, not to the fleet;
//! - `runtime/update_container`: the same event through the live side too (catalog, probe
//!   targets, the service's load balancer snapshot), as the Docker watcher applies it;
//! - `routes/lookup`: one request's route lookup, exact host and wildcard.
//!
//! `cargo bench --bench catalog`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use hawser::catalog::routes::{HostPattern, RouteKey, RouteTable};
use hawser::edge::{host::parse_host, path::normalize};
use hawser::catalog::{Catalog, Container, Departure, DockerHealth, Environment, Origin, RunState};
use hawser::config::Config;
use hawser::runtime::{Cause, Runtime};

const SERVICES: usize = 1_000;
const CONTAINERS: usize = 10_000;

fn container(i: usize) -> Container {
    let service = format!("svc{}", i % SERVICES);
    let labels: BTreeMap<String, String> = [
        ("hawser.enable", "true".to_string()),
        ("hawser.service", service.clone()),
        ("hawser.host", format!("{service}.example.com")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let ip = IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8));
    Container {
        id: format!("{i:064x}"),
        name: format!("{service}-{}", i / SERVICES),
        image: "app:1".into(),
        created: i as i64,
        labels,
        state: RunState::Running,
        departure: Departure::Staying,
        health: DockerHealth::None,
        network_mode: "fleet".into(),
        networks: [("fleet".to_string(), Some(ip))].into(),
        exposed_tcp: vec![80],
        published: Vec::new(),
        stop_timeout: None,
        stop_signal: None,
        origin: Origin::Container,
        published_by_default: false,
    }
}

fn fleet() -> BTreeMap<String, Container> {
    (0..CONTAINERS).map(container).map(|c| (c.id.clone(), c)).collect()
}

fn catalog(c: &mut Criterion) {
    let config = Config::default();
    let env = Environment::default();
    let mut containers = fleet();
    c.bench_function("catalog/build 10k containers, 1k services", |b| {
        b.iter(|| Catalog::build(&config, black_box(containers.values()), &env))
    });

    let mut cat = Catalog::build(&config, containers.values(), &env);
    let id = container(4_321).id;
    let mut running = true;
    c.bench_function("catalog/update one container event (10k fleet)", |b| {
        b.iter(|| {
            running = !running;
            containers.get_mut(&id).expect("in the fleet").state =
                if running { RunState::Running } else { RunState::Exited };
            black_box(cat.update(&config, &env, &containers, &id))
        })
    });
}

fn runtime(c: &mut Criterion) {
    let config = Config::default();
    let env = Environment::default();
    let mut containers = fleet();
    // Services spawn their updater task: the runtime needs a tokio context.
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio");
    let _guard = tokio.enter();
    let rt = Runtime::new();
    let cause = Cause { what: "bench".into(), event_nanos: None };
    rt.apply(Catalog::build(&config, containers.values(), &env), &cause);
    let id = container(4_321).id;
    let mut running = true;
    c.bench_function("runtime/update_container one container event (10k fleet)", |b| {
        b.iter(|| {
            running = !running;
            containers.get_mut(&id).expect("in the fleet").state =
                if running { RunState::Running } else { RunState::Exited };
            rt.update_container(&config, &env, &containers, &id, &cause);
        })
    });
}

/// What the proxy does per request: parse the Host, normalise the path, look up.
fn route(table: &RouteTable<usize>, host: &str, path: &str) -> Option<usize> {
    let host = parse_host(host.as_bytes()).ok()?;
    let path = normalize(path).ok()?;
    table.lookup(&host.host, &path).copied()
}

fn routes(c: &mut Criterion) {
    let mut entries: Vec<(RouteKey, usize)> = (0..SERVICES)
        .map(|i| (RouteKey { host: HostPattern::Exact(format!("svc{i}.example.com")), path_prefix: "/".into() }, i))
        .collect();
    entries.extend((0..100).map(|i| {
        (RouteKey { host: HostPattern::parse(&format!("*.tenant{i}.example.net")).unwrap(), path_prefix: "/".into() }, i)
    }));
    let table = RouteTable::build(entries);
    c.bench_function("routes/lookup exact host (1k hosts, 100 wildcards)", |b| {
        b.iter(|| route(&table, black_box("svc500.example.com:8080"), black_box("/api/items")))
    });
    c.bench_function("routes/lookup wildcard host (last of 100 wildcards)", |b| {
        b.iter(|| route(&table, black_box("a.tenant99.example.net"), black_box("/")))
    });
}

criterion_group!(benches, catalog, runtime, routes);
criterion_main!(benches);
