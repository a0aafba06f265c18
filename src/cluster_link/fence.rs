//! The fence clock: until when this director may serve.
//!
//! A director in a cluster holds a lease in etcd; when etcd stops hearing
//! its keepalives the lease expires after `lease_ttl` and the other
//! directors may give its users to other backends. So the director must
//! stop serving *before* that can happen: its deadline is the send time
//! of the last keepalive etcd acknowledged plus the TTL etcd granted,
//! minus a margin for clock rate and scheduling ([`FenceTimes`]). etcd
//! never lets a lease go earlier than TTL after the last keepalive it
//! received, and that keepalive was sent no earlier than the send time
//! we note, so the deadline always comes first.
//!
//! The deadline is one atomic (milliseconds on a process-local monotonic
//! clock), written by the cluster thread and read by every core before it
//! routes a login: no lock, no system call beyond reading the clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The process's monotonic zero for fence deadlines.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds from [`epoch`] to `at` (0 before it).
fn millis_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_millis() as u64
}

/// The fence: a deadline, fenced once it has passed.
#[derive(Debug)]
pub struct Fence {
    /// Milliseconds after [`epoch`]; 0 = fenced (no lease yet).
    deadline_ms: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Fence::new()
    }
}

impl Fence {
    /// A fence that is closed: nothing may be served until a first lease
    /// extends it.
    pub fn new() -> Fence {
        // Pin the epoch now, so later deadlines are all after it.
        let _ = epoch();
        Fence {
            deadline_ms: AtomicU64::new(0),
        }
    }

    /// Whether the deadline has passed (the director must not serve).
    pub fn is_fenced(&self) -> bool {
        self.is_fenced_at(Instant::now())
    }

    /// Whether the deadline has passed at `now`.
    pub fn is_fenced_at(&self, now: Instant) -> bool {
        millis_since_epoch(now) >= self.deadline_ms.load(Ordering::Acquire)
    }

    /// Moves the deadline to `deadline` if that is later than the one in
    /// force (an acknowledgement of an older keepalive arriving late never
    /// shortens it, and a lost lease is recorded by [`Fence::close`]).
    pub fn extend_to(&self, deadline: Instant) {
        self.deadline_ms
            .fetch_max(millis_since_epoch(deadline), Ordering::AcqRel);
    }

    /// Fences at once (the lease is known to be gone, or the director is
    /// leaving the cluster).
    pub fn close(&self) {
        self.deadline_ms.store(0, Ordering::Release);
    }

    /// The deadline in force, `None` when fenced now.
    pub fn deadline(&self) -> Option<Instant> {
        let ms = self.deadline_ms.load(Ordering::Acquire);
        let at = epoch() + Duration::from_millis(ms);
        (ms > 0 && at > Instant::now()).then_some(at)
    }
}

/// The timing rules derived from `cluster.lease_ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceTimes {
    /// The lease TTL asked of etcd.
    pub ttl: Duration,
    /// Taken off the deadline: a fifth of the TTL, 500 ms to 2 s.
    pub margin: Duration,
    /// How often a keepalive is sent: a sixth of the TTL, 200 ms to 1 s.
    pub keepalive_every: Duration,
    /// How long a keepalive may wait for its answer before the stream is
    /// given up and opened on another endpoint.
    pub keepalive_timeout: Duration,
}

impl FenceTimes {
    /// The rules for a lease of `ttl` (at least 2 s, as `mailpin check`
    /// demands).
    pub fn for_ttl(ttl: Duration) -> FenceTimes {
        let margin = (ttl / 5).clamp(Duration::from_millis(500), Duration::from_secs(2));
        let keepalive_every = (ttl / 6).clamp(Duration::from_millis(200), Duration::from_secs(1));
        FenceTimes {
            ttl,
            margin,
            keepalive_every,
            keepalive_timeout: (keepalive_every * 2).min(Duration::from_secs(1)),
        }
    }

    /// The deadline after a keepalive sent at `sent` was acknowledged with
    /// `granted` (the TTL etcd reports, whole seconds).
    pub fn deadline_after(&self, sent: Instant, granted: Duration) -> Instant {
        sent + granted.saturating_sub(self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_fence_is_closed_until_extended() {
        let fence = Fence::new();
        assert!(fence.is_fenced());
        assert_eq!(fence.deadline(), None);
        fence.extend_to(Instant::now() + Duration::from_secs(5));
        assert!(!fence.is_fenced());
        assert!(fence.deadline().is_some());
        let later = Instant::now() + Duration::from_secs(6);
        assert!(fence.is_fenced_at(later));
    }

    #[test]
    fn a_late_acknowledgement_never_shortens_the_deadline() {
        let fence = Fence::new();
        let now = Instant::now();
        fence.extend_to(now + Duration::from_secs(8));
        fence.extend_to(now + Duration::from_secs(3));
        assert!(!fence.is_fenced_at(now + Duration::from_secs(7)));
        fence.close();
        assert!(fence.is_fenced_at(now));
    }

    #[test]
    fn the_deadline_is_send_time_plus_granted_ttl_minus_margin() {
        let t = FenceTimes::for_ttl(Duration::from_secs(10));
        assert_eq!(t.margin, Duration::from_secs(2));
        assert_eq!(t.keepalive_every, Duration::from_secs(1));
        assert_eq!(t.keepalive_timeout, Duration::from_secs(1));
        let sent = Instant::now();
        assert_eq!(
            t.deadline_after(sent, Duration::from_secs(10)),
            sent + Duration::from_secs(8)
        );
        // etcd may grant less than asked (a lease about to expire): the
        // deadline follows what was granted.
        assert_eq!(
            t.deadline_after(sent, Duration::from_secs(1)),
            sent + Duration::from_millis(0)
        );
    }

    #[test]
    fn short_ttls_keep_a_half_second_margin_and_fast_keepalives() {
        let t = FenceTimes::for_ttl(Duration::from_secs(2));
        assert_eq!(t.margin, Duration::from_millis(500));
        assert_eq!(t.keepalive_every.as_millis(), 333);
        assert_eq!(t.keepalive_timeout.as_millis(), 666);
        let t = FenceTimes::for_ttl(Duration::from_secs(60));
        assert_eq!(t.margin, Duration::from_secs(2));
        assert_eq!(t.keepalive_every, Duration::from_secs(1));
    }
}
