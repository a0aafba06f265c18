//! The control plane's requests in cluster mode: moving a user across
//! every director (the mover's side), and reading where etcd says users
//! are.
//!
//! A move of user U (at `users/U` revision R, backend B) to T:
//! 1. **Mark**: `If mod_revision(users/U) == R Then put users/U {b: B,
//!    mv: {id, by: me, to: T}}` (revision R1). From now on no director
//!    records a new presence for U (claims of a marked user are refused),
//!    and one that recorded one since R made the mark fail (every presence
//!    rewrites `users/U`): the directors present now are all there will be.
//! 2. **Acknowledgements**: every present director holds U's logins,
//!    closes U's sessions (backend side first) and writes `ack: id` into
//!    its presence (`holds`). The mover polls `active/U/` until every
//!    presence acknowledges, or is gone (its director's lease expired — a
//!    director cut off has fenced before that).
//! 3. **Commit**: `If mod_revision(users/U) == R1 Then put users/U {b: T}`
//!    (or delete it, when T is "wherever the next login goes"); the
//!    present directors see it, let the held logins go to T and say so in
//!    their presence (`settled: id`); the mover returns once every one has
//!    (at most 2 s), so after a move every director answers T. If an
//!    acknowledgement does not come within [`ack_limit`], the mover aborts
//!    instead (the mark goes, U stays on B).
//!
//! A mark whose mover is no longer registered is void: claims overwrite
//! it, and holders waiting on it abort it themselves.

use std::rc::Rc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use tracing::{info, warn};

use crate::cluster::context::Context;
use crate::cluster::keys::{decode, encode, unescape, AssignmentRecord, MoveMark, PresenceRecord};
use crate::cluster_link::{ClusterCounters, ControlRequest};
use crate::plane::CLOSE_LIMIT;

/// How often the mover reads the acknowledgements.
const ACK_POLL: Duration = Duration::from_millis(10);

/// How long a mover waits for every acknowledgement: the sessions'
/// close, or else the lease of a director that cannot answer (it has
/// fenced by then), and a watch re-created after silence.
pub fn ack_limit(ctx: &Context) -> Duration {
    CLOSE_LIMIT + ctx.times.ttl + crate::cluster::membership::SILENCE
}

/// Serves the control plane's requests, each in a task of its own.
pub async fn serve(ctx: Rc<Context>, rx: flume::Receiver<ControlRequest>) {
    while let Ok(request) = rx.recv_async().await {
        let ctx = ctx.clone();
        tokio::task::spawn_local(async move {
            match request {
                ControlRequest::Move { user, to, reply } => {
                    let result = move_user(&ctx, &user, to.as_deref()).await;
                    let c = &ctx.link.counters;
                    ClusterCounters::bump(match result {
                        Ok(_) => &c.moves_committed,
                        Err(_) => &c.moves_failed,
                    });
                    let _ = reply.send(result);
                }
                ControlRequest::Lookup { user, reply } => {
                    let _ = reply.send(lookup(&ctx, &user).await);
                }
                ControlRequest::UsersOn { backend, reply } => {
                    let _ = reply.send(users_on(&ctx, &backend).await);
                }
            }
        });
    }
    std::future::pending().await
}

/// A user's assignment as etcd holds it: mod revision and record.
pub async fn read_user(
    ctx: &Context,
    user: &str,
) -> Result<Option<(i64, AssignmentRecord)>, String> {
    let resp = ctx
        .txn(Txn::new().and_then([TxnOp::get(ctx.keys.user(user), None)]))
        .await?;
    for op in resp.op_responses() {
        if let TxnOpResponse::Get(get) = op {
            return match get.kvs().first() {
                None => Ok(None),
                Some(kv) => decode::<AssignmentRecord>(kv.value())
                    .map(|r| Some((kv.mod_revision(), r)))
                    .ok_or_else(|| "unreadable assignment record in etcd".to_owned()),
            };
        }
    }
    Ok(None)
}

/// Writes `record` to `users/U` if it is still at `rev`; the revision
/// written, or `None` when it had changed.
pub async fn put_if(
    ctx: &Context,
    user: &str,
    rev: i64,
    record: Option<&AssignmentRecord>,
) -> Result<Option<i64>, String> {
    let key = ctx.keys.user(user);
    let write = match record {
        Some(r) => TxnOp::put(key.as_str(), encode(r), None),
        None => TxnOp::delete(key.as_str(), None),
    };
    let txn = Txn::new()
        .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
        .and_then([write]);
    let resp = ctx.txn(txn).await?;
    Ok(resp
        .succeeded()
        .then(|| resp.header().map_or(0, |h| h.revision())))
}

/// Moves `user` to `to` (`None`: drops its assignment) on every director;
/// the sessions closed, or why the user stays.
async fn move_user(ctx: &Context, user: &str, to: Option<&str>) -> Result<u32, String> {
    static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let started = Instant::now();
    for _ in 0..3 {
        let Some((rev, record)) = read_user(ctx, user).await? else {
            // Unassigned: nobody serves it; a target is simply recorded.
            let Some(to) = to else { return Ok(0) };
            let record = assignment(ctx, to);
            let key = ctx.keys.user(user);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), encode(&record), None)]);
            if ctx.txn(txn).await?.succeeded() {
                return Ok(0);
            }
            continue;
        };
        if let Some(mv) = record.mv.as_ref().filter(|mv| ctx.registered(&mv.by)) {
            return Err(format!("the user is being moved already (by {})", mv.by));
        }
        let id = (u64::from(std::process::id()) << 32)
            | IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut marked = record.clone();
        marked.mv = Some(MoveMark {
            id,
            by: ctx.name().to_owned(),
            to: to.map(str::to_owned),
        });
        let Some(marked_at) = put_if(ctx, user, rev, Some(&marked)).await? else {
            continue;
        };
        let acks = wait_acks(ctx, user, id).await;
        let mut unmarked = record.clone();
        unmarked.mv = None;
        let (commit, result) = match acks {
            Ok(closed) => {
                let commit = to.map(|to| assignment(ctx, to));
                (commit, Ok(closed))
            }
            Err(why) => (Some(unmarked), Err(why)),
        };
        // The commit (or abort) must land: the present directors hold the
        // user's logins until it does.
        let mut landed = None;
        for _ in 0..5 {
            match put_if(ctx, user, marked_at, commit.as_ref()).await {
                Ok(done) => {
                    landed = Some(done.is_some());
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        if let (Some(true), Ok(_)) = (landed, &result) {
            wait_settled(ctx, user, id).await;
        }
        return match (landed, result) {
            (Some(true), Ok(closed)) => {
                info!(
                    user,
                    from = record.b.as_str(),
                    to = to.unwrap_or("(next login)"),
                    sessions = closed,
                    ms = started.elapsed().as_millis() as u64,
                    "moved across the cluster"
                );
                Ok(closed)
            }
            (Some(true), Err(why)) => {
                warn!(user, reason = %why, "move abandoned: the user stays");
                Err(why)
            }
            (Some(false), _) => Err("the move was overtaken (its mark was voided)".into()),
            (None, _) => Err("etcd did not take the move's end; the mark is voided once this director's lease ends".into()),
        };
    }
    Err("the user's assignment kept changing; try again".into())
}

/// A fresh assignment to `backend` by this director.
fn assignment(ctx: &Context, backend: &str) -> AssignmentRecord {
    AssignmentRecord {
        b: backend.to_owned(),
        by: ctx.name().to_owned(),
        n: 0,
        at: crate::admin::time::rfc3339(std::time::SystemTime::now()),
        mv: None,
    }
}

/// Waits until every presence for `user` acknowledges move `id` (or is
/// gone); the sessions they closed.
async fn wait_acks(ctx: &Context, user: &str, id: u64) -> Result<u32, String> {
    let deadline = Instant::now() + ack_limit(ctx);
    let prefix = ctx.keys.presence_of(user);
    loop {
        let txn = Txn::new().and_then([TxnOp::get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )]);
        if let Ok(resp) = ctx.txn(txn).await {
            let mut waiting = Vec::new();
            let mut closed = 0u32;
            for op in resp.op_responses() {
                let TxnOpResponse::Get(get) = op else {
                    continue;
                };
                for kv in get.kvs() {
                    let p = decode::<PresenceRecord>(kv.value());
                    match p {
                        Some(p) if p.ack == Some(id) => closed += p.closed,
                        _ => waiting.push(
                            kv.key_str()
                                .ok()
                                .and_then(|k| k.rsplit('/').next())
                                .unwrap_or_default()
                                .to_owned(),
                        ),
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(closed);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the user's sessions were not closed in time on {}",
                    waiting.join(", ")
                ));
            }
        } else if Instant::now() >= deadline {
            return Err("etcd did not answer in time".into());
        }
        tokio::time::sleep(ACK_POLL).await;
    }
}

/// How long a mover waits for the present directors to apply its commit
/// (they normally do within a watch event's delay; past it the move has
/// happened all the same, a director's answer may lag a moment).
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// Waits until every presence for `user` says move `id` is applied (or is
/// gone), at most [`SETTLE_LIMIT`]: then every director answers the new
/// backend.
async fn wait_settled(ctx: &Context, user: &str, id: u64) {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let prefix = ctx.keys.presence_of(user);
    while Instant::now() < deadline {
        let txn = Txn::new().and_then([TxnOp::get(
            prefix.as_str(),
            Some(GetOptions::new().with_prefix()),
        )]);
        if let Ok(resp) = ctx.txn(txn).await {
            let all = resp.op_responses().into_iter().all(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().iter().all(|kv| {
                    decode::<PresenceRecord>(kv.value()).is_some_and(|p| p.settled == Some(id))
                }),
                _ => true,
            });
            if all {
                return;
            }
        }
        tokio::time::sleep(ACK_POLL).await;
    }
    warn!(
        user,
        "cluster move: not every director applied it within 2 s"
    );
}

/// Where etcd says `user` is.
async fn lookup(ctx: &Context, user: &str) -> Result<Option<(Box<str>, String)>, String> {
    Ok(read_user(ctx, user)
        .await?
        .map(|(_, r)| (r.b.into_boxed_str(), r.at)))
}

/// The users etcd assigns to `backend`.
async fn users_on(ctx: &Context, backend: &str) -> Result<Vec<Box<str>>, String> {
    let prefix = format!("{}users/", ctx.keys.root());
    let txn = Txn::new().and_then([TxnOp::get(
        prefix.as_str(),
        Some(GetOptions::new().with_prefix()),
    )]);
    let resp = ctx.txn(txn).await?;
    let mut users = Vec::new();
    for op in resp.op_responses() {
        let TxnOpResponse::Get(get) = op else {
            continue;
        };
        for kv in get.kvs() {
            let on = decode::<AssignmentRecord>(kv.value()).is_some_and(|r| r.b == backend);
            let user = kv
                .key_str()
                .ok()
                .and_then(|k| k.strip_prefix(prefix.as_str()))
                .and_then(unescape);
            if let (true, Some(user)) = (on, user) {
                users.push(user.into_boxed_str());
            }
        }
    }
    Ok(users)
}
