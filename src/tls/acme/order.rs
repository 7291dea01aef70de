//! Talking to the CA: the account (made once, stored, reused) and one HTTP-01 order per host.
//!
//! Invariants:
//! - One account per CA and storage directory, made under the account lock so that hawser
//!   processes sharing the storage make one between them; it is loaded from storage before
//!   any request, and the CA is asked only when a certificate is needed.
//! - A challenge token is answered only while its order runs: [`Answers`] removes what it
//!   added when the order ends, however it ends (error, timeout, task aborted).
//! - Authorizations the CA already holds as valid are taken as they are (pebble and Let's
//!   Encrypt reuse them); any other state but pending ends the order with the reason.
//! - What the CA sends is checked before it is used: the chain must parse, match the key
//!   hawser made, name the host and not be expired.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use log::{info, warn};
use rustls::pki_types::CertificateDer;

use super::http::{CaClient, chain};
use super::lock;
use super::schedule::Window;
use super::storage::{Storage, StoredAccount};
use crate::tls::challenge::Challenges;
use crate::tls::pem::{self, Certificate};

/// How long to wait for the account lock held by another hawser making the account.
const ACCOUNT_LOCK_WAIT: Duration = Duration::from_secs(120);
/// A lock older than this is a hung holder's: every step under it has a deadline well below.
pub const LOCK_STALE: Duration = Duration::from_secs(15 * 60);
/// How long the CA may take to validate the challenge and to issue.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);

const ACCOUNT_GONE: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// The CA, as one hawser talks to it.
pub struct Ca {
    http: CaClient,
    directory: String,
    email: Option<String>,
    account: tokio::sync::Mutex<Option<Account>>,
}

/// A certificate the CA just issued, checked.
pub struct Issued {
    pub cert: Certificate,
    pub key_pem: String,
}

/// Why an order did not give a certificate.
#[derive(Debug)]
pub struct Failure {
    pub why: String,
    /// Whether the CA was asked (the order counts as failed in the metrics).
    pub asked_ca: bool,
}

impl Failure {
    fn ca(why: String) -> Failure {
        Failure { why, asked_ca: true }
    }
}

impl Ca {
    pub fn new(http: CaClient, directory: &str, email: Option<&str>) -> Ca {
        Ca { http, directory: directory.to_string(), email: email.map(str::to_string), account: Default::default() }
    }

    fn builder(&self) -> instant_acme::AccountBuilder {
        Account::builder_with_http(Box::new(self.http.clone()))
    }

    /// The account: from memory, else from storage, else made at the CA (and stored).
    pub async fn account(&self, storage: &Storage, now: impl Fn() -> i64 + Copy) -> Result<Account, Failure> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let local = |why: String| Failure { why, asked_ca: false };
        let _lock = lock::lock(&storage.account_lock_path(), ACCOUNT_LOCK_WAIT, LOCK_STALE, now).await.map_err(local)?;
        let contact: Vec<String> = self.email.iter().map(|e| format!("mailto:{e}")).collect();
        let contact_refs: Vec<&str> = contact.iter().map(String::as_str).collect();
        let path = storage.account_path();
        let account = match storage.load_account(now()).map_err(local)? {
            Some(stored) => {
                let account = self.builder().from_credentials(stored.credentials).await.map_err(|e| {
                    Failure::ca(format!("cannot reach the CA with the stored account {}: {}", path.display(), chain(&e)))
                })?;
                if stored.contact != contact {
                    match account.update_contacts(&contact_refs).await {
                        Ok(()) => {
                            let credentials = storage.load_account(now()).map_err(local)?.map(|a| a.credentials);
                            if let Some(credentials) = credentials {
                                let updated = StoredAccount { directory: self.directory.clone(), contact: contact.clone(), credentials };
                                storage.save_account(&updated).map_err(local)?;
                            }
                            info!("ACME account {}: contact changed to {contact:?}", account.id());
                        }
                        Err(e) => warn!("ACME account {}: cannot change its contact to {contact:?}: {}", account.id(), chain(&e)),
                    }
                }
                account
            }
            None => {
                let new = NewAccount { contact: &contact_refs, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) = self
                    .builder()
                    .create(&new, self.directory.clone(), None)
                    .await
                    .map_err(|e| Failure::ca(format!("cannot create an ACME account at {}: {}", self.directory, chain(&e))))?;
                storage
                    .save_account(&StoredAccount { directory: self.directory.clone(), contact: contact.clone(), credentials })
                    .map_err(local)?;
                info!("ACME account created at {} ({}), stored in {}", self.directory, account.id(), path.display());
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Forgets the account after the CA said it does not know it: the next order makes one.
    async fn forget_account(&self, storage: &Storage, now: i64) {
        *self.account.lock().await = None;
        storage.retire_account(now);
    }

    /// The CA's renewal window for `leaf` (ARI), with how long to wait before asking again;
    /// `Ok(None)` when the CA offers no ARI.
    pub async fn renewal_window(&self, storage: &Storage, leaf: &CertificateDer<'_>, now: impl Fn() -> i64 + Copy) -> Result<Option<(Window, u64)>, String> {
        let id = CertificateIdentifier::try_from(leaf).map_err(|e| format!("cannot name the certificate to the CA: {e}"))?;
        let account = self.account(storage, now).await.map_err(|f| f.why)?;
        match account.renewal_info(&id).await {
            Ok((info, retry)) => {
                let w = info.suggested_window;
                Ok(Some((Window { start: w.start.unix_timestamp(), end: w.end.unix_timestamp() }, retry.as_secs())))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(chain(&e)),
        }
    }

    /// Orders a certificate for `host` through HTTP-01. `replaces`: the certificate it renews,
    /// named to a CA that offers ARI.
    pub async fn order(&self, storage: &Storage, challenges: &Challenges, host: &str, replaces: Option<&CertificateDer<'_>>, now: impl Fn() -> i64 + Copy) -> Result<Issued, Failure> {
        let account = self.account(storage, now).await?;
        let identifier = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => Identifier::Ip(ip),
            Err(_) => Identifier::Dns(host.to_string()),
        };
        let identifiers = [identifier];
        let replaces = replaces.and_then(|leaf| CertificateIdentifier::try_from(leaf).ok());
        let order = match replaces {
            Some(id) => match account.new_order(&NewOrder::new(&identifiers).replaces(id)).await {
                Ok(order) => Ok(order),
                // A CA may refuse the replacement (already replaced, unknown): a plain order.
                Err(instant_acme::Error::Api(_)) | Err(instant_acme::Error::Unsupported(_)) => account.new_order(&NewOrder::new(&identifiers)).await,
                Err(e) => Err(e),
            },
            None => account.new_order(&NewOrder::new(&identifiers)).await,
        };
        let mut order = match order {
            Ok(order) => order,
            Err(e) => {
                if matches!(&e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(ACCOUNT_GONE)) {
                    warn!("ACME account {} is unknown to {}; a new one will be made", account.id(), self.directory);
                    self.forget_account(storage, now()).await;
                }
                return Err(Failure::ca(format!("new order: {}", chain(&e))));
            }
        };
        let ca = |what: &str, e: instant_acme::Error| Failure::ca(format!("{what}: {}", chain(&e)));

        let mut answers = Answers { challenges, tokens: Vec::new() };
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization.map_err(|e| ca("authorization", e))?;
            match authorization.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(Failure::ca(format!("the CA holds the authorization for {host} as {other:?}"))),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::Http01)
                .ok_or_else(|| Failure::ca(format!("the CA offers no http-01 challenge for {host}")))?;
            let token = challenge.token.clone();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(Failure::ca(format!("the CA sent a challenge token hawser cannot serve ({:?})", token.escape_debug().to_string())));
            }
            answers.add(&token, challenge.key_authorization().as_str());
            challenge.set_ready().await.map_err(|e| ca("challenge", e))?;
        }
        let retry = RetryPolicy::new().timeout(POLL_TIMEOUT);
        match order.poll_ready(&retry).await.map_err(|e| ca("waiting for validation", e))? {
            OrderStatus::Ready => {}
            status => return Err(Failure::ca(why_invalid(&mut order, host, status).await)),
        }
        let key_pem = order.finalize().await.map_err(|e| ca("finalize", e))?;
        let chain_pem = order.poll_certificate(&retry).await.map_err(|e| ca("certificate", e))?;
        drop(answers);
        let cert = pem::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| Failure::ca(format!("the CA sent an unusable certificate: {e:?}")))?;
        if !cert.names.iter().any(|n| n == host) {
            return Err(Failure::ca(format!("the CA sent a certificate for {} instead of {host}", cert.names.join(", "))));
        }
        if cert.not_after <= now() {
            return Err(Failure::ca(format!("the CA sent a certificate that expired at {}", crate::tls::files::unix_to_text(cert.not_after))));
        }
        Ok(Issued { cert, key_pem })
    }
}

/// Why an order did not become ready: the CA's problem with the challenge, when it says one.
async fn why_invalid(order: &mut instant_acme::Order, host: &str, status: OrderStatus) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        if let Ok(state) = authorization.refresh().await {
            reasons.extend(state.challenges.iter().filter_map(|c| c.error.as_ref()).map(|p| p.to_string()));
        }
    }
    if reasons.is_empty() {
        format!("the order for {host} is {status:?} (the CA gave no reason)")
    } else {
        format!("the CA could not validate {host}: {}", reasons.join("; "))
    }
}

/// The challenge answers an order added; removed when it is dropped.
struct Answers<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
}

impl Answers<'_> {
    fn add(&mut self, token: &str, key_authorization: &str) {
        self.challenges.insert(token, key_authorization);
        self.tokens.push(token.to_string());
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AcmeConfig;
    use crate::tls::acme::TestDir;
    use std::io::{Read, Write};

    /// A "CA" that answers every request with `answer`, on as many connections as it gets.
    fn fake_ca(answer: &'static [u8]) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer);
            }
        });
        format!("http://127.0.0.1:{port}/dir")
    }

    async fn order_from(directory: &str, dir: &TestDir) -> Failure {
        let config = AcmeConfig { directory: directory.to_string(), email: Some("ops@a.test".into()), storage: dir.0.clone(), ca_root: None };
        let storage = Storage::open(&dir.0.join("storage"), directory).unwrap();
        let ca = Ca::new(CaClient::new(&config).unwrap(), directory, config.email.as_deref());
        let challenges = Challenges::default();
        let result = ca.order(&storage, &challenges, "a.test", None, || 0).await;
        assert!(challenges.is_empty());
        result.err().expect("no certificate from a broken CA")
    }

    #[tokio::test]
    async fn a_ca_answering_garbage_gives_a_clear_error() {
        let dir = TestDir::new("order-garbage");
        let garbage = fake_ca(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{garbage!");
        let failure = order_from(&garbage, &dir).await;
        assert!(failure.asked_ca);
        assert!(failure.why.starts_with("cannot create an ACME account at http://127.0.0.1:"), "{}", failure.why);
        assert!(failure.why.contains("JSON"), "{}", failure.why);

        // A directory that names no usable URLs, and an error page that is not a problem document.
        let odd = fake_ca(b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]");
        let failure = order_from(&odd, &dir).await;
        assert!(failure.why.contains("JSON"), "{}", failure.why);
    }

    #[test]
    fn answers_are_removed_however_the_order_ends() {
        let challenges = Challenges::default();
        {
            let mut a = Answers { challenges: &challenges, tokens: Vec::new() };
            a.add("tok-1", "tok-1.thumb");
            a.add("tok_2", "tok_2.thumb");
            assert_eq!(challenges.answer_local("/.well-known/acme-challenge/tok-1").as_deref(), Some("tok-1.thumb"));
        }
        assert!(challenges.is_empty());
        // A task aborted mid-order drops its future, and with it the answers.
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async {
            let c = std::sync::Arc::new(Challenges::default());
            let c2 = std::sync::Arc::clone(&c);
            let task = tokio::spawn(async move {
                let mut a = Answers { challenges: &c2, tokens: Vec::new() };
                a.add("t", "t.k");
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(a);
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(!c.is_empty());
            task.abort();
            let _ = task.await;
            assert!(c.is_empty());
        });
    }
}
