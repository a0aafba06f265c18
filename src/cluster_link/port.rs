//! The cores' way to the cluster thread: claims of users and releases.
//!
//! In cluster mode a core never assigns a user on its own. The owner core
//! of a user without a usable assignment sends a [`PortRequest::Claim`]
//! (the backend it would choose, and the backends it cannot use) and holds
//! the user's logins until the answer: the backend etcd agreed on, which
//! every director routes the user to. When the owner core drops the
//! assignment (expired, its backend gone, moved away), it sends a
//! [`PortRequest::Release`], and the cluster thread deletes this director's
//! presence for the user, so the others may reassign it when they must.
//!
//! The control plane asks the cluster thread through the same port
//! ([`ControlRequest`]): moves of users across every director, where etcd
//! says a user is, and which users are assigned to a backend.
//!
//! Plain types only: the cores and the cluster thread both depend on this
//! module, neither on the other. The channel is unbounded but bounded in
//! practice: one claim per user being assigned (a second login of the same
//! user waits on the first claim), one release per dropped assignment.

/// A request from a core to the cluster thread.
#[derive(Debug)]
pub enum PortRequest {
    /// Agree on a backend for a user this director has no usable
    /// assignment for.
    Claim(ClaimRequest),
    /// This director no longer routes `user`: drop its presence.
    Release {
        /// The user key.
        user: Box<str>,
    },
}

/// A claim of a user (see [`PortRequest::Claim`]).
#[derive(Debug)]
pub struct ClaimRequest {
    /// The user key.
    pub user: Box<str>,
    /// The backend this director chooses if the user has none (its first
    /// choice among the backends routable here).
    pub candidate: Box<str>,
    /// Backends this director cannot use for the user (down, drained,
    /// removed here, or refusing this login for load): an assignment to
    /// one of them is replaced by `candidate` when no other director
    /// serves the user there, else the claim is refused for now.
    pub unusable: Box<[Box<str>]>,
    /// Every backend this director has configured: an assignment to any
    /// other counts as unusable (and as gone: it may be replaced).
    pub known: Box<[Box<str>]>,
    /// Gets the answer.
    pub reply: flume::Sender<ClaimAnswer>,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The backend every director routes the user to; this director's
    /// presence for the user is recorded.
    Agreed(Box<str>),
    /// No agreement now (etcd not reached, the user's backend unusable
    /// here while another director still serves the user there, the user
    /// being moved): the login gets a temporary failure.
    Refused(String),
}

/// Where etcd says a user is: its backend's name and since when (RFC 3339).
pub type Located = (Box<str>, String);

/// A request of the control plane to the cluster thread.
#[derive(Debug)]
pub enum ControlRequest {
    /// Move `user` on every director: each one present for it holds its
    /// logins and closes its sessions (backend side first), then the
    /// assignment changes and the held logins go on. Answered with the
    /// sessions closed over all directors, or why not (the user stays).
    Move {
        /// The user key.
        user: Box<str>,
        /// The backend to move to; `None`: drop the assignment, the next
        /// login places the user (flush).
        to: Option<Box<str>>,
        /// Gets the answer.
        reply: flume::Sender<Result<u32, String>>,
    },
    /// Where etcd says `user` is: its backend and since when.
    Lookup {
        /// The user key.
        user: Box<str>,
        /// Gets the backend and the time of the assignment (RFC 3339),
        /// `None` when unassigned; an error when etcd did not answer.
        reply: flume::Sender<Result<Option<Located>, String>>,
    },
    /// The users etcd assigns to `backend`.
    UsersOn {
        /// The backend's name.
        backend: Box<str>,
        /// Gets the user keys, or why not.
        reply: flume::Sender<Result<Vec<Box<str>>, String>>,
    },
}

/// The sending side, one per director, cloned into every core and the
/// control plane.
#[derive(Debug, Clone)]
pub struct ClusterPort {
    tx: flume::Sender<PortRequest>,
    control: flume::Sender<ControlRequest>,
}

/// What the cluster thread serves: the cores' requests and the control
/// plane's.
#[derive(Debug)]
pub struct PortReceivers {
    /// Claims and releases.
    pub cores: flume::Receiver<PortRequest>,
    /// Moves, lookups, listings.
    pub control: flume::Receiver<ControlRequest>,
}

impl ClusterPort {
    /// A port and the receivers the cluster thread serves.
    pub fn new() -> (ClusterPort, PortReceivers) {
        let (tx, cores) = flume::unbounded();
        let (control, control_rx) = flume::unbounded();
        (
            ClusterPort { tx, control },
            PortReceivers {
                cores,
                control: control_rx,
            },
        )
    }

    /// Sends a control-plane request; false if the cluster thread has
    /// stopped (its reply channel is then closed at once).
    pub fn ask(&self, request: ControlRequest) -> bool {
        self.control.send(request).is_ok()
    }

    /// Sends a claim; the answer arrives on the returned channel (a
    /// refusal at once if the cluster thread has stopped).
    pub fn claim(
        &self,
        user: &str,
        candidate: &str,
        unusable: Box<[Box<str>]>,
        known: Box<[Box<str>]>,
    ) -> flume::Receiver<ClaimAnswer> {
        let (reply, rx) = flume::bounded(1);
        let request = ClaimRequest {
            user: user.into(),
            candidate: candidate.into(),
            unusable,
            known,
            reply,
        };
        if let Err(flume::SendError(PortRequest::Claim(c))) =
            self.tx.send(PortRequest::Claim(request))
        {
            let _ = c.reply.send(ClaimAnswer::Refused(
                "the cluster thread has stopped".into(),
            ));
        }
        rx
    }

    /// Tells the cluster thread this director no longer routes `user`.
    pub fn release(&self, user: &str) {
        let _ = self.tx.send(PortRequest::Release { user: user.into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_arrive_in_order_and_a_stopped_thread_refuses_at_once() {
        let (port, receivers) = ClusterPort::new();
        let rx = receivers.cores;
        port.release("u1");
        let answer = port.claim("u1", "b1", Box::new([]), Box::new(["b1".into()]));
        match rx.try_recv() {
            Ok(PortRequest::Release { user }) => assert_eq!(&*user, "u1"),
            other => panic!("release first, got {other:?}"),
        }
        match rx.try_recv() {
            Ok(PortRequest::Claim(c)) => {
                assert_eq!((&*c.user, &*c.candidate), ("u1", "b1"));
                let _ = c.reply.send(ClaimAnswer::Agreed("b1".into()));
            }
            other => panic!("then the claim, got {other:?}"),
        }
        assert_eq!(answer.try_recv(), Ok(ClaimAnswer::Agreed("b1".into())));
        drop(rx);
        drop(receivers.control);
        let refused = port.claim("u2", "b1", Box::new([]), Box::new(["b1".into()]));
        assert!(matches!(refused.try_recv(), Ok(ClaimAnswer::Refused(_))));
    }
}
