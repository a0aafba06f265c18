//! Publishing this director's own health verdicts: `health/{B}/{D}` under
//! its lease, written when a verdict changes (and all of them again under
//! a new lease, since the old lease took its keys along).
//!
//! The control plane reports the whole map through
//! [`crate::cluster_link::HealthPort`]; the view's `degraded` list follows
//! it at once, the majority verdicts follow the watch. A backend that
//! appears in the report (a reload added it) is given the admin state
//! etcd holds for it.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};

use crate::admin::time::rfc3339;
use crate::cluster::context::Context;
use crate::cluster::endpoints::{bounded, CALL_TIMEOUT};
use crate::cluster::keys::{encode, HealthRecord};
use crate::cluster::shared::admin_state;
use crate::plane::ControlMsg;

/// How often the publisher looks for a new lease (or retries a failed
/// write) when no report arrives.
const RECHECK: Duration = Duration::from_secs(1);

/// Operations per transaction (etcd's default limit is 128).
const CHUNK: usize = 100;

/// Publishes this director's verdicts, forever.
pub async fn run(ctx: &Context) {
    let reports = ctx.link.health.reports();
    // What etcd holds under `under` (the lease it was written with).
    let mut published: BTreeMap<String, bool> = BTreeMap::new();
    let mut under: Option<i64> = None;
    loop {
        if let Some(latest) = ctx.link.health.latest() {
            take(ctx, latest);
        }
        let lease = ctx.lease.get().filter(|_| !ctx.link.fence.is_fenced());
        if lease != under {
            published.clear();
            under = lease;
        }
        if let Some(lease) = lease {
            let own = ctx.seen.borrow().own.clone();
            let ops = changes(ctx, lease, &own, &published);
            if !ops.is_empty() && write(ctx, ops).await {
                published = own;
            }
        }
        tokio::select! {
            report = reports.recv_async() => {
                if let Ok(report) = report {
                    take(ctx, report);
                }
            }
            () = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Takes a report of the control plane as this director's own view. A
/// backend new to it (added by a reload) gets the admin state the
/// cluster stores for it.
fn take(ctx: &Context, own: BTreeMap<String, bool>) {
    let mut seen = ctx.seen.borrow_mut();
    if seen.own == own {
        return;
    }
    if let Some(control) = &ctx.control {
        for backend in own.keys().filter(|b| !seen.own.contains_key(*b)) {
            let stored = seen.admin.get(backend).and_then(|s| admin_state(s));
            if let Some(state) = stored {
                let _ = control.send(ControlMsg::ClusterAdmin {
                    backend: backend.clone(),
                    state,
                    done: None,
                });
            }
        }
    }
    seen.own = own;
    drop(seen);
    ctx.publish();
}

/// The puts and deletes that bring etcd from `published` to `own`.
fn changes(
    ctx: &Context,
    lease: i64,
    own: &BTreeMap<String, bool>,
    published: &BTreeMap<String, bool>,
) -> Vec<TxnOp> {
    let at = rfc3339(std::time::SystemTime::now());
    let mut ops = Vec::new();
    for (backend, up) in own {
        if published.get(backend) != Some(up) {
            let record = HealthRecord {
                up: *up,
                at: at.clone(),
            };
            ops.push(TxnOp::put(
                ctx.keys.health(backend, ctx.name()),
                encode(&record),
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
    }
    for backend in published.keys().filter(|b| !own.contains_key(*b)) {
        ops.push(TxnOp::delete(ctx.keys.health(backend, ctx.name()), None));
    }
    ops
}

/// Writes `ops` in transactions of [`CHUNK`]; true if all committed.
async fn write(ctx: &Context, ops: Vec<TxnOp>) -> bool {
    let ep = ctx.lease_endpoint.get();
    for chunk in ops.chunks(CHUNK) {
        let result = async {
            let mut client = ctx.endpoints.client(ep).await?;
            bounded(
                CALL_TIMEOUT,
                client.txn(Txn::new().and_then(chunk.to_vec())),
            )
            .await
        }
        .await;
        if let Err(e) = result {
            ctx.failed("health", e);
            return false;
        }
    }
    true
}
