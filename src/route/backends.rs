//! The backend pool as the cores see it: a versioned, immutable snapshot.
//!
//! The control plane (config, admin commands, health checks) builds a new
//! [`BackendSet`] for every change, bumps its version and broadcasts it to
//! every core; cores swap their `Arc` and never share a mutable structure.
//! Backend ids are indexes into the set and stay the same for the life of
//! the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Forward, Protocol};
use crate::route::hrw;

/// Index of a backend in its [`BackendSet`].
pub type BackendId = u16;

/// What an administrator said about a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In service.
    Up,
    /// Out of service: nothing is routed to it.
    Down,
    /// Keeps its current users, takes no new ones.
    Drain,
}

/// What the health checks found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answering as expected.
    Healthy,
    /// Failing its checks.
    Unhealthy,
}

/// One backend mail server.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Its index in the set.
    pub id: BackendId,
    /// Its configured name (unique).
    pub name: Arc<str>,
    /// Host as configured (for display).
    pub host: String,
    /// Where each protocol is served, indexed by [`Protocol::index`].
    pub addrs: [SocketAddr; Protocol::COUNT],
    /// Rendezvous weight, greater than zero.
    pub weight: u32,
    /// How the client's address reaches this backend.
    pub forward: Forward,
    /// Bound on establishing a TCP connection to it.
    pub connect_timeout: Duration,
    /// Administrative state.
    pub admin: AdminState,
    /// Health state.
    pub health: Health,
    /// Precomputed rendezvous seed of its name.
    seed: u64,
}

impl Backend {
    /// A backend in service and healthy.
    pub fn new(
        id: BackendId,
        name: &str,
        host: String,
        addrs: [SocketAddr; Protocol::COUNT],
        weight: u32,
        forward: Forward,
        connect_timeout: Duration,
    ) -> Backend {
        Backend {
            id,
            name: name.into(),
            host,
            addrs,
            weight,
            forward,
            connect_timeout,
            admin: AdminState::Up,
            health: Health::Healthy,
            seed: hrw::backend_seed(name),
        }
    }

    /// May new users be assigned here?
    pub fn routable(&self) -> bool {
        self.admin == AdminState::Up && self.health == Health::Healthy
    }

    /// May users already assigned here stay (and open new sessions)?
    pub fn keeps_users(&self) -> bool {
        self.health == Health::Healthy && self.admin != AdminState::Down
    }

    /// The address serving `protocol`.
    pub fn addr(&self, protocol: Protocol) -> SocketAddr {
        self.addrs[protocol.index()]
    }
}

/// A versioned snapshot of every backend.
#[derive(Debug, Clone)]
pub struct BackendSet {
    /// Increases by one with every change.
    pub version: u64,
    /// Every backend, indexed by [`BackendId`].
    pub backends: Vec<Backend>,
}

impl BackendSet {
    /// The first snapshot.
    pub fn new(backends: Vec<Backend>) -> BackendSet {
        BackendSet {
            version: 1,
            backends,
        }
    }

    /// The backend with this id.
    pub fn get(&self, id: BackendId) -> Option<&Backend> {
        self.backends.get(usize::from(id))
    }

    /// The backend with this name.
    pub fn by_name(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| &*b.name == name)
    }

    /// The highest-ranked routable backend for a user key, if any.
    pub fn first_choice(&self, key: &str) -> Option<BackendId> {
        self.backends
            .iter()
            .filter(|b| b.routable())
            .map(|b| (hrw::score(key, b.seed, b.weight), b))
            .max_by(|(sa, a), (sb, b)| sa.cmp(sb).then_with(|| b.name.cmp(&a.name)))
            .map(|(_, b)| b.id)
    }

    /// All backends ranked for a user key, best first (routable or not).
    pub fn ranking(&self, key: &str) -> Vec<BackendId> {
        let mut scored: Vec<(hrw::Score, &Backend)> = self
            .backends
            .iter()
            .map(|b| (hrw::score(key, b.seed, b.weight), b))
            .collect();
        scored.sort_by(|(sa, a), (sb, b)| sb.cmp(sa).then_with(|| a.name.cmp(&b.name)));
        scored.into_iter().map(|(_, b)| b.id).collect()
    }

    /// A new snapshot with one backend changed and the version bumped.
    pub fn with_change(&self, id: BackendId, change: impl FnOnce(&mut Backend)) -> BackendSet {
        let mut next = self.clone();
        next.version += 1;
        if let Some(b) = next.backends.get_mut(usize::from(id)) {
            change(b);
        }
        next
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A set of `n` healthy backends on made-up addresses, weight 100.
    pub(crate) fn set_of(n: usize) -> BackendSet {
        let addr: SocketAddr = "127.0.0.1:143".parse().unwrap();
        BackendSet::new(
            (0..n)
                .map(|i| {
                    Backend::new(
                        i as BackendId,
                        &format!("mail{i}"),
                        "127.0.0.1".into(),
                        [addr; Protocol::COUNT],
                        100,
                        Forward::Id,
                        Duration::from_secs(2),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn first_choice_is_top_of_ranking() {
        let set = set_of(5);
        for i in 0..1000 {
            let key = format!("user{i}");
            assert_eq!(set.first_choice(&key), Some(set.ranking(&key)[0]));
        }
    }

    #[test]
    fn unroutable_backends_are_skipped_in_rank_order() {
        let set = set_of(4);
        for i in 0..500 {
            let key = format!("user{i}");
            let rank = set.ranking(&key);
            let down = set.with_change(rank[0], |b| b.health = Health::Unhealthy);
            assert_eq!(down.first_choice(&key), Some(rank[1]));
            let drained = down.with_change(rank[1], |b| b.admin = AdminState::Drain);
            assert_eq!(drained.first_choice(&key), Some(rank[2]));
            assert_eq!(drained.version, set.version + 2);
        }
    }

    #[test]
    fn no_routable_backend_means_none() {
        let set = set_of(2)
            .with_change(0, |b| b.admin = AdminState::Down)
            .with_change(1, |b| b.health = Health::Unhealthy);
        assert_eq!(set.first_choice("x"), None);
    }

    #[test]
    fn drain_keeps_users_down_does_not() {
        let mut b = set_of(1).backends.remove(0);
        b.admin = AdminState::Drain;
        assert!(b.keeps_users() && !b.routable());
        b.admin = AdminState::Down;
        assert!(!b.keeps_users());
        b.admin = AdminState::Up;
        b.health = Health::Unhealthy;
        assert!(!b.keeps_users() && !b.routable());
    }
}
