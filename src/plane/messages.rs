//! The messages between the control wing and the cores.
//!
//! The control plane (backend state, health, admin, reloads, the cluster)
//! and the cores (listeners, sessions, the shard table) meet only here:
//! the control plane sends [`CoreMsg`] to each core's mailbox, a core
//! reports to the control plane with [`ControlMsg`], and [`Shared`] is the
//! read-only configuration snapshot a reload hands to every core.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Listen, Protocol};
use crate::plane::handover;
use crate::plane::stats::CoreStats;
use crate::route::backends::{AdminState, BackendId, BackendSet};
use crate::route::router::{HandedOverAssignment, HandedOverRelease, Reassign, RouterMsg};
use crate::route::shard::Assignment;
use crate::route::user_key::UserKeyFormat;

/// How long a move, kick or backend down waits for the backend
/// connections of the sessions it ends to close. Each closes within
/// `relay::BACKEND_CLOSE_TIMEOUT` (a reset after that), so this is only
/// reached when a core is stuck; a move then keeps the old assignment
/// rather than risk two backends.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(5);

/// Why a session was ended from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// An administrator kicked or moved the user.
    Admin,
    /// The session's backend went down (health or admin).
    BackendDown,
    /// The director is shutting down.
    Shutdown,
    /// The director is fenced: cut off from etcd, its lease may expire.
    Fenced,
    /// The user is moving to another backend (admin move, flush): an IMAP
    /// session in a safe state may follow it live (issue 12) instead of
    /// ending; any other session ends as for [`KickReason::Admin`].
    Move,
}

/// What every core reads and nobody changes after start.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// `server.user_key`, parsed.
    pub user_key: UserKeyFormat,
    /// The TLS server configuration, shared by all cores (one ticket key).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The address- and backend-based limits, counted across all cores.
    /// A reload keeps the same counters unless `[limits]` or the number of
    /// backends changed; a connection keeps the ones it was counted in.
    pub limits: Arc<crate::limits::Limits>,
    /// Cluster mode: the fence a login checks and the cluster's view;
    /// `None` for a director on its own. Kept by a reload.
    pub cluster: Option<Arc<crate::cluster_link::ClusterLink>>,
}

impl std::fmt::Debug for Shared {
    /// The configuration; the parsed template and TLS setup are derived
    /// from it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Messages a core receives.
#[derive(Debug)]
pub enum CoreMsg {
    /// Routing traffic between cores.
    Route(RouterMsg),
    /// A new backend snapshot: apply it, and end the sessions on backends
    /// that can no longer keep users.
    Backends(Arc<BackendSet>),
    /// End every session of a user on this core; answer how many once they
    /// have all closed.
    KickUser {
        /// The user key.
        key: Box<str>,
        /// Why.
        reason: KickReason,
        /// Gets the number of sessions ended.
        done: flume::Sender<usize>,
    },
    /// Hold new logins of a user this core owns (a move begins).
    Hold {
        /// The user key.
        key: Box<str>,
        /// Answered once the hold is in place.
        done: flume::Sender<()>,
    },
    /// A kick of a user begun with [`CoreMsg::KickUser`] is over: its new
    /// sessions are left alone again.
    EndKick {
        /// The user key.
        key: Box<str>,
    },
    /// Answer once a user this core owns has no session left (its backend
    /// connections are all closed), or `limit` passed: true if none is left.
    WaitIdle {
        /// The user key.
        key: Box<str>,
        /// How long to wait at most.
        limit: Duration,
        /// Gets whether the user has no session left.
        done: flume::Sender<bool>,
    },
    /// Answer once no session on this core has an open connection to
    /// `backend`, or `limit` passed: true if none has.
    WaitBackendClosed {
        /// The backend.
        backend: BackendId,
        /// How long to wait at most.
        limit: Duration,
        /// Gets whether all are closed.
        done: flume::Sender<bool>,
    },
    /// End a hold: change the user's assignment and let the held logins
    /// through.
    Unhold {
        /// The user key.
        key: Box<str>,
        /// What becomes of the assignment.
        assign: Reassign,
        /// Answered once done.
        done: flume::Sender<()>,
    },
    /// The assignment of a user this core owns.
    Lookup {
        /// The user key.
        key: Box<str>,
        /// Gets the assignment, if any.
        reply: flume::Sender<Option<Assignment>>,
    },
    /// The users of this core's shard assigned to a backend.
    UsersOn {
        /// The backend.
        backend: BackendId,
        /// Gets the keys.
        reply: flume::Sender<Vec<Box<str>>>,
    },
    /// A reloaded configuration: new connections use it.
    Reload(Arc<Shared>),
    /// Listener changes of a reload.
    Listeners {
        /// New listening sockets of this core (one per new `[[listen]]`).
        add: Vec<(Listen, std::net::TcpListener)>,
        /// New settings for listeners that stay (matched by address).
        update: Vec<Listen>,
        /// Addresses to stop accepting on and close.
        remove: Vec<SocketAddr>,
    },
    /// Answered once every message sent before it is handled (a reload
    /// waits for this before it reports the new settings in force).
    Sync {
        /// Answered.
        done: flume::Sender<()>,
    },
    // -- cluster mode (src/cluster/fencing.rs) --
    /// End a hold of a user moved across the cluster: `to` is the
    /// backend etcd now names (`None`: the assignment was dropped). A user
    /// already on `to` keeps its assignment as it is.
    SettleMove {
        /// The user key.
        key: Box<str>,
        /// The backend's name, or `None`.
        to: Option<Box<str>>,
        /// Answered once done.
        done: flume::Sender<()>,
    },
    /// End every session on this core (the director is fenced: its lease
    /// may expire); answer how many once their backend connections are
    /// closed.
    KickAll {
        /// Why.
        reason: KickReason,
        /// Gets the number of sessions ended.
        done: flume::Sender<usize>,
    },
    // -- end cluster mode --
    /// A snapshot of this core's counters.
    Stats {
        /// Gets the snapshot.
        reply: flume::Sender<CoreStats>,
    },
    /// Stop accepting, drain, and stop.
    Shutdown,
    /// Binary upgrade: messages of the hand-over (see [`UpgradeMsg`]).
    Upgrade(UpgradeMsg),
}

/// A core's part in a binary upgrade.
#[derive(Debug)]
pub enum UpgradeMsg {
    /// Old process: stop accepting (pending accepts cancelled, what raced
    /// in served) and answer with a copy of every listening socket, which
    /// stays open for the new process.
    HandOverListeners {
        /// Gets the sockets with their settings.
        done: flume::Sender<Vec<(Listen, std::os::fd::OwnedFd)>>,
    },
    /// Old process: hand the routing state over (see
    /// [`crate::route::router::Router::hand_over`]).
    HandOverRoutes {
        /// Gets each counted session that ends from now on.
        releases: flume::Sender<HandedOverRelease>,
        /// Gets this core's assignments.
        done: flume::Sender<Vec<HandedOverAssignment>>,
    },
    /// Old process: the new one failed; route new sessions again (the
    /// listeners come back with [`CoreMsg::Listeners`]).
    Resume,
    /// New process: take over assignments this core owns.
    TakeOver {
        /// User key, backend, since, sessions open in the old process.
        assignments: Vec<(Box<str>, BackendId, std::time::SystemTime, u32)>,
        /// Answered once done.
        done: flume::Sender<()>,
    },
}

impl From<RouterMsg> for CoreMsg {
    fn from(m: RouterMsg) -> Self {
        CoreMsg::Route(m)
    }
}

/// Messages to the control plane.
#[derive(Debug)]
pub enum ControlMsg {
    /// A client login could not connect to a backend.
    Unreachable {
        /// The backend.
        backend: BackendId,
        /// The protocol whose port failed.
        protocol: Protocol,
        /// What went wrong.
        error: String,
    },
    /// Re-read the configuration file (SIGHUP); the outcome is logged.
    Reload,
    // -- cluster mode (src/cluster/shared.rs, src/cluster/actions.rs) --
    /// The cluster's admin state of a backend (from etcd): apply it as a
    /// local `up`/`down`/`drain`; `done` gets whether every session there
    /// closed in time (always true but for `down`).
    ClusterAdmin {
        /// The backend's name (a name this director does not know is
        /// answered true: nothing of it runs here).
        backend: String,
        /// The state.
        state: AdminState,
        /// Gets the outcome, if anyone waits.
        done: Option<flume::Sender<bool>>,
    },
    /// A kick issued on some director of the cluster: end the user's
    /// sessions here (backend side first); `done` gets how many.
    ClusterKick {
        /// The user key.
        key: String,
        /// Gets the number of sessions closed.
        done: flume::Sender<usize>,
    },
    // -- end cluster mode --
    /// Binary upgrade: where `POST /upgrade` asks the main thread.
    MainThread(flume::Sender<handover::MainEvent>),
    /// Binary upgrade, in the new process: forward admin actions to the
    /// predecessor (`None` once it has exited).
    Predecessor(Option<handover::PredecessorLink>),
    /// Binary upgrade, in the old process: an admin action forwarded by
    /// the new one.
    Peer {
        /// What to do.
        request: handover::PeerRequest,
        /// Gets the answer once done.
        reply: flume::Sender<handover::PeerAnswer>,
    },
    /// Binary upgrade, in the old process: stop accepting admin requests
    /// (the new process serves the admin API now); answered once stopped.
    StopAdmin(flume::Sender<()>),
    /// Stop.
    Shutdown,
}
