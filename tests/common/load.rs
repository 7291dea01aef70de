//! GET load through hawser from a few client threads, counting every answer that is not a
//! 200 and every error: what a deploy, a kill or a lost engine must not disturb.

use std::time::Duration;

/// GET load through hawser from a few threads, each on its own keep-alive connection, until
/// stopped: what a rolling update must not disturb.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Outcome>>,
}

/// What a [`Load`] saw: answers with status 200, and the rest (non-200 answers and errors),
/// with the first few described.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    pub first_failures: Vec<String>,
}

impl Load {
    pub fn start(addr: std::net::SocketAddr, host: &str, threads: usize) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (stop, host) = (std::sync::Arc::clone(&stop), host.to_string());
                std::thread::spawn(move || {
                    let mut out = Outcome::default();
                    let mut conn: Option<super::HttpConn> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let c = match conn.take() {
                            Some(c) => c,
                            None => match super::HttpConn::connect_timeout(addr, Duration::from_secs(2)) {
                                Ok(c) => c,
                                Err(e) => {
                                    out.fail(format!("connect: {e}"));
                                    continue;
                                }
                            },
                        };
                        let mut c = c;
                        match c.request("GET", &host, "/", &[], b"") {
                            Ok(r) if r.status == 200 => {
                                out.ok += 1;
                                if !r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                                    conn = Some(c);
                                }
                            }
                            Ok(r) => out.fail(format!("status {} from {:?}: {:?}", r.status, r.backend(), r.body)),
                            Err(e) => out.fail(format!("error: {e}")),
                        }
                    }
                    out
                })
            })
            .collect();
        Load { stop, threads }
    }

    pub fn stop(self) -> Outcome {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all = Outcome::default();
        for t in self.threads {
            let o = t.join().expect("load thread");
            all.ok += o.ok;
            all.failed += o.failed;
            all.first_failures.extend(o.first_failures);
        }
        all.first_failures.truncate(10);
        all
    }
}

impl Outcome {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.first_failures.len() < 10 {
            self.first_failures.push(what);
        }
    }
}
