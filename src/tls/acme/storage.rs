//! The ACME storage directory (`tls.acme.storage`): the account for each CA and the
//! certificate of each host, laid out as Caddy does:
//!
//! ```text
//! storage/                                  0700
//!   accounts/<CA>.json                      account key and URL for one directory URL
//!   accounts/<CA>.lock
//!   certificates/<host>/<host>.crt          chain, leaf first (PEM)
//!   certificates/<host>/<host>.key          private key (PEM)
//!   certificates/<host>/<host>.json         issuer directory, validity, when it was issued
//!   certificates/<host>/.lock
//!   certificates/<host>/failures.json       failed orders in a row, the last error, the next attempt
//!   challenges/<token>                      HTTP-01 answers of orders in flight (crate::tls::challenge)
//! ```
//!
//! `<CA>` is the directory URL without its scheme, `/` written `_` and `:` written `+` (other
//! characters outside `[A-Za-z0-9.-]` as `%XX`), so two directory URLs never share a file.
//!
//! Invariants:
//! - Files are 0600 and directories 0700; every file is written whole to a temporary file in
//!   its directory, synced, then renamed over the old one (and the directory synced), so a
//!   reader sees the old file or the new one, never a part. Within a host's directory the key
//!   is written first and the metadata last; a reader that meets a new key with an old chain
//!   finds them not matching and treats the pair as unusable (it never serves a mismatch).
//! - Anything read from the directory is input: sizes are bounded (see [`crate::tls::pem`]),
//!   certificates are parsed and checked against their key, their host and the configured
//!   CA; what fails is reported as unusable with the reason, never trusted and never a panic.
//! - Host names become directory names only when they are plain DNS names or IPv4 addresses
//!   (`[a-z0-9._-]`, no leading dot, no `..`): a name can never reach outside `certificates/`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use instant_acme::AccountCredentials;
use serde::{Deserialize, Serialize};

use crate::tls::pem::{self, Certificate};

/// A host's run of failed orders, in its directory.
const FAILURES_FILE: &str = "failures.json";
/// Larger JSON files than this are not read (ours are a few hundred bytes).
const MAX_JSON_BYTES: u64 = 64 * 1024;

/// The storage directory, for one CA (the configured directory URL).
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    directory: String,
}

/// What is stored beside a certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CertMeta {
    pub host: String,
    /// The directory URL of the CA that issued it.
    pub directory: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub issued_at: i64,
    pub names: Vec<String>,
}

/// A stored certificate that passed every check.
#[derive(Debug)]
pub struct Stored {
    pub cert: Certificate,
    pub meta: CertMeta,
    /// The `.crt` file.
    pub path: PathBuf,
}

/// What the storage holds for a host.
#[derive(Debug)]
pub enum Loaded {
    Missing,
    Usable(Box<Stored>),
    /// Files are there but cannot be served: why.
    Unusable(String),
}

/// A host's run of failed orders (`failures.json`), kept so that a restarted hawser waits as
/// the last one would have: a crash loop must not re-order at each start (Let's Encrypt
/// allows 5 failed validations per hour for an account and host).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failures {
    /// The directory URL of the CA the orders went to; another CA's record does not count.
    pub directory: String,
    /// Failures in a row.
    pub failures: u32,
    /// Unix seconds of the next attempt.
    pub next_attempt: i64,
    /// The last failure's reason.
    pub error: String,
}

/// The account file's content.
#[derive(Serialize, Deserialize)]
pub struct StoredAccount {
    pub directory: String,
    /// `mailto:` URLs the account was created (or last updated) with.
    pub contact: Vec<String>,
    pub credentials: AccountCredentials,
}

impl Storage {
    /// Opens (creating with 0700) `root` and its sub-directories for the CA at `directory`.
    pub fn open(root: &Path, directory: &str) -> Result<Storage, String> {
        let storage = Storage { root: root.to_path_buf(), directory: directory.to_string() };
        for dir in [root.to_path_buf(), storage.accounts_dir(), root.join("certificates")] {
            make_private_dir(&dir)?;
        }
        if let Ok(meta) = std::fs::metadata(root)
            && meta.permissions().mode() & 0o077 != 0
        {
            log::warn!(
                "ACME storage {} is readable by other users (mode {:o}); it holds private keys: chmod 700 it",
                root.display(),
                meta.permissions().mode() & 0o777
            );
        }
        Ok(storage)
    }

    fn accounts_dir(&self) -> PathBuf {
        self.root.join("accounts")
    }

    /// `accounts/<CA>.json`.
    pub fn account_path(&self) -> PathBuf {
        self.accounts_dir().join(format!("{}.json", issuer_key(&self.directory)))
    }

    pub fn account_lock_path(&self) -> PathBuf {
        self.accounts_dir().join(format!("{}.lock", issuer_key(&self.directory)))
    }

    /// `certificates/<host>/`, created (0700) if missing.
    fn host_dir(&self, host: &str) -> Result<PathBuf, String> {
        if !storable_name(host) {
            return Err(format!("{host:?} cannot be a file name in the ACME storage"));
        }
        let dir = self.root.join("certificates").join(host);
        make_private_dir(&dir)?;
        Ok(dir)
    }

    /// The lock file that guards ordering a certificate for `host`.
    pub fn lock_path(&self, host: &str) -> Result<PathBuf, String> {
        Ok(self.host_dir(host)?.join(".lock"))
    }

    /// The certificate stored for `host`, checked: it parses, matches its key, names `host`
    /// and was issued by the configured CA.
    pub fn load(&self, host: &str) -> Loaded {
        if !storable_name(host) {
            return Loaded::Unusable(format!("{host:?} cannot be a file name in the ACME storage"));
        }
        let dir = self.root.join("certificates").join(host);
        let (crt, key, json) = (dir.join(format!("{host}.crt")), dir.join(format!("{host}.key")), dir.join(format!("{host}.json")));
        if !crt.exists() && !key.exists() && !json.exists() {
            return Loaded::Missing;
        }
        let cert = match pem::load_pair(&crt, &key) {
            Ok(c) => c,
            Err(e) => return Loaded::Unusable(e),
        };
        let meta: CertMeta = match read_json(&json) {
            Ok(m) => m,
            Err(e) => return Loaded::Unusable(e),
        };
        if meta.directory != self.directory {
            return Loaded::Unusable(format!("{} was issued by another CA ({})", crt.display(), meta.directory));
        }
        if meta.host != host || !cert.names.iter().any(|n| n == host) {
            return Loaded::Unusable(format!("{} does not name {host} (names: {})", crt.display(), cert.names.join(", ")));
        }
        // The certificate is the authority on its validity, not the metadata beside it.
        let meta = CertMeta { not_before: cert.not_before, not_after: cert.not_after, names: cert.names.clone(), ..meta };
        Loaded::Usable(Box::new(Stored { cert, meta, path: crt }))
    }

    /// Stores a certificate just issued for `host` (checked by the caller) and returns it as
    /// loaded. Leftover temporary files in the host's directory are removed first: the caller
    /// holds the host's lock, so nobody else is writing there.
    pub fn save(&self, host: &str, cert: &Certificate, key_pem: &[u8], now: i64) -> Result<Stored, String> {
        let dir = self.host_dir(host)?;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_str().is_some_and(|n| n.starts_with('.') && n.contains(".tmp-")) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let meta = CertMeta {
            host: host.to_string(),
            directory: self.directory.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            issued_at: now,
            names: cert.names.clone(),
        };
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| e.to_string())?;
        let crt = dir.join(format!("{host}.crt"));
        write_atomic(&dir.join(format!("{host}.key")), key_pem)?;
        write_atomic(&crt, &cert.chain_pem)?;
        write_atomic(&dir.join(format!("{host}.json")), &json)?;
        Ok(Stored { cert: cert.clone(), meta, path: crt })
    }

    pub fn failures_path(&self, host: &str) -> Result<PathBuf, String> {
        if !storable_name(host) {
            return Err(format!("{host:?} cannot be a file name in the ACME storage"));
        }
        Ok(self.root.join("certificates").join(host).join(FAILURES_FILE))
    }

    /// The run of failed orders stored for `host` with the configured CA; `Ok(None)` when
    /// there is none (or it concerns another CA).
    pub fn load_failures(&self, host: &str) -> Result<Option<Failures>, String> {
        let path = self.failures_path(host)?;
        if !path.exists() {
            return Ok(None);
        }
        let f: Failures = read_json(&path)?;
        Ok(Some(f).filter(|f| f.directory == self.directory))
    }

    /// Records the run of failed orders for `host`.
    pub fn save_failures(&self, host: &str, failures: u32, next_attempt: i64, error: &str) -> Result<(), String> {
        let dir = self.host_dir(host)?;
        let f = Failures { directory: self.directory.clone(), failures, next_attempt, error: error.to_string() };
        let json = serde_json::to_vec_pretty(&f).map_err(|e| e.to_string())?;
        write_atomic(&dir.join(FAILURES_FILE), &json)
    }

    /// Forgets the run of failed orders for `host` (a certificate was issued or found).
    pub fn clear_failures(&self, host: &str) -> Result<(), String> {
        let path = self.failures_path(host)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
        }
    }

    /// The stored account for the configured CA. A file that cannot be read as one is moved
    /// aside (`….unreadable-<unix seconds>`) so that a new account can be made; `Ok(None)`
    /// then, as when there is none.
    pub fn load_account(&self, now: i64) -> Result<Option<StoredAccount>, String> {
        let path = self.account_path();
        if !path.exists() {
            return Ok(None);
        }
        let why = match read_json::<StoredAccount>(&path) {
            Ok(a) if a.directory == self.directory => return Ok(Some(a)),
            Ok(a) => format!("it is for another CA ({})", a.directory),
            Err(e) => e,
        };
        let aside = path.with_extension(format!("json.unreadable-{now}"));
        std::fs::rename(&path, &aside).map_err(|e| format!("cannot move the unusable account file {} aside: {e}", path.display()))?;
        log::warn!("ACME account file {} is unusable ({why}); moved to {}, a new account will be created", path.display(), aside.display());
        Ok(None)
    }

    pub fn save_account(&self, account: &StoredAccount) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(account).map_err(|e| e.to_string())?;
        write_atomic(&self.account_path(), &json)
    }

    /// Moves the account file aside after the CA said the account does not exist (any more).
    pub fn retire_account(&self, now: i64) {
        let path = self.account_path();
        let aside = path.with_extension(format!("json.retired-{now}"));
        if let Err(e) = std::fs::rename(&path, &aside) {
            log::warn!("cannot move the retired ACME account file {} aside: {e}", path.display());
        }
    }
}

/// Whether `host` is safe as a directory name (and a host ACME can order for).
pub fn storable_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('.')
        && !host.contains("..")
        && host.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
}

/// The file name for a CA's directory URL: injective, readable for the usual URLs.
pub fn issuer_key(directory: &str) -> String {
    let rest = directory.split_once("://").map_or(directory, |(_, r)| r);
    let mut out = String::with_capacity(rest.len());
    for b in rest.bytes() {
        match b {
            b'/' => out.push('_'),
            b':' => out.push('+'),
            b if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    // File names are limited to 255 bytes; a directory URL that long is not a real one.
    out.truncate(200);
    out
}

/// Creates `dir` (and missing parents) with mode 0700, or checks that it is a directory.
pub(crate) fn make_private_dir(dir: &Path) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the directory {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if meta.len() > MAX_JSON_BYTES {
        return Err(format!("{} is larger than {} KiB", path.display(), MAX_JSON_BYTES / 1024));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: not what hawser wrote ({e})", path.display()))
}

/// Writes `bytes` to `path` (0600) so that readers see the old content or the new, whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // hawsers sharing the storage from containers are all PID 1: a random part keeps their
    // temporary names apart.
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let tmp = dir.join(format!(".{name}.tmp-{}-{}-{random:016x}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let mut created = false;
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(&tmp)?;
        created = true;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename itself survives a crash only once the directory is synced.
        std::fs::File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        // Only a file this call made is removed, never another writer's.
        if created {
            let _ = std::fs::remove_file(&tmp);
        }
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    use crate::tls::acme::TestDir;

    const DIR: &str = "https://ca.test/directory";

    /// A storage root that does not exist yet (so that `open` makes it), in a test directory.
    fn root(name: &str) -> (TestDir, PathBuf) {
        let d = TestDir::new(&format!("storage-{name}"));
        let root = d.0.join("storage");
        (d, root)
    }

    fn issued(names: &[&str]) -> (Certificate, String) {
        let (c, k) = pem::self_signed(names, 30).unwrap();
        (pem::from_pem(c.as_bytes(), k.as_bytes()).unwrap(), k)
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn saved_certificates_load_back_private_and_whole() {
        let (_d, r) = root("save");
        let s = Storage::open(&r, DIR).unwrap();
        assert!(matches!(s.load("a.test"), Loaded::Missing));
        let (cert, key) = issued(&["a.test"]);
        let not_after = cert.not_after;
        s.save("a.test", &cert, key.as_bytes(), 1_000).unwrap();
        let Loaded::Usable(back) = s.load("a.test") else { panic!("not usable") };
        assert_eq!(back.meta.not_after, not_after);
        assert_eq!(back.meta.issued_at, 1_000);
        assert_eq!(back.meta.directory, DIR);
        for f in ["a.test.crt", "a.test.key", "a.test.json"] {
            assert_eq!(mode(&r.join("certificates/a.test").join(f)), 0o600, "{f}");
        }
        for d in ["", "certificates", "certificates/a.test", "accounts"] {
            assert_eq!(mode(&r.join(d)), 0o700, "{d:?}");
        }
        // No temporary file is left behind.
        let names: Vec<String> =
            std::fs::read_dir(r.join("certificates/a.test")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn a_run_of_failures_is_kept_per_host_and_ca_and_can_be_cleared() {
        let (_d, r) = root("failures");
        let s = Storage::open(&r, DIR).unwrap();
        assert_eq!(s.load_failures("a.test"), Ok(None));
        s.save_failures("a.test", 3, 5_000, "the CA said no").unwrap();
        let want = Failures { directory: DIR.to_string(), failures: 3, next_attempt: 5_000, error: "the CA said no".to_string() };
        assert_eq!(s.load_failures("a.test"), Ok(Some(want)));
        assert_eq!(mode(&r.join("certificates/a.test/failures.json")), 0o600);
        // Another CA's storage view does not count it.
        let other = Storage::open(&r, "https://other.test/dir").unwrap();
        assert_eq!(other.load_failures("a.test"), Ok(None));
        // Garbage is an error to report, not a panic and not a record.
        std::fs::write(r.join("certificates/b.test.json"), b"").unwrap();
        std::fs::create_dir_all(r.join("certificates/b.test")).unwrap();
        std::fs::write(r.join("certificates/b.test/failures.json"), b"{not json").unwrap();
        assert!(s.load_failures("b.test").unwrap_err().contains("not what hawser wrote"));
        // A name that cannot be a file name is refused, not looked up.
        assert!(s.load_failures("../x").is_err());
        s.clear_failures("a.test").unwrap();
        assert_eq!(s.load_failures("a.test"), Ok(None));
        s.clear_failures("a.test").unwrap();
    }

    #[test]
    fn bad_files_are_unusable_with_a_reason_never_a_panic() {
        let (_d, r) = root("bad");
        let s = Storage::open(&r, DIR).unwrap();
        let (cert, key) = issued(&["a.test"]);
        s.save("a.test", &cert, key.as_bytes(), 0).unwrap();
        let dir = r.join("certificates/a.test");
        let why = |s: &Storage| match s.load("a.test") {
            Loaded::Unusable(why) => why,
            other => panic!("expected unusable, got {other:?}"),
        };

        // Another CA.
        let other = Storage::open(&r, "https://other.test/dir").unwrap();
        assert!(why(&other).contains("another CA"), "{}", why(&other));
        // Garbage metadata, huge metadata, a directory where a file should be.
        std::fs::write(dir.join("a.test.json"), b"{not json").unwrap();
        assert!(why(&s).contains("not what hawser wrote"), "{}", why(&s));
        std::fs::write(dir.join("a.test.json"), vec![b' '; 100 * 1024]).unwrap();
        assert!(why(&s).contains("larger than"), "{}", why(&s));
        std::fs::remove_file(dir.join("a.test.json")).unwrap();
        std::fs::create_dir(dir.join("a.test.json")).unwrap();
        assert!(why(&s).contains("not a file"), "{}", why(&s));
        // A key that is not the certificate's (as after a crash between two renames).
        let (_, other_key) = issued(&["a.test"]);
        std::fs::write(dir.join("a.test.key"), other_key).unwrap();
        assert!(why(&s).contains("does not match"), "{}", why(&s));
        // A certificate for another name under this host's directory.
        let (wrong, wrong_key) = issued(&["b.test"]);
        std::fs::remove_dir(dir.join("a.test.json")).unwrap();
        s.save("a.test", &wrong, wrong_key.as_bytes(), 0).unwrap();
        assert!(why(&s).contains("does not name a.test"), "{}", why(&s));
        // Only garbage.
        std::fs::write(dir.join("a.test.crt"), b"\x00\x01garbage").unwrap();
        assert!(why(&s).contains("a.test.crt"), "{}", why(&s));
    }

    #[test]
    fn host_names_never_leave_the_storage() {
        for bad in ["", "../x", "..", ".hidden", "a/b", "a..b", "*.w.test", "A.test", "a\0b", "[::1]"] {
            assert!(!storable_name(bad), "{bad:?}");
        }
        for good in ["a.test", "xn--bcher-kva.example", "10.0.0.1", "a_b.test"] {
            assert!(storable_name(good), "{good:?}");
        }
        let (_d, r) = root("names");
        let s = Storage::open(&r, DIR).unwrap();
        assert!(s.lock_path("../../etc").is_err());
        assert!(matches!(s.load("../../etc"), Loaded::Unusable(_)));
    }

    #[test]
    fn issuer_keys_are_readable_and_distinct() {
        assert_eq!(issuer_key("https://acme-v02.api.letsencrypt.org/directory"), "acme-v02.api.letsencrypt.org_directory");
        assert_eq!(issuer_key("https://127.0.0.1:14000/dir"), "127.0.0.1+14000_dir");
        assert_ne!(issuer_key("https://a.test/b_c"), issuer_key("https://a.test/b/c"));
        assert_ne!(issuer_key("https://a.test/b+c"), issuer_key("https://a.test/b:c"));
        assert_eq!(issuer_key("https://a.test/x y"), "a.test_x%20y");
    }

    #[test]
    fn unreadable_account_files_are_moved_aside() {
        let (_d, r) = root("account");
        let s = Storage::open(&r, DIR).unwrap();
        assert!(s.load_account(5).unwrap().is_none());
        std::fs::write(s.account_path(), b"garbage").unwrap();
        assert!(s.load_account(7).unwrap().is_none());
        assert!(!s.account_path().exists());
        assert!(r.join("accounts").join(format!("{}.json.unreadable-7", issuer_key(DIR))).exists());
    }
}
