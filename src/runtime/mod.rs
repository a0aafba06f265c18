//! The thread-per-core runtime: pinned cores, their listeners and mailboxes.
//!
//! [`start`] binds every `[[listen]]` address once per core with
//! SO_REUSEPORT (so the kernel spreads connections over the cores and no
//! core ever waits on another), starts one pinned thread per core with its
//! own io_uring runtime, and returns a [`Director`] handle through which the
//! control plane talks to the cores.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use socket2::{Domain, Socket, Type};
use tracing::{info, warn};

use crate::config::{Driver, Listen};
use crate::control::{ControlMsg, ControlPlane};
use crate::route::backends::BackendSet;
use crate::route::router::{CorePost, Router};
use crate::route::shard::{SessionLimits, ShardTable};
use crate::runtime::core::{core_main, Core, CoreMsg, Shared};
use crate::runtime::mailbox::{mailbox, MailboxSender};

pub mod core;
pub mod mailbox;
pub mod sessions;
pub mod stats;

/// Entries of each core's io_uring submission queue.
const URING_ENTRIES: u32 = 1024;

/// Listen backlog of every socket.
const BACKLOG: i32 = 4096;

/// A running director: its cores and how to reach them.
pub struct Director {
    threads: Vec<JoinHandle<()>>,
    mailboxes: Vec<MailboxSender<CoreMsg>>,
    control: Option<ControlPlane>,
    /// Cluster mode: the etcd thread, stopped after the cores have drained
    /// (sessions are served under the lease until then).
    cluster: Option<crate::cluster::ClusterHandle>,
    /// The addresses actually bound, in `[[listen]]` order (a port of 0 in
    /// the config is replaced by the one the kernel chose).
    pub listen_addrs: Vec<SocketAddr>,
    /// Where the admin API listens, once started.
    pub admin_addr: Option<SocketAddr>,
}

/// Why the director could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// How many cores `server.cores` asks for (0 = every online core).
pub fn core_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds `addr` once per core (SO_REUSEPORT); the first bind fixes the
/// port when it is 0. Returns the bound address and the sockets, in core
/// order.
pub fn bind_all(
    addr: SocketAddr,
    cores: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let fail = |e: std::io::Error| StartError(format!("cannot listen on {addr}: {e}"));
    let first = bind_one(addr).map_err(fail)?;
    let bound = first.local_addr().map_err(fail)?;
    let mut all = vec![first];
    for _ in 1..cores {
        all.push(bind_one(bound).map_err(fail)?);
    }
    Ok((bound, all))
}

/// Starts the cores and returns once every one of them runs. Cores report
/// to the control plane through `control`.
pub fn start(
    shared: Arc<Shared>,
    backends: Arc<BackendSet>,
    control: MailboxSender<ControlMsg>,
) -> Result<Director, StartError> {
    let cores = core_count(shared.config.server.cores);

    // Bind everything first, so a busy port fails the start cleanly.
    let mut per_core: Vec<Vec<(Listen, std::net::TcpListener)>> =
        (0..cores).map(|_| Vec::new()).collect();
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
                let core = std::rc::Rc::new(Core::new(i, shared.clone(), router, control));
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
    let mut director = Director {
        threads,
        mailboxes: senders,
        control: None,
        cluster: None,
        listen_addrs,
        admin_addr: None,
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

/// Builds a runtime on the configured driver for the thread called `name`,
/// reports on `ready` whether that worked, and runs `main` on it.
pub fn run_runtime<F: std::future::Future<Output = ()>>(
    driver: Driver,
    name: &str,
    ready: mpsc::Sender<Result<(), String>>,
    main: F,
) {
    let uring = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build();
    match uring {
        Ok(mut rt) => {
            let _ = ready.send(Ok(()));
            rt.block_on(main);
        }
        Err(e) if driver == Driver::Auto => {
            warn!(thread = name, error = %e, "io_uring unavailable, falling back to epoll (server.driver = \"auto\")");
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(mut rt) => {
                    let _ = ready.send(Ok(()));
                    rt.block_on(main);
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("{name}: cannot start an epoll runtime: {e}")));
                }
            }
        }
        Err(e) => {
            let _ = ready.send(Err(format!(
                "{name}: io_uring is unavailable ({e}); it may be disabled \
                 (sysctl kernel.io_uring_disabled) or blocked by a seccomp profile. \
                 Set server.driver = \"auto\" to allow an epoll fallback."
            )));
        }
    }
}

impl Director {
    /// How many cores run.
    pub fn cores(&self) -> usize {
        self.mailboxes.len()
    }

    /// The cores' mailboxes, for the control plane.
    pub fn core_mailboxes(&self) -> Vec<MailboxSender<CoreMsg>> {
        self.mailboxes.clone()
    }

    /// Hands the running control plane to the director, which stops it
    /// before the cores.
    pub fn attach_control(&mut self, control: ControlPlane) {
        self.control = Some(control);
    }

    /// Sends a message to every core.
    pub fn broadcast(&self, msg: impl Fn() -> CoreMsg) {
        for m in &self.mailboxes {
            let _ = m.send(msg());
        }
    }

    /// Asks the control plane to re-read the configuration file.
    pub fn reload(&self) {
        if let Some(c) = &self.control {
            c.reload();
        }
    }

    /// Asks every core to stop accepting and drain, and waits for them.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.control.take() {
            c.stop();
        }
        self.broadcast(|| CoreMsg::Shutdown);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
    }

    /// Hands the running cluster thread to the director, which stops it
    /// after the cores.
    pub fn attach_cluster(&mut self, cluster: crate::cluster::ClusterHandle) {
        self.cluster = Some(cluster);
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        self.stop();
    }
}
