//! What the cluster thread's tasks share: the settings, the etcd session,
//! and the state the view is built from.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::cluster::command_types::{CommandState, Pending};
use crate::cluster::endpoints::Endpoints;
use crate::cluster::keys::{DirectorRecord, Keys};
use crate::cluster_link::{ClusterLink, ClusterView, DirectorEntry, EtcdView, FenceTimes};
use crate::mailbox::MailboxSender;
use crate::plane::{ControlMsg, CoreMsg};
use crate::route::backends::Health;

/// Shared by the tasks of the cluster thread (one thread: `RefCell`s,
/// never borrowed across an await).
pub struct Context {
    /// The link to the rest of the director.
    pub link: Arc<ClusterLink>,
    /// The key layout.
    pub keys: Keys,
    /// The etcd endpoints.
    pub endpoints: Endpoints,
    /// Lease TTL, margin and keepalive timing.
    pub times: FenceTimes,
    /// What this director registers.
    pub record: DirectorRecord,
    /// The cores, for closing every session when fenced.
    pub cores: Vec<MailboxSender<CoreMsg>>,
    /// The lease this director holds now.
    pub lease: Cell<Option<i64>>,
    /// The endpoint the keepalives use (the one `/cluster` shows).
    pub lease_endpoint: Cell<usize>,
    /// Whether the last keepalive was answered.
    pub connected: Cell<bool>,
    /// The state the watch keeps.
    pub seen: RefCell<Seen>,
    /// The last error talking to etcd.
    pub last_error: RefCell<Option<String>>,
    /// Woken by the watch when the leader key goes: campaign at once
    /// rather than at the next tick.
    pub leader_gone: tokio::sync::Notify,
    /// Woken by fencing once the sessions are closed: the lease is given
    /// up (revoked when etcd answers) and a new one granted, so no
    /// presence of the fenced past outlives it.
    pub give_up_lease: tokio::sync::Notify,
    /// Users this director holds presence for (claims agreed, not yet
    /// released): the ones whose moves it must take part in.
    pub present: RefCell<HashSet<String>>,
    /// Users whose logins this director holds for a move, by move id.
    pub holding: RefCell<HashMap<String, u64>>,
    /// The endpoint moves and lookups use (moving on after a failure).
    pub ops_endpoint: Cell<usize>,
    // -- cluster-wide admin actions and shared health --
    /// The control plane, which applies admin states and kicks (`None`
    /// for a cluster thread without a director, as in tests).
    pub control: Option<MailboxSender<ControlMsg>>,
    /// Commands of other directors (and this one) to carry out.
    pub agent: flume::Sender<Pending>,
    /// Woken after the watch applied a batch of events (an issuer waits
    /// on it for acknowledgements and departures).
    pub changed: tokio::sync::Notify,
    // -- end --
}

/// What the watch has seen of the cluster.
#[derive(Debug, Default)]
pub struct Seen {
    /// Registered directors by name.
    pub directors: BTreeMap<String, DirectorRecord>,
    /// The leader's name.
    pub leader: Option<String>,
    /// The revision the watch is at.
    pub revision: i64,
    // -- shared admin states and health --
    /// Admin states stored in etcd, by backend name.
    pub admin: BTreeMap<String, String>,
    /// Every director's own verdict: backend name → director → up.
    pub health: BTreeMap<String, BTreeMap<String, bool>>,
    /// The cluster's verdicts (majority of live directors), by backend.
    pub verdicts: BTreeMap<String, Health>,
    /// This director's own verdicts (what the control plane reported).
    pub own: BTreeMap<String, bool>,
    /// Commands in etcd, by id.
    pub commands: BTreeMap<String, CommandState>,
    // -- end --
}

// -- shared admin states and health --
impl Seen {
    /// The cluster's verdict on `backend`: `Unhealthy` once a strict
    /// majority of live directors see it down, `Healthy` once a majority
    /// see it up, `None` without a majority. The question a claim asks
    /// before it replaces an assignment to `backend`.
    pub fn verdict(&self, backend: &str) -> Option<Health> {
        self.verdicts.get(backend).copied()
    }

    /// Recomputes every verdict from the reports of the live directors.
    pub fn recount(&mut self) {
        let live: std::collections::BTreeSet<String> = self.directors.keys().cloned().collect();
        self.verdicts = self
            .health
            .iter()
            .filter_map(|(b, reports)| {
                crate::cluster::verdict::Tally::of(&live, reports)
                    .verdict()
                    .map(|v| (b.clone(), v))
            })
            .collect();
    }

    /// The backends of the view: admin state, verdict, tallies, own view.
    fn backend_views(&self) -> Vec<crate::cluster_link::BackendVerdict> {
        use crate::cluster::verdict::Tally;
        let live: std::collections::BTreeSet<String> = self.directors.keys().cloned().collect();
        let mut names: std::collections::BTreeSet<&String> = self.admin.keys().collect();
        names.extend(self.health.keys());
        names.extend(self.own.keys());
        let updown = |up: bool| if up { "up" } else { "down" }.to_owned();
        names
            .into_iter()
            .map(|b| {
                let tally = self
                    .health
                    .get(b)
                    .map(|r| Tally::of(&live, r))
                    .unwrap_or_default();
                crate::cluster_link::BackendVerdict {
                    name: b.clone(),
                    admin: self.admin.get(b).cloned(),
                    verdict: self.verdict(b).map(|h| updown(h == Health::Healthy)),
                    up: tally.up,
                    down: tally.down,
                    own: self.own.get(b).map(|up| updown(*up)),
                }
            })
            .collect()
    }
}
// -- end --

impl Context {
    /// Runs one transaction on the endpoint for moves and lookups; after a
    /// failure the next call goes to the next endpoint.
    pub async fn txn(&self, txn: etcd_client::Txn) -> Result<etcd_client::TxnResponse, String> {
        let ep = self.ops_endpoint.get();
        let sent = async {
            let mut client = self.endpoints.client(ep).await?;
            crate::cluster::endpoints::bounded(
                crate::cluster::endpoints::CALL_TIMEOUT,
                client.txn(txn),
            )
            .await
        }
        .await;
        if let Err(e) = &sent {
            self.endpoints.drop_client(ep);
            self.ops_endpoint.set(self.endpoints.next(ep));
            self.failed("moves", e.clone());
        }
        sent
    }

    /// Whether director `name` is registered (holds a live lease).
    pub fn registered(&self, name: &str) -> bool {
        self.seen.borrow().directors.contains_key(name)
    }

    /// This director's name.
    pub fn name(&self) -> &str {
        &self.link.name
    }

    /// Notes an error (shown in `/cluster` until the next success).
    pub fn failed(&self, what: &str, error: String) {
        tracing::debug!(what, error = %error, "etcd call failed");
        *self.last_error.borrow_mut() = Some(format!("{what}: {error}"));
        self.publish();
    }

    /// Clears the last error.
    pub fn succeeded(&self) {
        if self.last_error.borrow().is_some() {
            *self.last_error.borrow_mut() = None;
            self.publish();
        }
    }

    /// Builds the view from the state and publishes it.
    pub fn publish(&self) {
        let seen = self.seen.borrow();
        let directors = seen
            .directors
            .iter()
            .map(|(name, r)| DirectorEntry {
                name: name.clone(),
                admin: r.admin.clone(),
                since: r.since.clone(),
                version: r.version.clone(),
                leader: seen.leader.as_deref() == Some(name.as_str()),
            })
            .collect();
        let view = ClusterView {
            name: self.name().to_owned(),
            leader: seen.leader.clone(),
            directors,
            etcd: EtcdView {
                connected: self.connected.get(),
                endpoint: self.endpoints.url(self.lease_endpoint.get()).to_owned(),
                endpoints: self.endpoints.urls().to_vec(),
                lease: self.lease.get().map(|id| format!("{id:x}")),
                lease_ttl: self.times.ttl.as_secs(),
                fenced: self.link.fence.is_fenced(),
                revision: seen.revision,
                last_error: self.last_error.borrow().clone(),
            },
            backends: seen.backend_views(),
            degraded: crate::cluster::verdict::degraded(&seen.own, &seen.verdicts),
        };
        drop(seen);
        self.link.publish(view);
    }
}
