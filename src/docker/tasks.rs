//! One read of a swarm merged into an engine's container map: what hawser already knows of a
//! task locally (its container's stop signal, its death) and the manager's newer word, put
//! together so that a task never comes back once it is going or gone.
//!
//! Invariants of [`merge`]:
//! - Tasks the manager lists replace what the map had, except that a task's departure never
//!   goes back (a local stop signal may come before the manager's word) and a task whose
//!   container died ([`merge`]'s `dead`) stays exited: a task never runs again.
//! - A running task the manager stops listing (its desired state left `running`) becomes
//!   [`Departure::Leaving`] for [`LEAVING_WINDOW`], with a timer in `timers`, then goes when the
//!   timer fires (the watcher's `expire_drains`); any other task that stops being listed goes
//!   at once. Plain containers (`Origin::Container`) are never touched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::catalog::{Container, Departure, Origin, RunState};

/// How long a task that left the manager's list of running tasks stays a fallback: its node
/// waits 2 s (`defaultGossipConvergeDelay`, for a task on an overlay network) after the
/// manager's decision before it stops the container, and hawser sees the decision up to one
/// poll later; so the fallback ends before the stop signal.
pub const LEAVING_WINDOW: Duration = Duration::from_millis(1500);

/// Merges `fresh` (one read's tasks, by id) into `containers`; returns the ids and names of
/// the entries that changed.
pub fn merge(
    containers: &mut BTreeMap<String, Container>,
    timers: &mut HashMap<String, Instant>,
    dead: &mut HashSet<String>,
    mut fresh: BTreeMap<String, Container>,
    now: Instant,
) -> Vec<(String, String)> {
    dead.retain(|id| fresh.contains_key(id));
    for (id, c) in &mut fresh {
        if dead.contains(id) {
            c.state = RunState::Exited;
            c.networks.values_mut().for_each(|ip| *ip = None);
        }
        if let Some(old) = containers.get(id).filter(|old| old.state.is_up() && c.state.is_up()) {
            c.departure = c.departure.max(old.departure);
        }
    }
    let gone: Vec<String> = containers
        .iter()
        .filter(|(id, c)| c.origin != Origin::Container && !fresh.contains_key(*id))
        .map(|(id, _)| id.clone())
        .collect();
    let mut changed = Vec::new();
    let leave_by = now + LEAVING_WINDOW;
    for id in gone {
        let Some(c) = containers.get_mut(&id) else { continue };
        if c.origin == Origin::Task && c.state.is_up() && c.departure == Departure::Staying {
            // Its desired state went past running: it still serves for a moment as a fallback.
            c.departure = Departure::Leaving;
            timers.insert(id.clone(), leave_by);
            changed.push((id, c.name.clone()));
        } else if !(c.departure == Departure::Leaving && timers.contains_key(&id)) {
            timers.remove(&id);
            if let Some(c) = containers.remove(&id) {
                changed.push((id, c.name));
            }
        }
    }
    for (id, c) in fresh {
        if c.departure == Departure::Leaving && !timers.contains_key(&id) {
            timers.insert(id.clone(), leave_by);
        }
        if containers.get(&id) != Some(&c) {
            changed.push((id.clone(), c.name.clone()));
            containers.insert(id, c);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Container {
        let mut c = Container::sample(id, "10.0.1.5");
        c.id = id.to_string();
        c.origin = Origin::Task;
        c
    }

    fn map(tasks: &[Container]) -> BTreeMap<String, Container> {
        tasks.iter().map(|c| (c.id.clone(), c.clone())).collect()
    }

    #[test]
    fn a_task_that_leaves_the_list_is_a_fallback_until_its_timer() {
        let (mut containers, mut timers, mut dead) = (map(&[task("t1"), task("t2")]), HashMap::new(), HashSet::new());
        let plain = Container::sample("plain", "10.0.0.9");
        containers.insert(plain.id.clone(), plain.clone());
        let now = Instant::now();
        let changed = merge(&mut containers, &mut timers, &mut dead, map(&[task("t2")]), now);
        assert_eq!(changed, vec![("t1".to_string(), "t1".to_string())]);
        assert_eq!(containers["t1"].departure, Departure::Leaving);
        assert_eq!(timers["t1"], now + LEAVING_WINDOW);
        assert_eq!(containers[&plain.id], plain, "plain containers are not the swarm's");
        // The next read does not list it either: it waits for its timer, which is not re-armed.
        let later = now + Duration::from_millis(250);
        assert!(merge(&mut containers, &mut timers, &mut dead, map(&[task("t2")]), later).is_empty());
        assert_eq!(timers["t1"], now + LEAVING_WINDOW);
        // A task that was not running, or had its stop signal already, goes at once.
        let mut starting = task("t3");
        starting.state = RunState::Created;
        let mut draining = task("t4");
        draining.departure = Departure::Draining;
        containers.extend(map(&[starting, draining]));
        timers.insert("t4".into(), now + Duration::from_secs(10));
        merge(&mut containers, &mut timers, &mut dead, map(&[task("t2")]), later);
        assert!(!containers.contains_key("t3") && !containers.contains_key("t4") && !timers.contains_key("t4"));
    }

    #[test]
    fn a_going_or_dead_task_never_comes_back() {
        let (mut containers, mut timers, mut dead) = (map(&[task("t1"), task("t2")]), HashMap::new(), HashSet::new());
        let now = Instant::now();
        // A local stop signal came before the manager's word: the read's "staying" does not undo it.
        containers.get_mut("t1").unwrap().departure = Departure::Draining;
        // t2's container died here; the manager still says running.
        containers.get_mut("t2").unwrap().state = RunState::Exited;
        dead.insert("t2".into());
        merge(&mut containers, &mut timers, &mut dead, map(&[task("t1"), task("t2")]), now);
        assert_eq!(containers["t1"].departure, Departure::Draining);
        assert_eq!(containers["t2"].state, RunState::Exited);
        assert_eq!(containers["t2"].networks["net"], None);
        // Once the manager stops listing it, it is forgotten.
        merge(&mut containers, &mut timers, &mut dead, map(&[task("t1")]), now);
        assert!(dead.is_empty() && !containers.contains_key("t2"));
    }
}
