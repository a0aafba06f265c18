//! The control plane: one thread, off the data path, that owns backend
//! state, runs the health checks and serves the admin API.
//!
//! Cores tell it about unreachable backends through its mailbox; it tells
//! the cores about every change through theirs. It has its own monoio
//! runtime so checks and admin requests are as asynchronous as the cores,
//! yet a slow check or a slow admin client never delays a mail session.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tracing::debug;

use crate::admin::{self, AdminListeners};
use crate::config::Protocol;
use crate::route::backends::{BackendId, BackendSet};
use crate::runtime::core::{CoreMsg, Shared};
use crate::runtime::mailbox::{Mailbox, MailboxSender};
use crate::runtime::{run_runtime, StartError};

pub mod events;
pub mod handover;
pub mod history;
pub mod peer;
pub mod reload;
pub mod state;

use reload::BoundListener;
use state::Control;

/// Messages to the control plane.
#[derive(Debug)]
pub enum ControlMsg {
    /// A client login could not connect to a backend.
    Unreachable {
        /// The backend.
        backend: BackendId,
        /// The protocol whose port failed.
        protocol: Protocol,
        /// What went wrong.
        error: String,
    },
    /// Re-read the configuration file (SIGHUP); the outcome is logged.
    Reload,
    /// Binary upgrade: where `POST /upgrade` asks the main thread.
    MainThread(flume::Sender<handover::MainEvent>),
    /// Binary upgrade, in the new process: forward admin actions to the
    /// predecessor (`None` once it has exited).
    Predecessor(Option<handover::PredecessorLink>),
    /// Binary upgrade, in the old process: an admin action forwarded by
    /// the new one.
    Peer {
        /// What to do.
        request: handover::PeerRequest,
        /// Gets the answer once done.
        reply: flume::Sender<handover::PeerAnswer>,
    },
    /// Binary upgrade, in the old process: stop accepting admin requests
    /// (the new process serves the admin API now); answered once stopped.
    StopAdmin(flume::Sender<()>),
    /// Stop.
    Shutdown,
}

/// The running control plane.
pub struct ControlPlane {
    tx: MailboxSender<ControlMsg>,
    thread: Option<JoinHandle<()>>,
    /// The admin socket file, removed once the control thread stopped.
    admin_socket: Option<PathBuf>,
}

impl ControlPlane {
    /// Asks for a reload of the configuration file (SIGHUP).
    pub fn reload(&self) {
        let _ = self.tx.send(ControlMsg::Reload);
    }

    /// Sends the control thread a message.
    pub fn send(&self, msg: ControlMsg) {
        let _ = self.tx.send(msg);
    }

    /// The control thread's mailbox, for another thread.
    pub fn sender(&self) -> MailboxSender<ControlMsg> {
        self.tx.clone()
    }

    /// Leaves the admin socket file in place when stopping: after a
    /// binary upgrade it belongs to the new process.
    pub fn keep_admin_socket(&mut self) {
        self.admin_socket = None;
    }

    /// Stops the control thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.tx.send(ControlMsg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(path) = self.admin_socket.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the control thread: health checks for every checked protocol
/// port of every backend, the load sampler for the status page, and the
/// admin API on its already bound listeners. `listeners` are the
/// `[[listen]]` blocks and where they are bound, and `config_path` the file
/// a reload re-reads (`None` in dev mode).
#[allow(clippy::too_many_arguments)]
pub fn start(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    listeners: Vec<BoundListener>,
    set: Arc<BackendSet>,
    cores: Vec<MailboxSender<CoreMsg>>,
    tx: MailboxSender<ControlMsg>,
    mailbox: Mailbox<ControlMsg>,
    admin: AdminListeners,
) -> Result<ControlPlane, StartError> {
    let admin_socket = admin.unix.as_ref().map(|(_, path)| path.clone());
    let (ready_tx, ready_rx) = mpsc::channel();
    let driver = shared.config.server.driver;
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let main = async move {
                let control =
                    std::rc::Rc::new(Control::new(shared, config_path, listeners, set, cores));
                control.start_checks();
                monoio::spawn(sample_load(control.clone()));
                let mut admin_stop = Some(admin::spawn_servers(control.clone(), admin));
                while let Some(msg) = mailbox.recv().await {
                    match msg {
                        ControlMsg::Unreachable {
                            backend,
                            protocol,
                            error,
                        } => control.unreachable(backend, protocol, error),
                        ControlMsg::Reload => {
                            let control = control.clone();
                            monoio::spawn(async move {
                                let _ = control.reload().await;
                            });
                        }
                        ControlMsg::MainThread(main) => control.set_main_thread(main),
                        ControlMsg::Predecessor(link) => control.set_predecessor(link),
                        ControlMsg::Peer { request, reply } => {
                            let control = control.clone();
                            monoio::spawn(async move {
                                let _ = reply.send(control.peer_request(request).await);
                            });
                        }
                        ControlMsg::StopAdmin(done) => {
                            if let Some(stop) = admin_stop.take() {
                                stop.stop();
                            }
                            let _ = done.send(());
                        }
                        ControlMsg::Shutdown => break,
                    }
                }
                debug!("control plane stopped");
            };
            run_runtime(driver, "control", ready_tx, main);
        })
        .map_err(|e| StartError(format!("cannot start the control thread: {e}")))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ControlPlane {
            tx,
            thread: Some(thread),
            admin_socket,
        }),
        Ok(Err(e)) => Err(StartError(e)),
        Err(_) => Err(StartError("the control thread died while starting".into())),
    }
}

/// Samples the load every [`history::SAMPLE_INTERVAL`] for `GET /history`
/// (a first sample at once sets the baseline of the rates).
async fn sample_load(control: Rc<Control>) {
    loop {
        control.sample_load().await;
        monoio::time::sleep(history::SAMPLE_INTERVAL).await;
    }
}
