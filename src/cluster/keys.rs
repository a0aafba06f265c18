//! The key layout in etcd and the values stored under it.
//!
//! Everything lives under `{prefix}/v1/` (`cluster.prefix`, then a schema
//! version so a later layout can live beside this one):
//!
//! ```text
//! {prefix}/v1/directors/{D}      DirectorRecord    lease of D
//! {prefix}/v1/leader             LeaderRecord      lease of the leader; compare-and-create
//! {prefix}/v1/tick               TickRecord        put by the leader every second
//! {prefix}/v1/users/{U}          AssignmentRecord  no lease; compare-and-create
//! {prefix}/v1/active/{U}/{D}     PresenceRecord    lease of D: D serves U
//! {prefix}/v1/backends/{B}/admin AdminRecord       no lease: a backend's admin state
//! {prefix}/v1/health/{B}/{D}     HealthRecord      lease of D: D's own verdict on B
//! {prefix}/v1/cmd/{id}           CommandRecord     lease of the issuer (`commands`)
//! {prefix}/v1/cmd/{id}/ack/{D}   AckRecord         lease of D: D has acted
//! ```
//!
//! `{U}` is the user key with `%` and `/` percent-encoded, so a key never
//! holds a stray separator. Values are JSON objects with short field names.

use serde::{Deserialize, Serialize};

/// The schema version in every key.
pub const SCHEMA: &str = "v1";

/// The keys of one cluster (one `cluster.prefix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `{prefix}/v1/`
    root: String,
}

impl Keys {
    /// The keys under `prefix` (`/mailpin`; `/` alone is the root).
    pub fn new(prefix: &str) -> Keys {
        let prefix = prefix.trim_end_matches('/');
        Keys {
            root: format!("{prefix}/{SCHEMA}/"),
        }
    }

    /// Everything mailpin keeps (what a director watches).
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The prefix of the directors' registrations.
    pub fn directors(&self) -> String {
        format!("{}directors/", self.root)
    }

    /// Director `name`'s registration.
    pub fn director(&self, name: &str) -> String {
        format!("{}directors/{name}", self.root)
    }

    /// The leader key.
    pub fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    /// The leader's tick (watch liveness).
    pub fn tick(&self) -> String {
        format!("{}tick", self.root)
    }

    /// The assignment of `user`.
    pub fn user(&self, user: &str) -> String {
        format!("{}users/{}", self.root, escape(user))
    }

    /// Every director's presence for `user`.
    pub fn presence_of(&self, user: &str) -> String {
        format!("{}active/{}/", self.root, escape(user))
    }

    /// Director `director`'s presence for `user`.
    pub fn active(&self, user: &str, director: &str) -> String {
        format!("{}active/{}/{director}", self.root, escape(user))
    }

    /// What a key under the root is.
    pub fn parse<'k>(&self, key: &'k str) -> Option<KeyKind<'k>> {
        let rest = key.strip_prefix(self.root.as_str())?;
        if rest == "leader" {
            return Some(KeyKind::Leader);
        }
        if rest == "tick" {
            return Some(KeyKind::Tick);
        }
        if let Some(name) = rest.strip_prefix("directors/") {
            return (!name.is_empty() && !name.contains('/')).then_some(KeyKind::Director(name));
        }
        if let Some(user) = rest.strip_prefix("users/") {
            return (!user.is_empty() && !user.contains('/')).then_some(KeyKind::User(user));
        }
        if let Some(pair) = rest.strip_prefix("active/") {
            let (user, director) = pair.split_once('/')?;
            return Some(KeyKind::Active { user, director });
        }
        self.parse_shared(rest)
    }
}

// -- shared admin states, health and commands (src/cluster/shared.rs) --
impl Keys {
    /// The prefix of the backends' records.
    pub fn backends(&self) -> String {
        format!("{}backends/", self.root)
    }

    /// The admin state of `backend`.
    pub fn backend_admin(&self, backend: &str) -> String {
        format!("{}backends/{}/admin", self.root, escape(backend))
    }

    /// The prefix of every director's health verdicts.
    pub fn health_all(&self) -> String {
        format!("{}health/", self.root)
    }

    /// Director `director`'s own verdict on `backend`.
    pub fn health(&self, backend: &str, director: &str) -> String {
        format!("{}health/{}/{director}", self.root, escape(backend))
    }

    /// The prefix of every command.
    pub fn commands(&self) -> String {
        format!("{}cmd/", self.root)
    }

    /// Command `id`.
    pub fn command(&self, id: &str) -> String {
        format!("{}cmd/{id}", self.root)
    }

    /// The prefix of command `id`'s acknowledgements.
    pub fn command_acks(&self, id: &str) -> String {
        format!("{}cmd/{id}/ack/", self.root)
    }

    /// Director `director`'s acknowledgement of command `id`.
    pub fn command_ack(&self, id: &str, director: &str) -> String {
        format!("{}cmd/{id}/ack/{director}", self.root)
    }

    /// The kinds of this block, from a key with the root taken off.
    fn parse_shared<'k>(&self, rest: &'k str) -> Option<KeyKind<'k>> {
        let one = |s: &str| !s.is_empty() && !s.contains('/');
        if let Some(pair) = rest.strip_prefix("backends/") {
            let backend = pair.strip_suffix("/admin")?;
            return one(backend).then_some(KeyKind::BackendAdmin(backend));
        }
        if let Some(pair) = rest.strip_prefix("health/") {
            let (backend, director) = pair.split_once('/')?;
            return (one(backend) && one(director))
                .then_some(KeyKind::Health { backend, director });
        }
        if let Some(cmd) = rest.strip_prefix("cmd/") {
            return match cmd.split_once("/ack/") {
                Some((id, director)) => {
                    (one(id) && one(director)).then_some(KeyKind::CommandAck { id, director })
                }
                None => one(cmd).then_some(KeyKind::Command(cmd)),
            };
        }
        None
    }
}
// -- end shared --

/// What a key names ([`Keys::parse`]); user keys stay escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'k> {
    /// A director's registration.
    Director(&'k str),
    /// The leader key.
    Leader,
    /// The leader's tick.
    Tick,
    /// A user's assignment (escaped user key).
    User(&'k str),
    /// A director's presence for a user (escaped user key).
    Active {
        /// The escaped user key.
        user: &'k str,
        /// The director.
        director: &'k str,
    },
    // -- shared admin states, health and commands --
    /// A backend's admin state (escaped backend name).
    BackendAdmin(&'k str),
    /// A director's own health verdict on a backend.
    Health {
        /// The escaped backend name.
        backend: &'k str,
        /// The director.
        director: &'k str,
    },
    /// A command to every director ([`crate::cluster::commands`]).
    Command(&'k str),
    /// A director's acknowledgement of a command.
    CommandAck {
        /// The command's id.
        id: &'k str,
        /// The director that acted.
        director: &'k str,
    },
    // -- end shared --
}

/// `%` → `%25`, `/` → `%2F`: a user key as one key segment.
pub fn escape(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for c in user.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`escape`] (`None` for text `escape` cannot produce).
pub fn unescape(segment: &str) -> Option<String> {
    let mut out = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("%25") => out.push('%'),
            Some("%2F") => out.push('/'),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// `directors/{D}`: a registered director.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectorRecord {
    /// Its admin API address.
    pub admin: String,
    /// When it registered (RFC 3339).
    pub since: String,
    /// Its mailpin version.
    pub version: String,
}

/// `leader`: who leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The leader director's name.
    pub name: String,
    /// Since when (RFC 3339).
    pub since: String,
}

/// `tick`: the leader's heartbeat through the watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TickRecord {
    /// The leader director's name.
    pub name: String,
    /// Counts up by one per tick.
    pub seq: u64,
}

/// `users/{U}`: the backend a user is assigned to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentRecord {
    /// The backend's name.
    pub b: String,
    /// The director that created the assignment.
    pub by: String,
    /// A per-request nonce: after a timed-out write, the writer recognises
    /// its own write by `by` and `n`.
    pub n: u64,
    /// When the assignment was made (RFC 3339, the writer's clock).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub at: String,
    /// A move of the user under way: every director present for the user
    /// holds its logins, closes its sessions and acknowledges in its
    /// presence; then the mover commits (`b` changes, `mv` goes) or aborts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mv: Option<MoveMark>,
}

/// `users/{U}.mv`: a move of U under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveMark {
    /// The move's id (unique per mover).
    pub id: u64,
    /// The director moving the user (a mark of a director no longer
    /// registered is void).
    pub by: String,
    /// The backend the user goes to; `None`: the next login places it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// `active/{U}/{D}`: director D serves U at an assignment revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The `mod_revision` of `users/{U}` that D saw before it recorded
    /// its presence; 0 when it created the assignment.
    pub rev: i64,
    /// The nonce of the claim that wrote it: after a transaction that
    /// timed out, D recognises its own write by it.
    #[serde(default)]
    pub n: u64,
    /// The move (its id) D acknowledges: D holds the user's logins and
    /// has closed its sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<u64>,
    /// How many sessions D closed for the acknowledged move.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub closed: u32,
    /// The move (its id) D has applied: its logins of U go where the
    /// move's end says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<u64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

// -- shared admin states and health --
/// `backends/{B}/admin`: the admin state every director applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    /// `up`, `down` or `drain`.
    pub state: String,
    /// The director the administrator asked.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// `health/{B}/{D}`: director D's own verdict on backend B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthRecord {
    /// Whether D sees B up (not every checked port failing).
    pub up: bool,
    /// Since when (RFC 3339).
    pub at: String,
}
// -- end shared --

/// A record as stored: compact JSON.
pub fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// A stored record, `None` if the bytes are not one (another writer's
/// garbage is ignored, never trusted).
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_prefix_and_schema() {
        let k = Keys::new("/mailpin");
        assert_eq!(k.root(), "/mailpin/v1/");
        assert_eq!(k.director("d1"), "/mailpin/v1/directors/d1");
        assert_eq!(k.leader(), "/mailpin/v1/leader");
        assert_eq!(k.tick(), "/mailpin/v1/tick");
        assert_eq!(k.user("a/b%c"), "/mailpin/v1/users/a%2Fb%25c");
        assert_eq!(k.active("u1", "d2"), "/mailpin/v1/active/u1/d2");
        assert_eq!(Keys::new("/").root(), "/v1/");
        assert_eq!(Keys::new("/x/").root(), "/x/v1/");
    }

    #[test]
    fn keys_parse_back_to_what_they_name() {
        let k = Keys::new("/m");
        assert_eq!(k.parse(&k.director("d1")), Some(KeyKind::Director("d1")));
        assert_eq!(k.parse(&k.leader()), Some(KeyKind::Leader));
        assert_eq!(k.parse(&k.tick()), Some(KeyKind::Tick));
        assert_eq!(k.parse(&k.user("a/b")), Some(KeyKind::User("a%2Fb")));
        assert_eq!(
            k.parse(&k.active("a/b", "d2")),
            Some(KeyKind::Active {
                user: "a%2Fb",
                director: "d2"
            })
        );
        assert_eq!(k.parse("/m/v1/directors/"), None);
        assert_eq!(k.parse("/other/v1/leader"), None);
        assert_eq!(k.parse("/m/v2/leader"), None);
    }

    #[test]
    fn shared_keys_parse_back_to_what_they_name() {
        let k = Keys::new("/m");
        assert_eq!(k.backend_admin("b/1"), "/m/v1/backends/b%2F1/admin");
        assert_eq!(
            k.parse(&k.backend_admin("b/1")),
            Some(KeyKind::BackendAdmin("b%2F1"))
        );
        assert_eq!(
            k.parse(&k.health("b1", "d2")),
            Some(KeyKind::Health {
                backend: "b1",
                director: "d2"
            })
        );
        assert_eq!(
            k.parse(&k.command("d1.5.1")),
            Some(KeyKind::Command("d1.5.1"))
        );
        assert_eq!(
            k.parse(&k.command_ack("d1.5.1", "d3")),
            Some(KeyKind::CommandAck {
                id: "d1.5.1",
                director: "d3"
            })
        );
        assert!(k.command_ack("x", "d").starts_with(&k.command_acks("x")));
        assert_eq!(k.parse("/m/v1/backends/b1/verdict"), None);
        assert_eq!(k.parse("/m/v1/cmd/x/ack/"), None);
        assert_eq!(k.parse("/m/v1/health/b1"), None);
    }

    #[test]
    fn escaping_round_trips_and_rejects_foreign_escapes() {
        for user in ["plain", "a/b", "100%", "%2F", "/", ""] {
            assert_eq!(unescape(&escape(user)).as_deref(), Some(user));
            assert!(!escape(user).contains('/'));
        }
        assert_eq!(unescape("%41"), None);
        assert_eq!(unescape("%2"), None);
    }

    #[test]
    fn records_encode_as_compact_json_and_garbage_decodes_to_none() {
        let a = AssignmentRecord {
            b: "mail1".into(),
            by: "d1".into(),
            n: 7,
            at: String::new(),
            mv: None,
        };
        let bytes = encode(&a);
        assert_eq!(bytes, br#"{"b":"mail1","by":"d1","n":7}"#);
        assert_eq!(decode::<AssignmentRecord>(&bytes), Some(a));
        assert_eq!(decode::<AssignmentRecord>(b"not json"), None);
        assert_eq!(decode::<LeaderRecord>(br#"{"b":"x"}"#), None);
    }
}
