//! Lock files in the ACME storage, so that hawser processes sharing one storage directory never
//! order the same certificate (or create the same account) at once.
//!
//! Invariants:
//! - A lock is an exclusive `flock(2)` on a file: the kernel drops it when its holder exits or
//!   crashes, so a dead process never leaves a lock behind. Locks are per open file, so two
//!   holders in one process exclude each other too.
//! - The holder writes `pid <pid> at <unix seconds>` into the file. A lock held longer than
//!   the stale age (a holder that hangs, not one that died) is broken: the file is unlinked and
//!   a new one made. After taking a lock the holder checks that its file is still the one at
//!   the path, so two processes never both hold "the" lock through different files.
//! - Waiting is bounded and asynchronous: a task that cannot get a lock gives up with an error
//!   that names the holder; it never blocks a thread.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a waiting task tries again.
const RETRY: Duration = Duration::from_millis(250);

/// A lock held; released when dropped (the file is closed, not removed: removing it would let
/// a waiter that opened the old file and a newcomer that made a new one both hold "the" lock).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// What stands in the way of a lock.
#[derive(Debug, PartialEq)]
pub enum Busy {
    /// Another holder, as its file says (`pid … at …`), and since when (unix seconds, if known).
    Held { holder: String, since: Option<i64> },
}

/// Takes the lock at `path` if it is free now.
pub fn try_lock(path: &Path, now: i64) -> std::io::Result<Result<Lock, Busy>> {
    // A few rounds: the file can be replaced between our open and our flock.
    for _ in 0..5 {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).custom_flags(libc::O_CLOEXEC).open(path)?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut text = String::new();
                // Bounded: a lock file holds one short line.
                let _ = (&mut file).take(256).read_to_string(&mut text);
                return Ok(Err(Busy::Held { holder: holder_of(&text), since: since_of(&text) }));
            }
            return Err(err);
        }
        // Still the file at the path? (A stale lock broken meanwhile, or a release race.)
        let ours = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(now_there) if now_there.ino() == ours.ino() && now_there.dev() == ours.dev() => {}
            _ => continue,
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "pid {} at {now}", std::process::id())?;
        return Ok(Ok(Lock { _file: file, path: path.to_path_buf() }));
    }
    Err(std::io::Error::other("the lock file keeps being replaced"))
}

/// Takes the lock at `path`, waiting up to `wait`; a lock held for longer than `stale` is
/// broken. `now` reads the clock (unix seconds).
pub async fn lock(path: &Path, wait: Duration, stale: Duration, now: impl Fn() -> i64) -> Result<Lock, String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match try_lock(path, now()) {
            Ok(Ok(lock)) => return Ok(lock),
            Ok(Err(Busy::Held { holder, since })) => {
                if since.is_some_and(|t| now().saturating_sub(t) > stale.as_secs() as i64) {
                    log::warn!("breaking the lock {} held by {holder} for more than {stale:?}", path.display());
                    // Whoever holds the old file keeps it; new comers meet a new file.
                    let _ = std::fs::remove_file(path);
                    continue;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!("{} is held by {holder} (waited {wait:?})", path.display()));
                }
            }
            Err(e) => return Err(format!("cannot take the lock {}: {e}", path.display())),
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn holder_of(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    let printable: String = line.chars().filter(|c| !c.is_control()).take(80).collect();
    if printable.starts_with("pid ") { format!("another process ({printable})") } else { "another process".into() }
}

fn since_of(text: &str) -> Option<i64> {
    text.lines().next()?.split_once(" at ")?.1.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::acme::TestDir;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let d = TestDir::new("lock-one");
        let path = d.0.join(".lock");
        let first = try_lock(&path, 100).unwrap().unwrap();
        let busy = try_lock(&path, 101).unwrap().unwrap_err();
        let Busy::Held { holder, since } = busy;
        assert_eq!(since, Some(100));
        assert!(holder.contains(&format!("pid {}", std::process::id())), "{holder}");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        drop(first);
        let second = try_lock(&path, 102).unwrap().unwrap();
        assert_eq!(std::fs::read_to_string(second.path()).unwrap(), format!("pid {} at 102\n", std::process::id()));
    }

    #[tokio::test]
    async fn a_waiter_gets_the_lock_once_it_is_released() {
        let d = TestDir::new("lock-wait");
        let path = d.0.join(".lock");
        let first = try_lock(&path, 0).unwrap().unwrap();
        let p = path.clone();
        let waiter = tokio::spawn(async move { lock(&p, Duration::from_secs(10), Duration::from_secs(600), || 1).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "the waiter must wait while the lock is held");
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(got.is_ok(), "{got:?}");
    }

    #[tokio::test]
    async fn waiting_is_bounded_and_names_the_holder() {
        let d = TestDir::new("lock-bounded");
        let path = d.0.join(".lock");
        let _first = try_lock(&path, 0).unwrap().unwrap();
        let err = lock(&path, Duration::from_millis(300), Duration::from_secs(600), || 10).await.unwrap_err();
        assert!(err.contains("held by another process (pid"), "{err}");
    }

    #[tokio::test]
    async fn a_stale_lock_is_broken_and_the_old_holder_cannot_come_back() {
        let d = TestDir::new("lock-stale");
        let path = d.0.join(".lock");
        let old = try_lock(&path, 0).unwrap().unwrap();
        // Ten minutes later, with a stale age of five: broken.
        let new = lock(&path, Duration::from_secs(1), Duration::from_secs(300), || 600).await.unwrap();
        assert!(std::fs::read_to_string(new.path()).unwrap().ends_with("at 600\n"));
        // A third party now waits on the new holder, not on the old file.
        assert!(try_lock(&path, 601).unwrap().is_err());
        drop(old);
        assert!(try_lock(&path, 602).unwrap().is_err(), "releasing the broken lock must not free the new one");
        drop(new);
        assert!(try_lock(&path, 603).unwrap().is_ok());
    }

    #[test]
    fn garbage_in_a_lock_file_is_harmless() {
        let d = TestDir::new("lock-garbage");
        let path = d.0.join(".lock");
        std::fs::write(&path, b"\x00\xff not a lock \x1b[2J").unwrap();
        let held = try_lock(&path, 5).unwrap().unwrap();
        let Busy::Held { holder, since } = try_lock(&path, 6).unwrap().unwrap_err();
        assert_eq!(since, Some(5));
        assert!(holder.starts_with("another process"));
        drop(held);
    }
}
