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

impl AdminState {
    /// The name in the admin API: `up`, `down` or `drain`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Up => "up",
            AdminState::Down => "down",
            AdminState::Drain => "drain",
        }
    }
}

/// What the health checks found about one protocol port of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Answering as expected.
    Healthy,
    /// Failing its checks.
    Unhealthy,
}

impl Health {
    /// The API spelling: `healthy`, `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// A backend's health over all its checked protocol ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendHealth {
    /// Every checked port answers.
    Healthy,
    /// Some checked ports fail: the backend keeps its users and serves the
    /// protocols that work; logins of a failed protocol get its temporary
    /// failure.
    Degraded,
    /// Every checked port fails: the backend is down, its sessions end and
    /// its users are assigned elsewhere.
    Unhealthy,
}

impl BackendHealth {
    /// The API spelling: `healthy`, `degraded`, `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendHealth::Healthy => "healthy",
            BackendHealth::Degraded => "degraded",
            BackendHealth::Unhealthy => "unhealthy",
        }
    }
}

/// Where a backend stands in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Configured and in service as its admin state and health say.
    Active,
    /// Removed from the configuration by a reload: it takes no new users,
    /// its sessions run on until they end or `server.drain_timeout` passes.
    Removed,
    /// Gone: its sessions were closed and it keeps no users. Its id stays
    /// reserved (ids never change); a later reload may bring it back.
    Retired,
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
    /// Health of each protocol port, indexed by [`Protocol::index`];
    /// `None` for a protocol mailpin does not serve (not checked).
    pub protocols: [Option<Health>; Protocol::COUNT],
    /// In the configuration, removed (draining) or gone.
    pub lifecycle: Lifecycle,
    /// Precomputed rendezvous seed of its name.
    seed: u64,
}

impl Backend {
    /// A backend in service and healthy on every protocol port (all are
    /// checked until [`Backend::check_only`] says otherwise).
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
            protocols: [Some(Health::Healthy); Protocol::COUNT],
            lifecycle: Lifecycle::Active,
            seed: hrw::backend_seed(name),
        }
    }

    /// Checks only the protocols for which `served` is true (the ones
    /// mailpin has a listener for); the others are not tracked.
    pub fn check_only(&mut self, served: impl Fn(Protocol) -> bool) {
        for p in Protocol::ALL {
            if !served(p) {
                self.protocols[p.index()] = None;
            }
        }
    }

    /// The health of one protocol port, `None` if it is not checked.
    pub fn protocol_health(&self, protocol: Protocol) -> Option<Health> {
        self.protocols[protocol.index()]
    }

    /// Sets the health of one checked protocol port.
    pub fn set_protocol_health(&mut self, protocol: Protocol, health: Health) {
        if let Some(h) = self
            .protocols
            .get_mut(protocol.index())
            .and_then(|h| h.as_mut())
        {
            *h = health;
        }
    }

    /// The health over all checked ports: unhealthy only when every one
    /// of them fails (a backend that checks nothing is healthy).
    pub fn health(&self) -> BackendHealth {
        let checked = self.protocols.iter().flatten();
        let (mut up, mut down) = (0, 0);
        for h in checked {
            match h {
                Health::Healthy => up += 1,
                Health::Unhealthy => down += 1,
            }
        }
        match (up, down) {
            (_, 0) => BackendHealth::Healthy,
            (0, _) => BackendHealth::Unhealthy,
            _ => BackendHealth::Degraded,
        }
    }

    /// Does the backend answer on `protocol`'s port (or is it unchecked)?
    pub fn serves(&self, protocol: Protocol) -> bool {
        self.protocol_health(protocol) != Some(Health::Unhealthy)
    }

    /// May new users be assigned here (for some protocol)?
    pub fn routable(&self) -> bool {
        self.lifecycle == Lifecycle::Active
            && self.admin == AdminState::Up
            && self.health() != BackendHealth::Unhealthy
    }

    /// May a new user be assigned here by a login of `protocol`?
    pub fn routable_for(&self, protocol: Protocol) -> bool {
        self.routable() && self.serves(protocol)
    }

    /// May users already assigned here stay (and open new sessions)? A
    /// degraded backend keeps them: one protocol's failure never moves
    /// or ends sessions of another.
    pub fn keeps_users(&self) -> bool {
        self.lifecycle != Lifecycle::Retired
            && self.health() != BackendHealth::Unhealthy
            && self.admin != AdminState::Down
    }

    /// Retired by a reload but still up and not taken down by an admin:
    /// its sessions can follow their users live (issue 12).
    pub fn retired_alive(&self) -> bool {
        self.lifecycle == Lifecycle::Retired
            && self.health() != BackendHealth::Unhealthy
            && self.admin != AdminState::Down
    }

    /// Whether the backend is part of the configuration (not retired).
    pub fn configured(&self) -> bool {
        self.lifecycle != Lifecycle::Retired
    }

    /// The rendezvous weight changes (a reload).
    pub fn set_weight(&mut self, weight: u32) {
        self.weight = weight;
    }

    /// Sets every checked protocol port's health at once (tests).
    #[cfg(test)]
    pub(crate) fn set_every_protocol(&mut self, health: Health) {
        for p in Protocol::ALL {
            self.set_protocol_health(p, health);
        }
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

    /// The backend with this name, unless it is retired.
    pub fn by_name(&self, name: &str) -> Option<&Backend> {
        self.backends
            .iter()
            .find(|b| &*b.name == name && b.configured())
    }

    /// The backends that are part of the configuration (not retired).
    pub fn configured(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.configured())
    }

    /// The highest-ranked backend a login of `protocol` may assign a user
    /// key to, skipping the backends in `avoid`, if any.
    pub fn first_choice(
        &self,
        key: &str,
        protocol: Protocol,
        avoid: &[BackendId],
    ) -> Option<BackendId> {
        self.backends
            .iter()
            .filter(|b| b.routable_for(protocol) && !avoid.contains(&b.id))
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
            assert_eq!(
                set.first_choice(&key, Protocol::Imap, &[]),
                Some(set.ranking(&key)[0])
            );
        }
    }

    #[test]
    fn unroutable_backends_are_skipped_in_rank_order() {
        let set = set_of(4);
        for i in 0..500 {
            let key = format!("user{i}");
            let rank = set.ranking(&key);
            let down = set.with_change(rank[0], |b| b.set_every_protocol(Health::Unhealthy));
            assert_eq!(down.first_choice(&key, Protocol::Imap, &[]), Some(rank[1]));
            let drained = down.with_change(rank[1], |b| b.admin = AdminState::Drain);
            assert_eq!(
                drained.first_choice(&key, Protocol::Imap, &[]),
                Some(rank[2])
            );
            assert_eq!(drained.version, set.version + 2);
        }
    }

    #[test]
    fn no_routable_backend_means_none() {
        let set = set_of(2)
            .with_change(0, |b| b.admin = AdminState::Down)
            .with_change(1, |b| b.set_every_protocol(Health::Unhealthy));
        assert_eq!(set.first_choice("x", Protocol::Imap, &[]), None);
    }

    #[test]
    fn drain_keeps_users_down_does_not() {
        let mut b = set_of(1).backends.remove(0);
        b.admin = AdminState::Drain;
        assert!(b.keeps_users() && !b.routable());
        b.admin = AdminState::Down;
        assert!(!b.keeps_users());
        b.admin = AdminState::Up;
        b.set_every_protocol(Health::Unhealthy);
        assert!(!b.keeps_users() && !b.routable());
    }

    #[test]
    fn one_failed_port_degrades_all_failed_ports_take_the_backend_down() {
        let mut b = set_of(1).backends.remove(0);
        b.check_only(|p| matches!(p, Protocol::Imap | Protocol::Pop3));
        assert_eq!(
            b.protocol_health(Protocol::Lmtp),
            None,
            "not served, not checked"
        );
        b.set_protocol_health(Protocol::Lmtp, Health::Unhealthy);
        assert_eq!(
            b.health(),
            BackendHealth::Healthy,
            "unchecked ports do not count"
        );
        b.set_protocol_health(Protocol::Pop3, Health::Unhealthy);
        assert_eq!(b.health(), BackendHealth::Degraded);
        assert!(b.keeps_users() && b.routable());
        assert!(b.routable_for(Protocol::Imap) && !b.routable_for(Protocol::Pop3));
        assert!(
            b.serves(Protocol::Lmtp),
            "an unchecked port is assumed to serve"
        );
        b.set_protocol_health(Protocol::Imap, Health::Unhealthy);
        assert_eq!(b.health(), BackendHealth::Unhealthy);
        assert!(!b.keeps_users() && !b.routable());
    }

    #[test]
    fn first_choice_skips_backends_down_for_the_protocol_or_avoided() {
        let set = set_of(3);
        for i in 0..300 {
            let key = format!("user{i}");
            let rank = set.ranking(&key);
            let no_pop3 = set.with_change(rank[0], |b| {
                b.set_protocol_health(Protocol::Pop3, Health::Unhealthy)
            });
            assert_eq!(
                no_pop3.first_choice(&key, Protocol::Imap, &[]),
                Some(rank[0])
            );
            assert_eq!(
                no_pop3.first_choice(&key, Protocol::Pop3, &[]),
                Some(rank[1])
            );
            assert_eq!(
                set.first_choice(&key, Protocol::Imap, &[rank[0], rank[1]]),
                Some(rank[2])
            );
        }
    }
}
