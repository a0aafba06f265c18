//! What the dev backends remember about each connection: the peer, the
//! user once logged in, and the ID fields the client sent.
//!
//! The director forwards a client's address to its backends through the ID
//! command (`x-originating-ip`, `x-originating-port`, `x-connected-ip`,
//! `x-session-id`); tests read this table to check what arrived. It keeps
//! every open connection and the most recent closed ones (a bounded
//! history, so a long load test does not grow it without end).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// How many closed connections the table remembers.
const CLOSED_KEPT: usize = 1024;

/// One connection to a dev backend, as seen by the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// A number unique among all dev backends sharing the table.
    pub id: u64,
    /// The backend that accepted the connection.
    pub backend: String,
    /// The address the connection came from (the director's, behind one).
    pub peer: SocketAddr,
    /// The login name, once authenticated.
    pub user: Option<String>,
    /// The ID fields the client sent, in order, names lower-cased;
    /// `None` for a NIL value.
    pub id_fields: Vec<(String, Option<String>)>,
    /// Whether the connection is still open.
    pub open: bool,
}

impl SessionInfo {
    /// The value of ID field `name` (case-insensitive), if it was sent and
    /// not NIL.
    pub fn id_field(&self, name: &str) -> Option<&str> {
        self.id_fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    open: BTreeMap<u64, SessionInfo>,
    closed: VecDeque<SessionInfo>,
}

/// The shared table; cheap to clone (all clones are one table).
#[derive(Debug, Clone, Default)]
pub struct SessionTable {
    state: Arc<Mutex<State>>,
}

/// A connection's entry in the table; dropping it marks it closed.
#[derive(Debug)]
pub struct SessionEntry {
    table: SessionTable,
    id: u64,
}

impl SessionTable {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new connection accepted by `backend` from `peer`.
    pub fn open(&self, backend: &str, peer: SocketAddr) -> SessionEntry {
        let mut state = self.state();
        state.next_id += 1;
        let id = state.next_id;
        state.open.insert(
            id,
            SessionInfo {
                id,
                backend: backend.to_string(),
                peer,
                user: None,
                id_fields: Vec::new(),
                open: true,
            },
        );
        SessionEntry {
            table: self.clone(),
            id,
        }
    }

    /// All open connections and the most recent closed ones, oldest first.
    pub fn snapshot(&self) -> Vec<SessionInfo> {
        let state = self.state();
        let mut all: Vec<SessionInfo> = state
            .closed
            .iter()
            .chain(state.open.values())
            .cloned()
            .collect();
        all.sort_by_key(|s| s.id);
        all
    }
}

impl SessionEntry {
    fn update(&self, f: impl FnOnce(&mut SessionInfo)) {
        if let Some(info) = self.table.state().open.get_mut(&self.id) {
            f(info);
        }
    }

    /// Records the authenticated user.
    pub fn set_user(&self, user: &str) {
        self.update(|i| i.user = Some(user.to_string()));
    }

    /// Records the fields of an ID command (a later ID replaces them).
    pub fn set_id_fields(&self, fields: Vec<(String, Option<String>)>) {
        self.update(|i| i.id_fields = fields);
    }
}

impl Drop for SessionEntry {
    fn drop(&mut self) {
        let mut state = self.table.state();
        if let Some(mut info) = state.open.remove(&self.id) {
            info.open = false;
            if state.closed.len() == CLOSED_KEPT {
                state.closed.pop_front();
            }
            state.closed.push_back(info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_record_and_close() {
        let table = SessionTable::default();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let entry = table.open("b1", peer);
        entry.set_user("alice");
        entry.set_id_fields(vec![("x-originating-ip".into(), Some("10.1.2.3".into()))]);
        let snap = table.snapshot();
        assert_eq!(snap.len(), 1);
        assert!(snap[0].open);
        assert_eq!(snap[0].id_field("X-Originating-IP"), Some("10.1.2.3"));
        drop(entry);
        let snap = table.snapshot();
        assert!(!snap[0].open);
        assert_eq!(snap[0].user.as_deref(), Some("alice"));
    }
}
