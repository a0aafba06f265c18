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

use crate::mailbox::{Mailbox, MailboxSender};
use crate::plane::{ControlMsg, CoreMsg, Shared};
use crate::route::backends::BackendSet;
use crate::startup::{run_runtime, StartError};

pub mod cluster_admin;
pub mod events;
pub mod history;
pub mod peer;
pub mod reload;
pub mod seam;
pub mod state;

use reload::BoundListener;
use state::Control;

/// Stops what the caller started on the control thread (the admin API):
/// a binary upgrade does so before the old process drains.
pub type StopFn = Box<dyn FnOnce()>;

/// The running control plane.
pub struct ControlPlane {
    tx: MailboxSender<ControlMsg>,
    thread: Option<JoinHandle<()>>,
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

    /// Stops the control thread and waits for it.
    pub fn stop(&mut self) {
        let _ = self.tx.send(ControlMsg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the control thread: health checks for every checked protocol
/// port of every backend, the load sampler for the status page, and then
/// `with_control` on that thread (the caller starts the admin API there:
/// the control plane serves it but does not import it; what it returns
/// stops it again). `listeners` are
/// the `[[listen]]` blocks and where they are bound, and `config_path` the
/// file a reload re-reads (`None` in dev mode).
#[allow(clippy::too_many_arguments)]
pub fn start(
    shared: Arc<Shared>,
    config_path: Option<PathBuf>,
    listeners: Vec<BoundListener>,
    set: Arc<BackendSet>,
    cores: Vec<MailboxSender<CoreMsg>>,
    tx: MailboxSender<ControlMsg>,
    mailbox: Mailbox<ControlMsg>,
    with_control: Box<dyn FnOnce(Rc<Control>) -> StopFn + Send>,
) -> Result<ControlPlane, StartError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let driver = shared.config.server.driver;
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let main = async move {
                let control =
                    std::rc::Rc::new(Control::new(shared, config_path, listeners, set, cores));
                control.start_checks();
                // Cluster mode: this director's verdicts as they start.
                control.report_health_to_cluster(&control.backends());
                monoio::spawn(sample_load(control.clone()));
                let mut admin_stop = Some(with_control(control.clone()));
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
                                stop();
                            }
                            let _ = done.send(());
                        }
                        // -- cluster mode --
                        ControlMsg::ClusterAdmin {
                            backend,
                            state,
                            done,
                        } => {
                            let control = control.clone();
                            monoio::spawn(async move {
                                let closed = control.cluster_admin(&backend, state).await;
                                if let Some(done) = done {
                                    let _ = done.send(closed);
                                }
                            });
                        }
                        ControlMsg::ClusterKick { key, done } => {
                            let control = control.clone();
                            monoio::spawn(async move {
                                let _ = done.send(control.kick_user(&key).await);
                            });
                        }
                        // -- end cluster mode --
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
