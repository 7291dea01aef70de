//! What the proxy learns from real requests: each backend's run of consecutive failures (for
//! passive ejection) and each service's retry budget.
//!
//! Both sit on the request path, so they are lock-free: a few relaxed atomics per request.
//! Approximate under races (two threads may both top up a budget past its cap by one
//! deposit), which is fine for limits of this kind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use crate::config;
use crate::metrics::BackendMetrics;

/// One backend as the proxy sees it. The runtime keeps one per backend for as long as the
/// backend exists and hands it to pingora inside `Backend::ext`, so a selection carries it.
#[derive(Debug)]
pub struct BackendLive {
    pub container_id: String,
    pub container_name: String,
    pub service: String,
    pub addr: SocketAddr,
    pub metrics: BackendMetrics,
    failures: AtomicU32,
    ejected: AtomicBool,
    /// A failed TLS handshake was logged at warn; the next ones go to debug until a request
    /// succeeds (a wrong certificate fails every request: one line says it).
    tls_failure_told: AtomicBool,
}

impl BackendLive {
    pub fn new(container_id: &str, container_name: &str, service: &str, addr: SocketAddr) -> BackendLive {
        BackendLive {
            container_id: container_id.to_string(),
            container_name: container_name.to_string(),
            service: service.to_string(),
            addr,
            metrics: BackendMetrics::new(service, container_name),
            failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            tls_failure_told: AtomicBool::new(false),
        }
    }

    /// Whether this TLS handshake failure is the first since the backend last answered:
    /// the one to log at warn.
    pub fn first_tls_failure(&self) -> bool {
        !self.tls_failure_told.swap(true, Ordering::Relaxed)
    }

    /// A response that was not a gateway error: the run of failures is over.
    pub fn record_success(&self) {
        if self.tls_failure_told.load(Ordering::Relaxed) {
            self.tls_failure_told.store(false, Ordering::Relaxed);
        }
        // Read first: the common case writes nothing, so the cache line stays shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A connect failure or gateway error; returns the length of the run.
    pub fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// Marks it ejected; false when it already was.
    pub(crate) fn eject(&self) -> bool {
        !self.ejected.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn restore(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Release);
    }
}

/// Token bucket in thousandths of a retry: every request deposits `ratio`, every retry takes
/// one whole token, and `min_per_second` trickle in with time so a quiet service can still
/// retry. The bucket holds at most ten seconds' worth of that trickle (at least 10 retries),
/// so a long healthy stretch does not buy a storm of retries later.
#[derive(Debug)]
pub struct RetryBudget {
    deposit: i64,
    per_ms: i64,
    cap: i64,
    balance: AtomicI64,
    epoch: Instant,
    refilled_ms: AtomicU64,
    warned_s: AtomicU64,
}

const TOKEN: i64 = 1000;

impl RetryBudget {
    pub fn new(policy: &config::RetryBudget) -> RetryBudget {
        let cap = TOKEN * i64::from(policy.min_per_second.saturating_mul(10).max(10));
        RetryBudget {
            deposit: (policy.ratio * TOKEN as f64).round() as i64,
            per_ms: i64::from(policy.min_per_second),
            cap,
            balance: AtomicI64::new(cap),
            epoch: Instant::now(),
            refilled_ms: AtomicU64::new(0),
            warned_s: AtomicU64::new(u64::MAX),
        }
    }

    /// Called once per request.
    pub fn deposit(&self) {
        if self.deposit > 0 && self.balance.load(Ordering::Relaxed) < self.cap {
            self.balance.fetch_add(self.deposit, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget, if there is one.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(self.epoch.elapsed().as_millis() as u64)
    }

    fn withdraw_at(&self, now_ms: u64) -> bool {
        let last = self.refilled_ms.swap(now_ms, Ordering::Relaxed);
        let refill = (now_ms.saturating_sub(last) as i64).saturating_mul(self.per_ms);
        if refill > 0 {
            let cap = self.cap;
            let _ = self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + refill).min(cap).max(b)));
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| (b >= TOKEN).then_some(b - TOKEN))
            .is_ok()
    }

    /// True at most once a second: for a log line that would otherwise repeat per request.
    pub fn should_warn(&self) -> bool {
        let now_s = self.epoch.elapsed().as_secs();
        self.warned_s.swap(now_s, Ordering::Relaxed) != now_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(&config::RetryBudget { ratio, min_per_second })
    }

    #[test]
    fn a_failing_fleet_gets_at_most_the_ratio_after_the_burst() {
        let b = budget(0.2, 10);
        // The initial burst: ten seconds of the minimum.
        let burst = (0..1000).take_while(|_| b.withdraw_at(0)).count();
        assert_eq!(burst, 100);
        // Then 1000 requests, all failing, within the same millisecond: 20 % of them.
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw_at(0) {
                retries += 1;
            }
        }
        assert_eq!(retries, 200);
    }

    #[test]
    fn the_minimum_trickles_in_with_time() {
        let b = budget(0.0, 10);
        while b.withdraw_at(0) {}
        assert!(!b.withdraw_at(50));
        // 10 per second: one every 100 ms.
        assert!(b.withdraw_at(100));
        assert!(!b.withdraw_at(150));
        // A long quiet time refills only up to the cap.
        let refilled = (0..1000).take_while(|_| b.withdraw_at(3_600_000)).count();
        assert_eq!(refilled, 100);
    }

    #[test]
    fn deposits_stop_at_the_cap() {
        let b = budget(1.0, 1);
        for _ in 0..1000 {
            b.deposit();
        }
        assert_eq!((0..1000).take_while(|_| b.withdraw_at(0)).count(), 10);
    }

    #[test]
    fn failure_runs() {
        let l = BackendLive::new("id", "name", "svc", "10.0.0.2:80".parse().unwrap());
        assert_eq!(l.record_failure(), 1);
        assert_eq!(l.record_failure(), 2);
        l.record_success();
        assert_eq!(l.record_failure(), 1);
        assert!(l.eject());
        assert!(!l.eject());
        l.restore();
        assert!(!l.is_ejected());
        assert_eq!(l.record_failure(), 1);
    }
}
