//! The records of commands to every director (`cmd/{id}`,
//! `cmd/{id}/ack/{D}`) and what the watch keeps of them; the mechanism is
//! in [`crate::cluster::commands`], what each command does in
//! [`crate::cluster::actions`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a command asks of every director.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Command {
    /// End a user's sessions (backend side first).
    Kick {
        /// The user key.
        user: String,
    },
    /// Apply the backend's admin state as etcd holds it now (for `down`:
    /// its sessions closed, backend side first).
    Admin {
        /// The backend's name.
        backend: String,
    },
}

/// `cmd/{id}`: a command and who issued it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The issuing director.
    pub by: String,
    /// What to do.
    pub what: Command,
}

/// `cmd/{id}/ack/{D}`: director D has carried the command out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    /// Whether it finished (false: say, sessions that did not close in
    /// time; `note` says what).
    pub ok: bool,
    /// What it counted (sessions closed).
    pub n: u64,
    /// Why it did not finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl AckRecord {
    /// Finished, having counted `n`.
    pub fn done(n: u64) -> AckRecord {
        AckRecord {
            ok: true,
            n,
            note: None,
        }
    }

    /// Not finished, for `why`.
    pub fn failed(n: u64, why: impl Into<String>) -> AckRecord {
        AckRecord {
            ok: false,
            n,
            note: Some(why.into()),
        }
    }
}

/// A command in etcd as the watch has seen it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommandState {
    /// Its acknowledgements so far, by director.
    pub acks: BTreeMap<String, AckRecord>,
    /// A resync is reading the commands again and has not found this one
    /// yet (gone once the resync is over unless found).
    pub stale: bool,
}

/// A command for this director's agent.
#[derive(Debug)]
pub struct Pending {
    /// The command's id.
    pub id: String,
    /// What to do.
    pub what: Command,
}
