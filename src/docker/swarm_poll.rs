//! Keeps reading a swarm manager's services, tasks and nodes: Swarm emits no task events
//! (../shared/SWARM-NOTES.md), so a task that starts, stops or moves is seen only by asking.
//!
//! Invariants:
//! - One round at a time: `GET /services`, `/tasks?filters={"desired-state":["running"]}` and
//!   `/nodes`, side by side; each round's lists go out whole, as one [`Snapshot`], or as the
//!   error that stopped the round (the last good snapshot stays in force meanwhile).
//! - A round starts [`INTERVAL`] after the last one, [`FAST_INTERVAL`] while a service is
//!   updating or a task is starting, and at once (but never sooner than [`MIN_GAP`] after the
//!   last) when [`Poller::wake`] is called — on a swarm event (service, node) or a local
//!   container event of a task. For [`AFTER_WAKE`] after a wake rounds come every
//!   [`FAST_INTERVAL`] too: the event comes before the orchestrator acts on it (a scale-down's
//!   `update` event precedes the tasks' new desired state by a millisecond or so, and sets no
//!   update status), so the round it wakes may still see the old tasks.
//! - Only tasks whose desired state is `running` are listed: a task the manager shuts down
//!   leaves the list (and the rotation) in the round after the manager decided it, which is
//!   before the node stops its container (it first takes it out of DNS and waits 2 s).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};

use super::api::RawApi;
use super::swarm::Snapshot;

pub const INTERVAL: Duration = Duration::from_secs(1);
pub const FAST_INTERVAL: Duration = Duration::from_millis(250);
pub const MIN_GAP: Duration = Duration::from_millis(50);
pub const AFTER_WAKE: Duration = Duration::from_secs(2);

const TASKS: &str = "/tasks?filters=%7B%22desired-state%22%3A%5B%22running%22%5D%7D";

/// A handle on a running poller: wakes it, and stops it when dropped.
pub struct Poller {
    wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    /// Starts polling through `api`, the first round after `first` (or a wake); each round's
    /// outcome goes to `tx`.
    pub fn start(api: RawApi, tx: mpsc::Sender<Result<Snapshot, String>>, first: Duration) -> Poller {
        let wake = Arc::new(Notify::new());
        let task = tokio::spawn(run(api, Arc::clone(&wake), tx, first));
        Poller { wake, task }
    }

    /// Asks for a round now (something changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(api: RawApi, wake: Arc<Notify>, tx: mpsc::Sender<Result<Snapshot, String>>, first: Duration) {
    let mut fast_until = tokio::time::Instant::now();
    if tokio::time::timeout(first, wake.notified()).await.is_ok() {
        fast_until += AFTER_WAKE;
    }
    loop {
        let outcome = round(&api).await;
        let fast = matches!(&outcome, Ok(s) if busy(s)) || tokio::time::Instant::now() < fast_until;
        let next = if fast { FAST_INTERVAL } else { INTERVAL };
        if tx.send(outcome).await.is_err() {
            return;
        }
        tokio::time::sleep(MIN_GAP).await;
        if tokio::time::timeout(next - MIN_GAP, wake.notified()).await.is_ok() {
            fast_until = tokio::time::Instant::now() + AFTER_WAKE;
        }
    }
}

/// One round: the three lists, read side by side.
pub async fn round(api: &RawApi) -> Result<Snapshot, String> {
    let read_at = tokio::time::Instant::now();
    let (services, tasks, nodes) = tokio::join!(api.get("/services"), api.get(TASKS), api.get("/nodes"));
    let mut snapshot = Snapshot::from_json(&services?, &tasks?, &nodes?)?;
    snapshot.read_at = Some(read_at);
    Ok(snapshot)
}

/// Whether tasks are changing: a service updating, or a task on its way to running. A task
/// the scheduler cannot place (`pending`, e.g. for want of resources) is not: it may wait for
/// ever, and the fast cadence with it.
fn busy(s: &Snapshot) -> bool {
    s.services.iter().any(|svc| svc.updating())
        || s.tasks.iter().any(|t| matches!(t.status.state.as_str(), "assigned" | "accepted" | "preparing" | "ready" | "starting"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_come_faster_while_tasks_change() {
        let quiet = Snapshot::from_json(br#"[{"ID":"s"}]"#, br#"[{"Status":{"State":"running"}}]"#, b"[]").unwrap();
        assert!(!busy(&quiet));
        let starting = Snapshot::from_json(br#"[{"ID":"s"}]"#, br#"[{"Status":{"State":"starting"}}]"#, b"[]").unwrap();
        assert!(busy(&starting));
        let unplaceable = Snapshot::from_json(br#"[{"ID":"s"}]"#, br#"[{"Status":{"State":"pending"}}]"#, b"[]").unwrap();
        assert!(!busy(&unplaceable));
        let updating = Snapshot::from_json(br#"[{"ID":"s","UpdateStatus":{"State":"updating"}}]"#, b"[]", b"[]").unwrap();
        assert!(busy(&updating));
    }
}
