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
use crate::control::handover::{MainEvent, UpgradeRefused};
use crate::control::reload::BoundListener;
use crate::control::{self, ControlMsg};
use crate::limits::Limits;
use crate::route::user_key::UserKeyFormat;
use crate::runtime::core::Shared;
use crate::runtime::mailbox::mailbox;
use crate::runtime::{start, start_with, Director};
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
        predecessor: crate::control::handover::PredecessorLink,
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
    crate::upgrade::keep_admin_sockets(&admin);
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
    let started = match inherited {
        None => start(shared.clone(), backends.clone(), control_tx.clone()),
        Some((listen_addrs, predecessor)) => {
            // Queued before the control plane starts, so it is in force
            // before the first admin request is read.
            let _ = control_tx.send(ControlMsg::Predecessor(Some(predecessor)));
            let cores = crate::runtime::core_count(shared.config.server.cores);
            let per_core = (0..cores).map(|_| Vec::new()).collect();
            let (shared, backends) = (shared.clone(), backends.clone());
            start_with(shared, backends, control_tx.clone(), per_core, listen_addrs)
        }
    };
    let mut director = started.map_err(|e| LaunchError(e.to_string()))?;
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
    let control = control::start(
        shared,
        path,
        listeners,
        backends.clone(),
        director.core_mailboxes(),
        control_tx,
        control_box,
        admin,
    )
    .map_err(|e| LaunchError(e.to_string()))?;
    director.attach_control(control);
    director.admin_addr = Some(admin_addr);
    info!(addr = %admin_addr, "admin API ready");
    if let Some(path) = admin_socket {
        info!(path = %path.display(), "admin API socket ready");
    }
    Ok((director, backends))
}

/// Serves until SIGINT or SIGTERM, reloading on SIGHUP, then drains and
/// stops; a second SIGINT or SIGTERM during the drain ends the process at
/// once. Call [`signals::block`] before starting any thread. Without a
/// configuration file a binary upgrade is refused.
pub fn run_until_signal(director: Director) {
    serve(director, None, true)
}

/// Serves as [`run_until_signal`] does, and hands over to a new process
/// of the same binary on SIGUSR2 or `POST /upgrade` when the director was
/// started from `config_path`: after a hand-over this process drains and
/// returns (exit 0).
///
/// Under systemd (`Type=notify`) the director reports `READY=1` here when
/// `notify_ready` (a new process of an upgrade does not: its predecessor
/// hands it the service with `MAINPID=`) — every core listens and the
/// admin API is up by now — and `STOPPING=1` as a stop's drain begins. A
/// reload needs no notification: the unit's `ExecReload=` is `mailpin ctl
/// reload`, which returns once the reload is done.
pub fn serve(mut director: Director, config_path: Option<PathBuf>, notify_ready: bool) {
    if notify_ready {
        sdnotify::ready(&ready_status(&director));
    }
    let (events_tx, events) = flume::unbounded::<MainEvent>();
    let signal_events = events_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            if signal_events
                .send(MainEvent::Signal(signals::wait()))
                .is_err()
            {
                break;
            }
        })
        .expect("start the signal thread");
    if config_path.is_some() {
        if let Some(control) = director.control() {
            control.send(ControlMsg::MainThread(events_tx.clone()));
        }
    }
    drop(events_tx);
    let signal = loop {
        let reply = match events.recv() {
            Ok(MainEvent::Signal(signals::Signal::Reload)) => {
                info!("SIGHUP: reloading the configuration");
                director.reload();
                continue;
            }
            Ok(MainEvent::Signal(signals::Signal::Stop(name))) => break name,
            Ok(MainEvent::Signal(signals::Signal::Upgrade)) => {
                info!("SIGUSR2: binary upgrade");
                None
            }
            Ok(MainEvent::Upgrade(reply)) => {
                info!("binary upgrade asked for by the admin API");
                Some(reply)
            }
            Err(_) => break "the signal thread ended",
        };
        let outcome = match &config_path {
            Some(path) => crate::upgrade::predecessor::hand_over(&mut director, path),
            None => Err(UpgradeRefused {
                status: 409,
                message: "no binary upgrade without a configuration file (dev mode)".into(),
            }),
        };
        match outcome {
            Ok(handed_over) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(handed_over.done()));
                }
                drain_after_hand_over(director, handed_over, events);
                return;
            }
            Err(refused) => {
                tracing::warn!(status = refused.status, error = %refused.message, "binary upgrade failed; this process goes on serving");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(refused));
                }
            }
        }
    };
    info!(
        signal,
        "stopping: no new connections, draining sessions (again to end at once)"
    );
    sdnotify::stopping(&format!("{signal}: draining sessions"));
    end_on_second_stop(events);
    director.stop();
    info!("stopped");
}

/// A stop signal during a drain ends the process at once; other events
/// are refused (an upgrade) or ignored.
fn end_on_second_stop(events: flume::Receiver<MainEvent>) {
    std::thread::spawn(move || {
        while let Ok(event) = events.recv() {
            match event {
                MainEvent::Signal(signals::Signal::Stop(name)) => {
                    tracing::warn!(
                        signal = name,
                        "stop signal during the drain: ending at once"
                    );
                    std::process::exit(0);
                }
                MainEvent::Upgrade(reply) => {
                    let _ = reply.send(Err(UpgradeRefused {
                        status: 409,
                        message: "this process is draining; upgrade the new one".into(),
                    }));
                }
                MainEvent::Signal(_) => {}
            }
        }
    });
}

/// The old process after a hand-over: drains its sessions (the new
/// process follows them), tells the new one it is done, and returns.
fn drain_after_hand_over(
    mut director: Director,
    handed_over: crate::upgrade::predecessor::HandedOver,
    events: flume::Receiver<MainEvent>,
) {
    info!(
        new_pid = handed_over.done().new_pid,
        "handed over: no new connections here, draining sessions (a stop signal ends at once)"
    );
    end_on_second_stop(events);
    director.drain_after_hand_over();
    handed_over.finish();
    info!("stopped after the binary upgrade");
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
