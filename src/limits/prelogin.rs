//! Connections that have not logged in yet: `limits.prelogin_per_ip` and
//! `limits.prelogin_total`.
//!
//! A connection takes a [`PreloginSlot`] once its client address is known
//! (after the PROXY header) and gives it back when it logs in or closes,
//! whichever comes first. The total is one atomic counter; the per-address
//! counts live in an [`IpSlots`] table sized for the total, so it has room
//! for every address that can be counted at once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::ip_slots::{IpSlots, SlotRef, Update};
use super::{Limit, Limits};
use crate::config::LimitsConfig;

/// Per-address table size when `prelogin_total` is off.
const UNBOUNDED_SLOTS: usize = 1 << 16;

/// The process-wide pre-login counts.
pub struct PreloginCounts {
    total: AtomicU32,
    per_ip: IpSlots,
}

impl PreloginCounts {
    /// Empty counts, sized for `config.prelogin_total`.
    pub fn new(config: &LimitsConfig) -> PreloginCounts {
        let slots = match config.prelogin_total {
            0 => UNBOUNDED_SLOTS,
            total => 2 * total as usize,
        };
        PreloginCounts {
            total: AtomicU32::new(0),
            per_ip: IpSlots::new(slots),
        }
    }

    /// Connections not logged in yet, in the whole process.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

/// One connection counted as not logged in yet; dropping it stops counting.
pub struct PreloginSlot<'a> {
    counts: &'a PreloginCounts,
    per_ip: Option<SlotRef>,
}

impl Drop for PreloginSlot<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.per_ip {
            self.counts.per_ip.update_at(slot, |n| n.saturating_sub(1));
        }
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    /// Counts a new connection from `ip` as not logged in, or says which
    /// limit refuses it (the hit is counted and logged). Trusted addresses
    /// skip the per-address limit but count towards the total.
    pub fn enter_prelogin(&self, ip: IpAddr) -> Result<PreloginSlot<'_>, Limit> {
        let counts = &self.prelogin;
        let total = self.config().prelogin_total;
        let entered = counts
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (total == 0 || n < total).then_some(n + 1)
            });
        if entered.is_err() {
            self.hit(Limit::PreloginTotal, ip);
            return Err(Limit::PreloginTotal);
        }
        let mut slot = PreloginSlot {
            counts,
            per_ip: None,
        };
        let per_ip = self.config().prelogin_per_ip;
        if per_ip == 0 || self.trusted(ip) {
            return Ok(slot);
        }
        let counted = counts
            .per_ip
            .update(&ip, |n| n > 0, |n| (n < per_ip).then_some(n + 1));
        match counted {
            Update::Done { slot: at, .. } => slot.per_ip = Some(at),
            Update::Declined { .. } => {
                drop(slot);
                self.hit(Limit::PreloginPerIp, ip);
                return Err(Limit::PreloginPerIp);
            }
            // More distinct addresses than the table holds: the total
            // still bounds them.
            Update::Full => {}
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, total: u32, trusted: &[&str]) -> Limits {
        let config = LimitsConfig {
            prelogin_per_ip: per_ip,
            prelogin_total: total,
            trusted: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            ..LimitsConfig::default()
        };
        Limits::new(&config, 1)
    }

    #[test]
    fn per_address_limit_refuses_the_extra_connection_until_one_leaves() {
        let l = limits(2, 100, &[]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = l.enter_prelogin(a).unwrap();
        let _second = l.enter_prelogin(a).unwrap();
        assert_eq!(l.enter_prelogin(a).err(), Some(Limit::PreloginPerIp));
        let _other = l.enter_prelogin(b).expect("another address is served");
        drop(first);
        let _again = l.enter_prelogin(a).expect("room again after one left");
        assert_eq!(l.prelogin.total(), 3);
    }

    #[test]
    fn total_limit_counts_every_address_and_trusted_ones_skip_the_per_address_limit() {
        let l = limits(1, 3, &["127.0.0.0/8"]);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.enter_prelogin(local).unwrap()).collect();
        assert_eq!(
            l.enter_prelogin("192.0.2.9".parse().unwrap()).err(),
            Some(Limit::PreloginTotal)
        );
        drop(held);
        assert_eq!(l.prelogin.total(), 0);
    }
}
