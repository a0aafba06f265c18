//! What each [`Command`] does on a director, and the admin API's
//! cluster-wide requests turned into commands.
//!
//! - A kick ends the user's sessions on this director (backend side
//!   first), through the control plane (`ControlMsg::ClusterKick`).
//! - An admin command applies the backend's admin state as etcd holds it
//!   *now* (not as it was when the command was written: a later `up` wins
//!   over an earlier `down` on every director alike), through the control
//!   plane (`ControlMsg::ClusterAdmin`); for `down` the answer comes once
//!   every session there is closed.
//!
//! The admin API's requests ([`crate::cluster_link::AdminRequest`]) are
//! issued as commands and answered with what every director did.

use std::time::Duration;

use etcd_client::TxnOp;

use crate::admin::time::rfc3339;
use crate::cluster::commands::{self, AckRecord, Command, Pending};
use crate::cluster::context::Context;
use crate::cluster::keys::{encode, AdminRecord};
use crate::cluster::shared::admin_state;
use crate::cluster_link::AdminRequest;
use crate::control::state::CLOSE_LIMIT;
use crate::plane::ControlMsg;

/// How long this director waits for its control plane to act: the
/// control plane's own bound on closing sessions, and a second more.
const ACT_LIMIT: Duration = Duration::from_secs(CLOSE_LIMIT.as_secs() + 1);

/// Carries `what` out on this director; the acknowledgement to put.
pub async fn carry_out(ctx: &Context, what: &Command) -> AckRecord {
    let Some(control) = &ctx.control else {
        // A cluster thread without a director (tests): nothing to close.
        return AckRecord::done(0);
    };
    match what {
        Command::Kick { user } => {
            let (done, rx) = flume::bounded(1);
            let _ = control.send(ControlMsg::ClusterKick {
                key: user.clone(),
                done,
            });
            match tokio::time::timeout(ACT_LIMIT, rx.recv_async()).await {
                Ok(Ok(n)) => AckRecord::done(n as u64),
                _ => AckRecord::failed(0, "the control plane did not answer in time"),
            }
        }
        Command::Admin { backend } => {
            let stored = ctx.seen.borrow().admin.get(backend).cloned();
            let Some(state) = stored.as_deref().and_then(admin_state) else {
                // Deleted meanwhile: nothing to apply.
                return AckRecord::done(0);
            };
            let (done, rx) = flume::bounded(1);
            let _ = control.send(ControlMsg::ClusterAdmin {
                backend: backend.clone(),
                state,
                done: Some(done),
            });
            match tokio::time::timeout(ACT_LIMIT, rx.recv_async()).await {
                Ok(Ok(true)) => AckRecord::done(0),
                Ok(Ok(false)) => AckRecord::failed(
                    0,
                    format!("some sessions on {backend} did not close in time"),
                ),
                _ => AckRecord::failed(0, "the control plane did not answer in time"),
            }
        }
    }
}

/// Carries out every command the watch hands over, concurrently, forever.
pub async fn run_agent(ctx: &Context, pending: flume::Receiver<Pending>) {
    commands::serve_all(pending, |p: Pending| async move {
        let ack = carry_out(ctx, &p.what).await;
        commands::acknowledge(ctx, &p.id, &ack).await;
    })
    .await
}

/// How long an issuer waits for every director: the time one takes to
/// close sessions, plus a lease TTL for one cut off from etcd (whose
/// registration goes once its lease expires), plus a second.
pub fn wait_limit(ctx: &Context) -> Duration {
    ACT_LIMIT + ctx.times.ttl
}

/// Serves the admin API's cluster-wide requests, concurrently, forever.
pub async fn serve_requests(ctx: &Context) {
    commands::serve_all(ctx.link.admin.requests(), |r: AdminRequest| async move {
        match r {
            AdminRequest::Kick { key, reply } => {
                let what = Command::Kick { user: key };
                let _ = reply.send(commands::issue(ctx, what, Vec::new(), wait_limit(ctx)).await);
            }
            AdminRequest::SetAdmin {
                backend,
                state,
                reply,
            } => {
                if admin_state(&state).is_none() {
                    let _ = reply.send(Err(format!("unknown admin state {state:?}")));
                    return;
                }
                let record = AdminRecord {
                    state,
                    by: ctx.name().to_owned(),
                    at: rfc3339(std::time::SystemTime::now()),
                };
                let put = TxnOp::put(ctx.keys.backend_admin(&backend), encode(&record), None);
                let what = Command::Admin { backend };
                let _ = reply.send(commands::issue(ctx, what, vec![put], wait_limit(ctx)).await);
            }
        }
    })
    .await
}
