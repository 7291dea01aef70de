//! Prometheus metrics, served by the admin API at `/metrics`.
//!
//! One registry for the process ([`metrics()`]). The request path never looks a metric up by
//! its labels: each service and backend resolves its own counters once, when it appears
//! ([`ServiceMetrics`], [`BackendMetrics`]), so a request costs a few atomic adds. Series of
//! services and backends that are gone are removed, so container churn does not grow the output.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::runtime::{BackendState, ServiceView};

/// Status classes counted per service.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    websockets: IntGaugeVec,
    retries: IntCounterVec,
    connect_errors: IntCounterVec,
    ejections: IntCounterVec,
    backend_state: IntGaugeVec,
    pub docker_events: IntCounterVec,
    pub docker_reconnects: IntCounter,
    pub docker_connected: IntGauge,
    pub discovery_latency: Histogram,
    pub access_log_dropped: IntCounter,
    pub client_connections: IntGauge,
    client_closed: IntCounterVec,
    tls_handshake_errors: IntCounterVec,
    certificate_expiry: IntGaugeVec,
    acme_orders: IntCounterVec,
}

/// Why hawser closed a client connection on its own (see [`crate::edge::conn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientClose {
    /// The request head did not arrive within `clients.header_timeout`.
    HeaderTimeout,
    /// Idle between requests for `clients.keepalive_timeout`.
    KeepaliveTimeout,
    /// `clients.max_connections` were open already.
    OverLimit,
    /// The first bytes were not a request hawser accepts (answered 4xx, then closed).
    Refused,
}

impl ClientClose {
    pub const ALL: [ClientClose; 4] =
        [ClientClose::HeaderTimeout, ClientClose::KeepaliveTimeout, ClientClose::OverLimit, ClientClose::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            ClientClose::HeaderTimeout => "header_timeout",
            ClientClose::KeepaliveTimeout => "keepalive_timeout",
            ClientClose::OverLimit => "over_limit",
            ClientClose::Refused => "refused",
        }
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
        };
        let latency_buckets = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        Metrics {
            requests: counter_vec(
                "hawser_requests_total",
                "Requests answered, by service (empty: no route) and status class.",
                &["service", "class"],
            ),
            duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("hawser_request_duration_seconds", "Time from request header to the end of the answer.")
                        .buckets(latency_buckets.clone()),
                    &["service"],
                )
                .expect("valid metric"),
            ),
            in_flight: register(
                &r,
                IntGaugeVec::new(Opts::new("hawser_active_requests", "Requests being proxied now, by service."), &["service"])
                    .expect("valid metric"),
            ),
            websockets: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("hawser_websocket_connections", "WebSocket tunnels open now through hawser, by service."),
                    &["service"],
                )
                .expect("valid metric"),
            ),
            retries: counter_vec("hawser_retries_total", "Requests retried on another backend.", &["service"]),
            connect_errors: counter_vec(
                "hawser_upstream_connect_errors_total",
                "Failed connections to a backend (refused, timed out).",
                &["service", "backend"],
            ),
            ejections: counter_vec(
                "hawser_backend_ejections_total",
                "Backends taken out by passive ejection.",
                &["service", "backend"],
            ),
            backend_state: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("hawser_backend_state", "1 for the state each backend is in, 0 for the others."),
                    &["service", "backend", "state"],
                )
                .expect("valid metric"),
            ),
            docker_events: counter_vec("hawser_docker_events_total", "Docker events handled, by action.", &["action"]),
            docker_reconnects: register(
                &r,
                IntCounter::new("hawser_docker_stream_reconnects_total", "Reconnections to the Docker event stream.")
                    .expect("valid metric"),
            ),
            docker_connected: register(
                &r,
                IntGauge::new("hawser_docker_connected", "1 while the Docker event stream is connected.").expect("valid metric"),
            ),
            discovery_latency: register(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "hawser_discovery_latency_seconds",
                        "Delay from a Docker event to the service's selector being live with it.",
                    )
                    .buckets(latency_buckets),
                )
                .expect("valid metric"),
            ),
            access_log_dropped: register(
                &r,
                IntCounter::new("hawser_access_log_dropped_total", "Access log lines dropped because the writer fell behind.")
                    .expect("valid metric"),
            ),
            client_connections: register(
                &r,
                IntGauge::new("hawser_client_connections", "Client connections open now, on the listen addresses.")
                    .expect("valid metric"),
            ),
            client_closed: counter_vec(
                "hawser_client_connections_closed_total",
                "Client connections hawser closed on its own, by reason: header_timeout, keepalive_timeout, over_limit, refused.",
                &["reason"],
            ),
            tls_handshake_errors: counter_vec(
                "hawser_tls_handshake_errors_total",
                "TLS handshakes that failed, by reason: timeout, no_certificate, protocol, closed.",
                &["reason"],
            ),
            certificate_expiry: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "hawser_certificate_expiry_seconds",
                        "When the certificate served for each host expires, in unix seconds (subtract time() for the time left).",
                    ),
                    &["host"],
                )
                .expect("valid metric"),
            ),
            acme_orders: counter_vec(
                "hawser_acme_orders_total",
                "ACME certificate orders finished, by result: issued, failed.",
                &["result"],
            ),
            registry: r,
        }
    }

    /// The counter of TLS handshakes failed for `reason`, resolved once by its holder.
    pub fn tls_handshake_error(&self, reason: crate::tls::HandshakeError) -> IntCounter {
        self.tls_handshake_errors.with_label_values(&[reason.as_str()])
    }

    /// Makes both `hawser_acme_orders_total` series exist, at 0, once ACME runs: a rate or an
    /// alert on `failed` then works before the first failure.
    pub fn acme_orders_init(&self) {
        for result in ["issued", "failed"] {
            let _ = self.acme_orders.with_label_values(&[result]);
        }
    }

    /// Counts one finished ACME order (`issued` or `failed`).
    pub fn acme_order(&self, result: &str) {
        self.acme_orders.with_label_values(&[result]).inc();
    }

    /// The counter of connections closed for `reason`, resolved once by its holder.
    pub fn client_closed(&self, reason: ClientClose) -> IntCounter {
        self.client_closed.with_label_values(&[reason.as_str()])
    }

    /// The text exposition, with backend states taken from `services` at this moment.
    /// `certificates`: each served host name with its certificate's expiry (unix seconds).
    pub fn render(&self, services: &[ServiceView], certificates: &[(String, i64)]) -> String {
        // The admin API answers on several threads: one scrape at a time, or two could
        // interleave their reset and refill of the state gauge.
        static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = SCRAPE.lock().unwrap_or_else(|e| e.into_inner());
        self.backend_state.reset();
        self.certificate_expiry.reset();
        for (host, not_after) in certificates {
            self.certificate_expiry.with_label_values(&[host.as_str()]).set(*not_after);
        }
        for svc in services {
            for b in &svc.backends {
                for state in BackendState::ALL {
                    self.backend_state
                        .with_label_values(&[svc.name.as_str(), b.container_name.as_str(), state.as_str()])
                        .set(i64::from(b.state == state));
                }
            }
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// One service's request metrics, resolved once.
pub struct ServiceMetrics {
    service: String,
    classes: [IntCounter; 5],
    pub duration: Histogram,
    pub in_flight: IntGauge,
    /// Open WebSocket tunnels: moved only through [`crate::streams::WebSocketOpen`]. A tunnel
    /// that outlives its service's series ([`ServiceMetrics::remove`]) ends on the detached
    /// gauge, so a service that comes back starts again from 0, not from -1.
    pub websockets: IntGauge,
    pub retries: IntCounter,
}

impl ServiceMetrics {
    /// `service` is empty for requests that matched no route.
    pub fn new(service: &str) -> ServiceMetrics {
        let m = metrics();
        ServiceMetrics {
            service: service.to_string(),
            classes: CLASSES.map(|c| m.requests.with_label_values(&[service, c])),
            duration: m.duration.with_label_values(&[service]),
            in_flight: m.in_flight.with_label_values(&[service]),
            websockets: m.websockets.with_label_values(&[service]),
            retries: m.retries.with_label_values(&[service]),
        }
    }

    pub fn answered(&self, status: u16) {
        if let Some(c) = self.classes.get(usize::from(status / 100).wrapping_sub(1)) {
            c.inc();
        }
    }

    /// Drops the service's series (it is gone).
    pub fn remove(&self) {
        let m = metrics();
        for c in CLASSES {
            let _ = m.requests.remove_label_values(&[&self.service, c]);
        }
        let _ = m.duration.remove_label_values(&[&self.service]);
        let _ = m.in_flight.remove_label_values(&[&self.service]);
        let _ = m.websockets.remove_label_values(&[&self.service]);
        let _ = m.retries.remove_label_values(&[&self.service]);
    }
}

/// One backend's metrics, resolved once; the backend label is the container name.
#[derive(Debug)]
pub struct BackendMetrics {
    pub connect_errors: IntCounter,
    pub ejections: IntCounter,
}

impl BackendMetrics {
    pub fn new(service: &str, container_name: &str) -> BackendMetrics {
        let m = metrics();
        BackendMetrics {
            connect_errors: m.connect_errors.with_label_values(&[service, container_name]),
            ejections: m.ejections.with_label_values(&[service, container_name]),
        }
    }
}

/// Drops a backend's series: the container left the service.
pub fn forget_backend(service: &str, container_name: &str) {
    let m = metrics();
    let _ = m.connect_errors.remove_label_values(&[service, container_name]);
    let _ = m.ejections.remove_label_values(&[service, container_name]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_counters_show_up_and_go_away() {
        let s = ServiceMetrics::new("metrics-test");
        s.answered(200);
        s.answered(503);
        s.answered(999);
        s.duration.observe(0.002);
        s.websockets.inc();
        let text = metrics().render(&[], &[]);
        assert!(text.contains(r#"hawser_requests_total{class="2xx",service="metrics-test"} 1"#), "{text}");
        assert!(text.contains(r#"hawser_websocket_connections{service="metrics-test"} 1"#), "{text}");
        assert!(text.contains(r#"hawser_requests_total{class="5xx",service="metrics-test"} 1"#), "{text}");
        s.remove();
        assert!(!metrics().render(&[], &[]).contains("metrics-test"));
        let b = BackendMetrics::new("metrics-test", "c1");
        b.connect_errors.inc();
        assert!(metrics().render(&[], &[]).contains(r#"backend="c1""#));
        forget_backend("metrics-test", "c1");
        assert!(!metrics().render(&[], &[]).contains(r#"backend="c1""#));
    }

    #[test]
    fn a_websocket_that_outlives_its_service_leaves_the_next_one_at_zero() {
        let before = ServiceMetrics::new("metrics-ws-test");
        let open = crate::streams::WebSocketOpen::new(&before.websockets);
        before.remove();
        let again = ServiceMetrics::new("metrics-ws-test");
        drop(open);
        assert_eq!(again.websockets.get(), 0);
        let text = metrics().render(&[], &[]);
        assert!(text.contains(r#"hawser_websocket_connections{service="metrics-ws-test"} 0"#), "{text}");
        again.remove();
    }
}
