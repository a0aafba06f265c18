//! From a checked configuration to a running director.
//!
//! Parses the user-key template, resolves backend host names once at start,
//! builds the TLS configuration when a listener needs it, and starts the
//! cores. `run` then blocks the calling (main) thread until SIGINT or
//! SIGTERM and drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use crate::admin::bind::bind_admin;
use crate::config::Config;
use crate::control::reload::BoundListener;
use crate::control::{self, ControlPlane};
use crate::limits::Limits;
use crate::mailbox::mailbox;
use crate::plane::{ControlMsg, Shared};
use crate::route::user_key::UserKeyFormat;
use crate::runtime::{start, Cores};
use crate::sdnotify;
use crate::session::serve::spawn_session;
use crate::signals;

/// A running director: its cores, its control plane and where they listen.
pub struct Director {
    cores: Cores,
    control: Option<ControlPlane>,
    /// The admin socket file, removed once the control plane stopped.
    admin_socket: Option<PathBuf>,
    /// The addresses actually bound, in `[[listen]]` order (a port of 0 in
    /// the config is replaced by the one the kernel chose).
    pub listen_addrs: Vec<SocketAddr>,
    /// Where the admin API listens.
    pub admin_addr: Option<SocketAddr>,
}

impl Director {
    /// How many cores run.
    pub fn cores(&self) -> usize {
        self.cores.cores()
    }

    /// Asks the control plane to re-read the configuration file.
    pub fn reload(&self) {
        if let Some(c) = &self.control {
            c.reload();
        }
    }

    /// Stops the control plane (no admin request or health flip acts
    /// during the drain), then drains and stops the cores.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.control.take() {
            c.stop();
        }
        if let Some(path) = self.admin_socket.take() {
            let _ = std::fs::remove_file(path);
        }
        self.cores.stop();
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        self.stop();
    }
}

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
    let shared = Arc::new(Shared {
        config,
        user_key,
        tls,
        limits,
    });
    let (control_tx, control_box) = mailbox::<ControlMsg>();
    let mut cores = start(
        shared.clone(),
        backends.clone(),
        control_tx.clone(),
        spawn_session,
    )
    .map_err(|e| LaunchError(e.to_string()))?;
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
    let control = control::start(
        shared,
        path,
        listeners,
        backends,
        cores.core_mailboxes(),
        control_tx,
        control_box,
        Box::new(move |control| crate::admin::spawn_servers(control, admin)),
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
    };
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
