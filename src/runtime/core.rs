//! One core: its runtime, listeners, mailbox loop and housekeeping.
//!
//! A core thread is pinned to a CPU, runs its own monoio runtime on
//! io_uring, accepts on its own SO_REUSEPORT copy of every listener, owns
//! its shard of the user table (through its [`Router`]) and hears from the
//! rest of the process only through its mailbox.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::{CancelHandle, Canceller};
use monoio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::{Listen, Protocol};
use crate::mailbox::{Mailbox, MailboxSender};
use crate::plane::stats::{CoreStats, Counters};
use crate::plane::{ControlMsg, CoreMsg, KickReason, Shared, UpgradeMsg};
use crate::route::backends::{BackendId, BackendSet};
use crate::route::router::Router;
use crate::route::shard::SessionLimits;
use crate::runtime::sessions::{Closed, Sessions};

/// What a core does with an accepted connection: start serving it on the
/// core's runtime (the session layer's entry point, given at start so the
/// runtime never imports the sessions it runs).
pub type ServeFn =
    fn(core: Rc<Core>, listen: Rc<Listen>, tcp: monoio::net::TcpStream, peer: SocketAddr);

/// The state of one core, shared by its tasks.
pub struct Core {
    /// Index of this core, 0-based.
    pub id: usize,
    /// The process-wide settings in force (replaced whole by a reload).
    shared: RefCell<Arc<Shared>>,
    /// This core's routing and shard.
    pub router: Router,
    /// Logged-in sessions, for kicks.
    pub sessions: Sessions,
    /// Counters for /metrics.
    pub counters: Counters,
    /// The control plane, for passive health reports.
    control: MailboxSender<ControlMsg>,
    /// Serves each accepted connection.
    serve: ServeFn,
    /// Connections open on this core (pre-login and logged in).
    active: Cell<usize>,
    /// Sessions waiting for the next backend snapshot.
    set_waiters: std::cell::RefCell<Vec<local_sync::oneshot::Sender<()>>>,
    /// The listening sockets this core accepts on.
    acceptors: RefCell<Vec<Acceptor>>,
    /// Tells clients before login that the core stops serving them.
    pub prelogin_drain: crate::runtime::prelogin_drain::PreloginDrain,
    /// Live IMAP moves resuming on their new backend at once: a flush of
    /// hundreds of idle sessions paces itself here instead of making the
    /// new backend fork and log in hundreds of sessions at the same moment.
    pub live_resumes: local_sync::semaphore::Semaphore,
}

/// How many live IMAP moves one core resumes on new backends at once.
pub const LIVE_RESUMES_PER_CORE: usize = 16;

/// One listening socket of a core: its settings (replaceable by a reload)
/// and how to stop its accept loop.
struct Acceptor {
    /// The bound address.
    addr: SocketAddr,
    /// The `[[listen]]` settings new connections get.
    listen: Rc<RefCell<Rc<Listen>>>,
    /// Cancels the pending accept; taken when the loop is stopped.
    canceller: Rc<RefCell<Option<Canceller>>>,
    /// Set when the loop is told to stop.
    stopped: Rc<Cell<bool>>,
    /// Completes when the loop has ended and dropped its socket.
    ended: local_sync::oneshot::Receiver<()>,
    /// The socket's descriptor, open while the loop runs (a binary
    /// upgrade copies it before stopping the loop).
    fd: std::os::fd::RawFd,
}

impl Acceptor {
    /// Stops accepting: the pending accept is cancelled, and a connection
    /// that completed before the cancel is still served (never dropped
    /// unanswered). The loop then closes the socket.
    fn stop(&self) {
        self.stopped.set(true);
        if let Some(c) = self.canceller.borrow_mut().take() {
            let _ = c.cancel();
        }
    }
}

impl Core {
    /// A core's state.
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        router: Router,
        control: MailboxSender<ControlMsg>,
        serve: ServeFn,
    ) -> Core {
        Core {
            serve,
            id,
            shared: RefCell::new(shared),
            router,
            sessions: Sessions::new(),
            counters: Counters::default(),
            control,
            active: Cell::new(0),
            set_waiters: Default::default(),
            acceptors: RefCell::new(Vec::new()),
            prelogin_drain: Default::default(),
            live_resumes: local_sync::semaphore::Semaphore::new(LIVE_RESUMES_PER_CORE),
        }
    }

    /// The settings in force: each connection takes them once when it
    /// starts and keeps them, so a reload changes only what comes after it.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.borrow().clone()
    }

    /// Cluster mode: whether this director is fenced (cut off from etcd
    /// past its deadline), so logins get a temporary failure. One atomic
    /// load; always false for a director on its own.
    pub fn fenced(&self) -> bool {
        self.shared
            .borrow()
            .cluster
            .as_ref()
            .is_some_and(|c| c.fence.is_fenced())
    }

    /// Puts a reloaded configuration in force for new connections.
    pub fn set_shared(&self, shared: Arc<Shared>) {
        self.router.set_settings(
            shared.config.server.user_expire,
            SessionLimits::of(&shared.config.limits),
        );
        *self.shared.borrow_mut() = shared;
    }

    /// Tells the control plane that connecting to `protocol`'s port of
    /// `backend` failed during a client login (a passive health
    /// observation).
    pub fn report_unreachable(&self, backend: BackendId, protocol: Protocol, error: String) {
        let _ = self.control.send(ControlMsg::Unreachable {
            backend,
            protocol,
            error,
        });
    }

    /// Waits until a newer backend snapshot arrives, at most `limit`;
    /// true if one came.
    pub async fn wait_backend_change(&self, limit: Duration) -> bool {
        let (tx, rx) = local_sync::oneshot::channel();
        self.set_waiters.borrow_mut().push(tx);
        matches!(monoio::time::timeout(limit, rx).await, Ok(Ok(())))
    }

    /// Applies a backend snapshot: drops assignments and ends sessions on
    /// backends that can no longer keep users, wakes waiting logins.
    fn apply_backends(&self, set: Arc<BackendSet>) {
        let dropped = self.router.apply_backends(set.clone());
        if !dropped.is_empty() {
            info!(
                core = self.id,
                users = dropped.len(),
                version = set.version,
                "assignments dropped"
            );
        }
        // Live IMAP moves (issue 12): a backend removed by a reload is still
        // up, so with live moves on its sessions are moved (those that can
        // follow their user live do; the others end, as below).
        let live = {
            let config = &self.shared().config;
            config.server.live_move && config.backends.has_master_user()
        };
        let mut kicked = if live {
            self.sessions.kick_where(KickReason::Move, |b| {
                set.get(b).is_none_or(|b| !b.retired_alive())
            })
        } else {
            Vec::new()
        };
        kicked.extend(self.sessions.kick_where(KickReason::BackendDown, |b| {
            set.get(b)
                .is_some_and(|b| b.keeps_users() || (live && b.retired_alive()))
        }));
        if !kicked.is_empty() {
            info!(
                core = self.id,
                sessions = kicked.len(),
                "closing sessions on unavailable backends"
            );
            self.counters.kicked(kicked.len());
        }
        for w in self.set_waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// A snapshot of this core's numbers.
    pub fn stats(&self) -> CoreStats {
        let mut s = self.counters.snapshot();
        s.core = self.id;
        s.connections = self.active.get() as u64;
        s.sessions = self.sessions.per_backend();
        s.users = self.router.users_per_backend();
        s
    }

    /// Sessions open on this core right now.
    pub fn active_sessions(&self) -> usize {
        self.active.get()
    }
}

/// Counts a session as open until dropped.
pub struct SessionGuard {
    core: Rc<Core>,
}

impl SessionGuard {
    /// Counts one more open session on `core`.
    pub fn new(core: Rc<Core>) -> SessionGuard {
        core.active.set(core.active.get() + 1);
        SessionGuard { core }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.core.active.set(self.core.active.get() - 1);
    }
}

/// The main task of a core: serves until told to shut down, then drains.
pub async fn core_main(
    core: Rc<Core>,
    mailbox: Mailbox<CoreMsg>,
    listeners: Vec<(Listen, std::net::TcpListener)>,
) {
    let (stop_tx, stop_rx) = local_sync::oneshot::channel::<()>();
    for (listen, std_listener) in listeners {
        core.add_listener(listen, std_listener);
    }
    monoio::spawn(expire_loop(core.clone()));
    monoio::spawn(mailbox_loop(core.clone(), mailbox, stop_tx));

    let _ = stop_rx.await;
    let acceptors: Vec<Acceptor> = core.acceptors.borrow_mut().drain(..).collect();
    for a in &acceptors {
        a.stop();
    }
    for a in acceptors {
        let _ = monoio::time::timeout(Duration::from_secs(1), a.ended).await;
    }
    // No more accepts: clients before login get their goodbye now.
    core.prelogin_drain.start();
    // The dropped sockets' closes are io_uring operations: let the ring
    // submit them before this runtime can end, or a listener would stay
    // open (queuing connections nobody accepts) until the process exits.
    monoio::time::sleep(Duration::from_millis(5)).await;
    drain(&core).await;
    // After a binary upgrade: every session has ended, and said so.
    core.router.end_hand_over();
}

impl Core {
    /// Starts accepting on `std_listener` with `listen`'s settings.
    fn add_listener(self: &Rc<Self>, listen: Listen, std_listener: std::net::TcpListener) {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(core = self.id, addr = %listen.addr, error = %e, "cannot use listener");
                return;
            }
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let canceller = Canceller::new();
        let handle = canceller.handle();
        let (ended_tx, ended) = local_sync::oneshot::channel();
        let acceptor = Acceptor {
            addr: listen.addr,
            listen: Rc::new(RefCell::new(Rc::new(listen))),
            canceller: Rc::new(RefCell::new(Some(canceller))),
            stopped: Rc::new(Cell::new(false)),
            ended,
            fd,
        };
        monoio::spawn(accept_loop(
            self.clone(),
            acceptor.listen.clone(),
            listener,
            handle,
            acceptor.stopped.clone(),
            ended_tx,
        ));
        self.acceptors.borrow_mut().push(acceptor);
    }

    /// Applies a reload's listener changes.
    fn change_listeners(
        self: &Rc<Self>,
        add: Vec<(Listen, std::net::TcpListener)>,
        update: Vec<Listen>,
        remove: Vec<SocketAddr>,
    ) {
        for listen in update {
            if let Some(a) = self
                .acceptors
                .borrow()
                .iter()
                .find(|a| a.addr == listen.addr)
            {
                *a.listen.borrow_mut() = Rc::new(listen);
            }
        }
        self.acceptors.borrow_mut().retain(|a| {
            let gone = remove.contains(&a.addr);
            if gone {
                a.stop();
            }
            !gone
        });
        for (listen, socket) in add {
            self.add_listener(listen, socket);
        }
    }
}

async fn mailbox_loop(
    core: Rc<Core>,
    mailbox: Mailbox<CoreMsg>,
    stop: local_sync::oneshot::Sender<()>,
) {
    let mut stop = Some(stop);
    while let Some(msg) = mailbox.recv().await {
        match msg {
            CoreMsg::Route(m) => core.router.handle(m),
            CoreMsg::Backends(set) => core.apply_backends(set),
            CoreMsg::KickUser { key, reason, done } => {
                let closed = core.sessions.kick_user(&key, reason);
                core.counters.kicked(closed.len());
                monoio::spawn(reply_when_closed(closed, done));
            }
            CoreMsg::EndKick { key } => core.sessions.end_kick(&key),
            CoreMsg::KickAll { reason, done } => {
                let closed = core.sessions.kick_where(reason, |_| false);
                if reason == KickReason::Fenced {
                    // The presence this director held goes with its lease:
                    // what it knew of its users may change meanwhile.
                    core.router.forget_all();
                }
                core.counters.kicked(closed.len());
                monoio::spawn(reply_when_closed(closed, done));
            }
            CoreMsg::WaitIdle { key, limit, done } => {
                let core = core.clone();
                monoio::spawn(async move {
                    let idle = core.router.wait_idle(&key, limit).await;
                    let _ = done.send(idle);
                });
            }
            CoreMsg::WaitBackendClosed {
                backend,
                limit,
                done,
            } => {
                let core = core.clone();
                monoio::spawn(async move {
                    let closed = core.sessions.wait_backend_closed(backend, limit).await;
                    let _ = done.send(closed);
                });
            }
            CoreMsg::Hold { key, done } => {
                core.router.hold(&key);
                let _ = done.send(());
            }
            CoreMsg::Unhold { key, assign, done } => {
                core.router.unhold(&key, assign);
                let _ = done.send(());
            }
            CoreMsg::SettleMove { key, to, done } => {
                core.router.settle_move(&key, to.as_deref());
                let _ = done.send(());
            }
            CoreMsg::Lookup { key, reply } => {
                let _ = reply.send(core.router.local_assignment(&key));
            }
            CoreMsg::UsersOn { backend, reply } => {
                let _ = reply.send(core.router.users_on(backend));
            }
            CoreMsg::Reload(shared) => core.set_shared(shared),
            CoreMsg::Listeners {
                add,
                update,
                remove,
            } => core.change_listeners(add, update, remove),
            CoreMsg::Sync { done } => {
                let _ = done.send(());
            }
            CoreMsg::Stats { reply } => {
                let _ = reply.send(core.stats());
            }
            CoreMsg::Shutdown => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
            }
            CoreMsg::Upgrade(m) => core.upgrade_step(m),
        }
    }
}

/// A core's steps of a binary upgrade.
impl Core {
    fn upgrade_step(self: &Rc<Self>, msg: UpgradeMsg) {
        match msg {
            UpgradeMsg::HandOverListeners { done } => {
                let acceptors: Vec<Acceptor> = self.acceptors.borrow_mut().drain(..).collect();
                let mut sockets = Vec::with_capacity(acceptors.len());
                for a in &acceptors {
                    // SAFETY: the accept loop owns this descriptor and runs
                    // until stopped below, so it is open here.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(a.fd) };
                    match fd.try_clone_to_owned() {
                        Ok(copy) => sockets.push(((**a.listen.borrow()).clone(), copy)),
                        Err(e) => {
                            warn!(core = self.id, addr = %a.addr, error = %e, "cannot copy listener")
                        }
                    }
                    a.stop();
                }
                monoio::spawn(async move {
                    for a in acceptors {
                        let _ = monoio::time::timeout(Duration::from_secs(1), a.ended).await;
                    }
                    let _ = done.send(sockets);
                });
            }
            UpgradeMsg::HandOverRoutes { releases, done } => {
                let _ = done.send(self.router.hand_over(releases));
            }
            UpgradeMsg::Resume => self.router.end_hand_over(),
            UpgradeMsg::TakeOver { assignments, done } => {
                self.router.take_over(assignments);
                let _ = done.send(());
            }
        }
    }
}

/// Answers a kick once every kicked session has closed.
async fn reply_when_closed(closed: Vec<Closed>, done: flume::Sender<usize>) {
    let n = closed.len();
    for c in closed {
        c.wait().await;
    }
    let _ = done.send(n);
}

/// Accepts on one listening socket until its [`Acceptor`] is stopped; a
/// connection that completes while the stop cancels the accept is served.
async fn accept_loop(
    core: Rc<Core>,
    listen: Rc<RefCell<Rc<Listen>>>,
    listener: TcpListener,
    cancel: CancelHandle,
    stopped: Rc<Cell<bool>>,
    ended: local_sync::oneshot::Sender<()>,
) {
    let addr = listen.borrow().addr;
    while !stopped.get() {
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((tcp, peer)) => {
                core.counters.accepted();
                let settings = listen.borrow().clone();
                (core.serve)(core.clone(), settings, tcp, peer);
            }
            Err(_) if stopped.get() => break,
            Err(e) => {
                warn!(core = core.id, addr = %addr, error = %e, "accept failed");
                // Out of descriptors or memory: back off instead of spinning.
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let _ = ended.send(());
    debug!(core = core.id, addr = %addr, "listener closed");
}

/// Drops idle assignments past `user_expire`, a few times per period.
async fn expire_loop(core: Rc<Core>) {
    let expire = core.shared().config.server.user_expire;
    let tick = (expire / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut interval = monoio::time::interval(tick);
    loop {
        interval.tick().await;
        let n = core.router.expire();
        if n > 0 {
            debug!(core = core.id, expired = n, "idle assignments expired");
        }
    }
}

/// Waits for open sessions to end, at most `server.drain_timeout`.
async fn drain(core: &Core) {
    let deadline = monoio::time::Instant::now() + core.shared().config.server.drain_timeout;
    while core.active_sessions() > 0 && monoio::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if core.active_sessions() > 0 {
        info!(
            core = core.id,
            sessions = core.active_sessions(),
            "drain timeout: closing remaining sessions"
        );
        // Backend side first, then the client's goodbye: wait for the
        // sessions to end entirely (bounded by the relay's own bounds on
        // both), or the runtime would end before the goodbyes are written.
        let _ = core.sessions.kick_where(KickReason::Shutdown, |_| false);
        let limit = crate::relay::BACKEND_CLOSE_TIMEOUT + crate::relay::GOODBYE_TIMEOUT * 2;
        let deadline = monoio::time::Instant::now() + limit + Duration::from_millis(500);
        while core.active_sessions() > 0 && monoio::time::Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
