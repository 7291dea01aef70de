//! The Python that real Python clients (grpcio, websockets) run in: the virtualenv that
//! `.ci/run`'s step "python virtualenv" creates in `target/venv` and installs them into.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The virtualenv's python: `$HAWSER_TEST_PYTHON` if set, else `target/venv/bin/python`
/// under the crate. Panics, saying how to make it, when it is missing: a test that needs a
/// real Python client must fail rather than pass without one.
pub fn venv_python() -> PathBuf {
    let python = match std::env::var_os("HAWSER_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"),
    };
    assert!(
        python.is_file(),
        "no Python virtualenv at {}: run .ci/run (step \"python virtualenv\"), or \
         `python3 -m venv target/venv && target/venv/bin/pip install grpcio websockets`",
        python.display()
    );
    python
}

/// Runs `script` (Python source) with `args` in the virtualenv's python; panics with its
/// stderr if it cannot start or exits non-zero.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let python = venv_python();
    let out: Output = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python script failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
