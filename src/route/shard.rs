//! One core's shard of the user → backend table.
//!
//! Core `hash(key) % cores` owns a user's assignment: which backend, how
//! many live sessions, since when. Only that core reads or writes the entry,
//! so the table needs no lock. An assignment is sticky: it stays while the
//! user has sessions and for `user_expire` after the last one closes, and it
//! survives a higher-ranked backend coming back. It is dropped only when its
//! backend can no longer keep users (unhealthy or admin down) or by an
//! explicit [`ShardTable::remove`] (admin move, flush).
//!
//! An assignment whose backend can no longer keep users but whose sessions
//! are still being closed is *retiring*: it is not dropped and not
//! replaced until its last session has released it, so a user's new
//! session never opens on another backend while an old one is still open
//! ([`NoBackend::Closing`] tells the caller to wait for that).
//!
//! The owner core also enforces the per-user session limits
//! (`limits.sessions_per_user`, `limits.sessions_per_user_ip`): a login
//! session names its [`SessionOrigin`] and is refused when its user, or
//! its user from that address and protocol, already has that many. LMTP
//! deliveries name none and are not limited.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use ahash::AHashMap;

use crate::config::Protocol;
use crate::route::backends::{BackendId, BackendSet};

/// Where a logged-in session comes from, for the per-address limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOrigin {
    /// The client's address.
    pub ip: IpAddr,
    /// The session's protocol (the per-address limit counts per protocol,
    /// as Dovecot's `mail_max_userip_connections` does).
    pub protocol: Protocol,
}

/// The per-user session limits; 0 turns one off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionLimits {
    /// `limits.sessions_per_user`: logged-in sessions of one user.
    pub per_user: u32,
    /// `limits.sessions_per_user_ip`: sessions of one user from one
    /// address, per protocol.
    pub per_user_ip: u32,
}

impl SessionLimits {
    /// The limits `[limits]` sets.
    pub fn of(config: &crate::config::LimitsConfig) -> SessionLimits {
        SessionLimits {
            per_user: config.sessions_per_user,
            per_user_ip: config.sessions_per_user_ip,
        }
    }
}

/// A user's place.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Where the user's sessions go.
    pub backend: BackendId,
    /// Live sessions (counted by the owner core).
    pub sessions: u32,
    /// When the assignment was made (wall clock, for people).
    pub since: SystemTime,
    /// When the last session closed, while `sessions == 0`.
    idle_since: Option<Instant>,
    /// Login sessions per origin (LMTP deliveries have none).
    origins: Vec<(SessionOrigin, u32)>,
}

impl Assignment {
    /// Logged-in sessions with an origin (LMTP deliveries not counted).
    pub fn logged_in(&self) -> u32 {
        self.origins.iter().map(|(_, n)| n).sum()
    }

    /// Logged-in sessions from `origin`.
    fn sessions_from(&self, origin: SessionOrigin) -> u32 {
        self.origins
            .iter()
            .find(|(o, _)| *o == origin)
            .map_or(0, |(_, n)| *n)
    }

    /// Refuses one more session from `origin` over a limit.
    fn admits(&self, origin: SessionOrigin, limits: SessionLimits) -> Result<(), NoBackend> {
        if limits.per_user != 0 && self.logged_in() >= limits.per_user {
            return Err(NoBackend::UserSessions);
        }
        if limits.per_user_ip != 0 && self.sessions_from(origin) >= limits.per_user_ip {
            return Err(NoBackend::UserIpSessions);
        }
        Ok(())
    }

    /// Counts one more session from `origin`.
    fn add_origin(&mut self, origin: SessionOrigin) {
        match self.origins.iter_mut().find(|(o, _)| *o == origin) {
            Some((_, n)) => *n += 1,
            None => self.origins.push((origin, 1)),
        }
    }

    /// Counts one session from `origin` less.
    fn remove_origin(&mut self, origin: SessionOrigin) {
        if let Some(i) = self.origins.iter().position(|(o, _)| *o == origin) {
            self.origins[i].1 -= 1;
            if self.origins[i].1 == 0 {
                self.origins.swap_remove(i);
            }
        }
    }
}

/// Why a user could not be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// No backend is routable right now.
    NoneRoutable,
    /// The user's sessions on a backend that can no longer keep users are
    /// still being closed; a new one may open elsewhere only after that.
    Closing,
    /// The user's backend keeps it but the login's protocol port is down
    /// there: the login gets a temporary failure, the user stays.
    ProtocolDown,
    /// The user's backend refused the login for load and the user has
    /// live sessions there, so it cannot be placed elsewhere.
    Busy,
    /// The user has `limits.sessions_per_user` sessions already.
    UserSessions,
    /// The user has `limits.sessions_per_user_ip` sessions from this
    /// address and protocol already.
    UserIpSessions,
    /// Cluster mode: the user has no usable assignment here, and only the
    /// cluster may give it one; `candidate` is this director's choice.
    Unassigned {
        /// The first-choice routable backend for the login.
        candidate: BackendId,
    },
    /// Cluster mode: the cluster did not agree on a backend for the user
    /// now (etcd not reached, or the user's backend is unusable here
    /// while another director serves it there).
    NotAgreed,
}

/// The shard of one core.
#[derive(Debug)]
pub struct ShardTable {
    users: AHashMap<Box<str>, Assignment>,
    expire: Duration,
    limits: SessionLimits,
    /// Cluster mode: a user is never placed here, only by an assignment
    /// the cluster agreed on ([`NoBackend::Unassigned`] asks for one).
    agreed: bool,
}

impl ShardTable {
    /// An empty shard whose idle assignments live for `expire`, without
    /// session limits.
    pub fn new(expire: Duration) -> ShardTable {
        ShardTable::with_limits(expire, SessionLimits::default())
    }

    /// An empty shard that enforces `limits`.
    pub fn with_limits(expire: Duration, limits: SessionLimits) -> ShardTable {
        ShardTable {
            users: AHashMap::new(),
            expire,
            limits,
            agreed: false,
        }
    }

    /// Cluster mode: from now on a user without a usable assignment gets
    /// [`NoBackend::Unassigned`] instead of a backend chosen here.
    pub fn place_by_agreement(&mut self) {
        self.agreed = true;
    }

    /// Counts a new session of `key` for a login of `protocol` and returns
    /// its backend, assigning one (the first choice routable for
    /// `protocol`, not in `avoid`) if the user has none or its backend can
    /// no longer keep users.
    ///
    /// A user whose backend keeps users but has `protocol`'s port down is
    /// not moved: [`NoBackend::ProtocolDown`]. A user whose backend is in
    /// `avoid` (it refused this login for load) moves only when it has no
    /// live session there, else [`NoBackend::Busy`].
    ///
    /// A login session names its `origin` and is refused over a per-user
    /// limit ([`NoBackend::UserSessions`], [`NoBackend::UserIpSessions`]).
    pub fn acquire(
        &mut self,
        key: &str,
        set: &BackendSet,
        protocol: Protocol,
        avoid: &[BackendId],
        origin: Option<SessionOrigin>,
    ) -> Result<BackendId, NoBackend> {
        if let Some(a) = self.users.get_mut(key) {
            if let Some(b) = set.get(a.backend).filter(|b| b.keeps_users()) {
                let refused = avoid.contains(&a.backend);
                if !refused && b.serves(protocol) {
                    if let Some(origin) = origin {
                        a.admits(origin, self.limits)?;
                        a.add_origin(origin);
                    }
                    a.sessions += 1;
                    a.idle_since = None;
                    return Ok(a.backend);
                }
                if !refused {
                    return Err(NoBackend::ProtocolDown);
                }
                if a.sessions > 0 {
                    return Err(NoBackend::Busy);
                }
            }
            if a.sessions > 0 {
                return Err(NoBackend::Closing);
            }
        }
        let backend = set
            .first_choice(key, protocol, avoid)
            .ok_or(NoBackend::NoneRoutable)?;
        if self.agreed {
            return Err(NoBackend::Unassigned { candidate: backend });
        }
        self.users.insert(
            key.into(),
            Assignment {
                backend,
                sessions: 1,
                since: SystemTime::now(),
                idle_since: None,
                origins: origin.map(|o| (o, 1)).into_iter().collect(),
            },
        );
        Ok(backend)
    }

    /// Forgets one session of `key` (from `origin`, as acquired) that ran
    /// on `backend`. A session of an earlier assignment (the user moved
    /// meanwhile) does not count. Returns true when the user has no
    /// session left.
    pub fn release(
        &mut self,
        key: &str,
        backend: BackendId,
        origin: Option<SessionOrigin>,
        now: Instant,
    ) -> bool {
        match self.users.get_mut(key) {
            Some(a) => {
                if a.backend == backend && a.sessions > 0 {
                    if let Some(origin) = origin {
                        a.remove_origin(origin);
                    }
                    a.sessions -= 1;
                    if a.sessions == 0 {
                        a.idle_since = Some(now);
                    }
                }
                a.sessions == 0
            }
            None => true,
        }
    }

    /// Live sessions of `key` (0 without an assignment).
    pub fn sessions(&self, key: &str) -> u32 {
        self.users.get(key).map_or(0, |a| a.sessions)
    }

    /// The assignment of `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Assignment> {
        self.users.get(key)
    }

    /// Drops the assignment of `key` (the caller has closed its sessions).
    pub fn remove(&mut self, key: &str) -> Option<Assignment> {
        self.users.remove(key)
    }

    /// Assigns `key` to `backend` outright (admin move). The caller has
    /// closed the user's sessions; the assignment starts idle, so it expires
    /// like any other if the user does not come back.
    pub fn assign(&mut self, key: &str, backend: BackendId, now: Instant) {
        self.users.insert(
            key.into(),
            Assignment {
                backend,
                sessions: 0,
                since: SystemTime::now(),
                idle_since: Some(now),
                origins: Vec::new(),
            },
        );
    }

    /// Binary upgrade, new process: takes over an assignment of the old
    /// process with `sessions` still open there (counted like sessions of
    /// this process, without an origin, until the old process reports
    /// them ended).
    pub fn import(
        &mut self,
        key: &str,
        backend: BackendId,
        since: SystemTime,
        sessions: u32,
        now: Instant,
    ) {
        self.users.insert(
            key.into(),
            Assignment {
                backend,
                sessions,
                since,
                idle_since: (sessions == 0).then_some(now),
                origins: Vec::new(),
            },
        );
    }

    /// Drops every idle assignment to a backend that can no longer keep
    /// users and returns the keys dropped. Assignments with sessions stay,
    /// retiring, until their last session is released.
    pub fn drop_unkept(&mut self, set: &BackendSet) -> Vec<Box<str>> {
        let mut dropped = Vec::new();
        self.users.retain(|key, a| {
            let keep = a.sessions > 0 || set.get(a.backend).is_some_and(|b| b.keeps_users());
            if !keep {
                dropped.push(key.clone());
            }
            keep
        });
        dropped
    }

    /// Changes how long idle assignments live and the session limits (a
    /// reload); sessions already counted stay.
    pub fn set_settings(&mut self, expire: Duration, limits: SessionLimits) {
        self.expire = expire;
        self.limits = limits;
    }

    /// Removes assignments idle for longer than `user_expire`; returns
    /// their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<Box<str>> {
        let expire = self.expire;
        let mut gone = Vec::new();
        self.users.retain(|key, a| {
            let keep = match a.idle_since {
                Some(t) => now.saturating_duration_since(t) < expire,
                None => true,
            };
            if !keep {
                gone.push(key.clone());
            }
            keep
        });
        gone
    }

    /// Drops every assignment (cluster mode, fenced: the director's
    /// presence goes with its lease, so what it knew may change).
    pub fn clear(&mut self) {
        self.users.clear();
    }

    /// Users with an assignment on this shard.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the shard holds no assignment.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every assignment, for statistics.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Assignment)> {
        self.users.iter().map(|(k, a)| (&**k, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::backends::tests::set_of;
    use crate::route::backends::{AdminState, Health};

    #[test]
    fn assigns_first_choice_and_counts_sessions() {
        let set = set_of(3);
        let mut t = ShardTable::new(Duration::from_secs(60));
        let b = t.acquire("alice", &set, Protocol::Imap, &[], None).unwrap();
        assert_eq!(Some(b), set.first_choice("alice", Protocol::Imap, &[]));
        assert_eq!(t.acquire("alice", &set, Protocol::Imap, &[], None), Ok(b));
        assert_eq!(t.get("alice").unwrap().sessions, 2);
        t.release("alice", b, None, Instant::now());
        assert_eq!(t.get("alice").unwrap().sessions, 1);
    }

    #[test]
    fn assignment_is_sticky_when_a_better_backend_appears() {
        let set = set_of(3);
        let key = (0..1000)
            .map(|i| format!("u{i}"))
            .find(|k| set.ranking(k)[0] == 0)
            .unwrap();
        let without_0 = set.with_change(0, |b| b.set_every_protocol(Health::Unhealthy));
        let mut t = ShardTable::new(Duration::from_secs(60));
        let b = t
            .acquire(&key, &without_0, Protocol::Imap, &[], None)
            .unwrap();
        assert_ne!(b, 0);
        // Backend 0 recovers: the user stays where it is.
        assert_eq!(t.acquire(&key, &set, Protocol::Imap, &[], None), Ok(b));
    }

    #[test]
    fn moves_when_backend_can_no_longer_keep_users() {
        let set = set_of(3);
        let mut t = ShardTable::new(Duration::from_secs(60));
        let b = t.acquire("bob", &set, Protocol::Imap, &[], None).unwrap();
        let drained = set.with_change(b, |x| x.admin = AdminState::Drain);
        assert_eq!(
            t.acquire("bob", &drained, Protocol::Imap, &[], None),
            Ok(b),
            "drain keeps its users"
        );
        let down = set.with_change(b, |x| x.admin = AdminState::Down);
        assert_eq!(
            t.acquire("bob", &down, Protocol::Imap, &[], None),
            Err(NoBackend::Closing),
            "no new session elsewhere while two are still open on the old backend"
        );
        t.release("bob", b, None, Instant::now());
        assert_eq!(
            t.acquire("bob", &down, Protocol::Imap, &[], None),
            Err(NoBackend::Closing)
        );
        assert!(
            t.release("bob", b, None, Instant::now()),
            "the last one closed"
        );
        let nb = t.acquire("bob", &down, Protocol::Imap, &[], None).unwrap();
        assert_ne!(nb, b);
        assert_eq!(Some(nb), down.first_choice("bob", Protocol::Imap, &[]));
    }

    #[test]
    fn drop_unkept_returns_users_of_dead_backend() {
        let set = set_of(2);
        let mut t = ShardTable::new(Duration::from_secs(60));
        let users: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        for u in &users {
            t.acquire(u, &set, Protocol::Imap, &[], None).unwrap();
        }
        let on_0: Vec<&String> = users
            .iter()
            .filter(|u| set.first_choice(u, Protocol::Imap, &[]) == Some(0))
            .collect();
        // Half of backend 0's users have closed their session.
        let (idle, busy) = on_0.split_at(on_0.len() / 2);
        for u in idle {
            t.release(u, 0, None, Instant::now());
        }
        let dead = set.with_change(0, |b| b.set_every_protocol(Health::Unhealthy));
        let dropped = t.drop_unkept(&dead);
        assert_eq!(dropped.len(), idle.len());
        assert!(
            busy.iter()
                .all(|u| t.get(u).is_some_and(|a| a.backend == 0)),
            "users with sessions still open stay until they are closed"
        );
        assert_eq!(t.len(), users.len() - idle.len());
    }

    #[test]
    fn idle_assignments_expire_busy_ones_do_not() {
        let set = set_of(2);
        let mut t = ShardTable::new(Duration::from_secs(10));
        let start = Instant::now();
        let b = t.acquire("idle", &set, Protocol::Imap, &[], None).unwrap();
        t.acquire("busy", &set, Protocol::Imap, &[], None).unwrap();
        t.release("idle", b, None, start);
        assert_eq!(t.expire(start + Duration::from_secs(9)).len(), 0);
        assert_eq!(t.expire(start + Duration::from_secs(11)).len(), 1);
        assert!(t.get("idle").is_none());
        assert!(t.get("busy").is_some());
    }

    #[test]
    fn release_of_an_old_assignment_is_ignored() {
        let set = set_of(3);
        let mut t = ShardTable::new(Duration::from_secs(60));
        let b = t.acquire("carol", &set, Protocol::Imap, &[], None).unwrap();
        let other = (b + 1) % 3;
        t.assign("carol", other, Instant::now());
        t.release("carol", b, None, Instant::now());
        assert_eq!(t.get("carol").unwrap().sessions, 0);
        assert_eq!(t.get("carol").unwrap().backend, other);
    }

    #[test]
    fn no_routable_backend_is_an_error() {
        let set = set_of(1).with_change(0, |b| b.admin = AdminState::Down);
        let mut t = ShardTable::new(Duration::from_secs(60));
        assert_eq!(
            t.acquire("x", &set, Protocol::Imap, &[], None),
            Err(NoBackend::NoneRoutable)
        );
    }

    #[test]
    fn a_failed_protocol_port_neither_moves_nor_drops_the_user() {
        let set = set_of(3);
        let mut t = ShardTable::new(Duration::from_secs(60));
        let b = t.acquire("dana", &set, Protocol::Imap, &[], None).unwrap();
        let no_pop3 = set.with_change(b, |x| {
            x.set_protocol_health(Protocol::Pop3, Health::Unhealthy)
        });
        assert!(t.drop_unkept(&no_pop3).is_empty(), "the assignment stays");
        assert_eq!(
            t.acquire("dana", &no_pop3, Protocol::Pop3, &[], None),
            Err(NoBackend::ProtocolDown)
        );
        t.release("dana", b, None, Instant::now());
        assert_eq!(
            t.acquire("dana", &no_pop3, Protocol::Pop3, &[], None),
            Err(NoBackend::ProtocolDown),
            "an idle assignment is not moved either"
        );
        assert_eq!(
            t.acquire("dana", &no_pop3, Protocol::Imap, &[], None),
            Ok(b)
        );
        assert_eq!(t.get("dana").unwrap().sessions, 1);
    }

    #[test]
    fn a_new_user_is_not_placed_where_its_protocol_is_down() {
        let set = set_of(3);
        let key = (0..1000)
            .map(|i| format!("new{i}"))
            .find(|k| set.first_choice(k, Protocol::Imap, &[]) == Some(0))
            .unwrap();
        let no_pop3 = set.with_change(0, |x| {
            x.set_protocol_health(Protocol::Pop3, Health::Unhealthy)
        });
        let mut t = ShardTable::new(Duration::from_secs(60));
        assert_ne!(t.acquire(&key, &no_pop3, Protocol::Pop3, &[], None), Ok(0));
    }

    #[test]
    fn a_busy_backend_moves_only_a_user_without_live_sessions() {
        let set = set_of(3);
        let mut t = ShardTable::new(Duration::from_secs(60));
        let b = t.acquire("erin", &set, Protocol::Imap, &[], None).unwrap();
        assert_eq!(
            t.acquire("erin", &set, Protocol::Pop3, &[b], None),
            Err(NoBackend::Busy),
            "a user with a live session stays on its backend"
        );
        t.release("erin", b, None, Instant::now());
        let other = t.acquire("erin", &set, Protocol::Pop3, &[b], None).unwrap();
        assert_ne!(other, b);
        assert_eq!(t.get("erin").unwrap().backend, other);
        assert_eq!(t.get("erin").unwrap().sessions, 1);
    }

    fn origin(ip: &str, protocol: Protocol) -> Option<SessionOrigin> {
        Some(SessionOrigin {
            ip: ip.parse().unwrap(),
            protocol,
        })
    }

    /// Acquires for a login of `origin`'s protocol.
    fn login(
        t: &mut ShardTable,
        key: &str,
        set: &BackendSet,
        origin: Option<SessionOrigin>,
    ) -> Result<BackendId, NoBackend> {
        let protocol = origin.map_or(Protocol::Lmtp, |o| o.protocol);
        t.acquire(key, set, protocol, &[], origin)
    }

    #[test]
    fn per_user_ip_limit_counts_per_address_and_protocol() {
        let set = set_of(2);
        let limits = SessionLimits {
            per_user: 0,
            per_user_ip: 2,
        };
        let mut t = ShardTable::with_limits(Duration::from_secs(60), limits);
        let a = origin("192.0.2.1", Protocol::Imap);
        let b = login(&mut t, "dan", &set, a).unwrap();
        login(&mut t, "dan", &set, a).unwrap();
        assert_eq!(
            login(&mut t, "dan", &set, a),
            Err(NoBackend::UserIpSessions)
        );
        assert_eq!(
            t.get("dan").unwrap().sessions,
            2,
            "a refusal counts nothing"
        );
        login(&mut t, "dan", &set, origin("192.0.2.2", Protocol::Imap)).expect("another address");
        login(&mut t, "dan", &set, origin("192.0.2.1", Protocol::Pop3)).expect("another protocol");
        login(&mut t, "dan", &set, None).expect("LMTP is not limited");
        t.release("dan", b, a, Instant::now());
        assert_eq!(login(&mut t, "dan", &set, a), Ok(b), "room after a release");
    }

    #[test]
    fn per_user_limit_counts_every_login_session() {
        let set = set_of(2);
        let limits = SessionLimits {
            per_user: 2,
            per_user_ip: 0,
        };
        let mut t = ShardTable::with_limits(Duration::from_secs(60), limits);
        login(&mut t, "eve", &set, origin("192.0.2.1", Protocol::Imap)).unwrap();
        login(&mut t, "eve", &set, origin("192.0.2.2", Protocol::Sieve)).unwrap();
        assert_eq!(
            login(&mut t, "eve", &set, origin("192.0.2.3", Protocol::Imap)),
            Err(NoBackend::UserSessions)
        );
        assert_eq!(t.get("eve").unwrap().logged_in(), 2);
    }
}
