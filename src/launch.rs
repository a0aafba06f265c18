//! From a checked configuration to a running director.
//!
//! Parses the user-key template, resolves backend host names once at start,
//! builds the TLS configuration when a listener needs it, binds (or, in a
//! binary upgrade, inherits) the sockets, and starts the cores and the
//! control plane. [`crate::supervise`] then runs the main thread.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use crate::admin::bind::bind_admin;
use crate::config::Config;
use crate::control::reload::BoundListener;
use crate::control::{self, ControlPlane};
use crate::limits::Limits;
use crate::mailbox::{mailbox, MailboxSender};
use crate::plane::{ControlMsg, Shared};
use crate::route::user_key::UserKeyFormat;
use crate::runtime::{start, start_with, Cores};
use crate::session::serve::spawn_session;

pub use crate::prepare::{backend_set, tls_config, LaunchError};

/// A running director: its cores, its control plane and where they listen.
pub struct Director {
    cores: Cores,
    control: Option<ControlPlane>,
    /// The admin socket file, removed once the control plane stopped
    /// (unless a binary upgrade handed it to the new process).
    admin_socket: Option<PathBuf>,
    /// The addresses actually bound, in `[[listen]]` order (a port of 0 in
    /// the config is replaced by the one the kernel chose).
    pub listen_addrs: Vec<SocketAddr>,
    /// Where the admin API listens.
    pub admin_addr: Option<SocketAddr>,
    /// Copies of the admin API's sockets, which a binary upgrade passes on.
    admin_sockets: AdminSockets,
    /// Cluster mode: the etcd thread, stopped after the cores have drained
    /// (sessions are served under the lease until then).
    cluster: Option<crate::cluster::ClusterHandle>,
}

/// Copies of the admin API's listening sockets (the control thread serves
/// the originals).
pub struct AdminSockets {
    /// The TCP listener.
    pub tcp: Option<std::net::TcpListener>,
    /// The Unix socket listener and its path, when configured.
    pub unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
}

impl AdminSockets {
    fn copy_of(admin: &crate::admin::AdminListeners) -> AdminSockets {
        AdminSockets {
            tcp: admin.tcp.try_clone().ok(),
            unix: admin
                .unix
                .as_ref()
                .and_then(|(l, path)| l.try_clone().ok().map(|l| (l, path.clone()))),
        }
    }
}

impl Director {
    /// How many cores run.
    pub fn cores(&self) -> usize {
        self.cores.cores()
    }

    /// The running cores (a binary upgrade steps them through the
    /// hand-over).
    pub fn running_cores(&self) -> &Cores {
        &self.cores
    }

    /// Whether this director runs in cluster mode (`[cluster]`).
    pub fn in_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Asks the control plane to re-read the configuration file.
    pub fn reload(&self) {
        if let Some(c) = &self.control {
            c.reload();
        }
    }

    /// Copies of the admin API's sockets, for a binary upgrade.
    pub fn admin_sockets(&self) -> &AdminSockets {
        &self.admin_sockets
    }

    /// The control plane, for the upgrade's messages to it.
    pub fn control(&mut self) -> Option<&mut ControlPlane> {
        self.control.as_mut()
    }

    /// The control plane's mailbox, for another thread.
    pub fn control_sender(&self) -> Option<MailboxSender<ControlMsg>> {
        self.control.as_ref().map(ControlPlane::sender)
    }

    /// Leaves the admin socket file in place when stopping: after a
    /// binary upgrade it belongs to the new process.
    pub fn keep_admin_socket(&mut self) {
        self.admin_socket = None;
    }

    /// Stops the control plane (no admin request or health flip acts
    /// during the drain), then drains and stops the cores.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.control.take() {
            c.stop();
        }
        self.remove_admin_socket();
        self.cores.stop();
        self.stop_cluster();
    }

    /// Old process after a hand-over: the cores drain (pre-login clients
    /// get their goodbye, logged-in sessions run until
    /// `server.drain_timeout`) and stop; the control plane stops only
    /// then, as it carries out the new process's forwarded admin actions
    /// until the last session ended.
    pub fn drain_after_hand_over(&mut self) {
        self.cores.stop();
        self.stop_cluster();
        if let Some(mut c) = self.control.take() {
            c.stop();
        }
        self.remove_admin_socket();
    }

    fn stop_cluster(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.stop();
        }
    }

    fn remove_admin_socket(&mut self) {
        if let Some(path) = self.admin_socket.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the director for `config` (a configuration built in code, as
/// dev mode's: reload has no file to re-read).
pub fn launch(config: Config) -> Result<Director, LaunchError> {
    launch_with_path(config, None)
}

/// Starts the director for `config`, read from `path` (which a reload
/// re-reads).
pub fn launch_with_path(config: Config, path: Option<PathBuf>) -> Result<Director, LaunchError> {
    launch_from(config, path, SocketSource::Bind).map(|(director, _)| director)
}

/// Where a starting director's sockets come from.
pub enum SocketSource {
    /// Bind every listener and the admin API.
    Bind,
    /// Binary upgrade: the admin API's sockets came from the old process;
    /// the cores start without listeners (the new process gives them
    /// theirs once it has taken the routing state over), and the control
    /// plane forwards admin actions to the old process from the start.
    Inherited {
        /// The bound `[[listen]]` addresses, in order.
        listen_addrs: Vec<std::net::SocketAddr>,
        /// The admin API's sockets.
        admin: crate::admin::AdminListeners,
        /// The link to the old process.
        predecessor: crate::plane::handover::PredecessorLink,
    },
}

/// Starts the director for `config` (read from `path`, if any) on the
/// sockets `source` says; also returns the backend set it routes to.
pub fn launch_from(
    config: Config,
    path: Option<PathBuf>,
    source: SocketSource,
) -> Result<(Director, Arc<crate::route::backends::BackendSet>), LaunchError> {
    config
        .validate()
        .map_err(|e| LaunchError(format!("invalid configuration:\n{e}")))?;
    let user_key = UserKeyFormat::parse(&config.server.user_key)
        .map_err(|e| LaunchError(format!("server.user_key: {e}")))?;
    let backends = Arc::new(backend_set(&config)?);
    let tls = tls_config(&config)?;
    let (admin, inherited) = match source {
        SocketSource::Bind => (bind_admin(&config.admin).map_err(LaunchError)?, None),
        SocketSource::Inherited {
            listen_addrs,
            admin,
            predecessor,
        } => (admin, Some((listen_addrs, predecessor))),
    };
    let admin_sockets = AdminSockets::copy_of(&admin);
    let admin_addr = admin
        .tcp
        .local_addr()
        .map_err(|e| LaunchError(format!("admin.listen: {e}")))?;
    let limits = Arc::new(Limits::new(&config.limits, backends.backends.len()));
    let admin_socket = admin.unix.as_ref().map(|(_, path)| path.clone());
    let cluster = config
        .cluster
        .as_ref()
        .map(|c| Arc::new(crate::cluster_link::ClusterLink::new(c.name.clone())));
    let shared = Arc::new(Shared {
        config,
        user_key,
        tls,
        limits,
        cluster: cluster.clone(),
    });
    let (control_tx, control_box) = mailbox::<ControlMsg>();
    let started = match inherited {
        None => start(
            shared.clone(),
            backends.clone(),
            control_tx.clone(),
            spawn_session,
        ),
        Some((listen_addrs, predecessor)) => {
            // Queued before the control plane starts, so it is in force
            // before the first admin request is read.
            let _ = control_tx.send(ControlMsg::Predecessor(Some(predecessor)));
            let cores = crate::startup::core_count(shared.config.server.cores);
            let per_core = (0..cores).map(|_| Vec::new()).collect();
            let (shared, backends) = (shared.clone(), backends.clone());
            let control = control_tx.clone();
            start_with(
                shared,
                backends,
                control,
                spawn_session,
                per_core,
                listen_addrs,
            )
        }
    };
    let mut cores = started.map_err(|e| LaunchError(e.to_string()))?;
    let listeners = shared
        .config
        .listen
        .iter()
        .zip(&cores.listen_addrs)
        .map(|(configured, bound)| BoundListener {
            configured: configured.clone(),
            bound: *bound,
        })
        .collect();
    let cluster_config = shared.config.cluster.clone();
    let control = control::start(
        shared,
        path,
        listeners,
        backends.clone(),
        cores.core_mailboxes(),
        control_tx,
        control_box,
        Box::new(move |control| {
            let stop = crate::admin::spawn_servers(control, admin);
            Box::new(move || stop.stop())
        }),
    );
    let control = match control {
        Ok(control) => control,
        Err(e) => {
            cores.stop();
            return Err(LaunchError(e.to_string()));
        }
    };
    let director = Director {
        listen_addrs: cores.listen_addrs.clone(),
        cores,
        control: Some(control),
        admin_socket: admin_socket.clone(),
        admin_addr: Some(admin_addr),
        admin_sockets,
        cluster: None,
    };
    let mut director = director;
    // Cluster mode: the etcd thread. The director starts fenced (logins
    // get a temporary failure) and serves once etcd has granted a lease.
    if let (Some(link), Some(config)) = (cluster, cluster_config.as_ref()) {
        let handle = crate::cluster::start(
            config,
            link,
            director.cores.core_mailboxes(),
            director.control_sender(),
            admin_addr.to_string(),
        )
        .map_err(LaunchError)?;
        director.cluster = Some(handle);
        info!(
            name = %config.name,
            etcd = %config.etcd.join(","),
            "cluster mode: connecting to etcd (fenced until a lease is held)"
        );
    }
    info!(addr = %admin_addr, "admin API ready");
    if let Some(path) = admin_socket {
        info!(path = %path.display(), "admin API socket ready");
    }
    Ok((director, backends))
}
