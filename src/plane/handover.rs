//! The control plane's side of a binary upgrade: what the admin API and
//! the control thread share with the upgrade machinery (`crate::upgrade`)
//! without importing it.
//!
//! - [`MainEvent`]: what the process's main thread waits for — a signal,
//!   or `POST /upgrade` asking it to hand over.
//! - [`PeerRequest`] / [`PeerAnswer`]: an admin action the new process
//!   forwards to its predecessor (kick a user, set a backend's admin
//!   state), so that it reaches the sessions still open there.
//! - [`PredecessorLink`]: how the new process's control plane forwards
//!   them, each answer awaited with a bound.
//! - The upgrade counters for `/metrics`, kept process-wide because the
//!   upgrade runs on the main thread, not on the control thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::route::backends::AdminState;
use crate::signals::Signal;

/// What the main thread of a serving director waits for.
#[derive(Debug)]
pub enum MainEvent {
    /// A signal arrived.
    Signal(Signal),
    /// `POST /upgrade` (or `mailpin ctl upgrade`): hand over to a new
    /// process and answer how it went.
    Upgrade(flume::Sender<Result<UpgradeDone, UpgradeRefused>>),
}

/// A completed hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeDone {
    /// This (the old) process.
    pub old_pid: u32,
    /// The new process, now serving.
    pub new_pid: u32,
}

/// Why no hand-over happened; this process goes on serving.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRefused {
    /// The HTTP status for the admin API: 409 when no upgrade is possible
    /// now (dev mode, one under way, a predecessor still draining), 500
    /// when the new process failed before it was ready.
    pub status: u16,
    /// What happened, for the log, the API and ctl.
    pub message: String,
}

/// An admin action forwarded to the predecessor process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Close every session of this user key (backend side first).
    Kick(String),
    /// Set the admin state of the backend with this name.
    SetAdmin(String, String),
}

impl PeerRequest {
    /// A [`PeerRequest::SetAdmin`] for `backend` and `state`.
    pub fn set_admin(backend: &str, state: AdminState) -> PeerRequest {
        PeerRequest::SetAdmin(backend.to_string(), state.as_str().to_string())
    }
}

/// The predecessor's answer to a [`PeerRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAnswer {
    /// Sessions closed by a kick (their backend connections are closed).
    Kicked(usize),
    /// The admin state is set; false when sessions did not close in time.
    AdminSet(bool),
}

/// A request and where its answer goes.
pub type PeerCall = (PeerRequest, flume::Sender<PeerAnswer>);

/// How the new process's control plane reaches its predecessor.
#[derive(Debug, Clone)]
pub struct PredecessorLink {
    calls: flume::Sender<PeerCall>,
}

impl PredecessorLink {
    /// A link whose calls are carried by whoever receives from `calls`.
    pub fn new(calls: flume::Sender<PeerCall>) -> PredecessorLink {
        PredecessorLink { calls }
    }

    /// Forwards `request` and awaits the answer, at most `limit`; `None`
    /// if the predecessor is gone (its sessions are then all closed) or
    /// did not answer in time.
    pub async fn ask(&self, request: PeerRequest, limit: Duration) -> Option<PeerAnswer> {
        let (tx, rx) = flume::bounded(1);
        self.calls.send((request, tx)).ok()?;
        monoio::time::timeout(limit, rx.recv_async())
            .await
            .ok()?
            .ok()
    }
}

static UPGRADES_OK: AtomicU64 = AtomicU64::new(0);
static UPGRADES_FAILED: AtomicU64 = AtomicU64::new(0);
static PREDECESSOR_DRAINING: AtomicBool = AtomicBool::new(false);

/// Counts a hand-over that completed (`ok`) or failed.
pub fn count_upgrade(ok: bool) {
    let counter = if ok { &UPGRADES_OK } else { &UPGRADES_FAILED };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Upgrades this process handed over (ok) and attempted that failed.
pub fn upgrade_counts() -> (u64, u64) {
    (
        UPGRADES_OK.load(Ordering::Relaxed),
        UPGRADES_FAILED.load(Ordering::Relaxed),
    )
}

/// Notes whether this process's predecessor still drains (its sessions
/// are still followed), which refuses a further upgrade meanwhile.
pub fn set_predecessor_draining(draining: bool) {
    PREDECESSOR_DRAINING.store(draining, Ordering::SeqCst);
}

/// Whether this process's predecessor still drains.
pub fn predecessor_draining() -> bool {
    PREDECESSOR_DRAINING.load(Ordering::SeqCst)
}

/// The upgrade's hooks in the control plane: where `POST /upgrade` goes,
/// and, in a new process, the link to the predecessor.
#[derive(Debug, Default)]
pub struct UpgradeHooks {
    /// The main thread, which performs an upgrade.
    pub main: std::cell::RefCell<Option<flume::Sender<MainEvent>>>,
    /// The predecessor still draining, if any.
    pub predecessor: std::cell::RefCell<Option<PredecessorLink>>,
}

impl UpgradeHooks {
    /// The link to the predecessor, if one still drains.
    pub fn predecessor(&self) -> Option<PredecessorLink> {
        self.predecessor.borrow().clone()
    }
}
