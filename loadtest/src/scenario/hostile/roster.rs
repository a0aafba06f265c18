//! Who attacks in a `hostile` run and how the attacker threads run them:
//! the roster (K attackers shared round-robin among the kinds), each stream
//! attacker's source address, the director's listeners they aim at, and
//! the body of one attacker thread with what it tallies.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use mailpin::config::Protocol;

use super::attack::{stream_attacker, AttackKind, Dialect, KindTally, Target, Targets};
use super::badlogin::{bad_logins, BadTally, Group};
use crate::client::conn::{Endpoint, Transport};
use crate::harness::Harness;

/// Name prefix of the attacker threads (their CPU is read by name).
pub const ATTACKER_THREAD_PREFIX: &str = "lt-attack";

/// Attacker `index` of its kind's roster: the source address of a stream
/// attacker.
pub fn stream_source(attacker_ips: u8, index: usize) -> Option<IpAddr> {
    (attacker_ips > 0).then(|| {
        let i = (index % usize::from(attacker_ips)) as u8;
        IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1 + i.min(253)))
    })
}

/// The attackers: `attackers` shared round-robin among `kinds`, each with
/// its index among those of its kind.
pub fn roster(kinds: &[AttackKind], attackers: usize) -> Vec<(AttackKind, usize)> {
    let mut seen: BTreeMap<&'static str, usize> = BTreeMap::new();
    (0..attackers)
        .filter_map(|i| {
            let kind = *kinds.get(i % kinds.len().max(1))?;
            let n = seen.entry(kind.name()).or_default();
            *n += 1;
            Some((kind, *n - 1))
        })
        .collect()
}

/// The director's listeners the stream attackers aim at.
pub fn targets(harness: &Harness, transport: Transport) -> Targets {
    let find = |protocol, transport, dialect| {
        harness.endpoint(protocol, transport).ok().map(|e| Target {
            addr: e.addr,
            dialect,
        })
    };
    let plain = [
        (Protocol::Imap, Dialect::Imap),
        (Protocol::Pop3, Dialect::Pop3),
        (Protocol::Lmtp, Dialect::Lmtp),
        (Protocol::Sieve, Dialect::Sieve),
    ]
    .into_iter()
    .filter_map(|(p, d)| find(p, Transport::Plain, d))
    .collect();
    let tls = if transport == Transport::Tls {
        [Protocol::Imap, Protocol::Pop3]
            .into_iter()
            .filter_map(|p| find(p, Transport::Tls, Dialect::Tls))
            .collect()
    } else {
        Vec::new()
    };
    Targets { plain, tls }
}

/// What one attacker thread's attackers did.
#[derive(Default)]
pub struct AttackTally {
    /// Stream attacks by kind, then by listener.
    pub kinds: BTreeMap<&'static str, BTreeMap<&'static str, KindTally>>,
    /// The bad logins.
    pub bad: BadTally,
}

impl AttackTally {
    /// Adds one attacker's tally by listener.
    pub fn add(&mut self, kind: &'static str, by_listener: &BTreeMap<&'static str, KindTally>) {
        let mine = self.kinds.entry(kind).or_default();
        for (listener, t) in by_listener {
            mine.entry(listener).or_default().merge(t);
        }
    }
}

/// What every attacker needs to know.
#[derive(Clone)]
pub struct AttackPlan {
    /// Every attacker: its kind and index among those of its kind.
    pub roster: Vec<(AttackKind, usize)>,
    /// Where the stream attackers aim.
    pub targets: Targets,
    /// Where the bad logins go.
    pub login: Endpoint,
    /// Source addresses the stream attackers spread over.
    pub attacker_ips: u8,
    /// When the attack starts.
    pub start: Instant,
    /// When it ends.
    pub end: Instant,
}

/// The body of attacker thread `thread` of `threads`: its share of the
/// roster (and, on thread 0, the bad-login probe), all at once.
pub async fn attacker_thread(thread: usize, threads: usize, plan: Arc<AttackPlan>) -> AttackTally {
    let mut streams = Vec::new();
    let mut logins = Vec::new();
    let badlogins = plan
        .roster
        .iter()
        .filter(|(k, _)| *k == AttackKind::Badlogin)
        .count();
    for (i, &(kind, index)) in plan.roster.iter().enumerate() {
        if i % threads != thread {
            continue;
        }
        let plan = plan.clone();
        if kind == AttackKind::Badlogin {
            // The first half floods from one address.
            let group = if index < badlogins.div_ceil(2) {
                Group::Flood
            } else {
                Group::Spread
            };
            logins.push(monoio::spawn(async move {
                bad_logins(plan.login, group, index, plan.start, plan.end).await
            }));
        } else {
            streams.push(monoio::spawn(async move {
                let source = stream_source(plan.attacker_ips, index);
                let t =
                    stream_attacker(kind, index, &plan.targets, source, plan.start, plan.end).await;
                (kind, t)
            }));
        }
    }
    if thread == 0 && badlogins > 0 {
        let plan = plan.clone();
        logins.push(monoio::spawn(async move {
            bad_logins(plan.login, Group::Probe, 0, plan.start, plan.end).await
        }));
    }
    let mut tally = AttackTally::default();
    for s in streams {
        let (kind, t) = s.await;
        tally.add(kind.name(), &t);
    }
    for l in logins {
        tally.bad.merge(l.await);
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roster_shares_attackers_round_robin() {
        let r = roster(&AttackKind::ALL, 12);
        assert_eq!(r.len(), 12);
        assert_eq!(r[0], (AttackKind::Garbage, 0));
        assert_eq!(r[5], (AttackKind::Garbage, 1));
        assert_eq!(r[4], (AttackKind::Badlogin, 0));
        assert_eq!(r[9], (AttackKind::Badlogin, 1));
        assert!(roster(&[], 5).is_empty());
    }

    #[test]
    fn stream_attackers_spread_over_their_addresses() {
        assert_eq!(stream_source(0, 3), None);
        assert_eq!(
            stream_source(2, 3),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 3, 2)))
        );
        assert_eq!(stream_source(2, 4), stream_source(1, 0));
    }
}
