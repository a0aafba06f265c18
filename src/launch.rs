//! From a checked configuration to a running director.
//!
//! Parses the user-key template, resolves backend host names once at start,
//! builds the TLS configuration when a listener needs it, and starts the
//! cores. `run` then blocks the calling (main) thread until SIGINT or
//! SIGTERM and drains.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use tracing::info;

use crate::admin::bind::bind_admin;
use crate::config::{Config, PemSource, Protocol, TlsMode, TlsVersion};
use crate::control::reload::BoundListener;
use crate::control::{self, ControlMsg};
use crate::limits::Limits;
use crate::route::backends::{Backend, BackendId, BackendSet};
use crate::route::user_key::UserKeyFormat;
use crate::runtime::core::Shared;
use crate::runtime::mailbox::mailbox;
use crate::runtime::{start, Director};
use crate::sdnotify;
use crate::signals;
use crate::tls::{server_config_from_pem, server_config_from_pem_files, MinVersion, TlsSettings};

/// Why the director could not be started from a configuration.
#[derive(Debug)]
pub struct LaunchError(pub String);

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LaunchError {}

/// Resolves every backend's host for every protocol, once.
pub fn backend_set(config: &Config) -> Result<BackendSet, LaunchError> {
    let mut backends = Vec::new();
    for (i, b) in config.resolved_backends().into_iter().enumerate() {
        let id = BackendId::try_from(i)
            .map_err(|_| LaunchError("too many backends (at most 65535)".into()))?;
        let mut addrs = Vec::with_capacity(Protocol::ALL.len());
        for p in Protocol::ALL {
            let port = b.port(p);
            let addr: SocketAddr = (b.host.as_str(), port)
                .to_socket_addrs()
                .map_err(|e| {
                    LaunchError(format!(
                        "backend {}: cannot resolve host {:?}: {e}",
                        b.name, b.host
                    ))
                })?
                .next()
                .ok_or_else(|| {
                    LaunchError(format!(
                        "backend {}: host {:?} has no address",
                        b.name, b.host
                    ))
                })?;
            addrs.push(addr);
        }
        let addrs: [SocketAddr; 4] = addrs
            .try_into()
            .map_err(|_| LaunchError("internal: protocol count".into()))?;
        let mut backend = Backend::new(
            id,
            &b.name,
            b.host.clone(),
            addrs,
            b.weight,
            b.forward,
            b.connect_timeout,
        );
        // Health is checked per protocol port, for the protocols served.
        backend.check_only(|p| config.listen.iter().any(|l| l.protocol == p));
        backends.push(backend);
    }
    Ok(BackendSet::new(backends))
}

/// The TLS server configuration, if any listener uses TLS.
pub fn tls_config(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, LaunchError> {
    if config.listen.iter().all(|l| l.tls == TlsMode::None) {
        return Ok(None);
    }
    let Some(tls) = &config.tls else {
        return Err(LaunchError(
            "a listener uses TLS but [tls] is missing".into(),
        ));
    };
    let settings = TlsSettings {
        min_version: match tls.min_version {
            TlsVersion::Tls12 => MinVersion::Tls12,
            TlsVersion::Tls13 => MinVersion::Tls13,
        },
        ..TlsSettings::default()
    };
    let built = match (&tls.cert, &tls.key) {
        (PemSource::File(c), PemSource::File(k)) => server_config_from_pem_files(c, k, settings),
        (PemSource::Memory(c), PemSource::Memory(k)) => {
            server_config_from_pem(c.as_bytes(), k.as_bytes(), settings)
        }
        _ => {
            return Err(LaunchError(
                "tls.cert and tls.key must both be files".into(),
            ))
        }
    };
    built
        .map(Some)
        .map_err(|e| LaunchError(format!("TLS: {e}")))
}

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
