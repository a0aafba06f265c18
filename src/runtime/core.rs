//! One core: its runtime, listeners, mailbox loop and housekeeping.
//!
//! A core thread is pinned to a CPU, runs its own monoio runtime on
//! io_uring, accepts on its own SO_REUSEPORT copy of every listener, owns
//! its shard of the user table (through its [`Router`]) and hears from the
//! rest of the process only through its mailbox.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::config::{Config, Listen};
use crate::route::backends::BackendSet;
use crate::route::router::{Router, RouterMsg};
use crate::route::user_key::UserKeyFormat;
use crate::runtime::mailbox::Mailbox;
use crate::session::serve::serve;

/// What every core reads and nobody changes after start.
pub struct Shared {
    /// The configuration in force.
    pub config: Config,
    /// `server.user_key`, parsed.
    pub user_key: UserKeyFormat,
    /// The TLS server configuration, shared by all cores (one ticket key).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Messages a core receives.
#[derive(Debug)]
pub enum CoreMsg {
    /// Routing traffic between cores.
    Route(RouterMsg),
    /// A new backend snapshot.
    Backends(Arc<BackendSet>),
    /// Stop accepting, drain, and stop.
    Shutdown,
}

impl From<RouterMsg> for CoreMsg {
    fn from(m: RouterMsg) -> Self {
        CoreMsg::Route(m)
    }
}

/// The state of one core, shared by its tasks.
pub struct Core {
    /// Index of this core, 0-based.
    pub id: usize,
    /// The read-only, process-wide part.
    pub shared: Arc<Shared>,
    /// This core's routing and shard.
    pub router: Router,
    /// Sessions open on this core.
    active: Cell<usize>,
}

impl Core {
    /// A core's state.
    pub fn new(id: usize, shared: Arc<Shared>, router: Router) -> Core {
        Core {
            id,
            shared,
            router,
            active: Cell::new(0),
        }
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
    let mut accept_stops = Vec::new();
    for (listen, std_listener) in listeners {
        let listener = match TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                warn!(core = core.id, addr = %listen.addr, error = %e, "cannot use listener");
                continue;
            }
        };
        let (tx, rx) = local_sync::oneshot::channel::<()>();
        accept_stops.push(tx);
        monoio::spawn(accept_loop(core.clone(), Rc::new(listen), listener, rx));
    }
    monoio::spawn(expire_loop(core.clone()));
    monoio::spawn(mailbox_loop(core.clone(), mailbox, stop_tx));

    let _ = stop_rx.await;
    for tx in accept_stops {
        let _ = tx.send(());
    }
    drain(&core).await;
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
            CoreMsg::Backends(set) => {
                let dropped = core.router.apply_backends(set);
                if !dropped.is_empty() {
                    info!(core = core.id, users = dropped.len(), "assignments dropped");
                }
            }
            CoreMsg::Shutdown => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
            }
        }
    }
}

async fn accept_loop(
    core: Rc<Core>,
    listen: Rc<Listen>,
    listener: TcpListener,
    mut stop: local_sync::oneshot::Receiver<()>,
) {
    loop {
        monoio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    monoio::spawn(serve(core.clone(), listen.clone(), tcp, peer));
                }
                Err(e) => {
                    warn!(core = core.id, addr = %listen.addr, error = %e, "accept failed");
                    // Out of descriptors or memory: back off instead of spinning.
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    debug!(core = core.id, addr = %listen.addr, "listener closed");
}

/// Drops idle assignments past `user_expire`, a few times per period.
async fn expire_loop(core: Rc<Core>) {
    let expire = core.shared.config.server.user_expire;
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
    let deadline = monoio::time::Instant::now() + core.shared.config.server.drain_timeout;
    while core.active_sessions() > 0 && monoio::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if core.active_sessions() > 0 {
        info!(
            core = core.id,
            sessions = core.active_sessions(),
            "drain timeout: closing remaining sessions"
        );
    }
}
