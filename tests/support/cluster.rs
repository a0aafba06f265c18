//! Cluster-mode directors for the tests: a config in front of real
//! Dovecot backends on a real etcd, and the admin API calls the cluster
//! tests make (JSON, one metric, polling until a condition holds).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::dovecot::DovecotInstance;
use super::etcd::EtcdCluster;
use super::mailpin::{http, Mailpin};

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

/// The value of an unlabelled metric (panics when it is missing).
pub fn metric(m: &Mailpin, name: &str) -> u64 {
    let (_, body) = http(
        m.admin,
        &format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            m.admin
        ),
    );
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Polls `check` every 50 ms until it holds or `limit` passes (then
/// prints the directors' logs and panics); returns how long it took.
pub fn wait_until(
    logs: &[&Mailpin],
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !check() {
        if start.elapsed() >= limit {
            for m in logs {
                eprintln!("--- director log:\n{}", m.log());
            }
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
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
