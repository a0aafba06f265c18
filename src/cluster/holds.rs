//! A present director's part in a move across the cluster (the other
//! side of `moves`).
//!
//! The watch hands every change of `users/U` for a user this director is
//! present for (or holds) to [`on_assignment`]. A new move mark: hold the
//! user's logins on its owner core, close its sessions on every core for a
//! move (backend side first; an IMAP session in a safe state follows
//! live), wait until the owner core counts none, then acknowledge in this
//! director's presence. The mark's end (commit, abort, a dropped or
//! replaced assignment) lets the held logins go to the backend etcd names.
//!
//! A holder never lets go before etcd says how the move ended: it reads
//! `users/U` every [`RECHECK`] while holding (a watch may be late), and a
//! mark whose mover is no longer registered it aborts itself.

use std::rc::Rc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tracing::{info, warn};

use crate::cluster::context::Context;
use crate::cluster::keys::{encode, unescape, AssignmentRecord, PresenceRecord};
use crate::cluster::moves::{put_if, read_user};
use crate::plane::{CoreMsg, KickReason, CLOSE_LIMIT};
use crate::route::router::owner_of;

/// How often a holder reads how its move stands.
const RECHECK: Duration = Duration::from_secs(1);

/// A change of `users/{escaped}` seen by the watch at revision `rev`
/// (`None`: deleted).
pub fn on_assignment(
    ctx: &Rc<Context>,
    escaped: &str,
    assigned: Option<AssignmentRecord>,
    rev: i64,
) {
    let Some(user) = unescape(escaped) else {
        return;
    };
    let holding = ctx.holding.borrow().get(&user).copied();
    if holding.is_none() && !ctx.present.borrow().contains(&user) {
        return;
    }
    let mark = assigned.as_ref().and_then(|r| r.mv.as_ref()).map(|m| m.id);
    match (mark, holding) {
        (Some(id), held) if held != Some(id) && ctx.present.borrow().contains(&user) => {
            ctx.holding.borrow_mut().insert(user.clone(), id);
            tokio::task::spawn_local(prepare(ctx.clone(), user, id, rev));
        }
        (mark, Some(id)) if mark != Some(id) => {
            ctx.holding.borrow_mut().remove(&user);
            let to = assigned.map(|r| r.b);
            tokio::task::spawn_local(settle(ctx.clone(), user, id, rev, to));
        }
        _ => {}
    }
}

/// Sends `make`'s request to core `core` and awaits the answer (bounded).
async fn ask<T>(
    ctx: &Context,
    core: usize,
    limit: Duration,
    make: impl FnOnce(flume::Sender<T>) -> CoreMsg,
) -> Option<T> {
    let (tx, rx) = flume::bounded(1);
    ctx.cores.get(core)?.send(make(tx)).ok()?;
    tokio::time::timeout(limit, rx.recv_async())
        .await
        .ok()?
        .ok()
}

/// Holds, closes and acknowledges move `id` of `user`; then waits until
/// etcd says how it ended.
async fn prepare(ctx: Rc<Context>, user: String, id: u64, rev: i64) {
    let owner = owner_of(&user, ctx.cores.len());
    ask(&ctx, owner, CLOSE_LIMIT, |done| CoreMsg::Hold {
        key: user.as_str().into(),
        done,
    })
    .await;
    let mut closed = 0usize;
    for core in 0..ctx.cores.len() {
        closed += ask(&ctx, core, CLOSE_LIMIT, |done| CoreMsg::KickUser {
            key: user.as_str().into(),
            reason: KickReason::Move,
            done,
        })
        .await
        .unwrap_or(0);
    }
    let idle = ask(&ctx, owner, CLOSE_LIMIT + Duration::from_secs(1), |done| {
        CoreMsg::WaitIdle {
            key: user.as_str().into(),
            limit: CLOSE_LIMIT,
            done,
        }
    })
    .await
    .unwrap_or(false);
    let still_holding = || ctx.holding.borrow().get(&user) == Some(&id);
    if !idle {
        warn!(
            user = user.as_str(),
            "cluster move: the user's sessions did not close in time; not acknowledged"
        );
    } else if let (true, true, Some(lease)) =
        (still_holding(), present(&ctx, &user), ctx.lease.get())
    {
        let presence = PresenceRecord {
            rev,
            n: 0,
            ack: Some(id),
            closed: u32::try_from(closed).unwrap_or(u32::MAX),
            settled: None,
        };
        let key = ctx.keys.active(&user, ctx.name());
        let put = TxnOp::put(
            key.as_str(),
            encode(&presence),
            Some(PutOptions::new().with_lease(lease)),
        );
        // Over the presence only if it is still there (never re-create one
        // a release deleted: the mover counts a gone presence as done).
        let exists = Compare::create_revision(key.as_str(), CompareOp::NotEqual, 0);
        if let Err(e) = ctx.txn(Txn::new().when([exists]).and_then([put])).await {
            warn!(user = user.as_str(), error = %e, "cluster move: acknowledgement not written");
        }
    }
    // Until etcd says how the move ended (the watch usually says first).
    while still_holding() {
        tokio::time::sleep(RECHECK).await;
        if !still_holding() {
            break;
        }
        let Ok(now) = read_user(&ctx, &user).await else {
            continue;
        };
        match &now {
            Some((_, r)) if r.mv.as_ref().is_some_and(|m| m.id == id) => {
                let mover = r.mv.as_ref().map(|m| m.by.clone()).unwrap_or_default();
                if ctx.registered(&mover) {
                    continue;
                }
                // The mover is gone: abort its move for it.
                let mut unmarked = r.clone();
                unmarked.mv = None;
                let rev = now.as_ref().map_or(0, |(rev, _)| *rev);
                if let Ok(Some(_)) = put_if(&ctx, &user, rev, Some(&unmarked)).await {
                    info!(
                        user = user.as_str(),
                        mover = mover.as_str(),
                        "cluster move: its director is gone; aborted"
                    );
                }
            }
            _ => {
                if ctx.holding.borrow_mut().remove(&user).is_some() {
                    settle(ctx.clone(), user.clone(), id, rev, now.map(|(_, r)| r.b)).await;
                }
                break;
            }
        }
    }
}

/// Whether this director holds presence for `user` (the borrow ends
/// here, never held across an await).
fn present(ctx: &Context, user: &str) -> bool {
    ctx.present.borrow().contains(user)
}

/// Ends the hold of `user` for move `id`: the held logins go to `to` (the
/// backend etcd names; `None`: the next login claims); then says so in
/// this director's presence (if it still has one), which the mover waits
/// for, so that once a move returns every director answers the same.
async fn settle(ctx: Rc<Context>, user: String, id: u64, rev: i64, to: Option<String>) {
    let owner = owner_of(&user, ctx.cores.len());
    ask(&ctx, owner, CLOSE_LIMIT, |done| CoreMsg::SettleMove {
        key: user.as_str().into(),
        to: to.map(String::into_boxed_str),
        done,
    })
    .await;
    for core in &ctx.cores {
        let _ = core.send(CoreMsg::EndKick {
            key: user.as_str().into(),
        });
    }
    if let (true, Some(lease)) = (present(&ctx, &user), ctx.lease.get()) {
        let presence = PresenceRecord {
            rev,
            n: 0,
            ack: None,
            closed: 0,
            settled: Some(id),
        };
        // Only over a presence that is still there: a release (the
        // assignment dropped here) may have deleted it, and must stay done.
        let key = ctx.keys.active(&user, ctx.name());
        let put = TxnOp::put(
            key.as_str(),
            encode(&presence),
            Some(PutOptions::new().with_lease(lease)),
        );
        let exists = Compare::create_revision(key.as_str(), CompareOp::NotEqual, 0);
        let _ = ctx.txn(Txn::new().when([exists]).and_then([put])).await;
    }
}
