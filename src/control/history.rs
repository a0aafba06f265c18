//! The load over the last minutes, for the status page and `GET /history`:
//! every [`SAMPLE_INTERVAL`] the control plane sums the cores' counters
//! and keeps sessions, connections, logins per second and the TLS share of
//! new connections, [`HISTORY_LEN`] samples at most (ten minutes).

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use crate::plane::stats::CoreStats;

/// How often the load is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How many samples are kept: ten minutes at [`SAMPLE_INTERVAL`].
pub const HISTORY_LEN: usize = 120;

/// The cores' counters summed at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Logged-in sessions now.
    pub sessions: u64,
    /// Open client connections now.
    pub connections: u64,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Logins (every outcome) since start.
    pub logins: u64,
    /// TLS handshakes completed since start.
    pub tls_ok: u64,
}

impl Totals {
    /// Sums every core's counters.
    pub fn from_stats(stats: &[CoreStats]) -> Totals {
        let mut t = Totals::default();
        for s in stats {
            t.sessions += s
                .sessions
                .iter()
                .map(|per| per.iter().map(|n| u64::from(*n)).sum::<u64>())
                .sum::<u64>();
            t.connections += s.connections;
            t.accepted += s.accepted;
            t.logins += s.logins.iter().sum::<u64>();
            t.tls_ok += s.tls_ok;
        }
        t
    }
}

/// One point of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub time: SystemTime,
    /// Logged-in sessions.
    pub sessions: u64,
    /// Open client connections.
    pub connections: u64,
    /// Logins per second since the previous sample.
    pub logins_per_s: f64,
    /// Connections accepted per second since the previous sample.
    pub connections_per_s: f64,
    /// TLS handshakes over connections accepted since the previous sample
    /// (0 to 1); `None` when none were accepted.
    pub tls_share: Option<f64>,
}

/// The last [`HISTORY_LEN`] samples.
#[derive(Debug, Default)]
pub struct LoadHistory {
    samples: VecDeque<Sample>,
    previous: Option<(Instant, Totals)>,
}

impl LoadHistory {
    /// Records the totals taken at `now` (wall clock `wall`). The first
    /// call only sets the baseline for the rates.
    pub fn record(&mut self, now: Instant, wall: SystemTime, totals: Totals) {
        if let Some((then, before)) = self.previous {
            let secs = now.saturating_duration_since(then).as_secs_f64();
            let rate = |a: u64, b: u64| {
                if secs > 0.0 {
                    a.saturating_sub(b) as f64 / secs
                } else {
                    0.0
                }
            };
            let accepted = totals.accepted.saturating_sub(before.accepted);
            let tls = totals.tls_ok.saturating_sub(before.tls_ok);
            if self.samples.len() == HISTORY_LEN {
                self.samples.pop_front();
            }
            self.samples.push_back(Sample {
                time: wall,
                sessions: totals.sessions,
                connections: totals.connections,
                logins_per_s: rate(totals.logins, before.logins),
                connections_per_s: rate(totals.accepted, before.accepted),
                tls_share: (accepted > 0).then(|| (tls as f64 / accepted as f64).min(1.0)),
            });
        }
        self.previous = Some((now, totals));
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_shares_and_bounds() {
        let mut h = LoadHistory::default();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        h.record(t0, wall, Totals::default());
        assert!(h.samples().is_empty(), "the first call is the baseline");
        let totals = Totals {
            sessions: 7,
            connections: 9,
            accepted: 10,
            logins: 20,
            tls_ok: 4,
        };
        h.record(t0 + Duration::from_secs(5), wall, totals);
        let s = &h.samples()[0];
        assert_eq!((s.sessions, s.connections), (7, 9));
        assert!((s.logins_per_s - 4.0).abs() < 1e-9);
        assert!((s.connections_per_s - 2.0).abs() < 1e-9);
        assert_eq!(s.tls_share, Some(0.4));
        h.record(t0 + Duration::from_secs(10), wall, totals);
        assert_eq!(h.samples()[1].tls_share, None, "no new connections");
        for i in 0..2 * HISTORY_LEN as u64 {
            h.record(t0 + Duration::from_secs(15 + i), wall, totals);
        }
        assert_eq!(h.samples().len(), HISTORY_LEN);
    }
}
