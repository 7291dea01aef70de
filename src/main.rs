//! `hawser [-c FILE] [-t] [-d] [-u]`: load the configuration, build the pingora server with the
//! proxy service, the admin API and two background services (Docker discovery, health
//! checks), run. `hawser explain [CONTAINER]` asks a running hawser instead (see
//! [`hawser::explain`]).

use std::sync::Arc;

use hawser::admin::AdminApi;
use hawser::config::{ConfigError, Loaded};
use hawser::docker::DockerWatcher;
use hawser::edge::conn::EdgeApp;
use hawser::health::HealthChecks;
use hawser::proxy::HawserProxy;
use hawser::runtime::Runtime;
use hawser::edge::https::HttpsEdge;
use hawser::tls::Tls;
use hawser::tls::challenge::Challenges;
use hawser::tls::files::FileCertificates;
use pingora::prelude::{Opt, Server, background_service};

/// mimalloc rather than glibc's malloc: pingora allocates about 110 times per proxied request
/// (header maps, buffers, boxed futures, pool entries). Measured with callgrind over 5,000
/// requests: 108.9k instructions per request with glibc, 89.6k with mimalloc; a quarter of the
/// former was malloc and free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // A subcommand of its own, with its own flags: decided before pingora parses argv.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "explain") {
        std::process::exit(hawser::explain::run(args.collect()));
    }

    // One rustls crypto provider (ring, as pingora's), before any TLS object exists.
    hawser::tls::install_crypto_provider();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // A panic in a background task does not stop the process: say it in the log, on one line
    // with where it happened, not only as a backtrace on stderr.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        log::error!("panic in thread {}: {info}", thread.name().unwrap_or("?"));
        default_hook(info);
    }));

    // pingora's own flags keep their meaning: -c, -t, -d (daemon), -u (upgrade).
    let mut opt = Opt::parse_args();
    let source = opt.conf.clone();
    let loaded = match &source {
        Some(path) => Loaded::from_path(path.as_ref()),
        None => Loaded::from_yaml("", "<embedded defaults>"),
    };
    let Loaded { config, server: server_conf } = loaded.unwrap_or_else(|e: ConfigError| {
        eprintln!("hawser: invalid configuration: {e}");
        std::process::exit(1);
    });
    if opt.test {
        println!("hawser: configuration {} is valid", source.as_deref().unwrap_or("<embedded defaults>"));
        return;
    }
    // hawser read the file; pingora gets its part as a ServerConf, not the path.
    opt.conf = None;

    // Certificates are read before the server starts: a TLS listener never serves an empty table.
    let tls = (!config.tls.listen.is_empty()).then(|| {
        let tls = Tls::new(&config.tls).unwrap_or_else(|e| {
            eprintln!("hawser: invalid configuration: tls: {e}");
            std::process::exit(1);
        });
        let files = FileCertificates::new(&config.tls, Arc::clone(&tls.store));
        files.reload();
        (tls, files)
    });
    let config = Arc::new(config);
    let runtime = Runtime::new();
    let fleet = Arc::new(hawser::docker::Fleet::default());
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let descriptors = hawser::edge::conn::raise_descriptor_limit().unwrap_or_else(|e| {
        log::warn!("cannot read the file-descriptor limit: {e}");
        1024
    });
    let max_connections =
        config.clients.max_connections.unwrap_or_else(|| hawser::edge::conn::connection_budget(descriptors));
    // Shared with other hawsers through the ACME storage (see hawser::tls::challenge).
    let challenges = Arc::new(Challenges::new(config.tls.acme.as_ref().map(|a| a.storage.join("challenges"))));
    let mut logic = HawserProxy::new(Arc::clone(&runtime), config.access_log, &config.clients);
    if let Some(first) = config.tls.listen.first() {
        logic = logic.with_https(HttpsEdge { challenges: Arc::clone(&challenges), port: first.port() });
    }
    let mut app = pingora::proxy::http_proxy(&server.configuration, logic);
    let mut options = pingora::apps::HttpServerOptions::default();
    // With h2c, hawser's connection layer tells HTTP/2 from HTTP/1.x by the first bytes.
    options.h2c = config.h2c;
    options.h2_idle_timeout = Some(config.clients.keepalive_timeout);
    app.server_options = Some(options);
    // HTTP/2 has no request line to measure: max_header_size bounds its decoded header list
    // (pingora's own default is 64 KiB, with its cap on concurrent streams kept).
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(u32::try_from(config.clients.max_header_size).unwrap_or(u32::MAX));
    app.h2_options = Some(h2);
    // hawser's connection layer in front of pingora's: deadlines, the connection cap.
    let edge = EdgeApp::new(app, config.h2c, &config.clients, max_connections);
    let tls_edge = tls.as_ref().map(|(tls, _)| edge.tls_twin(Arc::clone(&tls.acceptor)));
    let mut proxy = pingora::services::listening::Service::new("hawser proxy".to_string(), edge);
    for addr in &config.listen {
        proxy.add_tcp(&addr.to_string());
    }
    let proxy = server.add_service(proxy);
    let docker = server.add_service(background_service(
        "docker discovery",
        DockerWatcher::new(Arc::clone(&config), Arc::clone(&runtime), Arc::clone(&fleet)),
    ));
    // Accept requests only once the containers are known (see DockerWatcher).
    proxy.add_dependency(&docker);
    let mut store = None;
    if let (Some(tls_edge), Some((tls, files))) = (tls_edge, tls) {
        // Plain TCP listeners: hawser's connection layer does the handshake (see hawser::tls).
        let mut https = pingora::services::listening::Service::new("hawser proxy (TLS)".to_string(), tls_edge);
        for addr in &config.tls.listen {
            https.add_tcp(&addr.to_string());
        }
        let https = server.add_service(https);
        https.add_dependency(&docker);
        server.add_service(background_service("certificate files", files));
        if let Some(acme) = &config.tls.acme {
            let acme = server.add_service(background_service(
                "acme",
                hawser::tls::acme::AcmeManager::new(acme, Arc::clone(&tls.store), Arc::clone(&challenges), Arc::clone(&runtime)),
            ));
            // Orders only once the cleartext listener that answers their challenges is started
            // (and the containers, hence the hosts that want TLS, are known).
            acme.add_dependency(&proxy);
        }
        store = Some(Arc::clone(&tls.store));
    }
    server.add_service(background_service(
        "health checks",
        HealthChecks::new(Arc::clone(&runtime), &server.configuration),
    ));
    let mut admin_api = AdminApi::new(runtime, &config.admin).with_engines(fleet);
    if let Some(store) = store {
        admin_api = admin_api.with_certificates(store);
    }
    let mut admin = pingora::services::listening::Service::new("admin API".to_string(), admin_api);
    admin.add_tcp(&config.admin.listen.to_string());
    server.add_service(admin);
    log::info!(
        "hawser listening on {:?} (TLS on {:?}) with {} worker thread(s), at most {max_connections} client connections ({descriptors} file descriptors), admin API on {}",
        config.listen,
        config.tls.listen,
        server.configuration.threads,
        config.admin.listen
    );
    server.run_forever();
}
