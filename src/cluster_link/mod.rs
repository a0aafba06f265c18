//! What the cluster layer shares with the rest of the director.
//!
//! In cluster mode (`[cluster]` in the config) the etcd client runs on a
//! thread of its own (`crate::cluster`). It reaches the data path and the
//! admin API only through the [`ClusterLink`] here: the [`Fence`] every
//! core reads before it routes a login (one atomic load, no lock), the
//! [`ClusterView`] the admin API shows, and a few counters for
//! `/metrics`. This module sits below both sides so that neither imports
//! the other.

pub mod fence;
pub mod port;
pub mod view;
// -- cluster-wide admin actions and shared health --
pub mod admin_port;
pub mod health_port;
// -- end --

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use fence::{Fence, FenceTimes};
pub use port::{
    ClaimAnswer, ClaimRequest, ClusterPort, ControlRequest, PortReceivers, PortRequest,
};
pub use view::{BackendVerdict, ClusterView, DirectorEntry, EtcdView};
// -- cluster-wide admin actions and shared health --
pub use admin_port::{AdminPort, AdminRequest, ClusterOutcome, ClusterReply};
pub use health_port::HealthPort;
// -- end --

/// The cluster's link to the director: one per director process.
#[derive(Debug)]
pub struct ClusterLink {
    /// This director's name in the cluster (`cluster.name`).
    pub name: String,
    /// The fence clock: past its deadline this director serves nothing.
    pub fence: Fence,
    view: Mutex<Arc<ClusterView>>,
    /// Counters for `/metrics`.
    pub counters: ClusterCounters,
    /// Where the cores send claims and releases of users.
    pub port: ClusterPort,
    /// The receiving end of `port`, taken once by the cluster thread.
    port_requests: Mutex<Option<PortReceivers>>,
    // -- cluster-wide admin actions and shared health --
    /// Kicks and admin states the admin API asks of every director.
    pub admin: AdminPort,
    /// This director's own health verdicts, for the cluster thread.
    pub health: HealthPort,
    // -- end --
}

/// Counters of cluster events since start.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Leases of this director found expired by etcd (re-registered).
    pub lease_expiries: AtomicU64,
    /// Times this director fenced itself (closed its sessions).
    pub fences: AtomicU64,
    /// Sessions closed by fencing.
    pub fenced_sessions: AtomicU64,
    /// Watches re-created because they went silent or broke.
    pub watch_restarts: AtomicU64,
    /// Full resyncs after the watch's revision was compacted away.
    pub resyncs: AtomicU64,
    /// Claims that created a user's assignment.
    pub claims_created: AtomicU64,
    /// Claims that adopted the assignment another director made.
    pub claims_adopted: AtomicU64,
    /// Claims that replaced an assignment to a backend this director
    /// cannot use (no other director served the user).
    pub claims_replaced: AtomicU64,
    /// Claims refused (the login got a temporary failure).
    pub claims_refused: AtomicU64,
    /// Presence records this director released.
    pub releases: AtomicU64,
    /// Moves across the cluster this director made that committed.
    pub moves_committed: AtomicU64,
    /// Moves across the cluster this director made that did not.
    pub moves_failed: AtomicU64,
}

impl ClusterCounters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The value of `counter`.
    pub fn read(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl ClusterLink {
    /// A link for director `name`, fenced until a first lease is held.
    pub fn new(name: impl Into<String>) -> ClusterLink {
        let name = name.into();
        let (port, requests) = ClusterPort::new();
        ClusterLink {
            view: Mutex::new(Arc::new(ClusterView::starting(&name))),
            name,
            fence: Fence::new(),
            counters: ClusterCounters::default(),
            port,
            port_requests: Mutex::new(Some(requests)),
            admin: AdminPort::default(),
            health: HealthPort::default(),
        }
    }

    /// The requests of the cores, for the cluster thread (`None` once
    /// taken).
    pub fn take_port_requests(&self) -> Option<PortReceivers> {
        match self.port_requests.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// The latest published view (a cheap clone of an `Arc`).
    pub fn view(&self) -> Arc<ClusterView> {
        match self.view.lock() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Publishes a new view (only the cluster thread calls this).
    pub fn publish(&self, view: ClusterView) {
        let view = Arc::new(view);
        match self.view.lock() {
            Ok(mut v) => *v = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }
}
