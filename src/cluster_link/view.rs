//! What the admin API shows of the cluster: `GET /cluster`, `/status`'s
//! `"cluster"`, `mailpin ctl cluster` and the cluster metrics.
//!
//! The cluster thread builds a new [`ClusterView`] whenever something
//! changes (a director joins or leaves, the leader changes, etcd is
//! reached or lost) and publishes it whole; readers clone an `Arc`.

use serde::Serialize;

/// The cluster as this director sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// This director's name.
    pub name: String,
    /// The leader director's name, `None` while there is none (or it is
    /// not known: etcd not reached).
    pub leader: Option<String>,
    /// The registered directors (those holding a live lease), by name.
    pub directors: Vec<DirectorEntry>,
    /// The state of this director's connection to etcd.
    pub etcd: EtcdView,
    // -- shared admin states and health --
    /// Every backend known to the cluster (an admin state in etcd, or a
    /// health report of a live director), by name.
    pub backends: Vec<BackendVerdict>,
    /// Backends this director's own checks see down while the cluster's
    /// verdict says up (this director is degraded on them).
    pub degraded: Vec<String>,
    // -- end --
}

/// One backend as the cluster sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendVerdict {
    /// Its name.
    pub name: String,
    /// The admin state stored in etcd (`up`, `down`, `drain`), `None`
    /// when no administrator has set one.
    pub admin: Option<String>,
    /// The cluster's verdict (`up`, `down`), `None` without a majority.
    pub verdict: Option<String>,
    /// Live directors that report it up.
    pub up: usize,
    /// Live directors that report it down.
    pub down: usize,
    /// This director's own view (`up`, `down`), `None` if it does not
    /// check this backend.
    pub own: Option<String>,
}

/// One registered director.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectorEntry {
    /// Its name.
    pub name: String,
    /// Its admin API address, as it registered it.
    pub admin: String,
    /// When it registered (RFC 3339, its own clock).
    pub since: String,
    /// The mailpin version it runs.
    pub version: String,
    /// Whether it is the leader.
    pub leader: bool,
}

/// This director's connection to etcd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdView {
    /// Whether this director holds a live lease and its last keepalive
    /// was answered.
    pub connected: bool,
    /// The endpoint in use.
    pub endpoint: String,
    /// Every configured endpoint.
    pub endpoints: Vec<String>,
    /// The lease this director holds (hexadecimal, as `etcdctl` shows
    /// it), `None` without one.
    pub lease: Option<String>,
    /// The lease TTL in seconds, as granted.
    pub lease_ttl: u64,
    /// Whether the director is fenced (serves nothing).
    pub fenced: bool,
    /// The etcd revision the director's view is at.
    pub revision: i64,
    /// The last error talking to etcd, if the last attempt failed.
    pub last_error: Option<String>,
}

impl ClusterView {
    /// The view before etcd has answered: no leader, no directors, fenced.
    pub fn starting(name: &str) -> ClusterView {
        ClusterView {
            name: name.to_owned(),
            leader: None,
            directors: Vec::new(),
            etcd: EtcdView {
                connected: false,
                endpoint: String::new(),
                endpoints: Vec::new(),
                lease: None,
                lease_ttl: 0,
                fenced: true,
                revision: 0,
                last_error: None,
            },
            backends: Vec::new(),
            degraded: Vec::new(),
        }
    }

    /// Whether this director is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader.as_deref() == Some(self.name.as_str())
    }
}
