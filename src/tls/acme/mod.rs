//! Certificates from an ACME CA (RFC 8555) for the hosts routes ask TLS for.
//! (Placeholder: the manager is being written; it orders nothing yet.)
//!
//! - [`schedule`]: when to renew (a third of the lifetime left, or the CA's ARI window) and
//!   how long to wait after a failure (pure).
//! - [`storage`]: the account and certificates on disk, Caddy's layout, written atomically.
//! - [`lock`]: lock files, so that hawsers sharing a storage directory order once between them.
//! - [`order`]: the account and one HTTP-01 order, through instant-acme.
//! - [`http`]: the HTTP client instant-acme gets, with a deadline and a size cap.

pub mod http;
pub mod lock;
pub mod order;
pub mod schedule;
pub mod storage;

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

/// A directory for one unit test, removed when dropped (also when the test fails).
#[cfg(test)]
pub(crate) struct TestDir(pub std::path::PathBuf);

#[cfg(test)]
impl TestDir {
    pub(crate) fn new(name: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!("hawser-acme-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create a test directory");
        TestDir(d)
    }
}

#[cfg(test)]
impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
