//! The recent events of the control plane, for the status page and
//! `GET /events`: health flips, admin state changes, moves, flushes and
//! kicks, in a ring buffer of fixed size (the oldest fall out).

use std::collections::VecDeque;
use std::time::SystemTime;

/// How many events are kept.
pub const EVENT_CAPACITY: usize = 256;

/// What kind of thing happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A protocol port of a backend changed health.
    Health,
    /// A backend's admin state changed.
    Admin,
    /// A user was moved (or a move was given up).
    Move,
    /// A backend's users were flushed.
    Flush,
    /// A user's sessions were kicked.
    Kick,
}

impl EventKind {
    /// The name in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Health => "health",
            EventKind::Admin => "admin",
            EventKind::Move => "move",
            EventKind::Flush => "flush",
            EventKind::Kick => "kick",
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its number: 1, 2, 3... since start, never reused.
    pub seq: u64,
    /// When it happened.
    pub time: SystemTime,
    /// What kind.
    pub kind: EventKind,
    /// The backend concerned, if any.
    pub backend: Option<String>,
    /// The user concerned, if any.
    pub user: Option<String>,
    /// What happened, for people.
    pub message: String,
}

/// The last [`EVENT_CAPACITY`] events.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    last_seq: u64,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> EventLog {
        EventLog {
            events: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            last_seq: 0,
        }
    }

    /// Records an event now; returns its number.
    pub fn push(
        &mut self,
        kind: EventKind,
        backend: Option<&str>,
        user: Option<&str>,
        message: String,
    ) -> u64 {
        self.last_seq += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            seq: self.last_seq,
            time: SystemTime::now(),
            kind,
            backend: backend.map(str::to_owned),
            user: user.map(str::to_owned),
            message,
        });
        self.last_seq
    }

    /// The number of the last event (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The kept events numbered above `seq`, oldest first.
    pub fn since(&self, seq: u64) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_events_in_order() {
        let mut log = EventLog::new(3);
        for i in 0..5 {
            log.push(EventKind::Kick, None, Some("u"), format!("e{i}"));
        }
        let all = log.since(0);
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5],
            "the oldest fell out"
        );
        assert_eq!(all[0].message, "e2");
        assert_eq!(log.since(4).len(), 1);
        assert_eq!(log.last_seq(), 5);
        assert!(log.since(5).is_empty());
    }
}
