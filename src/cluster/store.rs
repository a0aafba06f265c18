//! The assignment store in etcd: which backend a user is on, agreed by
//! every director (the notes' §4.3 transaction shapes).
//!
//! A claim of user U for backend B by director D, on D's lease L:
//! - U unassigned: `If create_revision(users/U) == 0 Then put users/U
//!   {b: B, by: D, n: nonce}, put active/U/D (lease L)`;
//! - U assigned at mod revision R (seen in an earlier round): `If
//!   mod_revision(users/U) == R Then put active/U/D (lease L)`: D adopts
//!   the existing backend and records its presence.
//!
//! Claims that arrive within a few ms go in one transaction ([`Batch`]):
//! the compares of all, the puts of all, and — when any compare fails —
//! a get of every user, so one round trip settles each user's next step.
//! A transaction that timed out may still have committed: the store then
//! reads the users back and recognises its own writes by `by` and the
//! nonce before it decides anything.
//!
//! The API is in plain types (user key, backend name, director name), to
//! sit behind the control plane's state seam. Login routing does not use
//! it yet: see the README ("Running several directors").

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse};
use tokio::sync::mpsc;

use crate::cluster::batch::{Batch, BatchRules, Entry};
use crate::cluster::context::Context;
use crate::cluster::endpoints::{bounded, CALL_TIMEOUT};
use crate::cluster::keys::{decode, encode, AssignmentRecord, PresenceRecord};

/// How many rounds one claim gets (a lost race, then an adoption).
const ROUNDS: usize = 4;

/// Where a user is, as etcd agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The backend the user is assigned to.
    pub backend: String,
    /// The director that made the assignment.
    pub by: String,
    /// Whether this claim created the assignment.
    pub created: bool,
}

/// A claim's answer: the agreed assignment, or why there is none (the
/// login gets a temporary failure).
pub type ClaimResult = Result<Claim, String>;

/// A claim waiting for its transaction.
#[derive(Debug)]
pub struct ClaimRequest {
    user: String,
    backend: String,
    reply: flume::Sender<ClaimResult>,
}

/// The handle other threads claim users with; cheap to clone.
#[derive(Debug, Clone)]
pub struct AssignmentStore {
    tx: mpsc::UnboundedSender<ClaimRequest>,
}

impl AssignmentStore {
    /// A store fed by `tx` (the cluster thread holds the receiver).
    pub(crate) fn new(tx: mpsc::UnboundedSender<ClaimRequest>) -> AssignmentStore {
        AssignmentStore { tx }
    }

    /// Claims `user` for `backend` (used only if the user is unassigned);
    /// the answer arrives on the returned channel (await it with
    /// `recv_async`, or block with `recv_timeout` off the data path).
    pub fn claim(&self, user: &str, backend: &str) -> flume::Receiver<ClaimResult> {
        let (reply, rx) = flume::bounded(1);
        let request = ClaimRequest {
            user: user.to_owned(),
            backend: backend.to_owned(),
            reply,
        };
        if let Err(e) = self.tx.send(request) {
            let _ = e.0.reply.send(Err("the cluster thread has stopped".into()));
        }
        rx
    }
}

/// One user's state across rounds.
struct Pending {
    entry: Entry<flume::Sender<ClaimResult>>,
    /// `Some((R, record))`: assigned at mod revision R, adopt it.
    adopt: Option<(i64, AssignmentRecord)>,
    nonce: u64,
}

/// Serves claims, forever.
pub async fn run(ctx: &Context, mut rx: mpsc::UnboundedReceiver<ClaimRequest>) {
    static NONCE: AtomicU64 = AtomicU64::new(1);
    let rules = BatchRules::default();
    let mut ep = 0usize;
    loop {
        let Some(first) = rx.recv().await else {
            // Every handle is gone: nothing more will come.
            return std::future::pending().await;
        };
        let mut batch = Batch::new(rules);
        batch.push(Instant::now(), &first.user, &first.backend, first.reply);
        while !batch.is_due(Instant::now()) {
            let due = batch.due().unwrap_or_else(Instant::now);
            match tokio::time::timeout_at(due.into(), rx.recv()).await {
                Ok(Some(r)) => batch.push(Instant::now(), &r.user, &r.backend, r.reply),
                _ => break,
            }
        }
        let pending: Vec<Pending> = batch
            .take()
            .into_iter()
            .map(|entry| Pending {
                entry,
                adopt: None,
                nonce: NONCE.fetch_add(1, Ordering::Relaxed),
            })
            .collect();
        settle(ctx, &mut ep, pending).await;
    }
}

/// Runs rounds of transactions until every user is settled.
async fn settle(ctx: &Context, ep: &mut usize, mut pending: Vec<Pending>) {
    for _ in 0..ROUNDS {
        if pending.is_empty() {
            return;
        }
        let Some(lease) = ctx.lease.get().filter(|_| !ctx.link.fence.is_fenced()) else {
            answer_all(pending, "this director holds no lease (fenced)");
            return;
        };
        let txn = claim_txn(ctx, lease, &pending);
        let sent = async {
            let mut client = ctx.endpoints.client(*ep).await?;
            bounded(CALL_TIMEOUT, client.txn(txn)).await
        }
        .await;
        pending = match sent {
            Ok(resp) if resp.succeeded() => {
                for p in pending {
                    let claim = match p.adopt {
                        Some((_, record)) => Claim {
                            backend: record.b,
                            by: record.by,
                            created: false,
                        },
                        None => Claim {
                            backend: p.entry.backend.clone(),
                            by: ctx.name().to_owned(),
                            created: true,
                        },
                    };
                    answer(p.entry, Ok(claim));
                }
                return;
            }
            Ok(resp) => next_round(ctx, pending, &resp),
            Err(e) => {
                // It may have committed: read back before deciding.
                ctx.endpoints.drop_client(*ep);
                *ep = ctx.endpoints.next(*ep);
                ctx.failed("assignments", e);
                match read_back(ctx, *ep, &pending).await {
                    Ok(resp) => next_round(ctx, pending, &resp),
                    Err(_) => pending,
                }
            }
        };
    }
    answer_all(pending, "no agreement with etcd in time");
}

/// The transaction of one round.
fn claim_txn(ctx: &Context, lease: i64, pending: &[Pending]) -> Txn {
    let mut compares = Vec::with_capacity(pending.len());
    let mut puts = Vec::with_capacity(pending.len() * 2);
    let mut gets = Vec::with_capacity(pending.len());
    for p in pending {
        let user_key = ctx.keys.user(&p.entry.user);
        let active = ctx.keys.active(&p.entry.user, ctx.name());
        let presence_at = match &p.adopt {
            None => {
                compares.push(Compare::create_revision(
                    user_key.as_str(),
                    CompareOp::Equal,
                    0,
                ));
                let record = AssignmentRecord {
                    b: p.entry.backend.clone(),
                    by: ctx.name().to_owned(),
                    n: p.nonce,
                };
                puts.push(TxnOp::put(user_key.as_str(), encode(&record), None));
                0
            }
            Some((rev, _)) => {
                compares.push(Compare::mod_revision(
                    user_key.as_str(),
                    CompareOp::Equal,
                    *rev,
                ));
                *rev
            }
        };
        puts.push(TxnOp::put(
            active,
            encode(&PresenceRecord { rev: presence_at }),
            Some(PutOptions::new().with_lease(lease)),
        ));
        gets.push(TxnOp::get(user_key, None));
    }
    Txn::new().when(compares).and_then(puts).or_else(gets)
}

/// Reads every pending user (after a transaction that timed out).
async fn read_back(ctx: &Context, ep: usize, pending: &[Pending]) -> Result<TxnResponse, String> {
    let gets: Vec<TxnOp> = pending
        .iter()
        .map(|p| TxnOp::get(ctx.keys.user(&p.entry.user), None))
        .collect();
    let mut client = ctx.endpoints.client(ep).await?;
    bounded(CALL_TIMEOUT, client.txn(Txn::new().and_then(gets))).await
}

/// What the gets of a failed (or read-back) transaction tell each user:
/// settled by its own earlier write, or to adopt what is there, or to
/// create (still unassigned).
fn next_round(ctx: &Context, pending: Vec<Pending>, resp: &TxnResponse) -> Vec<Pending> {
    // Per user: `None` no key (still unassigned), `Some((R, None))` a key
    // whose value is not an assignment, `Some((R, Some(record)))`.
    let gets: Vec<Option<(i64, Option<AssignmentRecord>)>> = resp
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(
                g.kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), decode::<AssignmentRecord>(kv.value()))),
            ),
            _ => None,
        })
        .collect();
    let mut next = Vec::new();
    for (p, got) in pending.into_iter().zip(gets) {
        match got {
            Some((rev, Some(record))) => {
                if record.by == ctx.name() && record.n == p.nonce && p.adopt.is_none() {
                    // Our own write of an earlier round committed.
                    let claim = Claim {
                        backend: record.b,
                        by: record.by,
                        created: true,
                    };
                    answer(p.entry, Ok(claim));
                } else {
                    next.push(Pending {
                        adopt: Some((rev, record)),
                        ..p
                    });
                }
            }
            Some((_, None)) => {
                answer(p.entry, Err("unreadable assignment record in etcd".into()));
            }
            None => next.push(Pending { adopt: None, ..p }),
        }
    }
    next
}

fn answer(entry: Entry<flume::Sender<ClaimResult>>, result: ClaimResult) {
    for w in entry.waiters {
        let _ = w.send(result.clone());
    }
}

fn answer_all(pending: Vec<Pending>, why: &str) {
    for p in pending {
        answer(p.entry, Err(why.to_owned()));
    }
}
