//! The watch: this director's view of the cluster, kept current from one
//! etcd watch over everything under `{prefix}/v1/`.
//!
//! A watch on a member that hangs or has lost quorum can go silent with
//! no error (measured on etcd 3.4: seconds of silence). The leader puts a
//! tick every second, so a watch that hears nothing for [`SILENCE`] is
//! re-created on the next endpoint from the last revision seen plus one,
//! which replays what it missed. A watch cancelled because that revision
//! has been compacted away is replaced after a full read (resync).

use std::rc::Rc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, Txn, TxnOp, TxnOpResponse, WatchOptions};
use tracing::{info, warn};

use crate::cluster::context::Context;
use crate::cluster::endpoints::{bounded, CALL_TIMEOUT};
use crate::cluster::keys::{decode, AssignmentRecord, DirectorRecord, KeyKind, LeaderRecord};
use crate::cluster::membership::SILENCE;
use crate::cluster_link::ClusterCounters;

/// Keeps the view current, forever.
pub async fn run(ctx: &Rc<Context>) {
    let mut ep = 0usize;
    let mut revision = 0i64;
    loop {
        if revision == 0 {
            match resync(ctx, ep).await {
                Ok(r) => revision = r,
                Err(e) => {
                    ctx.endpoints.drop_client(ep);
                    ep = ctx.endpoints.next(ep);
                    ctx.failed("read", e);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let opened = async {
            let mut client = ctx.endpoints.client(ep).await?;
            bounded(CALL_TIMEOUT, client.watch(ctx.keys.root(), Some(options))).await
        }
        .await;
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                ctx.endpoints.drop_client(ep);
                ep = ctx.endpoints.next(ep);
                ctx.failed("watch", e);
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        let why = loop {
            let message = match tokio::time::timeout(SILENCE, stream.message()).await {
                Err(_) => break format!("silent for {} s", SILENCE.as_secs()),
                Ok(Err(e)) => break e.to_string(),
                Ok(Ok(None)) => break "closed".to_owned(),
                Ok(Ok(Some(m))) => m,
            };
            if message.canceled() {
                if message.compact_revision() > 0 {
                    ClusterCounters::bump(&ctx.link.counters.resyncs);
                    warn!(
                        revision,
                        compacted = message.compact_revision(),
                        "the watch's revision was compacted away: reading everything again"
                    );
                    revision = 0;
                }
                break format!("cancelled: {}", message.cancel_reason());
            }
            if message.events().is_empty() {
                continue;
            }
            let mut seen = ctx.seen.borrow_mut();
            for event in message.events() {
                let Some(kv) = event.kv() else { continue };
                revision = revision.max(kv.mod_revision());
                let Ok(key) = std::str::from_utf8(kv.key()) else {
                    continue;
                };
                let put = event.event_type() == EventType::Put;
                match ctx.keys.parse(key) {
                    Some(KeyKind::Director(name)) => {
                        match put.then(|| decode::<DirectorRecord>(kv.value())).flatten() {
                            Some(record) => {
                                if !seen.directors.contains_key(name) {
                                    info!(director = name, "a director joined the cluster");
                                }
                                seen.directors.insert(name.to_owned(), record);
                            }
                            None => {
                                if seen.directors.remove(name).is_some() {
                                    info!(director = name, "a director left the cluster");
                                }
                            }
                        }
                    }
                    Some(KeyKind::Leader) => {
                        seen.leader = put
                            .then(|| decode::<LeaderRecord>(kv.value()))
                            .flatten()
                            .map(|l| l.name);
                        info!(
                            leader = seen.leader.as_deref(),
                            "the cluster's leader changed"
                        );
                        if seen.leader.is_none() {
                            ctx.leader_gone.notify_one();
                        }
                    }
                    Some(KeyKind::User(user)) => {
                        let record = put
                            .then(|| decode::<AssignmentRecord>(kv.value()))
                            .flatten();
                        crate::cluster::holds::on_assignment(ctx, user, record, kv.mod_revision());
                    }
                    Some(other) => {
                        // Shared admin states, health and commands.
                        let value = put.then(|| kv.value());
                        crate::cluster::shared::on_key(ctx, &mut seen, other, value);
                    }
                    None => {}
                }
            }
            seen.revision = revision;
            crate::cluster::shared::after_changes(ctx, &mut seen);
            drop(seen);
            ctx.publish();
        };
        ClusterCounters::bump(&ctx.link.counters.watch_restarts);
        warn!(
            endpoint = ctx.endpoints.url(ep),
            reason = %why,
            from = revision + 1,
            "watch lost: re-creating it on the next etcd endpoint"
        );
        ctx.endpoints.drop_client(ep);
        ep = ctx.endpoints.next(ep);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the directors and the leader at one revision; returns it.
async fn resync(ctx: &Context, ep: usize) -> Result<i64, String> {
    let mut reads = vec![
        TxnOp::get(ctx.keys.directors(), Some(GetOptions::new().with_prefix())),
        TxnOp::get(ctx.keys.leader(), None),
    ];
    reads.extend(crate::cluster::shared::resync_reads(ctx));
    let txn = Txn::new().and_then(reads);
    let mut client = ctx.endpoints.client(ep).await?;
    let resp = bounded(CALL_TIMEOUT, client.txn(txn)).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let mut seen = ctx.seen.borrow_mut();
    seen.directors.clear();
    seen.leader = None;
    crate::cluster::shared::resync_begin(&mut seen);
    for op in resp.op_responses() {
        let TxnOpResponse::Get(get) = op else {
            continue;
        };
        for kv in get.kvs() {
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                continue;
            };
            match ctx.keys.parse(key) {
                Some(KeyKind::Director(name)) => {
                    if let Some(r) = decode::<DirectorRecord>(kv.value()) {
                        seen.directors.insert(name.to_owned(), r);
                    }
                }
                Some(KeyKind::Leader) => {
                    seen.leader = decode::<LeaderRecord>(kv.value()).map(|l| l.name);
                }
                Some(other) => {
                    crate::cluster::shared::on_key(ctx, &mut seen, other, Some(kv.value()))
                }
                None => {}
            }
        }
    }
    seen.revision = revision;
    crate::cluster::shared::after_changes(ctx, &mut seen);
    drop(seen);
    ctx.succeeded();
    ctx.publish();
    Ok(revision.max(1))
}
