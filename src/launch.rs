//! From a checked configuration to a running director.
//!
//! Parses the user-key template, resolves backend host names once at start,
//! builds the TLS configuration when a listener needs it, and starts the
//! cores. `run` then blocks the calling (main) thread until SIGINT or
//! SIGTERM and drains.

use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use crate::admin::bind::bind_admin;
use crate::config::Config;
use crate::control::reload::BoundListener;
use crate::control::{self, ControlMsg};
use crate::limits::Limits;
use crate::route::user_key::UserKeyFormat;
use crate::runtime::core::Shared;
use crate::runtime::mailbox::mailbox;
use crate::runtime::{start, Director};
use crate::sdnotify;
use crate::signals;

pub use crate::prepare::{backend_set, tls_config, LaunchError};

/// Starts the director for `config` (a configuration built in code, as
/// dev mode's: reload has no file to re-read).
pub fn launch(config: Config) -> Result<Director, LaunchError> {
    launch_with_path(config, None)
}

/// Starts the director for `config`, read from `path` (which a reload
/// re-reads).
pub fn launch_with_path(config: Config, path: Option<PathBuf>) -> Result<Director, LaunchError> {
    config
        .validate()
        .map_err(|e| LaunchError(format!("invalid configuration:\n{e}")))?;
    let user_key = UserKeyFormat::parse(&config.server.user_key)
        .map_err(|e| LaunchError(format!("server.user_key: {e}")))?;
    let backends = Arc::new(backend_set(&config)?);
    let tls = tls_config(&config)?;
    let admin = bind_admin(&config.admin).map_err(LaunchError)?;
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
    let mut director = start(shared.clone(), backends.clone(), control_tx.clone())
        .map_err(|e| LaunchError(e.to_string()))?;
    let listeners = shared
        .config
        .listen
        .iter()
        .zip(&director.listen_addrs)
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
        backends,
        director.core_mailboxes(),
        control_tx,
        control_box,
        admin,
    )
    .map_err(|e| LaunchError(e.to_string()))?;
    director.attach_control(control);
    director.admin_addr = Some(admin_addr);
    // Cluster mode: the etcd thread. The director starts fenced (logins
    // get a temporary failure) and serves once etcd has granted a lease.
    if let (Some(link), Some(config)) = (cluster, cluster_config.as_ref()) {
        let handle = crate::cluster::start(
            config,
            link,
            director.core_mailboxes(),
            admin_addr.to_string(),
        )
        .map_err(LaunchError)?;
        director.attach_cluster(handle);
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
    Ok(director)
}

/// Serves until SIGINT or SIGTERM, reloading on SIGHUP, then drains and
/// stops; a second SIGINT or SIGTERM during the drain ends the process at
/// once. Call [`signals::block`] before starting any thread.
///
/// Under systemd (`Type=notify`) the director reports `READY=1` here — every
/// core listens and the admin API is up by now — and `STOPPING=1` as the
/// drain begins. A reload needs no notification: the unit's `ExecReload=`
/// is `mailpin ctl reload`, which returns once the reload is done.
pub fn run_until_signal(mut director: Director) {
    sdnotify::ready(&ready_status(&director));
    let signal = loop {
        match signals::wait() {
            signals::Signal::Reload => {
                info!("SIGHUP: reloading the configuration");
                director.reload();
            }
            signals::Signal::Upgrade => {
                tracing::warn!("SIGUSR2: the binary upgrade is not built yet; ignored");
            }
            signals::Signal::Stop(name) => break name,
        }
    };
    info!(
        signal,
        "stopping: no new connections, draining sessions (again to end at once)"
    );
    sdnotify::stopping(&format!("{signal}: draining sessions"));
    std::thread::spawn(|| loop {
        if let signals::Signal::Stop(name) = signals::wait() {
            tracing::warn!(signal = name, "second stop signal: ending at once");
            std::process::exit(0);
        }
    });
    director.stop();
    info!("stopped");
}

/// The `STATUS=` text systemd shows for a director that serves.
fn ready_status(director: &Director) -> String {
    let listen: Vec<String> = director
        .listen_addrs
        .iter()
        .map(|a| a.to_string())
        .collect();
    match director.admin_addr {
        Some(admin) => format!("serving on {}; admin API on {admin}", listen.join(" ")),
        None => format!("serving on {}", listen.join(" ")),
    }
}
