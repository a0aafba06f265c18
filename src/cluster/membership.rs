//! This director's membership: its lease and the keepalives that move the
//! fence deadline, its registration under `directors/`, and the leader
//! election with the leader's tick.
//!
//! One lease per director. A keepalive is sent every sixth of the TTL on
//! a stream to one endpoint; each answer moves the fence deadline to the
//! keepalive's send time plus the granted TTL minus the margin
//! ([`FenceTimes`]). A keepalive unanswered within its timeout gives the
//! stream up and opens one on the next endpoint — the lease lives on in
//! etcd meanwhile. Once a TTL has passed since the last acknowledged send,
//! or etcd says the lease is gone, the lease counts as lost: a new one is
//! granted and the director registers again.
//!
//! Leader: compare-and-create of the `leader` key on the director's lease
//! (`create_revision == 0`); it vanishes with the leader's lease. The
//! leader puts `tick` every [`TICK`], guarded by the leader key's
//! create revision, so a deposed leader cannot tick: every director's
//! watch expects a tick and re-creates itself when none comes. A follower
//! campaigns every tick, and at once when its watch sees the leader key go.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use tracing::{info, warn};

use crate::admin::time::rfc3339;
use crate::cluster::context::Context;
use crate::cluster::endpoints::{bounded, CALL_TIMEOUT};
use crate::cluster::keys::{decode, encode, LeaderRecord, TickRecord};
use crate::cluster_link::ClusterCounters;

/// How often the leader ticks.
pub const TICK: Duration = Duration::from_secs(1);

/// A watch that hears nothing (not even the leader's tick) this long is
/// re-created on another endpoint: three ticks.
pub const SILENCE: Duration = Duration::from_secs(3 * TICK.as_secs());

/// How a lease ended.
enum LeaseEnd {
    /// etcd said it is gone (expired).
    Expired,
    /// A TTL passed without an acknowledged keepalive: it may be gone.
    Unconfirmed,
    /// The director fenced itself: the lease is given up.
    GivenUp,
}

/// Holds a lease, registers and campaigns, forever: one lease after the
/// other.
pub async fn run(ctx: &Context) {
    // A lease this director lost track of: it may live on in etcd (a new
    // etcd leader extends every lease by a TTL), holding the director's
    // name, so it is revoked before the name is registered again.
    let mut previous: Option<i64> = None;
    loop {
        if let Some(old) = previous {
            if revoke(ctx, old).await {
                previous = None;
            }
        }
        let Some((lease, granted_at)) = grant(ctx).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        if !register(ctx, lease).await {
            let _ = revoke(ctx, lease).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        ctx.lease.set(Some(lease));
        ctx.fence_open(granted_at);
        info!(lease = format!("{lease:x}"), "registered in the cluster");
        ctx.publish();
        let end = tokio::select! {
            end = keepalive(ctx, lease, granted_at) => end,
            () = lead(ctx, lease) => LeaseEnd::Unconfirmed,
            () = ctx.give_up_lease.notified() => LeaseEnd::GivenUp,
        };
        ctx.lease.set(None);
        ctx.connected.set(false);
        previous = Some(lease);
        match end {
            LeaseEnd::Expired => {
                ClusterCounters::bump(&ctx.link.counters.lease_expiries);
                ctx.link.fence.close();
                warn!(
                    lease = format!("{lease:x}"),
                    "etcd let this director's lease expire: fenced, registering again"
                );
            }
            LeaseEnd::GivenUp => {
                ctx.link.fence.close();
                info!(
                    lease = format!("{lease:x}"),
                    "fenced: giving the lease up, registering again when etcd answers"
                );
            }
            LeaseEnd::Unconfirmed => {
                ClusterCounters::bump(&ctx.link.counters.lease_expiries);
                warn!(
                    lease = format!("{lease:x}"),
                    "no keepalive answered for a whole lease TTL: registering again"
                );
            }
        }
        ctx.publish();
    }
}

impl Context {
    /// Opens the fence after a grant or registration sent at `sent`.
    fn fence_open(&self, sent: Instant) {
        self.link
            .fence
            .extend_to(self.times.deadline_after(sent, self.times.ttl));
    }
}

/// Grants a lease on the keepalive endpoint (moving on when it fails).
async fn grant(ctx: &Context) -> Option<(i64, Instant)> {
    let ep = ctx.lease_endpoint.get();
    let ttl = ctx.times.ttl.as_secs() as i64;
    let sent = Instant::now();
    let result = async {
        let mut client = ctx.endpoints.client(ep).await?;
        bounded(CALL_TIMEOUT, client.lease_grant(ttl, None)).await
    }
    .await;
    match result {
        Ok(resp) => {
            ctx.succeeded();
            Some((resp.id(), sent))
        }
        Err(e) => {
            ctx.endpoints.drop_client(ep);
            ctx.lease_endpoint.set(ctx.endpoints.next(ep));
            ctx.failed("lease grant", e);
            None
        }
    }
}

/// Revokes a lease (best effort: it expires by itself otherwise); true
/// once etcd no longer has it.
pub async fn revoke(ctx: &Context, lease: i64) -> bool {
    let ep = ctx.lease_endpoint.get();
    let result = async {
        let mut client = ctx.endpoints.client(ep).await?;
        bounded(CALL_TIMEOUT, client.lease_revoke(lease)).await
    }
    .await;
    match result {
        Ok(_) => true,
        Err(e) => e.contains("not found"),
    }
}

/// Creates `directors/{D}` on `lease`; false if another live lease holds
/// the name (a second director of that name, or this director's previous
/// run until its lease expires).
async fn register(ctx: &Context, lease: i64) -> bool {
    let key = ctx.keys.director(ctx.name());
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            encode(&ctx.record),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let ep = ctx.lease_endpoint.get();
    let result = async {
        let mut client = ctx.endpoints.client(ep).await?;
        bounded(CALL_TIMEOUT, client.txn(txn)).await
    }
    .await;
    match result {
        Ok(resp) if resp.succeeded() => true,
        Ok(resp) => {
            let holder = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.lease()),
                _ => None,
            });
            if holder == Some(lease) {
                return true;
            }
            ctx.failed(
                "register",
                format!(
                    "another lease holds the name {:?} (a second director of that name, or this one's previous run until its lease expires)",
                    ctx.name()
                ),
            );
            false
        }
        Err(e) => {
            ctx.endpoints.drop_client(ep);
            ctx.lease_endpoint.set(ctx.endpoints.next(ep));
            ctx.failed("register", e);
            false
        }
    }
}

/// Keeps `lease` alive and the fence open; returns when the lease is lost.
async fn keepalive(ctx: &Context, lease: i64, granted_at: Instant) -> LeaseEnd {
    let every = ctx.times.keepalive_every;
    let answer = ctx.times.keepalive_timeout;
    let mut last_ack = granted_at;
    loop {
        if last_ack.elapsed() >= ctx.times.ttl {
            return LeaseEnd::Unconfirmed;
        }
        let ep = ctx.lease_endpoint.get();
        let sent = Instant::now();
        let opened = async {
            let client = ctx.endpoints.client(ep).await?;
            bounded(
                answer + CALL_TIMEOUT,
                client.lease_client().keep_alive(lease),
            )
            .await
        }
        .await;
        let (mut keeper, mut stream) = match opened {
            Ok(pair) => pair,
            Err(e) if e.contains("lease not found") => return LeaseEnd::Expired,
            Err(e) => {
                ctx.endpoints.drop_client(ep);
                ctx.lease_endpoint.set(ctx.endpoints.next(ep));
                ctx.connected.set(false);
                ctx.failed("keepalive", e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Opening the stream was answered: that is an acknowledgement.
        acknowledged(ctx, sent, ctx.times.ttl, &mut last_ack);
        loop {
            tokio::time::sleep(every).await;
            let sent = Instant::now();
            let answered = async {
                bounded(answer, keeper.keep_alive()).await?;
                bounded(answer, stream.message()).await
            }
            .await;
            match answered {
                Ok(Some(resp)) if resp.ttl() > 0 => {
                    let granted = Duration::from_secs(resp.ttl() as u64);
                    acknowledged(ctx, sent, granted, &mut last_ack);
                }
                Ok(Some(_)) => return LeaseEnd::Expired,
                Ok(None) | Err(_) => {
                    let error = answered.err().unwrap_or_else(|| "stream closed".into());
                    warn!(
                        endpoint = ctx.endpoints.url(ep),
                        error = %error,
                        "keepalive not answered: moving to the next etcd endpoint"
                    );
                    ctx.endpoints.drop_client(ep);
                    ctx.lease_endpoint.set(ctx.endpoints.next(ep));
                    ctx.connected.set(false);
                    ctx.failed("keepalive", error);
                    break;
                }
            }
            if last_ack.elapsed() >= ctx.times.ttl {
                return LeaseEnd::Unconfirmed;
            }
        }
    }
}

/// A keepalive sent at `sent` was answered with `granted`.
fn acknowledged(
    ctx: &Context,
    sent: Instant,
    granted: std::time::Duration,
    last_ack: &mut Instant,
) {
    ctx.link
        .fence
        .extend_to(ctx.times.deadline_after(sent, granted));
    *last_ack = sent;
    if !ctx.connected.get() {
        ctx.connected.set(true);
        ctx.succeeded();
        ctx.publish();
    }
}

/// Campaigns for leadership on `lease` and ticks while leading.
async fn lead(ctx: &Context, lease: i64) {
    let key = ctx.keys.leader();
    let mut ep = ctx.lease_endpoint.get();
    let mut leading: Option<i64> = None;
    let mut seq = 0u64;
    loop {
        let result = async {
            let mut client = ctx.endpoints.client(ep).await?;
            match leading {
                None => {
                    let record = LeaderRecord {
                        name: ctx.name().to_owned(),
                        since: rfc3339(std::time::SystemTime::now()),
                    };
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.as_str(),
                            encode(&record),
                            Some(PutOptions::new().with_lease(lease)),
                        )])
                        .or_else([TxnOp::get(key.as_str(), None)]);
                    let resp = bounded(CALL_TIMEOUT, client.txn(txn)).await?;
                    if resp.succeeded() {
                        let rev = resp.header().map_or(0, |h| h.revision());
                        info!("this director is the cluster's leader now");
                        return Ok(Some(rev));
                    }
                    // Ours already (a retried create that had committed)?
                    Ok(resp.op_responses().into_iter().find_map(|r| match r {
                        TxnOpResponse::Get(g) => g
                            .kvs()
                            .first()
                            .filter(|kv| {
                                kv.lease() == lease
                                    && decode::<LeaderRecord>(kv.value())
                                        .is_some_and(|l| l.name == ctx.name())
                            })
                            .map(|kv| kv.create_revision()),
                        _ => None,
                    }))
                }
                Some(created) => {
                    seq += 1;
                    let tick = TickRecord {
                        name: ctx.name().to_owned(),
                        seq,
                    };
                    let txn = Txn::new()
                        .when([Compare::create_revision(
                            key.as_str(),
                            CompareOp::Equal,
                            created,
                        )])
                        .and_then([TxnOp::put(ctx.keys.tick(), encode(&tick), None)]);
                    let resp = bounded(CALL_TIMEOUT, client.txn(txn)).await?;
                    if !resp.succeeded() {
                        warn!("this director is no longer the cluster's leader");
                    }
                    Ok(resp.succeeded().then_some(created))
                }
            }
        }
        .await;
        match result {
            Ok(now) => leading = now,
            Err(e) => {
                ctx.endpoints.drop_client(ep);
                ep = ctx.endpoints.next(ep);
                ctx.failed("leader", e);
            }
        }
        // A follower campaigns again at once when the leader key goes.
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = ctx.leader_gone.notified(), if leading.is_none() => {}
        }
    }
}
