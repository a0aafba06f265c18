//! The main thread of a serving director: it waits for signals and for
//! `POST /upgrade`, reloads on SIGHUP, hands over to a new process on a
//! binary upgrade (SIGUSR2) and drains on SIGINT or SIGTERM.

use std::path::PathBuf;

use tracing::info;

use crate::launch::Director;
use crate::plane::handover::{MainEvent, UpgradeRefused};
use crate::plane::ControlMsg;
use crate::sdnotify;
use crate::signals;

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
