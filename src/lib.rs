//! hawser: an edge load balancer on pingora that finds its backends in the Docker engine.
//!
//! Data flow, one module per step:
//! [`docker`] (events, inspect) → [`catalog`] (pure: containers × config → services, routes,
//! verdicts) → [`runtime`] (one pingora `LoadBalancer` per service, fed by [`discovery`]) →
//! [`health`] (active probes, a background service) → [`proxy`] (`ProxyHttp`), whose evidence
//! from real requests ([`passive`]: failure runs, retry budgets) flows back to the runtime;
//! [`streams`] says which requests are long-lived and what their end means; [`grpc`] how
//! hawser's own answers to gRPC calls look; [`upstream`] how requests and probes dial a
//! backend (cleartext, or TLS with the name and roots to verify).
//! [`admin`] shows all of it (verdicts, states, [`metrics`]) and takes manual drains;
//! [`access_log`] writes a line per request.
//! [`config`] reads the YAML file into the model all of them use.

pub mod access_log;
pub mod admin;
pub mod catalog;
pub mod config;
pub mod discovery;
pub mod docker;
pub mod edge;
pub mod explain;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod passive;
pub mod proxy;
pub mod runtime;
pub mod streams;
pub mod tls;
pub mod upstream;
