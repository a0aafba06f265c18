//! Cluster-mode directors for the tests: a config in front of real
//! Dovecot backends on a real etcd, the admin API calls the cluster tests
//! make (JSON, polling until a condition holds), IMAP logins
//! through a director, and a [`Sampler`] of `doveadm who` on every backend
//! that counts every user seen on two backends at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::dovecot::{DovecotCluster, DovecotInstance};
use super::etcd::EtcdCluster;
pub use super::mailpin::wait_until;
use super::mailpin::{http, Mailpin};
use super::wire::LineClient;

/// Where a backend listens.
pub struct BackendPorts {
    /// Its address.
    pub host: String,
    /// IMAP port.
    pub imap: u16,
    /// POP3 port.
    pub pop3: u16,
    /// LMTP port.
    pub lmtp: u16,
    /// ManageSieve port.
    pub sieve: u16,
}

impl BackendPorts {
    /// The ports of a running Dovecot instance.
    pub fn of(instance: &DovecotInstance) -> BackendPorts {
        BackendPorts {
            host: instance.addr().to_string(),
            imap: instance.imap_port(),
            pop3: instance.pop3_port(),
            lmtp: instance.lmtp_port(),
            sieve: instance.sieve_port(),
        }
    }

    /// A backend nobody listens on (for tests that route no one).
    pub fn nobody() -> BackendPorts {
        BackendPorts {
            host: "127.0.0.1".into(),
            imap: 1,
            pop3: 1,
            lmtp: 1,
            sieve: 1,
        }
    }
}

/// The listeners of [`director_config`]: IMAP, POP3, LMTP, ManageSieve.
pub const LISTENERS: usize = 4;

/// A director config in cluster mode (prefix `/mailpin-test`) with IMAP,
/// POP3, LMTP and ManageSieve listeners (in that order) in front of
/// `backends`, named `b0`, `b1`, …; `extra` is appended (more sections).
pub fn director_config(
    etcd: &EtcdCluster,
    name: &str,
    ttl: &str,
    backends: &[BackendPorts],
    extra: &str,
) -> String {
    let mut c = format!(
        "[server]\ncores = 1\n\n[cluster]\netcd = {}\nprefix = \"/mailpin-test\"\nname = \"{name}\"\nlease_ttl = \"{ttl}\"\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n\
         [[listen]]\nprotocol = \"pop3\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n\
         [[listen]]\nprotocol = \"lmtp\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\n\n\
         [[listen]]\nprotocol = \"sieve\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n",
        etcd.toml_endpoints()
    );
    for (i, b) in backends.iter().enumerate() {
        c.push_str(&format!(
            "[[backend]]\nname = \"b{i}\"\nhost = \"{}\"\nimap = {}\npop3 = {}\nlmtp = {}\nsieve = {}\n\n",
            b.host, b.imap, b.pop3, b.lmtp, b.sieve
        ));
    }
    c.push_str(extra);
    c
}

/// `GET path` on the director's admin API: status and JSON body (`Null`
/// when the body is not JSON).
pub fn get_json(m: &Mailpin, path: &str) -> (u16, Value) {
    let (status, body) = http(
        m.admin,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            m.admin
        ),
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `POST path` on the director's admin API: status and JSON body.
pub fn post_json(m: &Mailpin, path: &str) -> (u16, Value) {
    let (status, body) = http(
        m.admin,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            m.admin
        ),
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The directors a `/cluster` view lists, by name.
pub fn director_names(view: &Value) -> Vec<String> {
    view["directors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `m` holds a lease and serves.
pub fn wait_serving(m: &Mailpin) {
    wait_until(&[m], Duration::from_secs(20), "serving", || {
        get_json(m, "/cluster").1["etcd"]["fenced"] == false
    });
}

/// Samples `doveadm who` on every backend until stopped; counts the
/// samples and every user seen on two backends in one sample.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicUsize>,
    splits: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    pub fn start(dovecot: &Arc<Mutex<DovecotCluster>>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicUsize::new(0));
        let splits = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples, splits) = (stop.clone(), samples.clone(), splits.clone());
            let dovecot = dovecot.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(300);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let mut on: BTreeMap<String, Vec<usize>> = BTreeMap::new();
                    {
                        let cluster = dovecot.lock().unwrap();
                        for (i, inst) in cluster.instances().iter().enumerate() {
                            // A backend that is down answers nothing.
                            for w in inst.try_who().unwrap_or_default() {
                                on.entry(w.user).or_default().push(i);
                            }
                        }
                    }
                    for (user, backends) in on {
                        if backends.len() > 1 {
                            splits
                                .lock()
                                .unwrap()
                                .push(format!("{user} on backends {backends:?}"));
                        }
                    }
                    samples.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Sampler {
            stop,
            samples,
            splits,
            thread: Some(thread),
        }
    }

    /// Waits for `n` more samples (bounded).
    pub fn wait_samples(&self, n: usize) {
        let target = self.samples.load(Ordering::Relaxed) + n;
        let t = Instant::now();
        while self.samples.load(Ordering::Relaxed) < target {
            assert!(t.elapsed() < Duration::from_secs(30), "the sampler stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops sampling; the number of samples and the splits seen.
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let splits = self.splits.lock().unwrap().clone();
        (self.samples.load(Ordering::Relaxed), splits)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An IMAP session logged in through `m` (retrying a temporary failure
/// for up to 10 s: a director refuses a user while another one still
/// serves it on a backend that died); `None` if it never got in.
pub fn login(m: &Mailpin, user: &str) -> Option<LineClient> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let Ok(mut c) = LineClient::connect(m.listen[0]) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if c.read_line().is_err() {
            continue;
        }
        match c.imap(&format!("LOGIN {user} pass")) {
            Ok(r) if r.is_ok() => return Some(c),
            Ok(r) => {
                assert!(
                    r.status.contains("[UNAVAILABLE]"),
                    "only a temporary failure is expected: {}",
                    r.status
                );
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The backend `GET /users/U` names on `m`, if any.
pub fn assigned(m: &Mailpin, user: &str) -> Option<String> {
    let (status, v) = get_json(m, &format!("/users/{user}"));
    (status == 200).then(|| v["backend"].as_str().unwrap_or_default().to_owned())
}

/// Which backends (indexes) `doveadm who` shows `user` on.
pub fn backends_of(dovecot: &Mutex<DovecotCluster>, user: &str) -> Vec<usize> {
    let cluster = dovecot.lock().unwrap();
    cluster
        .instances()
        .iter()
        .enumerate()
        .filter(|(_, inst)| {
            inst.try_who()
                .unwrap_or_default()
                .iter()
                .any(|w| w.user == user)
        })
        .map(|(i, _)| i)
        .collect()
}

/// Health checks every 200 ms, a backend down after 2 failures.
pub const QUICK_HEALTH: &str = "[health]\ninterval = \"200ms\"\nfall = 2\nrise = 2\n";

/// Three real Dovecot backends on one store, a 3-member etcd, and
/// directors in cluster mode in front of them (`d1`, `d2`, ...; 3 s lease).
pub struct World {
    /// The backends (shared with a [`Sampler`]).
    pub dovecot: Arc<Mutex<DovecotCluster>>,
    /// The etcd members.
    pub etcd: super::etcd::EtcdCluster,
    /// The directors, `d1` first.
    pub directors: Vec<super::mailpin::Mailpin>,
}

impl World {
    /// Starts it all with `users` Dovecot users and waits until every
    /// director serves; `extra` is appended to each director's config and
    /// `tweak(i, config)` may change director `i`'s (1-based). `None` when
    /// etcd or Dovecot is missing outside CI.
    pub fn start(
        directors: usize,
        users: usize,
        extra: &str,
        tweak: impl Fn(usize, String) -> String,
    ) -> Option<World> {
        let options = super::DovecotOptions {
            users,
            ..super::DovecotOptions::default()
        };
        World::start_with(directors, options, extra, tweak)
    }

    /// [`World::start`] with the backends' `options` (a master user, say).
    pub fn start_with(
        directors: usize,
        options: super::DovecotOptions,
        extra: &str,
        tweak: impl Fn(usize, String) -> String,
    ) -> Option<World> {
        if !super::etcd::require_etcd() || !super::require_dovecot() {
            return None;
        }
        let dovecot = DovecotCluster::start(3, options);
        let backends: Vec<BackendPorts> =
            dovecot.instances().iter().map(BackendPorts::of).collect();
        let etcd = super::etcd::EtcdCluster::start(3);
        let directors: Vec<super::mailpin::Mailpin> = (1..=directors)
            .map(|i| {
                let config = director_config(&etcd, &format!("d{i}"), "3s", &backends, extra);
                super::mailpin::Mailpin::start(&tweak(i, config), LISTENERS)
            })
            .collect();
        for d in &directors {
            wait_serving(d);
        }
        Some(World {
            dovecot: Arc::new(Mutex::new(dovecot)),
            etcd,
            directors,
        })
    }
}
