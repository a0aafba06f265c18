//! Cluster mode: several directors that agree through etcd.
//!
//! With `[cluster]` in the config, [`start`] runs the etcd client on a
//! thread of its own (a current-thread tokio runtime: the client is tonic
//! on tokio and must never run on a core). The thread
//! - holds this director's lease and keeps the fence deadline
//!   ([`crate::cluster_link::Fence`]) moving while etcd acknowledges its
//!   keepalives, and registers the director under `directors/`
//!   (`membership`);
//! - elects a leader by compare-and-create; the leader ticks every second
//!   (`membership`);
//! - watches everything under the prefix, re-creating a watch that goes
//!   silent on another endpoint and resyncing after a compaction
//!   (`watch`), and publishes the view `GET /cluster` shows;
//! - closes every session when the fence deadline passes (`fencing`);
//! - moves users across every director (`moves`: the mover marks the
//!   user, waits for every present director's acknowledgement, commits;
//!   `holds`: a present director holds the user's logins, closes its
//!   sessions and acknowledges);
//! - serves the cores' claims and releases of users (`store`): batched
//!   compare-and-set of `users/{key}` with this director's presence under
//!   its lease, so every director routes a user to one backend.
//! - makes admin actions act on every director: a kick or a backend's
//!   admin state issued here becomes a command every director carries
//!   out and acknowledges (`commands`, `actions`); admin states live in
//!   etcd and are applied from the watch (`shared`);
//! - publishes this director's own health verdicts (`own_health`) and
//!   counts the cluster's majority verdicts (`verdict`).
//!
//! The key layout is in [`keys`], group commit in [`batch`]; both are pure
//! and built without the `cluster` feature too.

pub mod batch;
pub mod keys;
pub mod verdict;

#[cfg(feature = "cluster")]
mod context;
#[cfg(feature = "cluster")]
pub mod endpoints;
#[cfg(feature = "cluster")]
mod fencing;
#[cfg(feature = "cluster")]
mod holds;
#[cfg(feature = "cluster")]
pub mod membership;
#[cfg(feature = "cluster")]
mod moves;
#[cfg(feature = "cluster")]
pub mod store;
#[cfg(feature = "cluster")]
pub mod watch;
// -- cluster-wide admin actions and shared health --
#[cfg(feature = "cluster")]
pub mod actions;
#[cfg(feature = "cluster")]
pub mod command_types;
#[cfg(feature = "cluster")]
pub mod commands;
#[cfg(feature = "cluster")]
mod own_health;
#[cfg(feature = "cluster")]
pub mod shared;
// -- end --

use std::sync::Arc;

use crate::cluster_link::ClusterLink;
use crate::config::ClusterConfig;
use crate::mailbox::MailboxSender;
use crate::plane::{ControlMsg, CoreMsg};

/// The running cluster thread; dropping it leaves the cluster (the lease
/// is revoked, so the others see this director gone at once).
pub struct ClusterHandle {
    #[cfg(feature = "cluster")]
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClusterHandle {
    /// Leaves the cluster and stops the thread.
    pub fn stop(&mut self) {
        #[cfg(feature = "cluster")]
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ClusterHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the cluster thread for `config`, publishing through `link`;
/// `cores` get the kicks of fencing, `control` (the control plane) applies
/// the cluster's admin states and kicks, `admin` is the admin API address
/// the director registers. Returns at once: the director starts fenced and
/// serves once etcd has granted it a lease.
#[cfg(feature = "cluster")]
pub fn start(
    config: &ClusterConfig,
    link: Arc<ClusterLink>,
    cores: Vec<MailboxSender<CoreMsg>>,
    control: Option<MailboxSender<ControlMsg>>,
    admin: String,
) -> Result<ClusterHandle, String> {
    use std::cell::{Cell, RefCell};

    use crate::cluster_link::FenceTimes;

    let endpoints = endpoints::Endpoints::new(config).map_err(|e| format!("cluster: {e}"))?;
    let (agent_tx, agent_rx) = flume::unbounded();
    let ctx = context::Context {
        link,
        keys: keys::Keys::new(&config.prefix),
        endpoints,
        times: FenceTimes::for_ttl(config.lease_ttl),
        record: keys::DirectorRecord {
            admin,
            since: crate::admin::time::rfc3339(std::time::SystemTime::now()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        cores,
        lease: Cell::new(None),
        lease_endpoint: Cell::new(0),
        connected: Cell::new(false),
        seen: RefCell::new(context::Seen::default()),
        last_error: RefCell::new(None),
        leader_gone: tokio::sync::Notify::new(),
        give_up_lease: tokio::sync::Notify::new(),
        present: Default::default(),
        holding: Default::default(),
        ops_endpoint: Cell::new(0),
        control,
        agent: agent_tx,
        changed: tokio::sync::Notify::new(),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let port_requests = ctx
        .link
        .take_port_requests()
        .ok_or("cluster: the director's port is served already")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cluster: cannot build its runtime: {e}"))?;
    let thread = std::thread::Builder::new()
        .name("cluster".into())
        .spawn(move || {
            // Moves run as tasks of their own on this thread (a LocalSet:
            // they share the context, which never leaves the thread).
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let ctx = std::rc::Rc::new(ctx);
                ctx.publish();
                tokio::select! {
                    _ = stop_rx => {}
                    () = membership::run(&ctx) => {}
                    () = watch::run(&ctx) => {}
                    () = fencing::run(&ctx) => {}
                    () = store::run(&ctx, port_requests.cores) => {}
                    () = moves::serve(ctx.clone(), port_requests.control) => {}
                                        () = actions::run_agent(&ctx, agent_rx) => {}
                    () = actions::serve_requests(&ctx) => {}
                    () = own_health::run(&ctx) => {}
                }
                // Leaving: no more serving under this lease, then let the
                // others know at once.
                ctx.link.fence.close();
                if let Some(lease) = ctx.lease.take() {
                    let _ = membership::revoke(&ctx, lease).await;
                }
                tracing::info!("left the cluster");
            });
        })
        .map_err(|e| format!("cluster: cannot start its thread: {e}"))?;
    Ok(ClusterHandle {
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Without the `cluster` feature there is no etcd client: a `[cluster]`
/// config is refused at start with this explanation.
#[cfg(not(feature = "cluster"))]
pub fn start(
    _config: &ClusterConfig,
    _link: Arc<ClusterLink>,
    _cores: Vec<MailboxSender<CoreMsg>>,
    _control: Option<MailboxSender<ControlMsg>>,
    _admin: String,
) -> Result<ClusterHandle, String> {
    Err("[cluster] is set, but this mailpin was built without the `cluster` feature (rebuild with default features; it needs protoc)".into())
}
