//! Certificates from an ACME CA (RFC 8555) for the hosts routes ask TLS for: ordered through
//! HTTP-01, stored, served, renewed; a pingora background service.
//!
//! - [`schedule`]: when to renew (a third of the lifetime left, or the CA's ARI window) and
//!   how long to wait after a failure (pure).
//! - [`storage`]: the account and certificates on disk, Caddy's layout, written atomically.
//! - [`lock`]: lock files, so that hawsers sharing a storage directory order once between them.
//! - [`order`]: the account and one HTTP-01 order, through instant-acme.
//! - [`http`]: the HTTP client instant-acme gets, with a deadline and a size cap.
//!
//! Invariants:
//! - Only hosts that a route asks TLS for (`hawser.tls=true`, a YAML service's `tls: true`)
//!   and no certificate file serves are ever ordered; nothing is ordered because a client
//!   named a host in its SNI. The wanted hosts are read from the catalog every [`POLL`]
//!   (cheap: a list of names), so a new labelled container is ordered for within a second.
//! - Wildcard routes (`*.example.com`) are never ordered (HTTP-01 cannot prove them): the
//!   store records why for each, and a certificate file can serve them.
//! - Start-up never waits on the CA: stored certificates are read from disk at once and served;
//!   the CA is asked in background tasks, and until a certificate arrives the host gets the
//!   default certificate (or none, with `default_certificate: refuse`).
//! - One task at most per host, and hosts are independent: a host that fails (or waits for
//!   another hawser's lock) never holds up another. At most [`MAX_ORDERS`] orders run at once.
//!   Every network step has a deadline ([`http::REQUEST_TIMEOUT`], [`ORDER_TIMEOUT`]), so a
//!   hung CA costs a task, never the manager.
//! - A failure keeps the old certificate serving, records the reason and the next attempt in
//!   the store (`/api/certificates`), and waits as [`schedule::retry_delay`] says (one
//!   minute, doubling, at most a day): the CA is never hammered.
//! - A host whose route goes away (or gets a certificate file) leaves the schedule at once:
//!   its task is aborted (its challenge answers and lock go with it) and it is never renewed.

pub mod http;
pub mod lock;
pub mod order;
pub mod schedule;
pub mod storage;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use log::{debug, error, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinError, JoinSet};

use super::challenge::Challenges;
use super::files::unix_to_text;
use super::pem::Certificate;
use super::store::{AcmeHost, CertStore, Entry, Source, canonical};
use crate::config::AcmeConfig;
use crate::metrics::metrics;
use crate::runtime::Runtime;
use order::{Ca, Failure, LOCK_STALE};
use schedule::Window;
use storage::{Loaded, Storage};

/// How often the wanted hosts are read from the catalog and timers are looked at.
pub const POLL: Duration = Duration::from_secs(1);
/// The longest one order may take, account included.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a host's task waits for another hawser that orders the same host.
const HOST_LOCK_WAIT: Duration = Duration::from_secs(240);
/// Orders in flight at once (a hundred new containers must not become a hundred orders).
pub const MAX_ORDERS: usize = 4;
/// When the storage or the client could not be set up: how soon to try again, seconds.
const SETUP_RETRY: i64 = 60;
/// When to ask the CA for the renewal window of a certificate that was just loaded or
/// issued, seconds: not at start-up (a restart asks the CA nothing), and the window of a
/// fresh certificate is no news.
const ARI_FIRST: i64 = 600;
/// When asking for the window failed: how soon to ask again, seconds.
const ARI_RETRY: i64 = 3_600;
/// Never order again sooner than this after an issuance, seconds, whatever a certificate's
/// validity says (a CA issuing nearly-expired certificates must not get an order a second).
const MIN_REORDER: i64 = 10;

pub struct AcmeManager {
    config: AcmeConfig,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    runtime: Arc<Runtime>,
}

impl AcmeManager {
    pub fn new(config: &AcmeConfig, store: Arc<CertStore>, challenges: Arc<Challenges>, runtime: Arc<Runtime>) -> AcmeManager {
        AcmeManager { config: config.clone(), store, challenges, runtime }
    }
}

/// What the background tasks share.
struct Shared {
    storage: Storage,
    ca: Ca,
    challenges: Arc<Challenges>,
    orders: Semaphore,
}

/// Whether the CA offers renewal information (ARI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ari {
    Unknown,
    Offered,
    NotOffered,
}

/// One host the manager looks after.
struct Host {
    current: Option<Current>,
    /// Whether the storage was looked at for it.
    loaded: bool,
    /// Unix seconds of the next order (renewal, or retry after a failure).
    next_attempt: i64,
    /// Failures in a row.
    failures: u32,
    error: Option<String>,
    job: Option<AbortHandle>,
    window: Option<Window>,
    /// Unix seconds of the next ARI question.
    ari_next: i64,
    /// Where in an ARI window this certificate renews, `[0, 1)`.
    pick: f64,
}

struct Current {
    entry: Arc<Entry>,
}

impl Current {
    fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.entry.cert.key.cert.first()
    }
}

impl Host {
    fn new(now: i64) -> Host {
        Host {
            current: None,
            loaded: false,
            next_attempt: now,
            failures: 0,
            error: None,
            job: None,
            window: None,
            ari_next: i64::MAX,
            pick: random_unit(),
        }
    }

    fn renew_at(&self) -> Option<i64> {
        let c = &self.current.as_ref()?.entry.cert;
        Some(schedule::renewal_time(c.not_before, c.not_after, self.window, self.pick))
    }

    /// Serves `cert` from now on, renewing it when its time comes.
    fn adopt(&mut self, cert: Certificate, origin: String, now: i64) {
        self.pick = random_unit();
        self.window = None;
        self.ari_next = now + ARI_FIRST;
        self.current = Some(Current { entry: Arc::new(Entry { cert, source: Source::Acme, origin }) });
        self.failures = 0;
        self.error = None;
        self.next_attempt = self.renew_at().unwrap_or(now);
    }
}

/// What a background task brings back.
enum Outcome {
    /// A certificate to serve: `ordered` by this hawser, or found in the storage, put there by
    /// another one sharing it.
    Got { cert: Certificate, origin: String, ordered: bool, save_error: Option<String> },
    /// A failure, with the next attempt when it was recorded in the storage (and why it could
    /// not be, when that failed).
    Failed(Failure, Option<i64>, Option<String>),
    /// Another hawser sharing the storage failed to order it, and its next attempt is still
    /// to come: this one waits for it too.
    Deferred(storage::Failures),
    /// The CA's renewal window and when to ask again (seconds); `None`: the CA has no ARI.
    Window(Option<(Window, u64)>),
    AriFailed(String),
}

/// The manager's state, owned by its loop.
struct State {
    shared: Option<Arc<Shared>>,
    setup_error: Option<String>,
    setup_next: i64,
    hosts: BTreeMap<String, Host>,
    wildcards: BTreeSet<String>,
    tasks: HashMap<tokio::task::Id, String>,
    ari: Ari,
}

#[async_trait]
impl BackgroundService for AcmeManager {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        metrics().acme_orders_init();
        info!(
            "ACME: certificates from {} for the hosts routes ask TLS for; storage {}",
            self.config.directory,
            self.config.storage.display()
        );
        let mut state = State {
            shared: None,
            setup_error: None,
            setup_next: 0,
            hosts: BTreeMap::new(),
            wildcards: BTreeSet::new(),
            tasks: HashMap::new(),
            ari: Ari::Unknown,
        };
        let mut jobs: JoinSet<Outcome> = JoinSet::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => self.finished(&mut state, done),
                // Also when the sender is gone: nobody will ask for anything any more.
                _ = shutdown.changed() => {
                    jobs.abort_all();
                    return;
                }
            }
            self.sync(&mut state, &mut jobs);
        }
    }
}

impl AcmeManager {
    fn setup(&self) -> Result<Shared, String> {
        let storage = Storage::open(&self.config.storage, &self.config.directory)?;
        self.challenges.sweep();
        let client = http::CaClient::new(&self.config)?;
        Ok(Shared {
            storage,
            ca: Ca::new(client, &self.config.directory, self.config.email.as_deref()),
            challenges: Arc::clone(&self.challenges),
            orders: Semaphore::new(MAX_ORDERS),
        })
    }

    /// Follows the catalog (hosts in, hosts out) and starts the tasks that are due.
    fn sync(&self, state: &mut State, jobs: &mut JoinSet<Outcome>) {
        let now = unix_now();
        if state.shared.is_none() && now >= state.setup_next {
            match self.setup() {
                Ok(shared) => {
                    state.shared = Some(Arc::new(shared));
                    state.setup_error = None;
                }
                Err(e) => {
                    if state.setup_error.as_ref() != Some(&e) {
                        error!("ACME: {e}; no certificate can be ordered until this is fixed (tried again every {SETUP_RETRY} s)");
                    }
                    state.setup_error = Some(e);
                    state.setup_next = now + SETUP_RETRY;
                }
            }
        }

        let (exact, wildcards) = self.wanted();
        let before = state.hosts.len() + state.wildcards.len();
        state.hosts.retain(|name, host| {
            let keep = exact.contains(name);
            if !keep {
                if let Some(job) = host.job.take() {
                    job.abort();
                }
                info!("ACME: {name}: no route asks TLS for it (or a certificate file serves it); it is not renewed any more");
            }
            keep
        });
        state.wildcards.retain(|w| wildcards.contains(w));
        if state.hosts.len() + state.wildcards.len() != before {
            self.store.retain_acme(|h| exact.contains(h) || wildcards.contains(h));
        }
        for w in &wildcards {
            if state.wildcards.insert(w.clone()) {
                let why = format!(
                    "{w} needs DNS-01, not supported: HTTP-01 cannot prove a wildcard name; serve it from a certificate file (tls.certificates or tls.directory)"
                );
                warn!("ACME: {why}");
                self.store.set_acme(w, AcmeHost { cert: None, next_renewal: None, error: Some(why) });
            }
        }

        for name in &exact {
            if !state.hosts.contains_key(name) {
                let mut host = Host::new(now);
                host.error = state.setup_error.clone();
                self.publish(name, &host);
                state.hosts.insert(name.clone(), host);
            }
        }
        let Some(shared) = state.shared.clone() else {
            for (name, host) in state.hosts.iter_mut() {
                if host.error != state.setup_error {
                    host.error = state.setup_error.clone();
                    self.publish(name, host);
                }
            }
            return;
        };
        for (name, host) in state.hosts.iter_mut() {
            if !host.loaded {
                host.loaded = true;
                self.load(&shared, name, host, now);
                self.publish(name, host);
            }
            if host.job.is_some() {
                continue;
            }
            let task = if now >= host.next_attempt {
                let current = host.current.as_ref().map(|c| c.entry.cert.chain_pem.clone());
                let replaces = host.current.as_ref().and_then(Current::leaf).filter(|_| state.ari == Ari::Offered).cloned();
                let (shared, name) = (Arc::clone(&shared), name.clone());
                let failures = host.failures;
                jobs.spawn(async move { renew(&shared, &name, current, replaces, failures).await })
            } else if let Some(leaf) = host.current.as_ref().and_then(Current::leaf).filter(|_| now >= host.ari_next && state.ari != Ari::NotOffered) {
                let (shared, leaf) = (Arc::clone(&shared), leaf.clone());
                jobs.spawn(async move {
                    match shared.ca.renewal_window(&shared.storage, &leaf, unix_now).await {
                        Ok(w) => Outcome::Window(w),
                        Err(e) => Outcome::AriFailed(e),
                    }
                })
            } else {
                continue;
            };
            state.tasks.insert(task.id(), name.clone());
            host.job = Some(task);
        }
    }

    /// The hosts to order for now: exact names and wildcards, lowercase, without those a
    /// certificate file serves.
    fn wanted(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let listed = self.runtime.with_catalog(crate::catalog::tls::tls_hosts);
        let (mut exact, mut wildcards) = (BTreeSet::new(), BTreeSet::new());
        for t in listed {
            let host = canonical(&t.host);
            if self.store.has_file_certificate(&host) {
                continue;
            }
            if host.starts_with("*.") {
                wildcards.insert(host);
            } else {
                exact.insert(host);
            }
        }
        (exact, wildcards)
    }

    /// Reads what the storage holds for a host that just became wanted.
    fn load(&self, shared: &Shared, name: &str, host: &mut Host, now: i64) {
        match shared.storage.load(name) {
            Loaded::Usable(stored) => {
                host.adopt(stored.cert, stored.path.display().to_string(), now);
                info!(
                    "ACME: {name}: serving the stored certificate {}, valid until {}; renewal from {}",
                    stored.path.display(),
                    unix_to_text(stored.meta.not_after),
                    unix_to_text(host.next_attempt)
                );
            }
            Loaded::Missing => info!("ACME: {name}: no stored certificate; ordering one from {}", self.config.directory),
            Loaded::Unusable(why) => warn!("ACME: {name}: the stored certificate cannot be used ({why}); ordering a new one"),
        }
        // The failures of an earlier run still count: a restart does not order at once.
        match shared.storage.load_failures(name) {
            Ok(Some(f)) => {
                // Stale: a certificate that is not due yet was issued since, or the run of
                // failures ended long ago (a host whose route comes back months later).
                let renewed = host.renew_at().is_some_and(|t| t > now);
                if renewed || f.next_attempt < now - schedule::MAX_RETRY {
                    if let Err(e) = shared.storage.clear_failures(name) {
                        warn!("ACME: {name}: {e}");
                    }
                    return;
                }
                self.follow(name, host, f, now, "before this start", Some(&shared.storage));
            }
            Ok(None) => {}
            Err(e) => warn!("ACME: {name}: the record of earlier failures cannot be read ({e}); ignored"),
        }
    }

    /// Takes over a run of failures recorded in the storage (by an earlier run of this hawser,
    /// or by another one sharing the storage): its count, its error and its next attempt,
    /// never more than [`schedule::MAX_RETRY`] away (a clock that was wrong cannot stop
    /// renewals for longer).
    fn follow(&self, name: &str, host: &mut Host, f: storage::Failures, now: i64, when: &str, storage: Option<&Storage>) {
        host.failures = f.failures;
        host.next_attempt = host.next_attempt.max(f.next_attempt.min(now + schedule::MAX_RETRY));
        let file = storage
            .and_then(|s| s.failures_path(name).ok())
            .map_or_else(String::new, |f| format!(" (delete {} and restart to try at once)", f.display()));
        info!(
            "ACME: {name}: {} failed order(s) in a row {when} (last: {}); next attempt at {}{file}",
            f.failures,
            f.error,
            unix_to_text(host.next_attempt)
        );
        host.error = Some(f.error);
    }

    /// Takes in what a task brought back.
    fn finished(&self, state: &mut State, done: Result<(tokio::task::Id, Outcome), JoinError>) {
        let now = unix_now();
        let (id, outcome) = match done {
            Ok(done) => done,
            // Aborted: its host is gone already.
            Err(e) if e.is_cancelled() => {
                state.tasks.remove(&e.id());
                return;
            }
            Err(e) => {
                let id = e.id();
                let why = match e.try_into_panic() {
                    Ok(p) => p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                error!("ACME: a task failed: {why}");
                (id, Outcome::Failed(Failure { why: format!("internal error: {why}"), asked_ca: false }, None, None))
            }
        };
        let Some(name) = state.tasks.remove(&id) else { return };
        let Some(host) = state.hosts.get_mut(&name) else { return };
        host.job = None;
        let storage = state.shared.as_ref().map(|s| &s.storage);
        match outcome {
            Outcome::Got { cert, origin, ordered, save_error } => {
                if let Some(Err(e)) = storage.map(|s| s.clear_failures(&name)) {
                    warn!("ACME: {name}: {e}");
                }
                let not_after = cert.not_after;
                host.adopt(cert, origin, now);
                host.next_attempt = host.next_attempt.max(now + MIN_REORDER);
                if let Some(e) = save_error {
                    error!("ACME: {name}: the certificate was issued but could not be stored ({e}); serving it from memory");
                    host.error = Some(format!("issued but not stored: {e}"));
                }
                if ordered {
                    metrics().acme_order("issued");
                    info!(
                        "ACME: {name}: certificate issued by {}, valid until {}; renewal from {}",
                        self.config.directory,
                        unix_to_text(not_after),
                        unix_to_text(host.next_attempt)
                    );
                } else {
                    info!(
                        "ACME: {name}: another hawser sharing {} stored a new certificate; serving it, valid until {}",
                        self.config.storage.display(),
                        unix_to_text(not_after)
                    );
                }
            }
            Outcome::Failed(failure, recorded, record_error) => {
                host.failures = host.failures.saturating_add(1);
                host.next_attempt = recorded.unwrap_or_else(|| now + schedule::retry_delay(host.failures, random_unit()));
                let delay = host.next_attempt - now;
                if let Some(e) = record_error {
                    warn!("ACME: {name}: {e}");
                }
                if failure.asked_ca {
                    metrics().acme_order("failed");
                }
                let serving = match &host.current {
                    Some(c) => format!("the current certificate (valid until {}) keeps serving", unix_to_text(c.entry.cert.not_after)),
                    None => "the default certificate serves it meanwhile".to_string(),
                };
                warn!(
                    "ACME: {name}: no certificate: {}; next attempt in {delay} s, at {} (failure {} in a row); {serving}",
                    failure.why,
                    unix_to_text(host.next_attempt),
                    host.failures
                );
                host.error = Some(failure.why);
            }
            Outcome::Deferred(f) => self.follow(&name, host, f, now, "by another hawser sharing the storage", storage),
            Outcome::Window(Some((window, retry))) => {
                state.ari = Ari::Offered;
                host.window = Some(window);
                host.ari_next = now + schedule::ari_recheck(retry);
                if host.failures == 0 {
                    host.next_attempt = host.renew_at().unwrap_or(now);
                }
                debug!(
                    "ACME: {name}: the CA's renewal window is {} to {}; renewal at {}",
                    unix_to_text(window.start),
                    unix_to_text(window.end),
                    unix_to_text(host.next_attempt)
                );
            }
            Outcome::Window(None) => {
                if state.ari != Ari::NotOffered {
                    info!("ACME: the CA offers no renewal information (ARI); certificates renew when a third of their lifetime remains");
                }
                state.ari = Ari::NotOffered;
                host.ari_next = i64::MAX;
            }
            Outcome::AriFailed(why) => {
                host.ari_next = now + ARI_RETRY;
                info!("ACME: {name}: cannot ask the CA for a renewal window ({why}); asking again in {ARI_RETRY} s");
            }
        }
        self.publish(&name, host);
    }

    /// Shows a host's state in the store (and so in `/api/certificates`).
    fn publish(&self, name: &str, host: &Host) {
        self.store.set_acme(
            name,
            AcmeHost {
                cert: host.current.as_ref().map(|c| Arc::clone(&c.entry)),
                next_renewal: Some(host.next_attempt),
                error: host.error.clone(),
            },
        );
    }
}

/// One host's renewal (or first order), under its lock: another hawser may have stored a new
/// certificate meanwhile, which is then taken instead of ordering.
/// `failures`: the host's failures in a row so far.
async fn renew(shared: &Shared, host: &str, current: Option<Vec<u8>>, replaces: Option<CertificateDer<'static>>, failures: u32) -> Outcome {
    // Not the CA's doing: neither recorded in the storage nor counted against the CA.
    let local = |why: String| Outcome::Failed(Failure { why, asked_ca: false }, None, None);
    let path = match shared.storage.lock_path(host) {
        Ok(p) => p,
        Err(e) => return local(e),
    };
    let _lock = match lock::lock(&path, HOST_LOCK_WAIT, LOCK_STALE, unix_now).await {
        Ok(l) => l,
        Err(e) => return local(format!("another hawser is ordering it: {e}")),
    };
    if let Loaded::Usable(stored) = shared.storage.load(host) {
        let newer = current.as_deref() != Some(stored.cert.chain_pem.as_slice());
        let due = schedule::renewal_time(stored.cert.not_before, stored.cert.not_after, None, 0.0) <= unix_now();
        if newer && !due {
            return Outcome::Got { cert: stored.cert, origin: stored.path.display().to_string(), ordered: false, save_error: None };
        }
    }
    // Another hawser sharing the storage failed just now: its back-off holds for all. A
    // record further off than the longest back-off was written by a wrong clock: ignored,
    // and overwritten by this attempt's outcome.
    let now = unix_now();
    if let Ok(Some(f)) = shared.storage.load_failures(host)
        && f.next_attempt > now
        && f.next_attempt <= now + schedule::MAX_RETRY
    {
        return Outcome::Deferred(f);
    }
    // The semaphore is never closed.
    let _permit = shared.orders.acquire().await.ok();
    let ordered = shared.ca.order(&shared.storage, &shared.challenges, host, replaces.as_ref(), unix_now);
    let issued = match tokio::time::timeout(ORDER_TIMEOUT, ordered).await {
        Err(_) => Err(Failure { why: format!("no certificate within {ORDER_TIMEOUT:?}"), asked_ca: true }),
        Ok(result) => result,
    };
    let issued = match issued {
        Ok(issued) => issued,
        Err(failure) => {
            // Recorded while the lock is held, so that a hawser sharing the storage, next in
            // line for the lock, sees it and waits (Outcome::Deferred) instead of ordering.
            let failures = failures.saturating_add(1);
            let next = unix_now() + schedule::retry_delay(failures, random_unit());
            let recorded = shared.storage.save_failures(host, failures, next, &failure.why).map_err(|e| format!("the failure is not recorded for a restart: {e}"));
            return Outcome::Failed(failure, Some(next), recorded.err());
        }
    };
    match shared.storage.save(host, &issued.cert, issued.key_pem.as_bytes(), unix_now()) {
        Ok(stored) => Outcome::Got { cert: stored.cert, origin: stored.path.display().to_string(), ordered: true, save_error: None },
        Err(e) => Outcome::Got { cert: issued.cert, origin: "(not stored)".into(), ordered: true, save_error: Some(e) },
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A number in `[0, 1)` for jitter and ARI picks (not for anything secret).
fn random_unit() -> f64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
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
