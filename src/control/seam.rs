//! The state seam: the one place the admin API acts on what directors
//! share — where a user is (lookup, move, flush), kicks, and backends'
//! admin states.
//!
//! Two implementations behind one type:
//! - [`StateSeam::Memory`], one director: the control plane's own backend
//!   table and the cores' shard tables (a safe move is hold, kick, wait
//!   idle, reassign, on this director's cores);
//! - [`StateSeam::Etcd`], cluster mode: the same operations through the
//!   cluster thread, so that every director acts (a move marks the user in
//!   etcd and waits for every present director's acknowledgement; a kick
//!   or admin state is a command every live director carries out).
//!
//! Callers get the same answers from both; cluster mode adds who acted.

use std::sync::Arc;
use std::time::Duration;

use crate::cluster_link::{ClusterLink, ClusterOutcome, ClusterReply, ControlRequest};
use tracing::info;

use crate::control::events::EventKind;
use crate::control::state::{join_all, Control, MoveError, CLOSE_LIMIT, FLUSH_PARALLEL};
use crate::route::backends::{AdminState, BackendId};
use crate::route::router::Reassign;

/// How long the control plane waits for the cluster thread's answer to a
/// move (the mover's own bound is shorter: sessions closed, or a lease
/// expired, plus a silent watch re-created).
const MOVE_ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// Where the shared state lives.
pub enum StateSeam {
    /// In this process: one director.
    Memory,
    /// In etcd, through the cluster thread.
    Etcd(Arc<ClusterLink>),
}

/// Where a user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPlace {
    /// The backend's name.
    pub backend: String,
    /// Sessions of the user on this director.
    pub sessions: u32,
    /// When the assignment was made.
    pub since: Since,
}

/// When an assignment was made: this director's clock, or the RFC 3339
/// text etcd holds (the assigning director's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Here.
    At(std::time::SystemTime),
    /// As etcd holds it.
    Text(String),
}

/// An action done: the count it closed (sessions) and, in cluster mode,
/// which directors acted.
#[derive(Debug)]
pub struct Acted {
    /// Sessions closed over every director.
    pub closed: usize,
    /// Cluster mode: who acted and whose lease expired meanwhile.
    pub directors: Option<ClusterOutcome>,
}

/// Why an action did not (fully) happen.
#[derive(Debug)]
pub enum ActError {
    /// Some directors acted, not all (names and notes in the outcome).
    Incomplete(ClusterOutcome),
    /// It did not happen (why).
    Failed(String),
}

impl StateSeam {
    /// The seam for the settings in force.
    pub fn of(control: &Control) -> StateSeam {
        match control.shared().cluster.clone() {
            Some(link) => StateSeam::Etcd(link),
            None => StateSeam::Memory,
        }
    }

    /// Where `key` is: this director's assignment, or (cluster mode, a
    /// user it serves no session of) the one etcd holds.
    pub async fn lookup(&self, control: &Control, key: &str) -> Option<UserPlace> {
        if let Some(a) = control.lookup(key).await {
            let backend = control.backends().get(a.backend)?.name.to_string();
            return Some(UserPlace {
                backend,
                sessions: a.sessions,
                since: Since::At(a.since),
            });
        }
        let StateSeam::Etcd(link) = self else {
            return None;
        };
        let (reply, rx) = flume::bounded(1);
        let request = ControlRequest::Lookup {
            user: key.into(),
            reply,
        };
        if !link.port.ask(request) {
            return None;
        }
        let (backend, since) = bounded(MOVE_ANSWER_LIMIT, rx.recv_async())
            .await?
            .ok()?
            .ok()??;
        Some(UserPlace {
            backend: backend.into(),
            sessions: 0,
            since: Since::Text(since),
        })
    }

    /// Moves `key` (`Reassign::To` a backend, or `Forget`: the next login
    /// places it) with every session of it closed first, backend side
    /// first; the sessions closed.
    pub async fn move_user(
        &self,
        control: &Control,
        key: &str,
        to: Reassign,
    ) -> Result<usize, MoveError> {
        let StateSeam::Etcd(link) = self else {
            return control.safe_move(key, to).await;
        };
        let to = match to {
            Reassign::To(id) => Some(control.backend_name(id).into_boxed_str()),
            Reassign::Forget => None,
            Reassign::Keep => return Ok(0),
        };
        let (reply, rx) = flume::bounded(1);
        let request = ControlRequest::Move {
            user: key.into(),
            to,
            reply,
        };
        if !link.port.ask(request) {
            return Err(MoveError::Cluster("the cluster thread has stopped".into()));
        }
        match bounded(MOVE_ANSWER_LIMIT, rx.recv_async()).await {
            Some(Ok(result)) => result.map(|n| n as usize).map_err(MoveError::Cluster),
            Some(Err(_)) => Err(MoveError::Cluster("the cluster thread has stopped".into())),
            None => Err(MoveError::Cluster(
                "no answer from the cluster in time".into(),
            )),
        }
    }

    /// The users assigned to `backend` (cluster mode: by any director).
    pub async fn users_on(&self, control: &Control, backend: BackendId) -> Vec<Box<str>> {
        let StateSeam::Etcd(link) = self else {
            return control.local_users_on(backend).await;
        };
        let (reply, rx) = flume::bounded(1);
        let request = ControlRequest::UsersOn {
            backend: control.backend_name(backend).into(),
            reply,
        };
        if !link.port.ask(request) {
            return Vec::new();
        }
        match bounded(MOVE_ANSWER_LIMIT, rx.recv_async()).await {
            Some(Ok(Ok(users))) => users,
            Some(Ok(Err(e))) => {
                tracing::warn!(backend, error = %e, "etcd did not list the backend's users");
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Ends every session of `key` (on every director), backend side
    /// first.
    pub async fn kick(&self, control: &Control, key: &str) -> Result<Acted, ActError> {
        match self {
            StateSeam::Memory => Ok(Acted {
                closed: control.kick_user(key).await,
                directors: None,
            }),
            StateSeam::Etcd(link) => {
                let reply = await_cluster(control, link.admin.kick(key)).await;
                acted(reply)
            }
        }
    }

    /// Puts backend `id` in admin `state` (on every director); for `down`,
    /// done once its sessions are closed.
    pub async fn set_admin(
        &self,
        control: &Control,
        id: BackendId,
        state: AdminState,
    ) -> Result<Acted, ActError> {
        match self {
            StateSeam::Memory => {
                if control.set_admin(id, state).await {
                    Ok(Acted {
                        closed: 0,
                        directors: None,
                    })
                } else {
                    Err(ActError::Failed(format!(
                        "{} is down, but some of its sessions did not close in time",
                        control.backend_name(id)
                    )))
                }
            }
            StateSeam::Etcd(link) => {
                let name = control.backend_name(id);
                let reply =
                    await_cluster(control, link.admin.set_admin(&name, state.as_str())).await;
                acted(reply)
            }
        }
    }
}

/// The admin actions on users, through the seam.
impl Control {
    /// A safe move ([`Control::safe_move`]) asked for by an admin,
    /// recorded as an event.
    pub async fn move_user(&self, key: &str, to: Reassign) -> Result<usize, MoveError> {
        let target = match to {
            Reassign::To(id) => self.backend_name(id),
            _ => "its first-ranked backend".to_string(),
        };
        let result = StateSeam::of(self).move_user(self, key, to).await;
        let message = match &result {
            Ok(closed) => format!("moved to {target}, {closed} sessions closed"),
            Err(e) => format!("not moved to {target}: {e}"),
        };
        let backend = matches!(to, Reassign::To(_)).then_some(target.as_str());
        self.event(EventKind::Move, backend, Some(key), message);
        result
    }

    /// Drops every assignment to `backend` safely, a bounded number of
    /// users at a time; returns (users moved, sessions closed). In cluster
    /// mode the users are those etcd assigns there, moved on every
    /// director (see [`StateSeam`]).
    pub async fn flush(&self, backend: BackendId) -> (usize, usize) {
        let seam = StateSeam::of(self);
        let users = seam.users_on(self, backend).await;
        let mut closed = 0;
        let mut moved = 0;
        for batch in users.chunks(FLUSH_PARALLEL) {
            let moves = batch
                .iter()
                .map(|k| seam.move_user(self, k, Reassign::Forget));
            for n in join_all(moves).await.into_iter().flatten() {
                closed += n;
                moved += 1;
            }
        }
        info!(backend, users = moved, sessions = closed, "flushed");
        self.event(
            EventKind::Flush,
            Some(&self.backend_name(backend)),
            None,
            format!("{moved} users flushed, {closed} sessions closed"),
        );
        (moved, closed)
    }
}

/// A cluster command's outcome as an action's.
fn acted(reply: ClusterReply) -> Result<Acted, ActError> {
    match reply {
        Ok(outcome) if outcome.complete() => Ok(Acted {
            closed: usize::try_from(outcome.total()).unwrap_or(usize::MAX),
            directors: Some(outcome),
        }),
        Ok(outcome) => Err(ActError::Incomplete(outcome)),
        Err(e) => Err(ActError::Failed(e)),
    }
}

/// Awaits the cluster thread's reply to a command: its own bound (closing
/// sessions, plus a lease TTL for a director cut off), and more.
async fn await_cluster(control: &Control, rx: flume::Receiver<ClusterReply>) -> ClusterReply {
    let ttl = control
        .shared()
        .config
        .cluster
        .as_ref()
        .map_or(Duration::ZERO, |c| c.lease_ttl);
    match bounded(CLOSE_LIMIT + ttl + Duration::from_secs(5), rx.recv_async()).await {
        Some(Ok(reply)) => reply,
        Some(Err(_)) => Err("the cluster thread has stopped".into()),
        None => Err("the cluster thread did not answer in time".into()),
    }
}

/// Runs `f` with a time limit; `None` if it did not finish.
async fn bounded<F: std::future::Future>(limit: Duration, f: F) -> Option<F::Output> {
    monoio::time::timeout(limit, f).await.ok()
}
