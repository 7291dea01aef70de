//! hawser's pingora `ServiceDiscovery`: one per service, serving the backend set and
//! enablement map that the runtime last computed from Docker and the health checks.
//!
//! Discovery does no I/O of its own. Docker events reach the runtime, the runtime stores a new
//! [`Snapshot`] here and wakes that service's single updater, which calls
//! `LoadBalancer::update()`: updates are pushed, never polled, and never overlap.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pingora_load_balancing::Backend;
use pingora_load_balancing::discovery::ServiceDiscovery;

/// One service's backends and which of them may be selected.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub backends: BTreeSet<Backend>,
    /// Keyed by [`backend_key`]. Always complete: pingora treats a backend missing from the
    /// map as enabled, and hawser never wants that by accident.
    pub enabled: HashMap<u64, bool>,
}

impl Snapshot {
    pub fn ready_count(&self) -> usize {
        self.enabled.values().filter(|e| **e).count()
    }
}

/// The key pingora uses for its enablement map (`Backend::hash_key`, which is crate-private):
/// the backend's `Hash` (address and weight; `ext` is ignored) through `DefaultHasher::new()`.
/// The test below proves it matches by disabling a backend through it.
pub fn backend_key(b: &Backend) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// The `ServiceDiscovery` handed to pingora; shares its snapshot with the runtime.
pub struct SnapshotDiscovery {
    current: Arc<Mutex<Arc<Snapshot>>>,
}

impl SnapshotDiscovery {
    pub fn new(current: Arc<Mutex<Arc<Snapshot>>>) -> Self {
        SnapshotDiscovery { current }
    }
}

#[async_trait]
impl ServiceDiscovery for SnapshotDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let snapshot = Arc::clone(&self.current.lock().expect("snapshot lock"));
        Ok((snapshot.backends.clone(), snapshot.enabled.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_load_balancing::{Backends, LoadBalancer, selection::RoundRobin};

    #[tokio::test]
    async fn enablement_keys_match_pingora() {
        let a = Backend::new("10.0.0.1:80").unwrap();
        let b = Backend::new("10.0.0.2:80").unwrap();
        let shared = Arc::new(Mutex::new(Arc::new(Snapshot {
            backends: [a.clone(), b.clone()].into(),
            enabled: [(backend_key(&a), false), (backend_key(&b), true)].into(),
        })));
        let lb: LoadBalancer<RoundRobin> =
            LoadBalancer::from_backends(Backends::new(Box::new(SnapshotDiscovery::new(shared.clone()))));
        lb.update().await.unwrap();
        for _ in 0..4 {
            assert_eq!(lb.select(b"", 8).unwrap().addr, b.addr);
        }
        // Same membership, new enablement: applied in place.
        *shared.lock().unwrap() = Arc::new(Snapshot {
            backends: [a.clone(), b.clone()].into(),
            enabled: [(backend_key(&a), true), (backend_key(&b), false)].into(),
        });
        lb.update().await.unwrap();
        assert_eq!(lb.select(b"", 8).unwrap().addr, a.addr);
    }
}
