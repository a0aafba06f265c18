//! The assignment store in etcd: which backend a user is on, agreed by
//! every director, and which directors serve it (the notes' §4.3
//! transaction shapes, with the presence rule below).
//!
//! The cores send claims and releases through the
//! [`crate::cluster_link::ClusterPort`]. A claim of user U by director D
//! (lease L), candidate backend C, and the backends D cannot use:
//! - U unassigned: `If create_revision(users/U) == 0 Then put users/U
//!   {b: C}, put active/U/D (lease L)` — D creates the assignment;
//! - U assigned to B at mod revision R, B usable here: `If
//!   mod_revision(users/U) == R Then put users/U (unchanged), put
//!   active/U/D` — D adopts B;
//! - B unusable here, given up by the cluster, and no other director
//!   present for U (read at the same revision as R): `If mod_revision(users/U) == R Then put users/U
//!   {b: C}, put active/U/D` — D replaces the assignment;
//! - B unusable here while another director is present: refused (the
//!   login gets a temporary failure; this director never moves a user
//!   another one serves);
//! - B unusable here but not given up by the cluster (its shared admin
//!   state is not down and no majority of directors sees it down):
//!   refused — a director alone in not reaching a backend is degraded and
//!   never moves its users.
//!
//! **Why adopting rewrites `users/U`:** a replacement compares the mod
//! revision of `users/U` it read together with "no other presence". Every
//! presence is recorded in a transaction that also writes `users/U`, so a
//! presence recorded after that read changes the revision and the
//! replacement fails: a user is never reassigned under a director that
//! serves it. Presence keys live on the director's lease; a director that
//! loses its lease has closed its sessions first (fencing).
//!
//! Claims that arrive within a few ms go in one transaction ([`Batch`]).
//! When any compare fails, the else branch reads every user's assignment
//! and presence, so one round trip settles each user's next step. A
//! transaction that timed out may still have committed: the store then
//! reads back, and recognises its own write by the nonce in its presence.
//!
//! A release deletes `active/U/D`, batched. The port keeps order: a
//! release that follows a claim of the same user waits for that claim to
//! settle; a claim that follows a release cancels it (the claim writes
//! the presence anew).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse,
};

use crate::cluster::batch::{Batch, BatchRules, Entry};
use crate::cluster::context::Context;
use crate::cluster::endpoints::{bounded, CALL_TIMEOUT};
use crate::cluster::keys::{decode, encode, AssignmentRecord, PresenceRecord};
use crate::cluster_link::{ClaimAnswer, ClusterCounters, PortRequest};

/// How many rounds one claim gets (a lost race, then an adoption).
const ROUNDS: usize = 4;

/// Presence deletes per transaction (etcd's `--max-txn-ops` is 128).
const RELEASES_PER_TXN: usize = 128;

/// How long waiting releases wait for company at most.
const RELEASE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Releases kept for a retry at most (past it the lease's end cleans up).
const RELEASES_KEPT: usize = 100_000;

/// One waiting claim: where its answer goes and what it cannot use.
#[derive(Debug)]
pub struct Waiter {
    reply: flume::Sender<ClaimAnswer>,
    unusable: Box<[Box<str>]>,
    known: Box<[Box<str>]>,
}

/// What etcd said of one user in the last round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    /// `users/U`'s mod revision and record; `None` when unassigned.
    pub assigned: Option<(i64, AssignmentRecord)>,
    /// Whether a director other than this one is present for U.
    pub others_present: bool,
    /// The nonce of this director's presence for U, if it has one.
    pub own_nonce: Option<u64>,
    /// Whether a move of U is under way (by a director still registered).
    pub moving: bool,
}

/// This director's step for one user, given what etcd said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the assignment to the candidate.
    Create,
    /// Record presence at the assignment's revision: route to its backend.
    Adopt {
        /// The revision compared.
        rev: i64,
        /// The record, written back unchanged.
        record: AssignmentRecord,
    },
    /// Replace the assignment (its backend is unusable here and nobody
    /// else serves the user).
    Replace {
        /// The revision compared.
        rev: i64,
    },
    /// Answer without writing.
    Answer(ClaimAnswer),
}

/// What this director can use of a user's backend, for [`decide`].
pub struct Usable<'a> {
    /// Backends this director cannot use now.
    pub unusable: &'a [Box<str>],
    /// Backends this director has configured.
    pub known: &'a [Box<str>],
    /// Whether the cluster as a whole has given up on a backend (its
    /// shared admin state is down, or a majority of the directors sees it
    /// down): only then may this director replace an assignment to it.
    pub given_up: &'a dyn Fn(&str) -> bool,
}

/// Decides a user's step: the presence rule of the module's header, and
/// the majority rule: a backend unusable here only (the cluster still
/// counts it up) keeps its users — this director refuses them for now
/// rather than move them.
pub fn decide(state: &UserState, usable: &Usable<'_>) -> Step {
    match &state.assigned {
        None => Step::Create,
        Some(_) if state.moving => Step::Answer(ClaimAnswer::Refused(
            "the user is being moved; try again".into(),
        )),
        Some((rev, record)) => {
            let b = record.b.as_str();
            let known = usable.known.iter().any(|k| **k == *b);
            if known && !usable.unusable.iter().any(|u| **u == *b) {
                // Written back unchanged, less a void move mark.
                let mut record = record.clone();
                record.mv = None;
                Step::Adopt { rev: *rev, record }
            } else if state.others_present {
                Step::Answer(ClaimAnswer::Refused(format!(
                    "the user's backend {b} is unusable here and another director serves the user there"
                )))
            } else if known && !(usable.given_up)(b) {
                Step::Answer(ClaimAnswer::Refused(format!(
                    "the user's backend {b} is unusable here but not down for the cluster (this director is degraded)"
                )))
            } else {
                Step::Replace { rev: *rev }
            }
        }
    }
}

/// One user's claim across rounds.
struct Pending {
    entry: Entry<Waiter>,
    /// What etcd said last; `None` before the first read (the first round
    /// assumes the user is unassigned: the common case for a new user).
    state: Option<UserState>,
    nonce: u64,
}

impl Pending {
    fn step(&self, ctx: &Context) -> Step {
        let Some(state) = &self.state else {
            return Step::Create;
        };
        let Some(first) = self.entry.waiters.first() else {
            return Step::Answer(ClaimAnswer::Refused("nobody waits".into()));
        };
        let given_up = |b: &str| {
            let seen = ctx.seen.borrow();
            seen.admin.get(b).is_some_and(|a| a == "down")
                || seen.verdict(b) == Some(crate::route::backends::Health::Unhealthy)
        };
        decide(
            state,
            &Usable {
                unusable: &first.unusable,
                known: &first.known,
                given_up: &given_up,
            },
        )
    }
}

/// Serves the cores' claims and releases, forever.
pub async fn run(ctx: &Context, rx: flume::Receiver<PortRequest>) {
    static NONCE: AtomicU64 = AtomicU64::new(1);
    let rules = BatchRules::default();
    let mut ep = 0usize;
    // Releases that wait for a claim of the same user, or for etcd.
    let mut releases: Vec<Box<str>> = Vec::new();
    loop {
        let first = if releases.is_empty() {
            match rx.recv_async().await {
                Ok(r) => Some(r),
                // Every port is gone: nothing more will come.
                Err(_) => return std::future::pending().await,
            }
        } else {
            // Releases are waiting (for etcd, or for a claim of the same
            // user): they go at the latest after a short pause.
            tokio::time::timeout(RELEASE_PAUSE, rx.recv_async())
                .await
                .ok()
                .and_then(Result::ok)
        };
        let mut batch: Batch<Waiter> = Batch::new(rules);
        let mut later: Vec<Box<str>> = Vec::new();
        let mut take = |request: PortRequest, batch: &mut Batch<Waiter>| match request {
            PortRequest::Claim(c) => {
                releases.retain(|u| *u != c.user);
                let waiter = Waiter {
                    reply: c.reply,
                    unusable: c.unusable,
                    known: c.known,
                };
                batch.push(Instant::now(), &c.user, &c.candidate, waiter);
            }
            PortRequest::Release { user } => {
                if batch.contains(&user) {
                    later.push(user);
                } else if !releases.contains(&user) {
                    releases.push(user);
                }
            }
        };
        if let Some(first) = first {
            take(first, &mut batch);
            // Gather for the batch window; a full batch goes at once and
            // what is still queued waits for the next one, in order.
            while !batch.is_empty() && !batch.is_due(Instant::now()) {
                let due = batch.due().unwrap_or_else(Instant::now);
                match tokio::time::timeout_at(due.into(), rx.recv_async()).await {
                    Ok(Ok(r)) => take(r, &mut batch),
                    _ => break,
                }
            }
            while !batch.is_full() {
                match rx.try_recv() {
                    Ok(r) => take(r, &mut batch),
                    Err(_) => break,
                }
            }
        }
        if !releases.is_empty() {
            release(ctx, &mut ep, &mut releases).await;
        }
        let pending: Vec<Pending> = batch
            .take()
            .into_iter()
            .map(|entry| Pending {
                entry,
                state: None,
                nonce: NONCE.fetch_add(1, Ordering::Relaxed),
            })
            .collect();
        if !pending.is_empty() {
            settle(ctx, &mut ep, pending).await;
        }
        releases.append(&mut later);
        if releases.len() > RELEASES_KEPT {
            let extra = releases.len() - RELEASES_KEPT;
            releases.drain(..extra);
        }
    }
}

/// Deletes this director's presence for `users`, [`RELEASES_PER_TXN`] at
/// a time; what etcd did not take stays for the next turn.
async fn release(ctx: &Context, ep: &mut usize, users: &mut Vec<Box<str>>) {
    if ctx.lease.get().is_none() || ctx.link.fence.is_fenced() {
        // The lease's end deletes them, and a fenced director's lease is
        // given up.
        let mut present = ctx.present.borrow_mut();
        for u in users.drain(..) {
            present.remove(&*u);
        }
        return;
    }
    while !users.is_empty() {
        let n = users.len().min(RELEASES_PER_TXN);
        let deletes: Vec<TxnOp> = users[..n]
            .iter()
            .map(|u| TxnOp::delete(ctx.keys.active(u, ctx.name()), None))
            .collect();
        let sent = async {
            let mut client = ctx.endpoints.client(*ep).await?;
            bounded(CALL_TIMEOUT, client.txn(Txn::new().and_then(deletes))).await
        }
        .await;
        match sent {
            Ok(_) => {
                ctx.link
                    .counters
                    .releases
                    .fetch_add(n as u64, Ordering::Relaxed);
                let released: Vec<Box<str>> = users.drain(..n).collect();
                {
                    let mut present = ctx.present.borrow_mut();
                    for u in &released {
                        present.remove(&**u);
                    }
                }
                forget_unserved(ctx, ep, &released).await;
            }
            Err(e) => {
                ctx.endpoints.drop_client(*ep);
                *ep = ctx.endpoints.next(*ep);
                ctx.failed("releases", e);
                return;
            }
        }
    }
}

/// Users a check of whether anybody still serves them covers at once
/// (two reads each: etcd's `--max-txn-ops` is 128).
const FORGET_PER_TXN: usize = 64;

/// Deletes the assignments of `users` that no director is present for any
/// more — as a director alone forgets a user `server.user_expire` after its
/// last session — so etcd holds the users being served, not every user
/// ever seen. Each delete compares the assignment's revision read together
/// with the empty presence: a director that adopted the user meanwhile
/// rewrote it, and the delete does not happen. Best effort: what fails
/// stays (it is harmless, and goes at a later release).
async fn forget_unserved(ctx: &Context, ep: &mut usize, users: &[Box<str>]) {
    for chunk in users.chunks(FORGET_PER_TXN) {
        let mut reads = Vec::with_capacity(chunk.len() * 2);
        for u in chunk {
            reads.push(TxnOp::get(ctx.keys.user(u), None));
            reads.push(TxnOp::get(
                ctx.keys.presence_of(u),
                Some(GetOptions::new().with_prefix().with_count_only()),
            ));
        }
        let read = async {
            let mut client = ctx.endpoints.client(*ep).await?;
            bounded(CALL_TIMEOUT, client.txn(Txn::new().and_then(reads))).await
        }
        .await;
        let Ok(read) = read else { return };
        let answers: Vec<etcd_client::GetResponse> = read
            .op_responses()
            .into_iter()
            .filter_map(|r| match r {
                TxnOpResponse::Get(g) => Some(g),
                _ => None,
            })
            .collect();
        let mut unserved = Vec::new();
        for (u, pair) in chunk.iter().zip(answers.chunks(2)) {
            let [assignment, presence] = pair else {
                continue;
            };
            if let (Some(kv), 0) = (assignment.kvs().first(), presence.count()) {
                unserved.push((&**u, kv.mod_revision()));
            }
        }
        if unserved.is_empty() {
            continue;
        }
        // All at once; if one was adopted meanwhile, one by one.
        let delete_if = |batch: &[(&str, i64)]| {
            let (compares, deletes): (Vec<Compare>, Vec<TxnOp>) = batch
                .iter()
                .map(|(u, rev)| {
                    let key = ctx.keys.user(u);
                    (
                        Compare::mod_revision(key.as_str(), CompareOp::Equal, *rev),
                        TxnOp::delete(key.as_str(), None),
                    )
                })
                .unzip();
            Txn::new().when(compares).and_then(deletes)
        };
        let mut attempts = vec![delete_if(&unserved)];
        let mut one_by_one = false;
        while let Some(txn) = attempts.pop() {
            let sent = async {
                let mut client = ctx.endpoints.client(*ep).await?;
                bounded(CALL_TIMEOUT, client.txn(txn)).await
            }
            .await;
            match sent {
                Ok(resp) if !resp.succeeded() && !one_by_one && unserved.len() > 1 => {
                    one_by_one = true;
                    attempts = unserved.iter().map(|p| delete_if(&[*p])).collect();
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// Runs rounds of transactions until every claim is answered.
async fn settle(ctx: &Context, ep: &mut usize, mut pending: Vec<Pending>) {
    for _ in 0..ROUNDS {
        // Claims settled without a write (a refusal) are answered now.
        let mut writing = Vec::with_capacity(pending.len());
        for p in pending {
            match p.step(ctx) {
                Step::Answer(a) => {
                    ClusterCounters::bump(&ctx.link.counters.claims_refused);
                    answer(p.entry, a)
                }
                _ => writing.push(p),
            }
        }
        pending = writing;
        if pending.is_empty() {
            return;
        }
        let Some(lease) = ctx.lease.get().filter(|_| !ctx.link.fence.is_fenced()) else {
            answer_all(ctx, pending, "this director holds no lease (fenced)");
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
                ctx.succeeded();
                let c = &ctx.link.counters;
                for p in pending {
                    let backend = match p.step(ctx) {
                        Step::Adopt { record, .. } => {
                            ClusterCounters::bump(&c.claims_adopted);
                            record.b
                        }
                        Step::Replace { .. } => {
                            ClusterCounters::bump(&c.claims_replaced);
                            p.entry.backend.clone()
                        }
                        _ => {
                            ClusterCounters::bump(&c.claims_created);
                            p.entry.backend.clone()
                        }
                    };
                    ctx.present.borrow_mut().insert(p.entry.user.clone());
                    answer(p.entry, ClaimAnswer::Agreed(backend.into()));
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
    answer_all(ctx, pending, "no agreement with etcd in time");
}

/// The transaction of one round: each user's compare and writes; when a
/// compare fails, every user's assignment and presence are read.
fn claim_txn(ctx: &Context, lease: i64, pending: &[Pending]) -> Txn {
    let mut compares = Vec::with_capacity(pending.len());
    let mut puts = Vec::with_capacity(pending.len() * 2);
    for p in pending {
        let user_key = ctx.keys.user(&p.entry.user);
        let new_record = || AssignmentRecord {
            b: p.entry.backend.clone(),
            by: ctx.name().to_owned(),
            n: p.nonce,
            at: crate::admin::time::rfc3339(std::time::SystemTime::now()),
            mv: None,
        };
        let (compare, record, seen) = match p.step(ctx) {
            Step::Adopt { rev, record } => (
                Compare::mod_revision(user_key.as_str(), CompareOp::Equal, rev),
                record,
                rev,
            ),
            Step::Replace { rev } => (
                Compare::mod_revision(user_key.as_str(), CompareOp::Equal, rev),
                new_record(),
                rev,
            ),
            Step::Create | Step::Answer(_) => (
                Compare::create_revision(user_key.as_str(), CompareOp::Equal, 0),
                new_record(),
                0,
            ),
        };
        compares.push(compare);
        puts.push(TxnOp::put(user_key.as_str(), encode(&record), None));
        puts.push(TxnOp::put(
            ctx.keys.active(&p.entry.user, ctx.name()),
            encode(&PresenceRecord {
                rev: seen,
                n: p.nonce,
                ack: None,
                closed: 0,
                settled: None,
            }),
            Some(PutOptions::new().with_lease(lease)),
        ));
    }
    Txn::new()
        .when(compares)
        .and_then(puts)
        .or_else(reads(ctx, pending))
}

/// Per user: a get of its assignment and of every presence for it.
fn reads(ctx: &Context, pending: &[Pending]) -> Vec<TxnOp> {
    let mut gets = Vec::with_capacity(pending.len() * 2);
    for p in pending {
        gets.push(TxnOp::get(ctx.keys.user(&p.entry.user), None));
        gets.push(TxnOp::get(
            ctx.keys.presence_of(&p.entry.user),
            Some(GetOptions::new().with_prefix()),
        ));
    }
    gets
}

/// Reads every pending user (after a transaction that timed out).
async fn read_back(ctx: &Context, ep: usize, pending: &[Pending]) -> Result<TxnResponse, String> {
    let mut client = ctx.endpoints.client(ep).await?;
    let txn = Txn::new().and_then(reads(ctx, pending));
    bounded(CALL_TIMEOUT, client.txn(txn)).await
}

/// What etcd said of one user: its assignment's get and its presence
/// range.
fn user_state(ctx: &Context, assignment: &[KeyValue], presence: &[KeyValue]) -> UserState {
    let own_suffix = ctx.name();
    let assigned = assignment
        .first()
        .and_then(|kv| decode::<AssignmentRecord>(kv.value()).map(|r| (kv.mod_revision(), r)));
    let moving = assigned
        .as_ref()
        .and_then(|(_, r)| r.mv.as_ref())
        .is_some_and(|mv| ctx.seen.borrow().directors.contains_key(&mv.by));
    let mut state = UserState {
        assigned,
        others_present: false,
        own_nonce: None,
        moving,
    };
    for kv in presence {
        let director = kv
            .key_str()
            .ok()
            .and_then(|k| k.rsplit('/').next())
            .unwrap_or_default();
        if director == own_suffix {
            state.own_nonce = decode::<PresenceRecord>(kv.value()).map(|p| p.n);
        } else {
            state.others_present = true;
        }
    }
    state
}

/// The reads of a failed (or read-back) transaction: each user is either
/// settled by its own earlier write, or goes to the next round with what
/// etcd said.
fn next_round(ctx: &Context, pending: Vec<Pending>, resp: &TxnResponse) -> Vec<Pending> {
    let gets: Vec<Vec<KeyValue>> = resp
        .op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
            _ => None,
        })
        .collect();
    let mut next = Vec::new();
    let mut gets = gets.chunks(2);
    for p in pending {
        let Some([assignment, presence]) = gets.next() else {
            answer(
                p.entry,
                ClaimAnswer::Refused("etcd answered fewer reads than asked".into()),
            );
            continue;
        };
        if !assignment.is_empty() && decode::<AssignmentRecord>(assignment[0].value()).is_none() {
            answer(
                p.entry,
                ClaimAnswer::Refused("unreadable assignment record in etcd".into()),
            );
            continue;
        }
        let state = user_state(ctx, assignment, presence);
        match (&state.assigned, state.own_nonce) {
            (Some((_, record)), Some(n)) if n == p.nonce => {
                // Our own write of an earlier round committed.
                let backend = record.b.clone();
                ctx.present.borrow_mut().insert(p.entry.user.clone());
                answer(p.entry, ClaimAnswer::Agreed(backend.into()));
            }
            _ => next.push(Pending {
                state: Some(state),
                ..p
            }),
        }
    }
    next
}

fn answer(entry: Entry<Waiter>, result: ClaimAnswer) {
    if matches!(result, ClaimAnswer::Refused(_)) {
        tracing::debug!(user = entry.user.as_str(), answer = ?result, "claim refused");
    }
    for w in entry.waiters {
        let _ = w.reply.send(result.clone());
    }
}

fn answer_all(ctx: &Context, pending: Vec<Pending>, why: &str) {
    for p in pending {
        ClusterCounters::bump(&ctx.link.counters.claims_refused);
        answer(p.entry, ClaimAnswer::Refused(why.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(b: &str) -> AssignmentRecord {
        AssignmentRecord {
            b: b.into(),
            by: "d1".into(),
            n: 1,
            at: String::new(),
            mv: None,
        }
    }

    fn state(b: Option<&str>, others: bool) -> UserState {
        UserState {
            assigned: b.map(|b| (7, record(b))),
            others_present: others,
            own_nonce: None,
            moving: false,
        }
    }

    const KNOWN: &[&str] = &["b1", "b2", "b3"];

    /// Decides with `unusable`, every backend of [`KNOWN`] known, and the
    /// cluster having given up on `given_up`.
    fn decide_with(state: &UserState, unusable: &[&str], given_up: &[&str]) -> Step {
        let unusable: Vec<Box<str>> = unusable.iter().map(|b| (*b).into()).collect();
        let known: Vec<Box<str>> = KNOWN.iter().map(|b| (*b).into()).collect();
        let gone = |b: &str| given_up.contains(&b);
        decide(
            state,
            &Usable {
                unusable: &unusable,
                known: &known,
                given_up: &gone,
            },
        )
    }

    #[test]
    fn an_unassigned_user_is_created_an_assigned_one_adopted() {
        assert_eq!(decide_with(&state(None, true), &[], &[]), Step::Create);
        assert_eq!(
            decide_with(&state(Some("b2"), true), &["b1"], &[]),
            Step::Adopt {
                rev: 7,
                record: record("b2")
            }
        );
    }

    #[test]
    fn a_backend_down_here_only_keeps_its_users() {
        // Down in this director's view, up for the cluster: refused, even
        // with nobody else present.
        assert!(matches!(
            decide_with(&state(Some("b2"), false), &["b2"], &[]),
            Step::Answer(ClaimAnswer::Refused(_))
        ));
        // A backend this director does not know (removed here) may go.
        assert_eq!(
            decide_with(&state(Some("old"), false), &[], &[]),
            Step::Replace { rev: 7 }
        );
    }

    #[test]
    fn a_user_being_moved_is_refused_for_now() {
        let mut moving = state(Some("b1"), false);
        moving.moving = true;
        assert!(matches!(
            decide_with(&moving, &[], &[]),
            Step::Answer(ClaimAnswer::Refused(_))
        ));
    }

    #[test]
    fn an_unusable_backend_is_replaced_only_when_nobody_else_serves_the_user() {
        assert_eq!(
            decide_with(&state(Some("b2"), false), &["b2"], &["b2"]),
            Step::Replace { rev: 7 }
        );
        assert!(matches!(
            decide_with(&state(Some("b2"), true), &["b2"], &["b2"]),
            Step::Answer(ClaimAnswer::Refused(_))
        ));
    }
}
