//! A single-node Docker Swarm on the local engine, for the tests of hawser's Swarm provider.
//!
//! - [`Swarm::join`] makes the engine a swarm manager (`docker swarm init --advertise-addr
//!   127.0.0.1`) if it is not one yet, and the last guard of this process to go leaves it
//!   again (`docker swarm leave --force`, then the `docker_gwbridge` network it leaves behind)
//!   — only if this process created it. While it owns the swarm, the file
//!   `<tmp>/hawser-test-swarm` names the process, so that `.ci/run`'s sweep can leave a swarm
//!   a killed test run left behind.
//! - Services are created from an image **id** (`sha256:…`: no registry here, and a node skips
//!   the pull only for an id), labelled `hawser-test=<env id>` and removed by their guard,
//!   which waits until their containers are gone (so the env's networks can go next).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{TestEnv, docker, docker_ok, docker_s, tmp_dir, wait_until};

static MEMBERS: Mutex<(usize, bool)> = Mutex::new((0, false));

/// A hold on the local single-node swarm.
pub struct Swarm(());

impl Swarm {
    pub fn join() -> Swarm {
        let mut m = MEMBERS.lock().unwrap_or_else(|e| e.into_inner());
        if m.0 == 0 {
            let state = docker(&["info", "-f", "{{.Swarm.LocalNodeState}}"]);
            if state.trim() != "active" {
                docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
                let _ = std::fs::create_dir_all(tmp_dir());
                let _ = std::fs::write(marker(), std::process::id().to_string());
                m.1 = true;
            }
        }
        m.0 += 1;
        Swarm(())
    }
}

fn marker() -> std::path::PathBuf {
    tmp_dir().join("hawser-test-swarm")
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let mut m = MEMBERS.lock().unwrap_or_else(|e| e.into_inner());
        m.0 -= 1;
        if m.0 == 0 && m.1 {
            let _ = docker_ok(&["swarm", "leave", "--force"]);
            let _ = docker_ok(&["network", "rm", "docker_gwbridge"]);
            let _ = std::fs::remove_file(marker());
            m.1 = false;
        }
    }
}

/// Whether the kernel has IPVS, which Swarm's VIPs (and the ingress routing mesh) need.
pub fn has_ipvs() -> bool {
    std::path::Path::new("/proc/net/ip_vs").exists()
}

/// The id of an image tag: what services are created from.
pub fn image_id(tag: &str) -> String {
    docker(&["image", "inspect", "-f", "{{.Id}}", tag]).trim().to_string()
}

/// An attachable overlay network `hawser-test-<env id>-<suffix>`, removed with the env.
pub fn overlay(env: &TestEnv, suffix: &str) -> String {
    env.extra_network_with(suffix, &["-d", "overlay", "--attachable"])
}

/// A swarm service of the test env; `docker service rm` when dropped.
pub struct Service {
    pub name: String,
}

impl Service {
    /// `docker service create -d --name <env id>-<suffix> --label hawser-test=<env id> ARGS IMAGE`.
    /// `args` carry the rest: `--label` (service labels), `--publish`, `--network`, … .
    pub fn create(env: &TestEnv, suffix: &str, args: &[String], image: &str) -> Service {
        let name = format!("{}-{suffix}", env.id);
        let mut a: Vec<String> = vec!["service".into(), "create".into(), "-d".into(), "--name".into(), name.clone()];
        a.extend(["--label".into(), format!("hawser-test={}", env.id)]);
        a.extend(["--container-label".into(), format!("hawser-test={}", env.id)]);
        a.extend(["--container-label".into(), format!("hawser-test-pid={}", std::process::id())]);
        a.extend(args.iter().cloned());
        a.push(image.to_string());
        docker_s(&a);
        Service { name }
    }

    /// The ids of this service's containers on this node.
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.swarm.service.name={}", self.name);
        docker(&["ps", "-q", "--filter", &filter]).split_whitespace().map(str::to_string).collect()
    }

    /// Waits until `n` tasks run (as `docker service ps` sees them).
    pub fn wait_running(&self, n: usize, timeout: Duration) {
        let filter = "desired-state=running";
        wait_until(&format!("{n} running tasks of {}", self.name), timeout, || {
            let out = docker(&["service", "ps", "--filter", filter, "--format", "{{.CurrentState}}", &self.name]);
            (out.lines().filter(|l| l.starts_with("Running")).count() == n).then_some(())
        });
    }

    pub fn update(&self, args: &[&str]) {
        let mut a = vec!["service", "update", "-d=false", "-q"];
        a.extend_from_slice(args);
        a.push(&self.name);
        docker(&a);
    }

    pub fn scale(&self, n: usize) {
        docker(&["service", "scale", "-d", &format!("{}={n}", self.name)]);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = docker_ok(&["service", "rm", &self.name]);
        // The env's networks go next: they cannot while a task container is on them.
        let start = Instant::now();
        while !self.containers().is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
