//! The cores' side of a binary upgrade, driven from the main thread:
//! stopping the accepts and collecting the listening sockets, handing the
//! routing state over, rolling both back when the new process fails, and,
//! in the new process, taking the state over before accepting.
//!
//! Every wait here is on the main thread (never on a core) and bounded.

use std::os::fd::OwnedFd;
use std::time::{Duration, SystemTime};

use crate::config::Listen;
use crate::plane::{CoreMsg, UpgradeMsg};
use crate::route::backends::BackendId;
use crate::route::router::{owner_of, HandedOverAssignment, HandedOverRelease};
use crate::runtime::{Cores, PerCoreListeners};

/// How long a core may take to answer a hand-over step (it only stops
/// accept loops, each bounded by 1 s, or copies its shard).
const STEP_LIMIT: Duration = Duration::from_secs(5);

/// A listening socket of one core: core index, settings, descriptor.
pub type CoreSocket = (usize, Listen, OwnedFd);

impl Cores {
    /// Sends every core the message `make` builds and gathers the answers
    /// (bounded by [`STEP_LIMIT`] in all).
    fn ask_cores<T>(&self, make: impl Fn(flume::Sender<T>) -> UpgradeMsg) -> Vec<(usize, T)> {
        let deadline = std::time::Instant::now() + STEP_LIMIT;
        let waits: Vec<(usize, flume::Receiver<T>)> = self
            .mailboxes
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let (tx, rx) = flume::bounded(1);
                m.send(CoreMsg::Upgrade(make(tx))).ok().map(|()| (i, rx))
            })
            .collect();
        waits
            .into_iter()
            .filter_map(|(i, rx)| rx.recv_deadline(deadline).ok().map(|v| (i, v)))
            .collect()
    }

    /// Old process: every core stops accepting (pending accepts cancelled,
    /// connections that raced in served) and hands back a copy of each of
    /// its listening sockets.
    pub fn hand_over_listeners(&self) -> Vec<CoreSocket> {
        self.ask_cores(|done| UpgradeMsg::HandOverListeners { done })
            .into_iter()
            .flat_map(|(core, sockets)| sockets.into_iter().map(move |(l, fd)| (core, l, fd)))
            .collect()
    }

    /// Old process: the cores stop opening sessions and hand over their
    /// assignments; each counted session that ends is sent to `releases`.
    pub fn hand_over_routes(
        &self,
        releases: flume::Sender<HandedOverRelease>,
    ) -> Vec<HandedOverAssignment> {
        self.ask_cores(|done| UpgradeMsg::HandOverRoutes {
            releases: releases.clone(),
            done,
        })
        .into_iter()
        .flat_map(|(_, a)| a)
        .collect()
    }

    /// Old process: the new one failed; the cores route again and accept
    /// on their sockets again.
    pub fn resume_after_failed_hand_over(&self, sockets: Vec<CoreSocket>) {
        let mut per_core: PerCoreListeners = (0..self.cores()).map(|_| Vec::new()).collect();
        for (core, listen, fd) in sockets {
            if let Some(list) = per_core.get_mut(core) {
                list.push((listen, std::net::TcpListener::from(fd)));
            }
        }
        self.give_listeners(per_core);
        self.broadcast(|| CoreMsg::Upgrade(UpgradeMsg::Resume));
    }

    /// New process: the cores take over the old process's assignments,
    /// each by its owner core; returns once all have.
    pub fn take_over(&self, assignments: Vec<(Box<str>, BackendId, SystemTime, u32)>) {
        let cores = self.cores();
        let mut per_core: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
        for a in assignments {
            per_core[owner_of(&a.0, cores)].push(a);
        }
        let deadline = std::time::Instant::now() + STEP_LIMIT;
        let waits: Vec<_> = per_core
            .into_iter()
            .zip(&self.mailboxes)
            .map(|(assignments, m)| {
                let (done, rx) = flume::bounded(1);
                let _ = m.send(CoreMsg::Upgrade(UpgradeMsg::TakeOver { assignments, done }));
                rx
            })
            .collect();
        for rx in waits {
            let _ = rx.recv_deadline(deadline);
        }
    }

    /// Gives each core the listening sockets in `per_core` and returns
    /// once every core accepts on them.
    pub fn give_listeners(&self, per_core: PerCoreListeners) {
        let deadline = std::time::Instant::now() + STEP_LIMIT;
        let mut waits = Vec::new();
        for (add, m) in per_core.into_iter().zip(&self.mailboxes) {
            let _ = m.send(CoreMsg::Listeners {
                add,
                update: Vec::new(),
                remove: Vec::new(),
            });
            let (done, rx) = flume::bounded(1);
            if m.send(CoreMsg::Sync { done }).is_ok() {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.recv_deadline(deadline);
        }
    }
}
