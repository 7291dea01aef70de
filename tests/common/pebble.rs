//! Debian's `pebble` (a test ACME CA) and `pebble-challtestsrv` (its DNS) on loopback, for
//! ACME tests (recipe: ../shared/TLS-NOTES.md).
//!
//! - pebble's ACME API is HTTPS only and Debian ships no certificate for it: [`Pebble::start`]
//!   makes a root and a leaf for 127.0.0.1 with rcgen; hawser trusts that root through
//!   `tls.acme.ca_root` ([`Pebble::https_root`]).
//! - pebble validates HTTP-01 on `httpPort` of whatever address its DNS gives: challtestsrv
//!   answers 127.0.0.1 for every name (and no IPv6, which pebble would dial first), and the
//!   test passes hawser's cleartext port as `httpPort`.
//! - The root that issues certificates is made anew at each pebble start;
//!   [`Pebble::issuing_root`] fetches it from the management API.
//! - Both processes are killed when the guard is dropped (also when the test panics). A
//!   machine without pebble fails the test with the command to install it: never a pass.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, free_port, wait_until};

pub struct Pebble {
    /// `https://127.0.0.1:<port>/dir`.
    pub directory: String,
    /// The root of pebble's own HTTPS certificate (for `tls.acme.ca_root` and curl).
    pub https_root: PathBuf,
    pub management: SocketAddr,
    dir: TempDir,
    pebble: Option<Child>,
    dns: Child,
}

/// Options of one pebble.
pub struct PebbleOptions {
    /// The port pebble validates HTTP-01 challenges on (hawser's cleartext listener).
    pub http_port: u16,
    /// `certificateValidityPeriod`, in seconds (pebble's default: about five years).
    pub validity_secs: Option<u64>,
}

fn spawn(program: &str, args: &[&str], envs: &[(&str, &str)], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    let err = out.try_clone().expect("clone log handle");
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "cannot run {program} ({e}): the ACME tests need Debian's pebble (apt-get install -y pebble; .ci/run installs it)"
        )
    })
}

fn wait_listening(what: &str, addr: SocketAddr, child: &mut Child, log: &Path) {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) before listening on {addr}; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("{what} does not listen on {addr} after 10 s; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A root and a leaf for 127.0.0.1 signed by it, for pebble's own HTTPS: (root, cert, key).
fn https_certificate(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let root_key = rcgen::KeyPair::generate().expect("root key");
    let mut root = rcgen::CertificateParams::new(Vec::<String>::new()).expect("root params");
    root.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    root.distinguished_name.push(rcgen::DnType::CommonName, "hawser tests: root of pebble's HTTPS");
    let root_cert = root.self_signed(&root_key).expect("root certificate");
    let issuer = rcgen::Issuer::new(root, root_key);
    let key = rcgen::KeyPair::generate().expect("leaf key");
    let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("leaf params");
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "pebble");
    let leaf_cert = leaf.signed_by(&key, &issuer).expect("leaf certificate");
    let paths = (dir.join("https-root.pem"), dir.join("https-cert.pem"), dir.join("https-key.pem"));
    std::fs::write(&paths.0, root_cert.pem()).expect("write root");
    std::fs::write(&paths.1, leaf_cert.pem()).expect("write cert");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

impl Pebble {
    /// Starts challtestsrv and pebble on free loopback ports; returns once both listen.
    pub fn start(name: &str, options: PebbleOptions) -> Pebble {
        let dir = TempDir::new(&format!("pebble-{name}"));
        let (https_root, cert, key) = https_certificate(&dir.0);
        let (acme_port, management_port, dns_port, dns_management_port, tls_port) =
            (free_port(), free_port(), free_port(), free_port(), free_port());

        let dns_addr = format!("127.0.0.1:{dns_port}");
        let dns_management = format!("127.0.0.1:{dns_management_port}");
        let dns_log = dir.0.join("challtestsrv.log");
        let mut dns = spawn(
            "pebble-challtestsrv",
            &[
                "-dns01", &dns_addr, "-http01", "", "-https01", "", "-tlsalpn01", "", "-management", &dns_management,
                "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            ],
            &[],
            &dns_log,
        );
        wait_listening("pebble-challtestsrv", dns_management.parse().expect("addr"), &mut dns, &dns_log);

        let mut settings = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": options.http_port,
            "tlsPort": tls_port,
        });
        if let Some(v) = options.validity_secs {
            settings["certificateValidityPeriod"] = v.into();
        }
        let config = dir.0.join("pebble.json");
        std::fs::write(&config, serde_json::json!({ "pebble": settings }).to_string()).expect("write pebble config");
        let log = dir.0.join("pebble.log");
        let mut pebble = spawn(
            "pebble",
            &["-config", config.to_str().expect("utf-8 path"), "-dnsserver", &dns_addr],
            &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
            &log,
        );
        wait_listening("pebble", SocketAddr::from(([127, 0, 0, 1], acme_port)), &mut pebble, &log);
        wait_listening("pebble (management)", SocketAddr::from(([127, 0, 0, 1], management_port)), &mut pebble, &log);
        Pebble {
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            https_root,
            management: SocketAddr::from(([127, 0, 0, 1], management_port)),
            dir,
            pebble: Some(pebble),
            dns,
        }
    }

    /// The root that issues this pebble's certificates, as a PEM file (for curl --cacert).
    pub fn issuing_root(&self) -> PathBuf {
        let path = self.dir.0.join("issuing-root.pem");
        let url = format!("https://{}/roots/0", self.management);
        let pem = wait_until(&format!("pebble's issuing root at {url}"), Duration::from_secs(10), || {
            let out = Command::new("curl")
                .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
                .arg(&self.https_root)
                .arg(&url)
                .output()
                .expect("run curl");
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("BEGIN CERTIFICATE").then_some(text)
        });
        std::fs::write(&path, pem).expect("write issuing root");
        path
    }

    /// Stops pebble (the CA goes away; its DNS stays).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
