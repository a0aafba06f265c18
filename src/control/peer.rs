//! The control plane's upgrade operations: asking the main thread for a
//! binary upgrade (`POST /upgrade`), and carrying out the admin actions a
//! new process forwards to this one while it drains.

use std::time::Duration;

use tracing::info;

use crate::control::state::Control;
use crate::plane::handover::{
    MainEvent, PeerAnswer, PeerRequest, PredecessorLink, UpgradeDone, UpgradeRefused,
};
use crate::route::backends::AdminState;

/// How long `POST /upgrade` waits for the main thread's answer: the new
/// process gets [`crate::plane::handover`]'s ready bound (10 s) plus
/// the time to stop accepting and to roll back.
const UPGRADE_ANSWER_LIMIT: Duration = Duration::from_secs(20);

impl Control {
    /// Where `POST /upgrade` asks for an upgrade.
    pub fn set_main_thread(&self, main: flume::Sender<MainEvent>) {
        *self.upgrade.main.borrow_mut() = Some(main);
    }

    /// Sets (or, once it exited, clears) the link to the predecessor.
    pub fn set_predecessor(&self, link: Option<PredecessorLink>) {
        info!(
            following = link.is_some(),
            "binary upgrade: predecessor link {}",
            if link.is_some() { "open" } else { "closed" }
        );
        *self.upgrade.predecessor.borrow_mut() = link;
    }

    /// Asks the main thread to hand over to a new process; its answer.
    pub async fn request_upgrade(&self) -> Result<UpgradeDone, UpgradeRefused> {
        let refused = |status, message: &str| UpgradeRefused {
            status,
            message: message.to_string(),
        };
        let Some(main) = self.upgrade.main.borrow().clone() else {
            return Err(refused(
                409,
                "this director cannot upgrade (started without a configuration file)",
            ));
        };
        let (tx, rx) = flume::bounded(1);
        if main.send(MainEvent::Upgrade(tx)).is_err() {
            return Err(refused(409, "the director is stopping"));
        }
        match monoio::time::timeout(UPGRADE_ANSWER_LIMIT, rx.recv_async()).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(refused(409, "the director is stopping")),
            Err(_) => Err(refused(500, "no answer from the upgrade in time")),
        }
    }

    /// Carries out an admin action the new process forwarded.
    pub async fn peer_request(&self, request: PeerRequest) -> PeerAnswer {
        match request {
            PeerRequest::Kick(key) => PeerAnswer::Kicked(self.kick_user(&key).await),
            PeerRequest::SetAdmin(name, state) => {
                let state = match state.as_str() {
                    "up" => AdminState::Up,
                    "down" => AdminState::Down,
                    "drain" => AdminState::Drain,
                    // Not a state this version knows: nothing done.
                    _ => return PeerAnswer::AdminSet(false),
                };
                match self.backends().by_name(&name).map(|b| b.id) {
                    Some(id) => PeerAnswer::AdminSet(self.set_admin(id, state).await),
                    // Not configured here: no session of this process uses it.
                    None => PeerAnswer::AdminSet(true),
                }
            }
        }
    }
}
