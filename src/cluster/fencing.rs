//! Acting on the fence: when this director's deadline passes, every
//! session on every core is closed (backend side first, as any kick), and
//! logins are refused with the protocol's temporary failure until a fresh
//! lease opens the fence again (the cores read the fence before routing;
//! see `session::failover`).
//!
//! While fenced, the kick is repeated every [`REKICK`], so a login that
//! was routed an instant before the deadline cannot stay. The cores also
//! forget their users' assignments, and once the sessions are closed the
//! lease is given up: a new one starts with no presence, and the
//! director claims its users afresh.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::cluster::context::Context;
use crate::cluster_link::ClusterCounters;
use crate::plane::CoreMsg;
use crate::plane::KickReason;

/// How often a fenced director closes what may have slipped in.
pub const REKICK: Duration = Duration::from_millis(500);
/// How long a kick waits for the cores' answers.
const KICK_LIMIT: Duration = Duration::from_secs(5);

/// Watches the fence deadline, forever.
pub async fn run(ctx: &Context) {
    // A director starts fenced with nothing to close: not a fence event.
    let mut fenced = true;
    // The lease served under: a new one without a fence seen here (etcd
    // expired the old one while this task slept) is fenced all the same.
    let mut serving: Option<i64> = None;
    loop {
        match ctx.link.fence.deadline() {
            Some(_) if serving.is_some_and(|l| ctx.lease.get() != Some(l)) => {
                serving = None;
                warn!("the lease changed under this director: closing what it served");
                kick_all(ctx).await;
                ctx.present.borrow_mut().clear();
                ctx.holding.borrow_mut().clear();
                // Claims made under the new lease before the kick are
                // forgotten by the cores: that lease goes too.
                ctx.give_up_lease.notify_waiters();
            }
            Some(deadline) => {
                serving = ctx.lease.get();
                if fenced {
                    fenced = false;
                    info!("holding a lease: serving");
                    ctx.publish();
                }
                let wake = deadline.min(Instant::now() + REKICK);
                tokio::time::sleep_until(wake.into()).await;
            }
            None => {
                if !fenced {
                    fenced = true;
                    ClusterCounters::bump(&ctx.link.counters.fences);
                    warn!(
                        "fenced: no lease confirmed in time; closing every session and refusing logins until etcd answers"
                    );
                    ctx.publish();
                }
                let closed = kick_all(ctx).await;
                // The cores forgot their users and holds with the kick.
                ctx.present.borrow_mut().clear();
                ctx.holding.borrow_mut().clear();
                if serving.take().is_some() {
                    // Sessions closed: now the presence may go with the
                    // lease.
                    ctx.give_up_lease.notify_waiters();
                }
                if closed > 0 {
                    info!(sessions = closed, "fenced: sessions closed");
                    ctx.link
                        .counters
                        .fenced_sessions
                        .fetch_add(closed as u64, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(REKICK).await;
            }
        }
    }
}

/// Closes every session on every core; the number closed once their
/// backend connections are closed (or the bound passed).
async fn kick_all(ctx: &Context) -> usize {
    let mut answers = Vec::with_capacity(ctx.cores.len());
    for core in &ctx.cores {
        let (done, rx) = flume::bounded(1);
        if core
            .send(CoreMsg::KickAll {
                reason: KickReason::Fenced,
                done,
            })
            .is_ok()
        {
            answers.push(rx);
        }
    }
    let mut closed = 0;
    for rx in answers {
        match tokio::time::timeout(KICK_LIMIT, rx.recv_async()).await {
            Ok(Ok(n)) => closed += n,
            _ => warn!("a core did not confirm its sessions closed in time"),
        }
    }
    closed
}
