//! A second Docker engine on this machine, started by the test: its own `dockerd` with its
//! own data root, exec root (and so its own containerd), pidfile, bridge and sockets — a Unix
//! socket for the test's own `docker` calls, and TCP on loopback with TLS client certificates
//! (a CA, a server and a client certificate made by the test) for hawser.
//!
//! - It needs root (dockerd, `ip link`), as the local engine's tests do on this machine kind.
//! - Its bridge `hw<pid hex>` (10.213.X.0/24) has no iptables rules (`--iptables=false`):
//!   published ports are served by dockerd's userland proxy, which dies with dockerd, so a
//!   stopped engine's containers stop answering on their published ports too.
//! - [`SecondEngine::kill`] SIGKILLs dockerd (its containers keep running until it comes back);
//!   [`SecondEngine::start`] brings it back on the same state. Dropping it removes its
//!   containers, stops dockerd, deletes the bridge and its directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::TestCa;
use super::{free_port, tmp_dir};

pub struct SecondEngine {
    pub dir: PathBuf,
    /// `unix://…` for the test's `docker -H` calls.
    pub socket: String,
    /// `tcp://127.0.0.1:PORT`, TLS with client certificates.
    pub tcp: String,
    /// `ca.pem`, `cert.pem`, `key.pem` (the client's, as DOCKER_CERT_PATH wants them).
    pub certs: PathBuf,
    bridge: String,
    child: Option<Child>,
}

impl SecondEngine {
    pub fn new() -> SecondEngine {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let dir = tmp_dir().join(format!("hawser-engine-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).expect("engine dir");
        let certs = dir.join("certs");
        let ca = TestCa::new("hawser test: second engine CA");
        ca.write(&certs.join("ca.pem"));
        let (server, server_key) = ca.leaf(&["127.0.0.1", "localhost"]);
        std::fs::write(dir.join("server.pem"), server).unwrap();
        std::fs::write(dir.join("server-key.pem"), server_key).unwrap();
        let (client, client_key) = ca.leaf(&["hawser"]);
        std::fs::write(certs.join("cert.pem"), client).unwrap();
        std::fs::write(certs.join("key.pem"), client_key).unwrap();
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        // Interface names have at most 15 bytes.
        let bridge = format!("hw{:x}x{n}", pid & 0xf_ffff);
        let subnet = 20 + (pid * 8 + n) % 200;
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("10.213.{subnet}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let mut e = SecondEngine {
            socket: format!("unix://{}", dir.join("docker.sock").display()),
            tcp: format!("tcp://127.0.0.1:{}", free_port()),
            certs,
            dir,
            bridge,
            child: None,
        };
        e.start();
        e
    }

    /// Starts dockerd (again) and waits until it answers.
    pub fn start(&mut self) {
        let d = &self.dir;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("dockerd.log")).expect("log");
        let child = Command::new("dockerd")
            .arg("--config-file").arg(d.join("daemon.json"))
            .arg("--data-root").arg(d.join("data"))
            .arg("--exec-root").arg(d.join("exec"))
            .arg("--pidfile").arg(d.join("dockerd.pid"))
            .args(["--bridge", &self.bridge, "--iptables=false", "--ip-masq=false"])
            .args(["-H", &self.socket, "-H", &self.tcp, "--tlsverify"])
            .arg("--tlscacert").arg(self.certs.join("ca.pem"))
            .arg("--tlscert").arg(d.join("server.pem"))
            .arg("--tlskey").arg(d.join("server-key.pem"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd (a second engine; needs root): {e}"));
        self.child = Some(child);
        let start = Instant::now();
        while self.docker_ok(&["version"]).is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                panic!("the second dockerd did not answer within 60 s; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs dockerd: the engine is gone at once, without stopping its containers.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    pub fn docker_ok(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("docker")
            .args(["-H", &self.socket])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn docker(&self, args: &[&str]) -> String {
        self.docker_ok(args).unwrap_or_else(|e| panic!("docker -H {} {args:?}: {e}", self.socket))
    }

    /// Copies image `tag` from the local engine.
    pub fn load_image(&self, tag: &str) {
        let cmd = format!("docker save {tag} | docker -H {} load -q", self.socket);
        let out = Command::new("sh").args(["-c", &cmd]).stdin(Stdio::null()).output().expect("sh");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Drop for SecondEngine {
    fn drop(&mut self) {
        if self.child.is_none() {
            self.start();
        }
        if let Ok(ids) = self.docker_ok(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut a = vec!["rm", "-f"];
                a.extend(ids);
                let _ = self.docker_ok(&a);
            }
        }
        if let Some(mut c) = self.child.take() {
            // SIGTERM: dockerd stops its containerd and unmounts what it mounted.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
        // dockerd bind-mounts its roots on themselves; what it left mounted goes first.
        for root in ["data", "exec"] {
            let _ = Command::new("umount").arg("-R").arg(self.dir.join(root)).stderr(Stdio::null()).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
