//! The bad-login attackers of `hostile` and the penalty they meet.
//!
//! Half the badlogin attackers flood from one address ([`FLOOD_IP`]), the
//! others each from an address of their own (127.0.1.x); each runs a
//! closed loop of wrong-password IMAP logins, up to
//! [`ATTEMPTS_PER_CONNECTION`] on a connection, as a password guesser
//! does. A probe from an address that never floods ([`PROBE_IP`]) tries
//! one wrong password every [`PROBE_EVERY`]: comparing the delay of its
//! answers with the flooding address's, over time, shows what an
//! auth-failure penalty does, and that it stays with the guilty address.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::client::conn::Endpoint;
use crate::client::imap::{ImapClient, Status};
use crate::client::tls::client_config;

/// The one address the flooding half comes from.
pub const FLOOD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// The address of the probe, which never floods.
pub const PROBE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// Wrong-password logins on one connection before it is dropped.
pub const ATTEMPTS_PER_CONNECTION: u32 = 3;
/// How often the probe tries.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// An answer slower than this ends the connection (counted as timed out).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Most answers one attacker records.
const MAX_SAMPLES: usize = 200_000;
/// The password every bad login offers.
const WRONG_PASSWORD: &str = "not-the-password";

/// Where a bad login came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Group {
    /// The one flooding address.
    Flood,
    /// The attackers with an address each.
    Spread,
    /// The probe.
    Probe,
}

impl Group {
    /// The source address of attacker `index` of the group.
    pub fn source(self, index: usize) -> IpAddr {
        match self {
            Group::Flood => FLOOD_IP,
            Group::Probe => PROBE_IP,
            Group::Spread => {
                let i = index % 250;
                IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + i as u8))
            }
        }
    }
}

/// One answer to a bad login.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    /// When it was asked, seconds since the attack started.
    pub at_s: f64,
    /// How long the answer took.
    pub delay: Duration,
    /// Who asked.
    pub group: Group,
}

/// What the bad logins of one thread saw.
#[derive(Debug, Clone, Default)]
pub struct BadTally {
    /// Connections opened.
    pub connections: u64,
    /// Connections refused or failed before a greeting.
    pub connect_failed: u64,
    /// Logins answered NO (the expected answer).
    pub refused: u64,
    /// Logins answered otherwise (BAD, OK — an OK would be a bug).
    pub other: u64,
    /// Connections the director closed before the attacker was done.
    pub closed_by_director: u64,
    /// Answers slower than the answer timeout.
    pub timed_out: u64,
    /// Every answer (up to a bound).
    pub answers: Vec<Answer>,
}

impl BadTally {
    /// Adds another thread's tally.
    pub fn merge(&mut self, other: BadTally) {
        self.connections += other.connections;
        self.connect_failed += other.connect_failed;
        self.refused += other.refused;
        self.other += other.other;
        self.closed_by_director += other.closed_by_director;
        self.timed_out += other.timed_out;
        self.answers.extend(other.answers);
    }
}

/// One bad-login attacker (or the probe): from `group`'s address for
/// `index`, between `start` and `end`, against `endpoint`.
pub async fn bad_logins(
    endpoint: Endpoint,
    group: Group,
    index: usize,
    start: Instant,
    end: Instant,
) -> BadTally {
    let tls = client_config(false);
    let source = group.source(index);
    let user = format!("hbad{index:04}");
    let mut tally = BadTally::default();
    monoio::time::sleep_until(monoio::time::Instant::from_std(start)).await;
    let mut next_probe = start;
    while Instant::now() < end && tally.answers.len() < MAX_SAMPLES {
        if group == Group::Probe {
            monoio::time::sleep_until(monoio::time::Instant::from_std(next_probe)).await;
            next_probe += PROBE_EVERY;
            if Instant::now() >= end {
                break;
            }
        }
        let attempts = if group == Group::Probe {
            1
        } else {
            ATTEMPTS_PER_CONNECTION
        };
        let connect = ImapClient::connect_from(endpoint, &tls, Some(source));
        let mut client = match monoio::time::timeout(ANSWER_TIMEOUT, connect).await {
            Ok(Ok(c)) => c,
            _ => {
                tally.connect_failed += 1;
                monoio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tally.connections += 1;
        let command = format!("LOGIN {user} \"{WRONG_PASSWORD}\"");
        for _ in 0..attempts {
            let asked = Instant::now();
            let login = client.command(&command);
            let reply = monoio::time::timeout(ANSWER_TIMEOUT, login).await;
            let answer = Answer {
                at_s: asked.saturating_duration_since(start).as_secs_f64(),
                delay: asked.elapsed(),
                group,
            };
            match reply {
                Ok(Ok(r)) => {
                    tally.answers.push(answer);
                    if r.status == Status::No {
                        tally.refused += 1;
                    } else {
                        tally.other += 1;
                    }
                }
                Ok(Err(_)) => {
                    tally.closed_by_director += 1;
                    break;
                }
                Err(_) => {
                    tally.timed_out += 1;
                    break;
                }
            }
            if Instant::now() >= end {
                break;
            }
        }
        // Dropped without LOGOUT, as a guesser does.
    }
    tally
}

/// The median bad-login delay of each group in one time slice.
#[derive(Debug, Clone, Serialize)]
pub struct PenaltySlice {
    /// Start of the slice, seconds since the attack started.
    pub from_s: f64,
    /// Median delay from the flooding address, ms (None: no answer).
    pub flood_p50_ms: Option<f64>,
    /// Answers from it.
    pub flood_answers: usize,
    /// Median delay from the spread addresses, ms.
    pub spread_p50_ms: Option<f64>,
    /// Answers from them.
    pub spread_answers: usize,
    /// Median delay of the probe, ms.
    pub probe_p50_ms: Option<f64>,
    /// Answers to it.
    pub probe_answers: usize,
}

/// The median of `values` (None if empty).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    Some(values[values.len() / 2])
}

/// Splits `answers` into `slices` equal slices of `span_s` seconds and
/// gives each group's median delay in each.
pub fn penalty_over_time(answers: &[Answer], span_s: f64, slices: usize) -> Vec<PenaltySlice> {
    let slices = slices.max(1);
    let width = (span_s / slices as f64).max(1e-3);
    (0..slices)
        .map(|i| {
            let from = i as f64 * width;
            let group_delays = |g: Group| -> Vec<f64> {
                answers
                    .iter()
                    .filter(|a| a.group == g && a.at_s >= from && a.at_s < from + width)
                    .map(|a| a.delay.as_secs_f64() * 1000.0)
                    .collect()
            };
            let (flood, spread, probe) = (
                group_delays(Group::Flood),
                group_delays(Group::Spread),
                group_delays(Group::Probe),
            );
            PenaltySlice {
                from_s: from,
                flood_answers: flood.len(),
                spread_answers: spread.len(),
                probe_answers: probe.len(),
                flood_p50_ms: median(flood),
                spread_p50_ms: median(spread),
                probe_p50_ms: median(probe),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_their_addresses() {
        assert_eq!(Group::Flood.source(7), FLOOD_IP);
        assert_eq!(Group::Probe.source(0), PROBE_IP);
        assert_ne!(Group::Spread.source(0), Group::Spread.source(1));
        assert!(Group::Spread.source(999).is_loopback());
    }

    #[test]
    fn penalty_slices_give_medians_per_group() {
        let a = |at_s, ms, group| Answer {
            at_s,
            delay: Duration::from_millis(ms),
            group,
        };
        let answers = [
            a(0.1, 1, Group::Flood),
            a(0.2, 3, Group::Flood),
            a(0.3, 2, Group::Flood),
            a(1.5, 900, Group::Flood),
            a(1.6, 2, Group::Probe),
            a(2.5, 5, Group::Spread),
        ];
        let s = penalty_over_time(&answers, 3.0, 3);
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].flood_answers, s[0].flood_p50_ms), (3, Some(2.0)));
        assert_eq!(s[0].probe_p50_ms, None);
        assert_eq!(
            (s[1].flood_p50_ms, s[1].probe_p50_ms),
            (Some(900.0), Some(2.0))
        );
        assert_eq!(s[2].spread_p50_ms, Some(5.0));
    }
}
