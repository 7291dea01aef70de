//! Real Python clients and servers (`websockets`, and the like) for the integration tests,
//! from the virtualenv that `.ci/run` makes: `$HAWSER_VENV`, else `~/.cache/hawser-venv`
//! (outside `target/`, so one venv serves every checkout). Without it, or without a module a
//! test needs, the test fails with the commands that make it: never a pass.
//!
//! Scripts live in `tests/support/`; [`PythonServer`] runs one that prints its port on its
//! first stdout line, and kills it when dropped (also when the test panics).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;

use super::SECS_10;

/// The virtualenv's directory.
pub fn venv() -> PathBuf {
    match std::env::var_os("HAWSER_VENV") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache/hawser-venv"),
    }
}

/// The venv's python, once it is checked to import every one of `modules`.
pub fn python_with(modules: &[&str]) -> PathBuf {
    let dir = venv();
    let python = dir.join("bin/python");
    let make = format!(
        "make it as .ci/run does: python3 -m venv {0} && {0}/bin/pip install -r .ci/python-requirements.txt",
        dir.display()
    );
    assert!(python.exists(), "no Python virtualenv at {} (HAWSER_VENV): {make}", dir.display());
    let imports = modules.iter().map(|m| format!("import {m}")).collect::<Vec<_>>().join("; ");
    let out = Command::new(&python).args(["-c", &imports]).output().expect("run the venv's python");
    assert!(
        out.status.success(),
        "the virtualenv at {} cannot `{imports}`: {}\n{make}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// A script of `tests/support/`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(name)
}

/// A Python server on a loopback port it chose itself (no race for a free port), killed
/// when dropped.
pub struct PythonServer {
    pub port: u16,
    child: Child,
}

impl PythonServer {
    /// Runs `python args…`, which must print its port as its first line within 10 s.
    pub fn start(python: &Path, args: &[&str]) -> PythonServer {
        let mut child = Command::new(python)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {} {args:?}: {e}", python.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut server = PythonServer { port: 0, child };
        let line = first_line(stdout).unwrap_or_else(|| panic!("{args:?} printed no port within 10 s"));
        server.port = line.trim().parse().unwrap_or_else(|_| panic!("{args:?} printed {line:?}, not a port"));
        server
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first line of `out`, waiting at most 10 s; the rest is read and dropped on a thread
/// of its own so the child never blocks on a full pipe.
fn first_line(out: ChildStdout) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
        let _ = std::io::copy(&mut out.take(u64::MAX), &mut std::io::sink());
    });
    rx.recv_timeout(SECS_10).ok().filter(|l| !l.is_empty())
}

/// Runs `script` (Python source) with `args` in the virtualenv's python, which must import
/// `grpc`; panics with its stderr if it cannot start or exits non-zero.
pub fn run_python(script: &str, args: &[&str]) -> String {
    run_grpc_python(&[&["-c", script], args].concat())
}

/// Runs the script `name` of `tests/support/` with `args`, as [`run_python`] does.
pub fn run_script(name: &str, args: &[&str]) -> String {
    let path = script(name);
    let path = path.to_str().expect("a UTF-8 path");
    run_grpc_python(&[&[path], args].concat())
}

/// `python ARGS…` in the virtualenv, which must import `grpc`: its stdout, or a panic with its
/// stdout and stderr if it cannot start or exits non-zero.
fn run_grpc_python(args: &[&str]) -> String {
    let python = python_with(&["grpc"]);
    let out = Command::new(&python)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python {:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        args.get(1..).unwrap_or_default(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
