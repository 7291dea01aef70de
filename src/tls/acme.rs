//! Certificates from an ACME CA (RFC 8555) for the hosts routes ask TLS for.
//! (Placeholder: the manager is being written; it orders nothing yet.)

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::challenge::Challenges;
use super::store::CertStore;
use crate::config::AcmeConfig;
use crate::runtime::Runtime;

pub struct AcmeManager {
    _config: AcmeConfig,
    _store: Arc<CertStore>,
    _challenges: Arc<Challenges>,
    _runtime: Arc<Runtime>,
}

impl AcmeManager {
    pub fn new(config: &AcmeConfig, store: Arc<CertStore>, challenges: Arc<Challenges>, runtime: Arc<Runtime>) -> AcmeManager {
        AcmeManager { _config: config.clone(), _store: store, _challenges: challenges, _runtime: runtime }
    }
}

#[async_trait]
impl BackgroundService for AcmeManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
    }
}
