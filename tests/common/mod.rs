//! Shared harness for hawser's integration tests (`mod common;` in each `tests/*.rs`).
//!
//! Std only. It drives the real Docker engine through the `docker` CLI, following
//! /work/shared/TESTING.md:
//! - every container and network a test creates carries the label `hawser-test=<id>`
//!   (plus `hawser-test-pid=<pid>`), and [`TestEnv`]'s `Drop` removes them, also when
//!   the test panics;
//! - the backend image is built locally `FROM scratch` from `tests/support/backend.rs`
//!   (see that file for the backend's endpoints; the image has `EXPOSE 80`) and its
//!   tags are removed at exit;
//! - everything waits by polling a condition with a deadline ([`wait_until`]).
//!
//! Typical use:
//! ```ignore
//! let env = TestEnv::new("routes_by_host");
//! let b = env.run(ContainerSpec::new("b1").hawser("enable", "true").hawser("host", "a.test"));
//! let h = env.hawser(&env.default_config());
//! let r = wait_response("a.test routed", h.addr, "a.test", "/", SECS_5, |r| r.status == 200);
//! assert_eq!(r.backend(), Some(b.name.as_str()));
//! ```
#![allow(dead_code)]

pub mod engine;
pub mod grpc;
pub mod image;
pub mod load;
pub mod pebble;
pub mod python;
pub mod recorder;
pub mod swarm;
pub mod tls;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Five seconds: the usual deadline for "the change becomes visible" polls.
pub const SECS_5: Duration = Duration::from_secs(5);
/// Ten seconds: deadline for slower things (process start, container exit).
pub const SECS_10: Duration = Duration::from_secs(10);

/// Signal numbers for [`Hawser::signal`] (Linux).
pub const SIGHUP: i32 = 1;
pub const SIGINT: i32 = 2;
pub const SIGQUIT: i32 = 3;
pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

unsafe extern "C" {
    fn atexit(cb: extern "C" fn()) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_n() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `CARGO_TARGET_TMPDIR`: where compiled backends, configs and logs go.
pub fn tmp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

// ---------------------------------------------------------------------------
// docker CLI
// ---------------------------------------------------------------------------

/// Runs `docker ARGS`; returns trimmed stdout, or `Err` with the command and stderr.
pub fn docker_ok(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `docker {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`docker {}` failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Runs `docker ARGS`; returns trimmed stdout; panics with stderr on failure.
pub fn docker(args: &[&str]) -> String {
    docker_ok(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Same as [`docker`] for owned argument lists.
pub fn docker_s(args: &[String]) -> String {
    let v: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&v)
}

/// Panics, clearly, when no Docker engine answers. The first successful call also
/// registers the exit-time cleanup (C `atexit`): remove this process's image tags and
/// any container or network labelled `hawser-test-pid=<pid>` that a leaked
/// [`TestEnv`] left behind.
pub fn ensure_docker() {
    static OK: OnceLock<()> = OnceLock::new();
    OK.get_or_init(|| {
        if let Err(e) = docker_ok(&["info", "--format", "{{.ServerVersion}}"]) {
            panic!("no Docker engine answers (the integration tests need one): {e}");
        }
        // Registered once per process, before anything is created.
        unsafe {
            atexit(cleanup_at_exit);
        }
    });
}

// ---------------------------------------------------------------------------
// backend binary and images
// ---------------------------------------------------------------------------

/// Compiles `tests/support/backend.rs` into a static binary (once per process; the
/// result is cached in `CARGO_TARGET_TMPDIR` keyed by a hash of the source) and
/// returns its path. Uses `$RUSTC` if set, else `rustc`. The binary also runs on the
/// host: set `BIND=127.0.0.1` and `PORTS`.
pub fn backend_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/backend.rs");
        let code = std::fs::read(&src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
        let mut h = std::hash::DefaultHasher::new();
        code.hash(&mut h);
        rustc.hash(&mut h);
        let out = tmp_dir().join(format!("hawser-backend-{:016x}", h.finish()));
        if !out.exists() {
            std::fs::create_dir_all(tmp_dir()).expect("create CARGO_TARGET_TMPDIR");
            let part = out.with_extension(format!("part{}", std::process::id()));
            let res = Command::new(&rustc)
                .args([
                    "--edition",
                    "2021",
                    "-O",
                    "-C",
                    "target-feature=+crt-static",
                ])
                .args(["-C", "strip=debuginfo"])
                .arg(&src)
                .arg("-o")
                .arg(&part)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
            if !res.status.success() {
                panic!(
                    "compiling {} failed:\n{}",
                    src.display(),
                    String::from_utf8_lossy(&res.stderr)
                );
            }
            std::fs::rename(&part, &out).expect("rename compiled backend");
        }
        out
    })
    .clone()
}

static TAGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

extern "C" fn cleanup_at_exit() {
    let pid = std::process::id().to_string();
    let filter = format!("label=hawser-test-pid={pid}");
    // Safety net for environments that were leaked instead of dropped.
    if let Ok(ids) = docker_ok(&["ps", "-aq", "--filter", &filter]) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut a = vec!["rm", "-f", "-v"];
            a.extend(ids);
            let _ = docker_ok(&a);
        }
    }
    if let Ok(ids) = docker_ok(&["network", "ls", "-q", "--filter", &filter]) {
        for id in ids.split_whitespace() {
            let _ = docker_ok(&["network", "rm", id]);
        }
    }
    let tags = std::mem::take(&mut *lock(&TAGS));
    for tag in tags {
        let _ = docker_ok(&["rmi", "-f", &tag]);
    }
    let _ = std::fs::remove_dir_all(tmp_dir().join(format!("hawser-backend-ctx-{pid}")));
}

fn build_backend_image(tag: &str, dockerfile: &str) {
    let ctx = tmp_dir().join(format!("hawser-backend-ctx-{}", std::process::id()));
    std::fs::create_dir_all(&ctx).expect("create build context");
    let bin = ctx.join("backend");
    if !bin.exists() {
        std::fs::copy(backend_binary(), &bin).expect("copy backend into build context");
    }
    build_image(tag, &ctx, dockerfile);
}

/// Builds (once per process and variant) the backend image `hawser-test-backend:p<pid>`
/// (`variant` "") or `hawser-test-backend:p<pid>-<variant>`: `FROM scratch`, `COPY
/// backend /backend`, then `instructions` (extra Dockerfile lines), then `ENTRYPOINT
/// ["/backend"]`; label `hawser-test=1`. Returns the tag. Tags are removed at process
/// exit (C `atexit`, which also runs after failed tests).
pub fn backend_image_with(variant: &str, instructions: &str) -> String {
    static IMAGES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    // Held across the build so a variant is built once even when tests race.
    let mut images = lock(&IMAGES);
    if let Some((_, tag)) = images.iter().find(|(v, _)| v == variant) {
        return tag.clone();
    }
    let pid = std::process::id();
    let tag = if variant.is_empty() {
        format!("hawser-test-backend:p{pid}")
    } else {
        format!("hawser-test-backend:p{pid}-{}", sanitize(variant))
    };
    let dockerfile = format!(
        "FROM scratch\nCOPY backend /backend\n{}\nENTRYPOINT [\"/backend\"]\n",
        instructions.trim()
    );
    build_backend_image(&tag, &dockerfile);
    images.push((variant.to_string(), tag.clone()));
    tag
}

/// The default backend image, `hawser-test-backend:p<pid>`, with `EXPOSE 80` (like most
/// real images, so hawser can find the port without a port label). Use
/// [`backend_image_with`] for an image without EXPOSE or with other ports.
pub fn backend_image() -> String {
    backend_image_with("", "EXPOSE 80")
}

/// Variant of [`backend_image`] with an exec-form `HEALTHCHECK CMD ["/backend",
/// "check"]` (tag `hawser-test-backend:p<pid>-hc`). `docker run --health-cmd` always
/// produces a `CMD-SHELL` check, which cannot run in a scratch image (no /bin/sh), so
/// the check command lives in the image; `backend check` takes its port and path from
/// the env vars `HEALTHCHECK_PORT` / `HEALTHCHECK_PATH` (set by
/// [`ContainerSpec::healthcheck`]), and `docker run --health-interval` etc. override
/// the image's timings.
pub fn backend_health_image() -> String {
    backend_image_with(
        "hc",
        "EXPOSE 80\nHEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD [\"/backend\",\"check\"]",
    )
}

// ---------------------------------------------------------------------------
// TestEnv
// ---------------------------------------------------------------------------

/// The template returned by [`TestEnv::default_config`].
pub const DEFAULT_CONFIG: &str = "listen: [\"$LISTEN\"]\n\
docker:\n  label_prefix: \"$PREFIX\"\n  network: \"$NETWORK\"\n";

struct HawserRef {
    child: Arc<Mutex<Child>>,
    log_path: PathBuf,
    config_path: PathBuf,
}

#[derive(Default)]
struct EnvState {
    network: Option<String>,
    extra_networks: Vec<String>,
    hawsers: Vec<HawserRef>,
}

/// One test's Docker world: a unique id (labels, names), a unique hawser label
/// prefix, lazily created networks, and everything started through it. Dropping it
/// (also while panicking) kills its hawser processes and removes its containers and
/// networks.
pub struct TestEnv {
    /// Unique, docker-name safe: `<sanitized test name>-<pid>-<counter>`.
    pub id: String,
    /// Per-env hawser label prefix `h<8 hex>`, so that each test's hawser only sees
    /// the containers of its own test.
    pub prefix: String,
    state: Mutex<EnvState>,
}

fn sanitize(name: &str) -> String {
    let mut s = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') {
            s.push('-');
        }
    }
    let s: String = s.trim_matches('-').chars().take(24).collect();
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() { "t".to_string() } else { s }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl TestEnv {
    /// New environment for the test `test_name` (any string; it is sanitized).
    pub fn new(test_name: &str) -> TestEnv {
        ensure_docker();
        let n = next_n();
        let pid = std::process::id();
        let id = format!("{}-{pid}-{n}", sanitize(test_name));
        let mut h = RandomState::new().build_hasher();
        pid.hash(&mut h);
        n.hash(&mut h);
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .hash(&mut h);
        let prefix = format!("h{:08x}", h.finish() as u32);
        TestEnv {
            id,
            prefix,
            state: Mutex::new(EnvState::default()),
        }
    }

    /// `"<prefix>.<key>"`, the full hawser label key for this env.
    pub fn label(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    fn create_network(&self, name: &str, extra_args: &[&str]) {
        let l1 = format!("hawser-test={}", self.id);
        let l2 = format!("hawser-test-pid={}", std::process::id());
        let mut a = vec!["network", "create", "--label", &l1, "--label", &l2];
        a.extend_from_slice(extra_args);
        a.push(name);
        docker(&a);
    }

    /// The env's default user-defined bridge network `hawser-test-<id>` (created on
    /// first call). Containers join it unless their spec names another network.
    pub fn network(&self) -> String {
        let mut st = lock(&self.state);
        if let Some(n) = &st.network {
            return n.clone();
        }
        let name = format!("hawser-test-{}", self.id);
        self.create_network(&name, &[]);
        st.network = Some(name.clone());
        name
    }

    /// Creates another bridge network `hawser-test-<id>-<suffix>` and returns its name.
    pub fn extra_network(&self, suffix: &str) -> String {
        self.extra_network_with(suffix, &[])
    }

    /// Like [`TestEnv::extra_network`] with extra `docker network create` args
    /// (e.g. `["--internal"]`).
    pub fn extra_network_with(&self, suffix: &str, args: &[&str]) -> String {
        let name = format!("hawser-test-{}-{}", self.id, sanitize(suffix));
        self.create_network(&name, args);
        lock(&self.state).extra_networks.push(name.clone());
        name
    }

    /// Creates (and, unless [`ContainerSpec::create_only`], starts) a container:
    /// `docker run -d --name <id>-<suffix> --label hawser-test=<id> ...`. The env var
    /// `NAME` defaults to the container name, so the backend's `X-Backend` header and
    /// body identify the container.
    pub fn run(&self, spec: ContainerSpec) -> Container {
        let name = format!("{}-{}", self.id, spec.suffix);
        let network = spec.network.clone().unwrap_or_else(|| self.network());
        let image = match &spec.image {
            Some(i) => i.clone(),
            None if spec.healthcheck.is_some() => backend_health_image(),
            None => backend_image(),
        };
        let mut a: Vec<String> = Vec::new();
        if spec.create_only {
            a.push("create".into());
        } else {
            a.extend(["run".into(), "-d".into()]);
        }
        a.extend(["--name".into(), name.clone()]);
        a.extend(["--label".into(), format!("hawser-test={}", self.id)]);
        a.extend([
            "--label".into(),
            format!("hawser-test-pid={}", std::process::id()),
        ]);
        for (k, v) in &spec.labels {
            a.extend(["--label".into(), format!("{k}={v}")]);
        }
        for (k, v) in &spec.hawser_labels {
            a.extend(["--label".into(), format!("{}={v}", self.label(k))]);
        }
        if !spec.envs.iter().any(|(k, _)| k == "NAME") {
            a.extend(["-e".into(), format!("NAME={name}")]);
        }
        for (k, v) in &spec.envs {
            a.extend(["-e".into(), format!("{k}={v}")]);
        }
        a.extend(["--network".into(), network.clone()]);
        for p in &spec.publish {
            a.extend(["-p".into(), format!("127.0.0.1::{p}")]);
        }
        for p in &spec.expose {
            a.extend(["--expose".into(), p.to_string()]);
        }
        if let Some(t) = spec.stop_timeout {
            a.extend(["--stop-timeout".into(), t.to_string()]);
        }
        if let Some((port, path, interval_ms)) = &spec.healthcheck {
            a.extend(["-e".into(), format!("HEALTHCHECK_PORT={port}")]);
            a.extend(["-e".into(), format!("HEALTHCHECK_PATH={path}")]);
            a.extend(["--health-interval".into(), format!("{interval_ms}ms")]);
            a.extend(["--health-timeout".into(), "2s".into()]);
            a.extend(["--health-retries".into(), "1".into()]);
        }
        a.extend(spec.args.iter().cloned());
        a.push(image);
        a.extend(spec.cmd.iter().cloned());
        let out = docker_s(&a);
        let id = out.lines().last().unwrap_or("").trim().to_string();
        Container { name, id, network }
    }

    /// The default hawser config template (see [`DEFAULT_CONFIG`]); pass it, possibly
    /// extended, to [`TestEnv::hawser`].
    pub fn default_config(&self) -> String {
        DEFAULT_CONFIG.to_string()
    }

    /// Replaces the placeholders of a config template (`$ADMIN` is left to
    /// [`TestEnv::spawn_hawser`]): `$LISTEN2`..`$LISTEN9` and
    /// `$LISTEN` with distinct free `127.0.0.1:<port>` addresses, `$PREFIX` with
    /// [`TestEnv::prefix`], `$NETWORK` with [`TestEnv::network`] (created if needed).
    /// Returns the text and the addresses (`$LISTEN` first, then `$LISTEN2`, ...
    /// for those present).
    pub fn render(&self, template: &str) -> (String, Vec<SocketAddr>) {
        let mut text = template.to_string();
        let mut extra = Vec::new();
        for i in (2..=9).rev() {
            let ph = format!("$LISTEN{i}");
            if text.contains(&ph) {
                let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
                text = text.replace(&ph, &a.to_string());
                extra.push((i, a));
            }
        }
        extra.sort();
        let mut addrs = Vec::new();
        if text.contains("$LISTEN") {
            let a = SocketAddr::from(([127, 0, 0, 1], free_port()));
            text = text.replace("$LISTEN", &a.to_string());
            addrs.push(a);
        }
        addrs.extend(extra.into_iter().map(|(_, a)| a));
        text = text.replace("$PREFIX", &self.prefix);
        if text.contains("$NETWORK") {
            text = text.replace("$NETWORK", &self.network());
        }
        (text, addrs)
    }

    /// Starts hawser with `RUST_LOG=info,hawser=debug` on the rendered template and waits (10 s)
    /// until its first listen address answers any HTTP response.
    pub fn hawser(&self, config_yaml: &str) -> Hawser {
        self.hawser_with_args(config_yaml, &[], &[])
    }

    /// Like [`TestEnv::hawser`], with extra command-line args (after `-c FILE`) and
    /// environment (which overrides that `RUST_LOG`).
    pub fn hawser_with_args(
        &self,
        config_yaml: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Hawser {
        let h = self.spawn_hawser(config_yaml, args, envs);
        h.wait_ready(SECS_10);
        h
    }

    /// Starts hawser like [`TestEnv::hawser_with_args`] but does not wait for it to
    /// listen (for tests of start-up failures; see [`Hawser::wait_exit`]).
    pub fn spawn_hawser(&self, config_yaml: &str, args: &[&str], envs: &[(&str, &str)]) -> Hawser {
        let (mut text, addrs) = self.render(config_yaml);
        // Every hawser gets its own admin port ($ADMIN, or an `admin:` section added), so
        // that tests running side by side never fight over the default 127.0.0.1:9900.
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        if text.contains("$ADMIN") {
            text = text.replace("$ADMIN", &admin.to_string());
        } else if !text.lines().any(|l| l.starts_with("admin:")) {
            text = format!("{}\nadmin:\n  listen: \"{admin}\"\n", text.trim_end());
        }
        let n = next_n();
        let dir = tmp_dir();
        std::fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR");
        let config_path = dir.join(format!("{}-{n}.yaml", self.id));
        let log_path = dir.join(format!("{}-{n}.log", self.id));
        std::fs::write(&config_path, &text).expect("write hawser config");
        let log = std::fs::File::create(&log_path).expect("create hawser log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hawser"));
        cmd.arg("-c").arg(&config_path).args(args);
        // hawser at debug; its libraries at info (bollard would dump every API body).
        cmd.env("RUST_LOG", "info,hawser=debug");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn hawser: {e}"));
        let pid = child.id();
        let child = Arc::new(Mutex::new(child));
        lock(&self.state).hawsers.push(HawserRef {
            child: child.clone(),
            log_path: log_path.clone(),
            config_path: config_path.clone(),
        });
        let addr = addrs
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        Hawser {
            addr,
            addrs,
            admin,
            config_path,
            log_path,
            child,
            pid,
        }
    }

    /// `hawser -t -c FILE` on the rendered template: (exit code, stdout + stderr).
    pub fn hawser_check(&self, config_yaml: &str) -> (i32, String) {
        let (text, _) = self.render(config_yaml);
        run_hawser_check(&text)
    }

    /// Blocks until a GET through `hawser` for `host` `path` is answered by backend
    /// `c` (its `X-Backend` header equals the container's `NAME`), at most `timeout`.
    pub fn wait_routed(
        &self,
        hawser: &Hawser,
        host: &str,
        path: &str,
        c: &Container,
        timeout: Duration,
    ) -> Response {
        let what = format!("{host}{path} routed to {} via {}", c.name, hawser.addr);
        wait_response(&what, hawser.addr, host, path, timeout, |r| {
            r.backend() == Some(c.name.as_str())
        })
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let st = std::mem::take(&mut *lock(&self.state));
        for h in &st.hawsers {
            let mut c = lock(&h.child);
            let _ = c.kill();
            let _ = c.wait();
        }
        let filter = format!("label=hawser-test={}", self.id);
        if panicking {
            for h in &st.hawsers {
                let log = std::fs::read_to_string(&h.log_path).unwrap_or_default();
                eprintln!(
                    "----- hawser log {} (last 80 lines) -----\n{}\n----- end of log -----",
                    h.log_path.display(),
                    tail(&log, 80)
                );
            }
            if let Ok(ps) = docker_ok(&[
                "ps",
                "-a",
                "--filter",
                &filter,
                "--format",
                "{{.Names}}\t{{.Status}}\t{{.Labels}}",
            ]) {
                eprintln!("----- containers of {} -----\n{ps}", self.id);
            }
        } else {
            for h in &st.hawsers {
                let _ = std::fs::remove_file(&h.log_path);
                let _ = std::fs::remove_file(&h.config_path);
            }
        }
        match docker_ok(&["ps", "-aq", "--filter", &filter]) {
            Ok(ids) if !ids.is_empty() => {
                let mut a = vec!["rm", "-f", "-v"];
                a.extend(ids.split_whitespace());
                if let Err(e) = docker_ok(&a) {
                    eprintln!("warning: cleanup of {}: {e}", self.id);
                }
            }
            Ok(_) => {}
            Err(e) => eprintln!("warning: cleanup of {}: {e}", self.id),
        }
        if let Ok(nets) = docker_ok(&["network", "ls", "-q", "--filter", &filter]) {
            for net in nets.split_whitespace() {
                // A container of another env may still be connected: retry briefly.
                let deadline = Instant::now() + SECS_5;
                loop {
                    match docker_ok(&["network", "rm", net]) {
                        Ok(_) => break,
                        Err(e) if Instant::now() >= deadline => {
                            eprintln!("warning: cleanup of {}: {e}", self.id);
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// containers
// ---------------------------------------------------------------------------

/// Builder for [`TestEnv::run`].
#[derive(Clone, Debug, Default)]
pub struct ContainerSpec {
    suffix: String,
    labels: Vec<(String, String)>,
    hawser_labels: Vec<(String, String)>,
    envs: Vec<(String, String)>,
    network: Option<String>,
    publish: Vec<u16>,
    expose: Vec<u16>,
    image: Option<String>,
    healthcheck: Option<(u16, String, u64)>,
    args: Vec<String>,
    cmd: Vec<String>,
    stop_timeout: Option<u32>,
    create_only: bool,
}

impl ContainerSpec {
    /// Container named `<env id>-<name_suffix>` (suffix sanitized: lowercase, `[a-z0-9-]`).
    pub fn new(name_suffix: &str) -> ContainerSpec {
        ContainerSpec {
            suffix: sanitize(name_suffix),
            ..Default::default()
        }
    }
    /// A `--network host` container that puts a server of the test process, on loopback
    /// `port`, behind hawser as service `service` (hawser routes such containers to
    /// `127.0.0.1:PORT`); its own backend listens on a port nobody uses. Add the route.
    pub fn loopback_front(service: &str, port: u16) -> ContainerSpec {
        ContainerSpec::new(service)
            .network("host")
            .hawser("enable", "true")
            .hawser("service", service)
            .hawser("port", &port.to_string())
            .env("BIND", "127.0.0.1")
            .env("PORTS", &free_port().to_string())
    }
    /// Adds a label with a raw key.
    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }
    /// Adds the hawser label `<env prefix>.<key>=<value>`.
    pub fn hawser(mut self, key: &str, value: &str) -> Self {
        self.hawser_labels.push((key.into(), value.into()));
        self
    }
    /// Sets an environment variable (`NAME` defaults to the container name).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.envs.push((k.into(), v.into()));
        self
    }
    /// Network to start on (default: [`TestEnv::network`]). Docker API 1.41 attaches
    /// one network at creation; use [`Container::connect`] for more.
    pub fn network(mut self, name: &str) -> Self {
        self.network = Some(name.into());
        self
    }
    /// Publishes `container_port` on 127.0.0.1 with a random host port
    /// (see [`Container::published_port`]).
    pub fn publish(mut self, container_port: u16) -> Self {
        self.publish.push(container_port);
        self
    }
    /// `--expose <port>`: declares an exposed port in addition to the image's.
    pub fn expose(mut self, container_port: u16) -> Self {
        self.expose.push(container_port);
        self
    }
    /// Image to run (default: [`backend_image`], or [`backend_health_image`] with
    /// [`ContainerSpec::healthcheck`]).
    pub fn image(mut self, tag: &str) -> Self {
        self.image = Some(tag.into());
        self
    }
    /// Docker health check `GET 127.0.0.1:<port><path>` inside the container every
    /// `interval_ms` (retries 1, timeout 2 s). Uses [`backend_health_image`]; with a
    /// custom image, that image must define an exec-form HEALTHCHECK itself.
    pub fn healthcheck(mut self, port: u16, path: &str, interval_ms: u64) -> Self {
        self.healthcheck = Some((port, path.into(), interval_ms));
        self
    }
    /// Extra `docker run` arguments (placed before the image).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
    /// Command arguments after the image (passed to the entrypoint).
    pub fn cmd(mut self, args: &[&str]) -> Self {
        self.cmd.extend(args.iter().map(|s| s.to_string()));
        self
    }
    /// `--stop-timeout`: seconds `docker stop` waits after SIGTERM before SIGKILL.
    pub fn stop_timeout(mut self, secs: u32) -> Self {
        self.stop_timeout = Some(secs);
        self
    }
    /// Only `docker create` the container; start it later with [`Container::start`].
    pub fn create_only(mut self) -> Self {
        self.create_only = true;
        self
    }
}

/// A container started by [`TestEnv::run`]. Removed by the env's `Drop`, not its own.
#[derive(Clone, Debug)]
pub struct Container {
    /// `<env id>-<suffix>`; also the backend's default `NAME`.
    pub name: String,
    /// Full container id.
    pub id: String,
    /// The network it was started on.
    pub network: String,
}

impl Container {
    /// `docker inspect -f FORMAT <container>`.
    pub fn inspect(&self, format: &str) -> String {
        docker(&["inspect", "-f", format, &self.id])
    }
    /// Its IPv4 address on `network`; panics if it is not attached there.
    pub fn ip(&self, network: &str) -> String {
        let f = format!(
            "{{{{with index .NetworkSettings.Networks \"{network}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}"
        );
        let ip = self.inspect(&f);
        assert!(
            !ip.is_empty(),
            "container {} has no address on network {network}",
            self.name
        );
        ip
    }
    /// Its IPv4 address on the network it was started on.
    pub fn ip_default(&self) -> String {
        self.ip(&self.network)
    }
    /// `ip_default():port` as a socket address (reachable from the host).
    pub fn addr(&self, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip_default())
            .parse()
            .expect("container address")
    }
    /// The 127.0.0.1 host port that `container_port` is published on.
    pub fn published_port(&self, container_port: u16) -> u16 {
        let out = docker(&["port", &self.id, &format!("{container_port}/tcp")]);
        out.lines()
            .filter_map(|l| l.trim().rsplit(':').next()?.parse().ok())
            .next()
            .unwrap_or_else(|| panic!("{}: port {container_port} not published: {out}", self.name))
    }
    /// `127.0.0.1:<published_port(container_port)>`.
    pub fn published_addr(&self, container_port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.published_port(container_port)))
    }
    /// `docker stop -t <timeout_secs>`.
    pub fn stop(&self, timeout_secs: u32) {
        docker(&["stop", "-t", &timeout_secs.to_string(), &self.id]);
    }
    /// `docker kill -s <signal>` (e.g. "TERM", "KILL").
    pub fn kill(&self, signal: &str) {
        docker(&["kill", "-s", signal, &self.id]);
    }
    /// `docker start`.
    pub fn start(&self) {
        docker(&["start", &self.id]);
    }
    /// `docker restart -t <timeout_secs>`.
    pub fn restart(&self, timeout_secs: u32) {
        docker(&["restart", "-t", &timeout_secs.to_string(), &self.id]);
    }
    /// `docker pause`.
    pub fn pause(&self) {
        docker(&["pause", &self.id]);
    }
    /// `docker unpause`.
    pub fn unpause(&self) {
        docker(&["unpause", &self.id]);
    }
    /// `docker rm -f -v`.
    pub fn rm(&self) {
        docker(&["rm", "-f", "-v", &self.id]);
    }
    /// `docker network connect <network>`.
    pub fn connect(&self, network: &str) {
        docker(&["network", "connect", network, &self.id]);
    }
    /// `docker network disconnect <network>`.
    pub fn disconnect(&self, network: &str) {
        docker(&["network", "disconnect", network, &self.id]);
    }
    /// `.State.Running`.
    pub fn is_running(&self) -> bool {
        self.inspect("{{.State.Running}}") == "true"
    }
    /// `.State.Health.Status` ("starting", "healthy", "unhealthy"), "" without a check.
    pub fn health(&self) -> String {
        self.inspect("{{if .State.Health}}{{.State.Health.Status}}{{end}}")
    }
    /// Polls until [`Container::health`] equals `status`.
    pub fn wait_health(&self, status: &str, timeout: Duration) {
        wait_until(&format!("{} health {status}", self.name), timeout, || {
            (self.health() == status).then_some(())
        });
    }
    /// Polls until the container is no longer running; returns its exit code.
    pub fn wait_exited(&self, timeout: Duration) -> i64 {
        wait_until(&format!("{} to exit", self.name), timeout, || {
            let s = self.inspect("{{.State.Running}} {{.State.ExitCode}}");
            let (running, code) = s.split_once(' ')?;
            if running == "false" {
                code.parse().ok()
            } else {
                None
            }
        })
    }
    /// Polls (10 s) until `ip_default():port` answers `GET /` with any HTTP response.
    pub fn wait_http(&self, port: u16) -> SocketAddr {
        let addr = self.addr(port);
        wait_until(
            &format!("{} to answer HTTP on {addr}", self.name),
            SECS_10,
            || {
                let mut c = HttpConn::connect_timeout(addr, Duration::from_secs(1)).ok()?;
                c.request("GET", "probe", "/healthz", &[("Connection", "close")], b"")
                    .ok()
                    .map(|_| ())
            },
        );
        addr
    }
    /// `docker logs` (stdout and stderr).
    pub fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["logs", &self.id])
            .stdin(Stdio::null())
            .output()
            .expect("docker logs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

// ---------------------------------------------------------------------------
// hawser process
// ---------------------------------------------------------------------------

/// A running hawser process (killed on drop; its env also kills it).
pub struct Hawser {
    /// The address that replaced `$LISTEN` (127.0.0.1:0 if the template had none).
    pub addr: SocketAddr,
    /// All rendered listen addresses: `$LISTEN`, then `$LISTEN2`, ...
    pub addrs: Vec<SocketAddr>,
    /// The admin API's address (`$ADMIN`, or the one the harness added); meaningless when
    /// the template set `admin.listen` itself.
    pub admin: SocketAddr,
    /// The rendered config file (rewrite it for reload tests).
    pub config_path: PathBuf,
    /// stdout + stderr of the process.
    pub log_path: PathBuf,
    child: Arc<Mutex<Child>>,
    pid: u32,
}

impl Hawser {
    /// Current contents of its log (stdout + stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// Sends a signal (e.g. [`SIGTERM`], [`SIGHUP`]) to the process.
    pub fn signal(&self, sig: i32) {
        if self.try_status().is_none() {
            unsafe {
                kill(self.pid as i32, sig);
            }
        }
    }
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let mut c = lock(&self.child);
        let _ = c.kill();
        let _ = c.wait();
    }
    /// Exit status if it has exited (non-blocking).
    pub fn try_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }
    /// Polls until the process exits, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Polls until `addr` answers any HTTP response; panics (with the log) if the
    /// process exits or the deadline passes.
    pub fn wait_ready(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                panic!(
                    "hawser exited before listening ({s}); log:\n{}",
                    tail(&self.log(), 80)
                );
            }
            let ok = HttpConn::connect_timeout(self.addr, Duration::from_secs(1))
                .and_then(|mut c| {
                    c.request(
                        "GET",
                        "hawser-readiness.invalid",
                        "/",
                        &[("Connection", "close")],
                        b"",
                    )
                })
                .is_ok();
            if ok {
                return;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "hawser did not answer HTTP on {} within {:?}; log:\n{}",
                    self.addr,
                    start.elapsed(),
                    tail(&self.log(), 80)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Polls until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_until(
            &format!("hawser log to contain {needle:?}"),
            timeout,
            || self.log().contains(needle).then_some(()),
        );
    }
    /// Polls until a log line satisfies `pred` and returns that (first such) line; on timeout
    /// panics with `what` and the whole log.
    pub fn wait_log_line(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| pred(l)) {
                return line.to_string();
            }
            if start.elapsed() >= timeout {
                panic!(
                    "timed out after {:?} waiting for a hawser log line: {what}; log:\n{log}",
                    start.elapsed()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// Waits until hawser's log says a service's selector went live after the Docker event
    /// `what` (e.g. "pause <container name>", "kill <container name>"): hawser writes that
    /// line ("service S: selector live X ms after Docker event (<what>); N/M backends ready")
    /// once the service's load balancer was updated, so from then on requests use the new
    /// backend set. Panics with the log on timeout.
    pub fn wait_applied(&self, what: &str, timeout: Duration) {
        let needle = format!("after Docker event ({what})");
        self.wait_log_line(
            &format!("Docker event {what:?} applied (a line containing {needle:?})"),
            timeout,
            |l| l.contains(&needle),
        );
    }
    /// Waits until hawser's log says service `service` went live with `ready` of its backends
    /// ready ("service S: selector live …; READY/M backends ready"), whatever caused it. For
    /// waiting on readiness without sending a request through hawser (which would leave pooled
    /// upstream connections behind). Returns the line.
    pub fn wait_backends_ready(&self, service: &str, ready: usize, timeout: Duration) -> String {
        let head = format!("service {service}: selector live");
        let count = format!("; {ready}/");
        self.wait_log_line(
            &format!("service {service} live with {ready} backends ready"),
            timeout,
            |l| l.contains(&head) && l.contains(&count) && l.trim_end().ends_with("backends ready"),
        )
    }
    /// `GET path` with `Host: host` through this hawser.
    pub fn get(&self, host: &str, path: &str) -> io::Result<Response> {
        get(self.addr, host, path)
    }
}

impl Drop for Hawser {
    fn drop(&mut self) {
        self.kill();
    }
}

fn run_hawser_check(text: &str) -> (i32, String) {
    let dir = tmp_dir();
    std::fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR");
    let path = dir.join(format!("check-{}-{}.yaml", std::process::id(), next_n()));
    std::fs::write(&path, text.replace("$ADMIN", "127.0.0.1:9900")).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_hawser"))
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("run hawser -t");
    let _ = std::fs::remove_file(&path);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `hawser -t -c FILE` (config check) on `config_yaml`: `$LISTEN*` become free
/// loopback addresses, `$PREFIX` becomes `hcheck`, `$NETWORK` becomes
/// `hawser-check-net` (nothing is created). Returns (exit code, stdout + stderr).
/// Use [`TestEnv::hawser_check`] for env-specific rendering.
pub fn hawser_check(config_yaml: &str) -> (i32, String) {
    let mut text = config_yaml.to_string();
    for i in (2..=9).rev() {
        let ph = format!("$LISTEN{i}");
        if text.contains(&ph) {
            text = text.replace(&ph, &format!("127.0.0.1:{}", free_port()));
        }
    }
    text = text.replace("$LISTEN", &format!("127.0.0.1:{}", free_port()));
    text = text
        .replace("$PREFIX", "hcheck")
        .replace("$NETWORK", "hawser-check-net");
    run_hawser_check(&text)
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// An HTTP response as read by the harness client.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// In received order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body (chunked encoding decoded), lossily converted to UTF-8.
    pub body: String,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// All values of header `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    /// The `X-Backend` header: which backend answered.
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }
}

/// A client connection that can carry several requests (keep-alive), for tests of
/// connection handling. [`http`] is the one-shot form.
pub struct HttpConn {
    reader: BufReader<TcpStream>,
}

fn has_header(headers: &[(&str, &str)], name: &str) -> bool {
    headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
}

impl HttpConn {
    /// Connects with 5 s connect/read/write timeouts.
    pub fn connect(addr: SocketAddr) -> io::Result<HttpConn> {
        Self::connect_timeout(addr, SECS_5)
    }
    /// Connects with the given connect/read/write timeout.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> io::Result<HttpConn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            reader: BufReader::new(s),
        })
    }
    /// The underlying socket (e.g. to change timeouts or shut down one side).
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }
    /// Sends one request and reads its response. Adds `Host` (unless `host` is empty
    /// or `headers` has one) and `Content-Length` (when there is a body or the method
    /// is POST/PUT/PATCH, unless `headers` has Content-Length or Transfer-Encoding, in
    /// which case `body` is sent as is). No `Connection` header is added.
    pub fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\n");
        if !host.is_empty() && !has_header(headers, "host") {
            req.push_str(&format!("Host: {host}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_header(headers, "content-length")
            && !has_header(headers, "transfer-encoding")
            && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH"))
        {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)?;
        self.read_response(method)
    }
    /// GET on this connection.
    pub fn get(&mut self, host: &str, path: &str) -> io::Result<Response> {
        self.request("GET", host, path, &[], b"")
    }
    /// Writes raw bytes (for malformed or pipelined requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let s = self.reader.get_mut();
        s.write_all(bytes)?;
        s.flush()
    }
    /// Reads one response (skipping 1xx interim responses other than 101). `method`
    /// matters only for HEAD, whose responses have no body.
    pub fn read_response(&mut self, method: &str) -> io::Result<Response> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                ));
            }
            let line = line.trim_end();
            let mut parts = line.splitn(3, ' ');
            let version = parts.next().unwrap_or("");
            let status: u16 = parts
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|_| version.starts_with("HTTP/"))
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad status line {line:?}"),
                    )
                })?;
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if self.reader.read_line(&mut h)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in response head",
                    ));
                }
                let h = h.trim_end_matches(['\r', '\n']);
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut r = Response {
                status,
                headers,
                body: String::new(),
            };
            let no_body = method.eq_ignore_ascii_case("HEAD")
                || (100..200).contains(&status)
                || status == 204
                || status == 304;
            let mut body = Vec::new();
            if no_body {
            } else if r
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
            {
                self.read_chunked(&mut body)?;
            } else if let Some(cl) = r.header("content-length") {
                let n: usize = cl.parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad content-length {cl:?}"),
                    )
                })?;
                body.resize(n, 0);
                self.reader.read_exact(&mut body)?;
            } else {
                self.reader.read_to_end(&mut body)?;
            }
            r.body = String::from_utf8_lossy(&body).into_owned();
            return Ok(r);
        }
    }
    fn read_chunked(&mut self, body: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let size = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size.trim(), 16).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad chunk size {line:?}"),
                )
            })?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    if self.reader.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        return Ok(());
                    }
                }
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..])?;
            let mut crlf = String::new();
            self.reader.read_line(&mut crlf)?;
        }
    }
    /// True if the peer closes the connection (EOF or reset) within `timeout`; false
    /// if it stays open (or sends data).
    pub fn peer_closed(&mut self, timeout: Duration) -> bool {
        let old = self.stream().read_timeout().ok().flatten();
        let _ = self
            .stream()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        let r = match self.reader.fill_buf() {
            Ok(b) => b.is_empty(),
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        let _ = self.stream().set_read_timeout(old);
        r
    }
}

/// One request on a fresh connection with `Connection: close` and 5 s timeouts (see
/// [`HttpConn::request`] for the headers it adds).
pub fn http(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut c = HttpConn::connect(addr)?;
    let mut hs: Vec<(&str, &str)> = headers.to_vec();
    if !has_header(headers, "connection") {
        hs.push(("Connection", "close"));
    }
    c.request(method, host, path, &hs, body)
}

/// `GET path` with `Host: host`, `Connection: close`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> io::Result<Response> {
    http(addr, "GET", host, path, &[], b"")
}

/// Writes `request` (raw bytes) on a fresh connection and reads until the peer closes,
/// an error, or `timeout` (connect, and each read). Returns every byte received and how
/// reading ended: `None` on a clean EOF, else the error. For responses the [`HttpConn`]
/// parser would reject, e.g. a body cut short.
pub fn http_raw(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> (Vec<u8>, Option<io::Error>) {
    let mut s = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if let Err(e) = s.write_all(request) {
        return (Vec::new(), Some(e));
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (got, Some(e)),
        }
    }
}

/// Splits raw response bytes (as from [`http_raw`]) into the status line, the headers (names
/// lowercased, values trimmed) and whatever followed the head. `None` without a complete
/// head.
pub fn split_raw(bytes: &[u8]) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, bytes[end + 4..].to_vec()))
}

// ---------------------------------------------------------------------------
// polling
// ---------------------------------------------------------------------------

/// Calls `f` every 20 ms until it returns `Some`; panics with `what` and the elapsed
/// time once `timeout` has passed.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {:?} waiting for {what}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `GET path` (Host `host`) on `addr` until a response satisfies `pred`; returns
/// it. On timeout the panic message includes the last response or error.
pub fn wait_response(
    what: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
    pred: impl Fn(&Response) -> bool,
) -> Response {
    let mut last: String;
    let start = Instant::now();
    loop {
        match get(addr, host, path) {
            Ok(r) if pred(&r) => return r,
            Ok(r) => {
                last = format!(
                    "status {} backend {:?} body {:?}",
                    r.status,
                    r.backend(),
                    r.body
                )
            }
            Err(e) => last = format!("error {e}"),
        }
        if start.elapsed() >= timeout {
            panic!(
                "timed out after {:?} waiting for {what}; last: {last}",
                start.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Shared test vocabulary
// ---------------------------------------------------------------------------

/// A routed backend: `<prefix>.enable=true`, `host`, `service`.
pub fn web(env: &TestEnv, suffix: &str, host: &str, service: &str) -> Container {
    env.run(
        ContainerSpec::new(suffix)
            .hawser("enable", "true")
            .hawser("host", host)
            .hawser("service", service),
    )
}

/// `n` sequential GETs through hawser; backend name → count. Panics (with hawser's log) on an
/// error or any status other than 200.
pub fn shares(h: &Hawser, host: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..n {
        let r = h
            .get(host, "/")
            .unwrap_or_else(|e| panic!("{host} request {i}/{n}: {e}\nhawser log:\n{}", h.log()));
        assert_eq!(
            r.status,
            200,
            "{host} request {i}/{n}: status {} backend {:?} body {:?}\nhawser log:\n{}",
            r.status,
            r.backend(),
            r.body,
            h.log()
        );
        *counts
            .entry(r.backend().unwrap_or("<no X-Backend>").to_string())
            .or_insert(0) += 1;
    }
    counts
}

/// Asserts that `n` sequential GETs all answer 200 from `only`.
pub fn assert_only(h: &Hawser, host: &str, n: usize, only: &Container, why: &str) {
    let counts = shares(h, host, n);
    let want: std::collections::BTreeMap<String, usize> = [(only.name.clone(), n)].into();
    assert_eq!(
        counts,
        want,
        "{why}: all {n} requests for {host} should go to {}\nhawser log:\n{}",
        only.name,
        h.log()
    );
}

/// The backend's `/count` (application requests it received), asked straight at the
/// container.
pub fn direct_count(c: &Container) -> u64 {
    let r = direct(c, "/count");
    r.body
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("/count of {} is not a number: {:?}", c.name, r.body))
}

/// A GET sent straight to the container (not through hawser), e.g. `/_ctl/unhealthy`.
pub fn direct(c: &Container, path: &str) -> Response {
    let addr = c.addr(80);
    let r = get(addr, "direct.test", path)
        .unwrap_or_else(|e| panic!("GET {path} directly on {} ({addr}): {e}", c.name));
    assert_eq!(
        r.status, 200,
        "GET {path} directly on {}: {:?}",
        c.name, r.body
    );
    r
}

// ---------------------------------------------------------------------------
// images from a prepared build context; the admin API
// ---------------------------------------------------------------------------

/// Builds `dockerfile` (written into `context` as `Dockerfile.hawser-test`) from the build
/// context `context` as image `tag`, with the label `hawser-test=1`. Like the backend images,
/// the tag is registered before the build and removed at process exit (C `atexit`, which
/// also runs after failed tests). Choose a tag unique to this process, e.g. with
/// `std::process::id()`. Panics with docker's output on failure.
pub fn build_image(tag: &str, context: &Path, dockerfile: &str) {
    ensure_docker();
    // One Dockerfile per tag: several images may be built from one context at once.
    let df = context.join(format!("Dockerfile.{}", tag.replace([':', '/'], "_")));
    std::fs::write(&df, dockerfile).expect("write Dockerfile");
    lock(&TAGS).push(tag.to_string());
    docker(&[
        "build",
        "-q",
        "--label",
        "hawser-test=1",
        "-t",
        tag,
        "-f",
        df.to_str().expect("utf-8 path"),
        context.to_str().expect("utf-8 path"),
    ]);
}

/// Starts a new hawser with `-u -c CONFIG` (it takes the listening sockets over from the one
/// running on `config`, waiting on its `pingora.upgrade_sock`), logging at info to `log`.
pub fn spawn_upgrade(config: &Path, log: &Path) -> std::process::Child {
    let file = std::fs::File::create(log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
    Command::new(env!("CARGO_BIN_EXE_hawser"))
        .args(["-u", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone the log file"))
        .stderr(file)
        .spawn()
        .expect("start hawser -u")
}

/// One request to hawser's admin API at `admin` (e.g. [`Hawser::admin`]): `method` `path`,
/// with `Authorization: Bearer <token>` when `token` is given, `Connection: close`, and the
/// address as `Host` (as curl sends it; the admin API refuses foreign hosts without a token).
pub fn admin_request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> io::Result<Response> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    http(admin, method, &admin.to_string(), path, &headers, b"")
}

/// `GET path` on hawser's admin API as JSON; panics (naming the path) on a failed request, a
/// status other than 200, or a body that is not JSON.
pub fn admin_json(h: &Hawser, path: &str) -> serde_json::Value {
    let r = admin_request(h.admin, "GET", path, None).unwrap_or_else(|e| panic!("GET {path} on the admin API {}: {e}", h.admin));
    assert_eq!(r.status, 200, "GET {path} on the admin API: {}", r.body);
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {}", r.body))
}

/// The value of the series `series` (name and labels exactly as exposed, e.g.
/// `hawser_retries_total{service="api"}`) in the metrics text `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("series {series} has value {v:?}")))
}

/// A directory under [`tmp_dir`] that is removed on drop (also while panicking).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `<tmp_dir>/<name>-<pid>`, emptied first.
    pub fn new(name: &str) -> TempDir {
        let p = tmp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `(container_name, FIELD)` of the backends of `service` in an `/api/services` answer, sorted
/// (FIELD: `state`, `address`, …).
pub fn service_backends(services: &serde_json::Value, service: &str, field: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["backends"].as_array().cloned().unwrap_or_default())
        .map(|b| (b["container_name"].as_str().unwrap_or("?").to_string(), b[field].as_str().unwrap_or("?").to_string()))
        .collect();
    out.sort();
    out
}
