//! The gRPC test backend (`tests/support/grpc-backend`, see its `src/main.rs` for its methods):
//! a crate of its own on the `h2` crate, built static with cargo into
//! `CARGO_TARGET_TMPDIR/grpc-backend-target` (once per machine; cargo rebuilds it when its
//! source changes) and put in a `FROM scratch` image, like the HTTP/1.1 backend.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::{build_image, lock, tmp_dir};

/// The static binary (it also runs on the host: `BIND=127.0.0.1 PORT=…`).
pub fn grpc_backend_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc-backend/Cargo.toml");
        let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
        let version = Command::new(&rustc).arg("-vV").output().unwrap_or_else(|e| panic!("cannot run {rustc}: {e}"));
        let version = String::from_utf8_lossy(&version.stdout).into_owned();
        let host = version.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host").trim().to_string();
        let target_dir = tmp_dir().join("grpc-backend-target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        // --target: the static flag then applies to the binary only, not to build scripts.
        let out = Command::new(&cargo)
            .args(["build", "--release", "--locked", "--quiet", "--target", &host])
            .arg("--manifest-path")
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
        assert!(
            out.status.success(),
            "building the gRPC test backend ({}) failed:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir.join(host).join("release/hawser-grpc-backend")
    })
    .clone()
}

/// The image `hawser-test-grpc-backend:p<pid>` (`EXPOSE 80`, label `hawser-test=1`), built
/// once per process; removed at process exit with the other test images.
pub fn grpc_backend_image() -> String {
    static TAG: Mutex<Option<String>> = Mutex::new(None);
    let mut built = lock(&TAG);
    if let Some(tag) = built.as_ref() {
        return tag.clone();
    }
    let pid = std::process::id();
    let tag = format!("hawser-test-grpc-backend:p{pid}");
    let ctx = tmp_dir().join(format!("hawser-grpc-backend-ctx-{pid}"));
    std::fs::create_dir_all(&ctx).expect("create build context");
    std::fs::copy(grpc_backend_binary(), ctx.join("backend")).expect("copy the gRPC backend into its build context");
    build_image(&tag, &ctx, "FROM scratch\nCOPY backend /backend\nEXPOSE 80\nENTRYPOINT [\"/backend\"]\n");
    let _ = std::fs::remove_dir_all(&ctx);
    *built = Some(tag.clone());
    tag
}
