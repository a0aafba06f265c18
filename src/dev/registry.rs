//! The live-session registry: which backend holds each user's sessions.
//!
//! Every dev backend reports each authenticated session here for as long as
//! it lives (a [`LiveSession`] guard). That lets the load test check the
//! director's invariant from the backends' side: at no instant may one user
//! be live on two backends. The check happens at the instant of each login,
//! under the same lock that records it, so no interleaving of logins on
//! different threads can hide a violation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// One breach of the invariant: a login on `backend` while the same user
/// was live on `others`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The user key (the login name, lower-cased).
    pub user: String,
    /// The backend the offending login went to.
    pub backend: String,
    /// The backends that held live sessions of the user at that instant.
    pub others: Vec<String>,
    /// When the login happened.
    pub at: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    /// user → backend → live authenticated sessions (entries never hold 0).
    live: HashMap<String, HashMap<String, usize>>,
    violations: Vec<Violation>,
}

/// The registry; cheap to clone (all clones are one registry).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    state: Arc<Mutex<State>>,
}

/// Proof that a session is live; dropping it ends the session's entry.
#[derive(Debug)]
#[must_use = "the session counts as live only while the guard is kept"]
pub struct LiveSession {
    registry: Registry,
    user: String,
    backend: String,
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let mut state = self.registry.state();
        if let Some(per_backend) = state.live.get_mut(&self.user) {
            if let Some(count) = per_backend.get_mut(&self.backend) {
                *count -= 1;
                if *count == 0 {
                    per_backend.remove(&self.backend);
                }
            }
            if per_backend.is_empty() {
                state.live.remove(&self.user);
            }
        }
    }
}

impl LiveSession {
    /// The user key the session is registered under.
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a successful login of `user` on `backend`. If the user is
    /// live on any other backend at this instant, a [`Violation`] is
    /// recorded in the same critical section. The session counts as live
    /// until the returned guard is dropped.
    pub fn login(&self, backend: &str, user: &str) -> LiveSession {
        let user = user.to_lowercase();
        let mut state = self.state();
        let per_backend = state.live.entry(user.clone()).or_default();
        let mut others: Vec<String> = per_backend
            .keys()
            .filter(|b| b.as_str() != backend)
            .cloned()
            .collect();
        *per_backend.entry(backend.to_string()).or_insert(0) += 1;
        if !others.is_empty() {
            others.sort();
            state.violations.push(Violation {
                user: user.clone(),
                backend: backend.to_string(),
                others,
                at: SystemTime::now(),
            });
        }
        LiveSession {
            registry: self.clone(),
            user,
            backend: backend.to_string(),
        }
    }

    /// Users live on more than one backend right now, each with those
    /// backends (sorted).
    pub fn users_on_several_backends(&self) -> Vec<(String, Vec<String>)> {
        let state = self.state();
        let mut out: Vec<(String, Vec<String>)> = state
            .live
            .iter()
            .filter(|(_, b)| b.len() > 1)
            .map(|(u, b)| {
                let mut names: Vec<String> = b.keys().cloned().collect();
                names.sort();
                (u.clone(), names)
            })
            .collect();
        out.sort();
        out
    }

    /// Every violation recorded so far, oldest first.
    pub fn violations(&self) -> Vec<Violation> {
        self.state().violations.clone()
    }

    /// How many violations have been recorded so far.
    pub fn violation_count(&self) -> usize {
        self.state().violations.len()
    }

    /// The backends holding live sessions of `user`, with their counts,
    /// sorted by backend name.
    pub fn sessions_of(&self, user: &str) -> Vec<(String, usize)> {
        let state = self.state();
        let mut out: Vec<(String, usize)> = state
            .live
            .get(&user.to_lowercase())
            .map(|b| b.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Live authenticated sessions on `backend`, all users together.
    pub fn sessions_on(&self, backend: &str) -> usize {
        self.state()
            .live
            .values()
            .filter_map(|b| b.get(backend))
            .sum()
    }

    /// Live authenticated sessions on all backends together.
    pub fn total_sessions(&self) -> usize {
        self.state().live.values().flat_map(|b| b.values()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sessions_and_forgets_them_on_drop() {
        let reg = Registry::new();
        let a = reg.login("b1", "Alice");
        let b = reg.login("b1", "alice");
        assert_eq!(reg.sessions_of("ALICE"), vec![("b1".to_string(), 2)]);
        assert_eq!(reg.sessions_on("b1"), 2);
        drop(a);
        drop(b);
        assert!(reg.sessions_of("alice").is_empty());
        assert_eq!(reg.total_sessions(), 0);
        assert_eq!(reg.violation_count(), 0);
    }

    #[test]
    fn login_on_second_backend_is_a_violation() {
        let reg = Registry::new();
        let _a = reg.login("b1", "alice");
        let _c = reg.login("b2", "carol");
        let _b = reg.login("b2", "alice");
        assert_eq!(
            reg.users_on_several_backends(),
            vec![(
                "alice".to_string(),
                vec!["b1".to_string(), "b2".to_string()]
            )]
        );
        let v = reg.violations();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].user.as_str(), v[0].backend.as_str()), ("alice", "b2"));
        assert_eq!(v[0].others, vec!["b1".to_string()]);
    }

    #[test]
    fn sequential_moves_are_not_violations() {
        let reg = Registry::new();
        drop(reg.login("b1", "alice"));
        let _b = reg.login("b2", "alice");
        assert_eq!(reg.violation_count(), 0);
        assert!(reg.users_on_several_backends().is_empty());
    }

    #[test]
    fn concurrent_logins_on_two_backends_never_go_unnoticed() {
        // Two threads log the same user in on two backends at once, over
        // and over; whenever both were live at once, one login must have
        // seen the other.
        let reg = Registry::new();
        let rounds = 2000;
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = ["b1", "b2"]
            .into_iter()
            .map(|backend| {
                let reg = reg.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut guards = Vec::new();
                    for _ in 0..rounds {
                        guards.push(reg.login(backend, "alice"));
                    }
                    barrier.wait();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Both threads held all their guards at the barrier, so the user
        // was live on both backends at once: at least one violation.
        assert!(reg.violation_count() >= 1);
    }
}
