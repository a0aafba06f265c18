//! Commands to every director, and the acknowledgements that say each
//! has acted: how an action issued on one director is carried out on all
//! of them before the call returns.
//!
//! ```text
//! {prefix}/v1/cmd/{id}            CommandRecord  lease of the issuer
//! {prefix}/v1/cmd/{id}/ack/{D}    AckRecord      lease of D
//! ```
//!
//! The issuer ([`issue`]) writes the command (with any other puts of the
//! same action in one transaction, e.g. the backend's admin state) and
//! reads, at that revision, which directors are registered. Every
//! director's watch sees the command, hands it to its agent
//! ([`crate::cluster::actions::run_agent`]) which carries it out and puts
//! its acknowledgement — only while the command still exists, so a late
//! acknowledgement leaves nothing behind. The issuer waits until every
//! director registered at the command's revision has acknowledged, or is
//! gone (its `directors/` key deleted: its lease expired, so it has fenced
//! and closed its sessions), or `limit` passes; then it deletes the
//! command and its acknowledgements. The keys live on leases, so a dead
//! issuer's or acker's leftovers vanish by themselves.
//!
//! The mechanism does not care what a command does: add a [`Command`]
//! variant (`command_types`) and its arm in `actions::carry_out`.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use etcd_client::{TxnOpResponse, TxnResponse};
use tracing::{debug, warn};

pub use crate::cluster::command_types::{AckRecord, Command, CommandRecord, CommandState, Pending};
use crate::cluster::context::{Context, Seen};
use crate::cluster::endpoints::{bounded, CALL_TIMEOUT};
use crate::cluster::keys::{decode, encode, KeyKind};
use crate::cluster_link::ClusterOutcome;

/// A new command id: issuer, time, sequence (unique across restarts).
fn new_id(director: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{director}.{ms:x}.{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// Issues `what` to every director, with `with` in the same transaction
/// (puts that belong to the action), and waits until every director
/// registered at that moment has acknowledged it or is gone, at most
/// `limit`. `Err` when nothing was written (no lease, etcd unreachable);
/// otherwise the outcome, whose `missing` names who did not answer.
pub async fn issue(
    ctx: &Context,
    what: Command,
    with: Vec<TxnOp>,
    limit: Duration,
) -> Result<ClusterOutcome, String> {
    let Some(lease) = ctx.lease.get().filter(|_| !ctx.link.fence.is_fenced()) else {
        return Err("this director holds no lease in etcd (fenced): try another director".into());
    };
    let id = new_id(ctx.name());
    let record = CommandRecord {
        by: ctx.name().to_owned(),
        what,
    };
    let mut ops = with;
    ops.push(TxnOp::put(
        ctx.keys.command(&id),
        encode(&record),
        Some(PutOptions::new().with_lease(lease)),
    ));
    ops.push(TxnOp::get(
        ctx.keys.directors(),
        Some(GetOptions::new().with_prefix().with_keys_only()),
    ));
    let started = Instant::now();
    // The same writes again are harmless: a transaction that timed out
    // may have committed, and the retry then commits them once more.
    let resp = write(ctx, Txn::new().and_then(ops)).await?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let awaited = registered(ctx, &resp);
    debug!(id, ?record.what, directors = ?awaited, "command issued");
    let deadline = started + limit;
    let outcome = loop {
        let changed = ctx.changed.notified();
        let outcome = tally(&ctx.seen.borrow(), &id, &awaited, revision);
        if outcome.missing.is_empty() || Instant::now() >= deadline {
            break outcome;
        }
        tokio::select! {
            () = changed => {}
            () = tokio::time::sleep_until(deadline.into()) => {}
        }
    };
    if !outcome.missing.is_empty() {
        warn!(id, missing = ?outcome.missing, "a command was not acknowledged in time");
    }
    let cleanup = Txn::new().and_then([
        TxnOp::delete(ctx.keys.command(&id), None),
        TxnOp::delete(
            ctx.keys.command_acks(&id),
            Some(DeleteOptions::new().with_prefix()),
        ),
    ]);
    if let Err(e) = write(ctx, cleanup).await {
        // The keys go with the leases anyway.
        debug!(id, error = %e, "command not deleted");
    }
    Ok(outcome)
}

/// The directors registered in a transaction's answer (its gets).
fn registered(ctx: &Context, resp: &TxnResponse) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for op in resp.op_responses() {
        let TxnOpResponse::Get(get) = op else {
            continue;
        };
        for kv in get.kvs() {
            if let Some(KeyKind::Director(name)) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| ctx.keys.parse(k))
            {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

/// Where command `id` stands: who acted, who failed, who is gone (only
/// once the watch is past the command's `revision`, so a director the
/// watch has not seen register yet is not taken for gone), who is missing.
pub fn tally(seen: &Seen, id: &str, awaited: &BTreeSet<String>, revision: i64) -> ClusterOutcome {
    let acks = seen.commands.get(id).map(|c| &c.acks);
    let mut out = ClusterOutcome::default();
    for d in awaited {
        match acks.and_then(|a| a.get(d)) {
            Some(ack) if ack.ok => out.acted.push((d.clone(), ack.n)),
            Some(ack) => {
                out.acted.push((d.clone(), ack.n));
                out.failed
                    .push((d.clone(), ack.note.clone().unwrap_or_default()));
            }
            None if seen.revision >= revision && !seen.directors.contains_key(d) => {
                out.gone.push(d.clone())
            }
            None => out.missing.push(d.clone()),
        }
    }
    out
}

/// One write, on the endpoints in turn (two tries).
async fn write(ctx: &Context, txn: Txn) -> Result<TxnResponse, String> {
    let mut ep = ctx.lease_endpoint.get();
    let mut last = String::new();
    for _ in 0..2 {
        let result = async {
            let mut client = ctx.endpoints.client(ep).await?;
            bounded(CALL_TIMEOUT, client.txn(txn.clone())).await
        }
        .await;
        match result {
            Ok(resp) => return Ok(resp),
            Err(e) => {
                ctx.endpoints.drop_client(ep);
                ep = ctx.endpoints.next(ep);
                last = e;
            }
        }
    }
    ctx.failed("command", last.clone());
    Err(format!("etcd: {last}"))
}

// -- what the watch does with command keys --

/// A `cmd/…` key changed (`value` is `None` for a delete).
pub fn on_key(ctx: &Context, seen: &mut Seen, kind: KeyKind<'_>, value: Option<&[u8]>) {
    match (kind, value) {
        (KeyKind::Command(id), Some(v)) => {
            let Some(record) = decode::<CommandRecord>(v) else {
                return;
            };
            if let Some(known) = seen.commands.get_mut(id) {
                // Read again by a resync: carried out already.
                known.stale = false;
            } else {
                seen.commands.insert(id.to_owned(), CommandState::default());
                let _ = ctx.agent.send(Pending {
                    id: id.to_owned(),
                    what: record.what,
                });
            }
        }
        (KeyKind::Command(id), None) => {
            seen.commands.remove(id);
        }
        (KeyKind::CommandAck { id, director }, Some(v)) => {
            if let (Some(c), Some(ack)) = (seen.commands.get_mut(id), decode::<AckRecord>(v)) {
                c.acks.insert(director.to_owned(), ack);
            }
        }
        (KeyKind::CommandAck { id, director }, None) => {
            if let Some(c) = seen.commands.get_mut(id) {
                c.acks.remove(director);
            }
        }
        _ => {}
    }
}

/// Puts this director's acknowledgement of `id` while the command exists
/// (a few tries: without it the issuer waits until its limit).
pub async fn acknowledge(ctx: &Context, id: &str, ack: &AckRecord) {
    for _ in 0..3 {
        let Some(lease) = ctx.lease.get() else {
            // No lease: fenced, every session closed; the issuer counts
            // this director done once its registration has gone.
            return;
        };
        let command = ctx.keys.command(id);
        let txn = Txn::new()
            .when([Compare::create_revision(
                command.as_str(),
                CompareOp::Greater,
                0,
            )])
            .and_then([TxnOp::put(
                ctx.keys.command_ack(id, ctx.name()),
                encode(ack),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        match write(ctx, txn).await {
            Ok(_) => return,
            Err(e) => {
                debug!(id, error = %e, "acknowledgement not written, retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Runs `work` for every item of `rx`, all at once on this task (the
/// cluster thread's futures borrow its context, so they cannot be
/// spawned).
pub async fn serve_all<'a, T, F, Fut>(rx: flume::Receiver<T>, work: F)
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = ()> + 'a,
{
    let mut running: Vec<Pin<Box<Fut>>> = Vec::new();
    loop {
        let next = rx.recv_async();
        let mut next = std::pin::pin!(next);
        let item = std::future::poll_fn(|cx| {
            running.retain_mut(|f| f.as_mut().poll(cx).is_pending());
            next.as_mut().poll(cx)
        })
        .await;
        match item {
            Ok(t) => running.push(Box::pin(work(t))),
            Err(_) => {
                // Every sender is gone: finish what runs, then idle.
                std::future::poll_fn(|cx| {
                    running.retain_mut(|f| f.as_mut().poll(cx).is_pending());
                    if running.is_empty() {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(directors: &[&str], revision: i64) -> Seen {
        let mut s = Seen::default();
        for d in directors {
            s.directors.insert(
                d.to_string(),
                crate::cluster::keys::DirectorRecord {
                    admin: String::new(),
                    since: String::new(),
                    version: String::new(),
                },
            );
        }
        s.revision = revision;
        s
    }

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_command_is_done_when_every_director_acked_or_left() {
        let mut s = seen(&["d1", "d2"], 10);
        let awaited = names(&["d1", "d2", "d3"]);
        s.commands.insert("c".into(), CommandState::default());
        let o = tally(&s, "c", &awaited, 10);
        assert_eq!(o.missing, ["d1", "d2"]);
        assert_eq!(o.gone, ["d3"], "d3's registration is gone");
        let acks = &mut s.commands.get_mut("c").unwrap().acks;
        acks.insert("d1".into(), AckRecord::done(2));
        acks.insert("d2".into(), AckRecord::failed(1, "not closed"));
        let o = tally(&s, "c", &awaited, 10);
        assert!(o.missing.is_empty());
        assert_eq!(o.total(), 3);
        assert!(!o.complete());
        assert_eq!(o.failed, [("d2".to_string(), "not closed".to_string())]);
    }

    #[test]
    fn a_director_is_not_taken_for_gone_before_the_watch_reached_the_command() {
        let s = seen(&["d1"], 9);
        let o = tally(&s, "c", &names(&["d1", "d2"]), 10);
        assert_eq!(o.missing, ["d1", "d2"]);
        assert!(o.gone.is_empty());
    }

    #[test]
    fn records_round_trip_as_tagged_json() {
        let r = CommandRecord {
            by: "d1".into(),
            what: Command::Kick { user: "u1".into() },
        };
        let bytes = encode(&r);
        assert_eq!(
            bytes,
            br#"{"by":"d1","what":{"do":"kick","user":"u1"}}"#.to_vec()
        );
        assert_eq!(decode::<CommandRecord>(&bytes), Some(r));
        assert_eq!(
            encode(&AckRecord::done(3)),
            br#"{"ok":true,"n":3}"#.to_vec()
        );
        assert!(new_id("d1").starts_with("d1."));
        assert_ne!(new_id("d1"), new_id("d1"));
    }
}
