//! The admin API's way into the cluster thread: requests that must act on
//! every director (a kick, a backend's admin state), answered once every
//! live director has acted.
//!
//! Plain types only (names, user keys, states as their API spelling): the
//! admin API sends an [`AdminRequest`] through the [`AdminPort`] of the
//! [`crate::cluster_link::ClusterLink`] and awaits the reply on a flume
//! channel (any runtime); the cluster thread takes the requests off the
//! same port.

/// What every live director did with one cluster-wide request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterOutcome {
    /// Directors that acted, with what each counted (sessions closed).
    pub acted: Vec<(String, u64)>,
    /// Directors that acted but could not finish (say, sessions that did
    /// not close in time), with their note.
    pub failed: Vec<(String, String)>,
    /// Directors whose lease expired while the request waited: counted as
    /// done (a director without a lease has closed its sessions).
    pub gone: Vec<String>,
    /// Directors still registered that did not answer in time.
    pub missing: Vec<String>,
}

impl ClusterOutcome {
    /// Whether every live director acted and finished.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty()
    }

    /// What the directors counted, summed.
    pub fn total(&self) -> u64 {
        self.acted.iter().map(|(_, n)| n).sum()
    }

    /// Why the request is not complete, for an error message.
    pub fn shortfall(&self) -> String {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!(
                "no answer in time from {}",
                self.missing.join(", ")
            ));
        }
        for (d, note) in &self.failed {
            parts.push(format!("{d}: {note}"));
        }
        parts.join("; ")
    }
}

/// A request's answer: what the directors did, or why nothing was asked
/// of them (this director holds no lease, etcd refused the write).
pub type ClusterReply = Result<ClusterOutcome, String>;

/// A request to the cluster thread.
#[derive(Debug)]
pub enum AdminRequest {
    /// End a user's sessions on every director.
    Kick {
        /// The user key (normalised by `server.user_key`).
        key: String,
        /// Gets the outcome.
        reply: flume::Sender<ClusterReply>,
    },
    /// Set a backend's admin state on every director (stored in etcd, so
    /// directors that start later apply it too).
    SetAdmin {
        /// The backend's name.
        backend: String,
        /// `up`, `down` or `drain`.
        state: String,
        /// Gets the outcome.
        reply: flume::Sender<ClusterReply>,
    },
}

/// The channel between the admin API and the cluster thread.
#[derive(Debug)]
pub struct AdminPort {
    tx: flume::Sender<AdminRequest>,
    rx: flume::Receiver<AdminRequest>,
}

impl Default for AdminPort {
    fn default() -> Self {
        let (tx, rx) = flume::unbounded();
        AdminPort { tx, rx }
    }
}

impl AdminPort {
    /// Asks every director to end `key`'s sessions.
    pub fn kick(&self, key: &str) -> flume::Receiver<ClusterReply> {
        let (reply, rx) = flume::bounded(1);
        self.send(AdminRequest::Kick {
            key: key.to_owned(),
            reply,
        });
        rx
    }

    /// Asks every director to put `backend` in admin `state`.
    pub fn set_admin(&self, backend: &str, state: &str) -> flume::Receiver<ClusterReply> {
        let (reply, rx) = flume::bounded(1);
        self.send(AdminRequest::SetAdmin {
            backend: backend.to_owned(),
            state: state.to_owned(),
            reply,
        });
        rx
    }

    fn send(&self, request: AdminRequest) {
        // The port holds a receiver itself, so a send cannot fail; a
        // request nobody takes (no cluster thread) is answered by the
        // caller's timeout.
        let _ = self.tx.send(request);
    }

    /// The cluster thread's end.
    pub fn requests(&self) -> flume::Receiver<AdminRequest> {
        self.rx.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_is_complete_only_when_every_live_director_finished() {
        let mut o = ClusterOutcome {
            acted: vec![("d1".into(), 2), ("d2".into(), 1)],
            gone: vec!["d3".into()],
            ..ClusterOutcome::default()
        };
        assert!(o.complete());
        assert_eq!(o.total(), 3);
        o.missing.push("d4".into());
        o.failed.push(("d2".into(), "not closed".into()));
        assert!(!o.complete());
        assert_eq!(o.shortfall(), "no answer in time from d4; d2: not closed");
    }

    #[test]
    fn requests_reach_the_cluster_end_with_their_reply_channel() {
        let port = AdminPort::default();
        let answer = port.set_admin("b1", "down");
        match port.requests().try_recv().unwrap() {
            AdminRequest::SetAdmin {
                backend,
                state,
                reply,
            } => {
                assert_eq!((backend.as_str(), state.as_str()), ("b1", "down"));
                reply.send(Ok(ClusterOutcome::default())).unwrap();
            }
            other => panic!("{other:?}"),
        }
        assert!(answer.try_recv().unwrap().is_ok());
    }
}
