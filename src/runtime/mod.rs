//! The thread-per-core runtime: pinned cores, their listeners and mailboxes.
//!
//! [`start`] binds every `[[listen]]` address once per core with
//! SO_REUSEPORT (so the kernel spreads connections over the cores and no
//! core ever waits on another), starts one pinned thread per core with its
//! own io_uring runtime, and returns a [`Cores`] handle through which the
//! control plane talks to the cores. The cores serve each accepted
//! connection with the [`ServeFn`] they are given (the session layer's), so
//! this module never imports the sessions it runs.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tracing::{info, warn};

use crate::config::Listen;
use crate::mailbox::{mailbox, MailboxSender};
use crate::plane::{ControlMsg, CoreMsg, Shared};
use crate::route::backends::BackendSet;
use crate::route::router::{CorePost, Router};
use crate::route::shard::{SessionLimits, ShardTable};
use crate::runtime::core::{core_main, Core, ServeFn};
use crate::startup::{bind_all, core_count, run_runtime, StartError};

pub mod core;
pub mod handover;
pub mod prelogin_drain;
pub mod sessions;

/// The running cores and how to reach them.
pub struct Cores {
    threads: Vec<JoinHandle<()>>,
    mailboxes: Vec<MailboxSender<CoreMsg>>,
    /// The addresses actually bound, in `[[listen]]` order (a port of 0 in
    /// the config is replaced by the one the kernel chose).
    pub listen_addrs: Vec<SocketAddr>,
}

/// Each core's listening sockets with their settings, in core order.
pub type PerCoreListeners = Vec<Vec<(Listen, std::net::TcpListener)>>;

/// Starts the cores and returns once every one of them runs. Cores report
/// to the control plane through `control` and hand every accepted
/// connection to `serve`.
pub fn start(
    shared: Arc<Shared>,
    backends: Arc<BackendSet>,
    control: MailboxSender<ControlMsg>,
    serve: ServeFn,
) -> Result<Cores, StartError> {
    let cores = core_count(shared.config.server.cores);

    // Bind everything first, so a busy port fails the start cleanly.
    let mut per_core: PerCoreListeners = (0..cores).map(|_| Vec::new()).collect();
    let mut listen_addrs = Vec::new();
    for listen in &shared.config.listen {
        let (bound, sockets) = bind_all(listen.addr, cores)?;
        info!(protocol = listen.protocol.as_str(), tls = listen.tls.as_str(), addr = %bound, "listening");
        listen_addrs.push(bound);
        for (i, socket) in sockets.into_iter().enumerate() {
            let mut l = listen.clone();
            l.addr = bound;
            per_core[i].push((l, socket));
        }
    }
    start_with(shared, backends, control, serve, per_core, listen_addrs)
}

/// Starts the cores on sockets bound already: `per_core` (one list per
/// core; empty lists start cores that accept nothing until given
/// listeners) and the bound `listen_addrs` in `[[listen]]` order.
pub fn start_with(
    shared: Arc<Shared>,
    backends: Arc<BackendSet>,
    control: MailboxSender<ControlMsg>,
    serve: ServeFn,
    per_core: PerCoreListeners,
    listen_addrs: Vec<SocketAddr>,
) -> Result<Cores, StartError> {
    let cores = per_core.len();

    let (senders, boxes): (Vec<_>, Vec<_>) = (0..cores).map(|_| mailbox::<CoreMsg>()).unzip();
    let post: Arc<dyn CorePost> = Arc::new(senders.clone());
    let cpu_ids = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(cores);
    for (i, (mailbox, listeners)) in boxes.into_iter().zip(per_core).enumerate() {
        let shared = shared.clone();
        let post = post.clone();
        let backends = backends.clone();
        let ready = ready_tx.clone();
        let control = control.clone();
        let cpu = (!cpu_ids.is_empty()).then(|| cpu_ids[i % cpu_ids.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("core{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if !core_affinity::set_for_current(cpu) {
                        warn!(core = i, "could not pin thread to its CPU");
                    }
                }
                let expire = shared.config.server.user_expire;
                let limits = SessionLimits::of(&shared.config.limits);
                let shard = ShardTable::with_limits(expire, limits);
                let router = Router::new(i, cores, post, backends, shard);
                if let Some(link) = &shared.cluster {
                    router.join_cluster(link.port.clone());
                }
                let core = std::rc::Rc::new(Core::new(i, shared.clone(), router, control, serve));
                let name = format!("core {i}");
                run_runtime(
                    shared.config.server.driver,
                    &name,
                    ready,
                    core_main(core, mailbox, listeners),
                );
            })
            .map_err(|e| StartError(format!("cannot start core thread: {e}")))?;
        threads.push(thread);
    }
    drop(ready_tx);
    let mut director = Cores {
        threads,
        mailboxes: senders,
        listen_addrs,
    };
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                director.stop();
                return Err(StartError(e));
            }
            Err(_) => {
                director.stop();
                return Err(StartError("a core thread died while starting".into()));
            }
        }
    }
    info!(cores, "director running");
    Ok(director)
}

impl Cores {
    /// How many cores run.
    pub fn cores(&self) -> usize {
        self.mailboxes.len()
    }

    /// The cores' mailboxes, for the control plane.
    pub fn core_mailboxes(&self) -> Vec<MailboxSender<CoreMsg>> {
        self.mailboxes.clone()
    }

    /// Sends a message to every core.
    pub fn broadcast(&self, msg: impl Fn() -> CoreMsg) {
        for m in &self.mailboxes {
            let _ = m.send(msg());
        }
    }

    /// Asks every core to stop accepting and drain, and waits for them.
    pub fn stop(&mut self) {
        self.broadcast(|| CoreMsg::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        self.stop();
    }
}
