//! hawser itself as a `FROM scratch` image, as the README's "Running in Docker" builds it:
//! for tests that run hawser in a container (its own networks, an overlay).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use std::os::unix::fs::MetadataExt;

use super::{Container, ContainerSpec, TempDir, TestEnv, build_image, docker};

const SOCKET: &str = "/var/run/docker.sock";

/// The shared libraries `bin` loads, as absolute paths (from `ldd`), the dynamic loader
/// included; linux-vdso has no file and is skipped.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(bin)
        .stdin(Stdio::null())
        .output()
        .expect("run ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ldd {}: {}{}",
        bin.display(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        assert!(!line.contains("not found"), "ldd {}: {line}", bin.display());
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    assert!(
        libs.iter()
            .any(|l| l.to_string_lossy().contains("ld-linux")),
        "no dynamic loader in `ldd {}`:\n{text}",
        bin.display()
    );
    libs
}

/// The image `hawser-test-hawser:p<pid>` (built once per process; the tag is removed at
/// exit): `FROM scratch`, hawser with its debug info stripped, the shared libraries at their
/// absolute paths, `USER 10001:10001` like the project's Dockerfile, `ENTRYPOINT ["/hawser"]`.
pub fn hawser_image() -> String {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let t = Instant::now();
        let bin = Path::new(env!("CARGO_BIN_EXE_hawser"));
        let ctx = TempDir::new("hawser-image-ctx");
        let stripped = ctx.0.join("hawser");
        let out = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(bin)
            .arg(&stripped)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run objcopy (binutils): {e}"));
        assert!(out.status.success(), "objcopy --strip-debug: {}", String::from_utf8_lossy(&out.stderr));
        for lib in shared_libraries(bin) {
            let dest = ctx.0.join("rootfs").join(lib.strip_prefix("/").expect("absolute"));
            std::fs::create_dir_all(dest.parent().expect("parent")).expect("create rootfs dir");
            // Follows symlinks (the loader is one): the image gets the file itself.
            std::fs::copy(&lib, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", lib.display()));
        }
        let tag = format!("hawser-test-hawser:p{}", std::process::id());
        build_image(
            &tag,
            &ctx.0,
            "FROM scratch\nCOPY rootfs/ /\nCOPY hawser /hawser\nUSER 10001:10001\nENTRYPOINT [\"/hawser\"]\n",
        );
        let size = docker(&["image", "inspect", "-f", "{{.Size}}", &tag]);
        eprintln!("built {tag} ({size} bytes) in {:?}", t.elapsed());
        tag
    })
    .clone()
}


/// Runs the hawser image in `env` on network `network` with `config` mounted as
/// /etc/hawser.yaml, the Docker socket mounted read-only and its group added.
pub fn run_hawser(
    env: &TestEnv,
    suffix: &str,
    network: &str,
    config: &Path,
    publish: bool,
) -> Container {
    let meta = std::fs::metadata(SOCKET).unwrap_or_else(|e| {
        panic!("{SOCKET}: {e} (this test mounts the local Docker engine's socket into hawser's container)")
    });
    let gid = meta.gid().to_string();
    let socket_mount = format!("{SOCKET}:{SOCKET}:ro");
    let config_mount = format!("{}:/etc/hawser.yaml:ro", config.display());
    let mut spec = ContainerSpec::new(suffix)
        .image(&hawser_image())
        .network(network)
        .env("RUST_LOG", "info,hawser=debug")
        .args(&[
            "-v",
            &socket_mount,
            "--group-add",
            &gid,
            "-v",
            &config_mount,
        ])
        .cmd(&["-c", "/etc/hawser.yaml"]);
    if publish {
        spec = spec.publish(8080).publish(9900);
    }
    env.run(spec)
}

