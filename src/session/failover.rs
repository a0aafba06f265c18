//! Routing a login, with failover inside the same client login.
//!
//! A login asks the router for the user's backend and tries it. When the
//! backend's port of the login's protocol cannot be reached (connect
//! refused or timed out, no greeting), the session tells the control plane
//! at once — a passive health observation of that port, which also
//! triggers immediate active checks — then waits, bounded, until the
//! backend is declared unable to keep users (every checked port down), and
//! asks the router again: the user's new assignment. The client sees a
//! successful login, not an error. When only the login's protocol port is
//! down, or the backend stays healthy in the control plane's eyes (one bad
//! connection), the login ends with the protocol's "unavailable" answer
//! instead: the user stays where its other sessions are.
//!
//! A backend that greets with a refusal for load (at its process limit)
//! is not reported: the login asks the router again, naming that backend
//! to avoid, and the router moves the user only if it has no live session
//! there — otherwise the login gets the "unavailable" answer.
//!
//! The login limits act here too: an address with recent failures waits
//! its penalty before the login is tried, the owner core refuses a session
//! over a per-user limit, each backend attempt holds one of the backend's
//! login slots, and a refusal is relayed no sooner than
//! `limits.auth_failure_delay` after the login began.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use tracing::{info, warn};

use crate::backend::{BackendError, Login};
use crate::config::Protocol;
use crate::io::{write_bytes, WriteSide};
use crate::limits::Limit;
use crate::plane::stats::LoginOutcome;
use crate::proto::sasl::Credentials;
use crate::route::backends::{Backend, BackendId, BackendSet};
use crate::route::router::RouteError;
use crate::route::shard::SessionOrigin;
use crate::route::user_key::{check_login_name, BadLoginName};
use crate::runtime::core::Core;
use crate::session::outcome::LoggedIn;

/// Backends one login tries at most.
pub const MAX_ATTEMPTS: u32 = 4;

/// The routing state of one login.
pub struct Failover<'a> {
    core: &'a Core,
    key: &'a str,
    protocol: Protocol,
    /// Where the login comes from, for the per-user session limits.
    origin: SessionOrigin,
    attempts: u32,
    /// Backends that refused this login for load.
    refused: Vec<BackendId>,
}

impl<'a> Failover<'a> {
    /// Starts routing a login of `key` from `origin` (its protocol is the
    /// login's).
    pub fn new(core: &'a Core, key: &'a str, origin: SessionOrigin) -> Failover<'a> {
        Failover {
            core,
            key,
            protocol: origin.protocol,
            origin,
            attempts: 0,
            refused: Vec::new(),
        }
    }

    /// Gives back the session counted on `id`.
    pub fn release(&self, id: BackendId) {
        self.core.router.release(self.key, id, Some(self.origin));
    }

    /// The backend to try next (its session is counted), with the snapshot
    /// it was chosen from.
    pub async fn next_backend(&mut self) -> Result<(BackendId, Arc<BackendSet>), RouteError> {
        self.attempts += 1;
        // A fenced director decides nothing: a temporary failure, at once.
        if self.core.fenced() {
            return Err(RouteError::Unavailable);
        }
        let id = self
            .core
            .router
            .acquire(self.key, self.protocol, &self.refused, Some(self.origin))
            .await?;
        let set = self.core.router.backends();
        if set.get(id).is_none() {
            self.release(id);
            return Err(RouteError::NoBackend);
        }
        tracing::Span::current().record("backend", set.get(id).map_or("", |b| &*b.name));
        Ok((id, set))
    }

    /// The attempt on `id` failed with `error`: releases its count, and
    /// says whether to try again (after the backend was declared down, or
    /// refused for load).
    pub async fn failed(&mut self, id: BackendId, error: &BackendError) -> bool {
        self.release(id);
        let name = self
            .core
            .router
            .backends()
            .get(id)
            .map(|b| b.name.to_string())
            .unwrap_or_default();
        warn!(backend = %name, protocol = self.protocol.as_str(), error = %error, "backend unavailable");
        if self.attempts >= MAX_ATTEMPTS {
            return false;
        }
        if error.is_busy() {
            self.refused.push(id);
            return true;
        }
        if !error.is_unreachable() {
            return false;
        }
        self.core
            .report_unreachable(id, self.protocol, error.to_string());
        let health = &self.core.shared().config.health;
        // Every port of a dead backend must fail `fall` checks, each
        // taking up to `timeout` and spaced by the jittered interval.
        let limit = (health.timeout + health.interval.mul_f64(1.1)) * health.fall.max(1)
            + Duration::from_millis(500);
        let deadline = std::time::Instant::now() + limit;
        loop {
            let set = self.core.router.backends();
            let Some(backend) = set.get(id) else {
                return false;
            };
            if !backend.keeps_users() {
                info!(backend = %name, "backend declared down, trying the user's next backend");
                return true;
            }
            if !backend.serves(self.protocol) {
                info!(backend = %name, protocol = self.protocol.as_str(), "protocol port declared down, the user stays");
                return false;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.core.wait_backend_change(left).await {
                return false;
            }
        }
    }
}

/// The user key a login routes by — the authorization identity when the
/// client gave one (a master-user login acts as that user), else the user
/// name — recorded on the session's log span. A name with a control
/// character is refused here, for every protocol, before any backend is
/// contacted: the caller answers with its protocol's refusal.
pub fn login_key(core: &Core, creds: &Credentials) -> Result<String, BadLoginName> {
    login_key_of(core, &creds.user, creds.authzid.as_deref())
}

/// [`login_key`] for a login known by its `user` and optional `authzid`
/// (the identities of a relayed SASL mechanism's first message).
pub fn login_key_of(
    core: &Core,
    user: &str,
    authzid: Option<&str>,
) -> Result<String, BadLoginName> {
    check_login_name(user, authzid)?;
    let login_name = authzid.filter(|z| !z.is_empty()).unwrap_or(user);
    let key = core.shared().user_key.key(login_name);
    tracing::Span::current().record("user", key.as_str());
    Ok(key)
}

/// How a routed login ended.
pub enum Routed {
    /// The backend said OK: relay from here on.
    Accepted {
        /// The logged-in backend connection.
        stream: TcpStream,
        /// Backend bytes read past its OK, for the client.
        to_client: Vec<u8>,
        /// Which backend.
        backend_id: BackendId,
        /// Where the session comes from, as counted by the owner core.
        origin: SessionOrigin,
    },
    /// The backend refused; its answer has been relayed to the client.
    Rejected,
    /// No backend can take the user: answer the protocol's "try later".
    NoBackend,
    /// The user's backends failed: answer the protocol's "unavailable".
    Unavailable,
    /// A limit refused the login: answer the protocol's "try later".
    OverLimit(Limit),
}

/// Why a routed login did not log the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The backend refused; its answer has been relayed to the client.
    Rejected,
    /// No backend can take the user.
    NoBackend,
    /// The user's backends failed.
    Unavailable,
    /// A limit refused the login (`sessions_per_user`,
    /// `sessions_per_user_ip` or `logins_per_backend`).
    OverLimit(Limit),
}

impl Refusal {
    /// The text the protocol's "try later" reply carries, if the client
    /// has not been answered yet.
    pub fn message(self) -> Option<&'static str> {
        match self {
            Refusal::Rejected => None,
            Refusal::NoBackend => Some("No server is available for this account, try again later."),
            Refusal::Unavailable => Some("Server unavailable, try again later."),
            Refusal::OverLimit(Limit::SessionsPerUser) => {
                Some("Too many sessions for this account, close one and try again.")
            }
            Refusal::OverLimit(Limit::SessionsPerUserIp) => Some(
                "Too many sessions for this account from your address, close one and try again.",
            ),
            Refusal::OverLimit(_) => Some("Server busy, try again later."),
        }
    }

    /// Whether the refusal is a per-user session limit (IMAP `[LIMIT]`,
    /// POP3 `[IN-USE]`, RFC 5530 and RFC 2449) rather than the server
    /// being unavailable.
    pub fn is_user_limit(self) -> bool {
        matches!(
            self,
            Refusal::OverLimit(Limit::SessionsPerUser | Limit::SessionsPerUserIp)
        )
    }
}

impl Routed {
    /// The logged-in state the relay starts from, or why there is none.
    /// `to_backend` is called only on success: it takes the bytes the
    /// client pipelined after its login, which otherwise stay for the
    /// next pre-login command.
    pub fn into_logged_in(
        self,
        key: String,
        to_backend: impl FnOnce() -> Vec<u8>,
    ) -> Result<LoggedIn, Refusal> {
        match self {
            Routed::Accepted {
                stream,
                to_client,
                backend_id,
                origin,
            } => Ok(LoggedIn {
                backend: stream,
                backend_id,
                key,
                origin,
                to_backend: to_backend(),
                to_client,
                live: None,
            }),
            Routed::Rejected => Err(Refusal::Rejected),
            Routed::NoBackend => Err(Refusal::NoBackend),
            Routed::Unavailable => Err(Refusal::Unavailable),
            Routed::OverLimit(limit) => Err(Refusal::OverLimit(limit)),
        }
    }
}

/// One protocol's backend login: replays the credentials on a backend and
/// relays its answer to the client stream it is given (a refusal is
/// handed back instead, for [`login_routed`] to delay and relay).
pub type Attempt<'x> = Pin<Box<dyn Future<Output = Result<Login, BackendError>> + 'x>>;

/// Routes a login of `key` from `origin` and runs `attempt` on the user's
/// backend, with failover, counting the outcome and its latency. The
/// session count of an accepted login stays acquired (the relay releases
/// it).
///
/// `attempt` gets the backend, the client stream and a `&&'a ()` whose only
/// job is to tell the compiler that what the closure borrows for `'a` (the
/// credentials, the client's details) outlives each attempt.
pub async fn login_routed<'a, S, F>(
    core: &Core,
    key: &str,
    origin: SessionOrigin,
    client: &mut S,
    mut attempt: F,
) -> Routed
where
    S: WriteSide,
    F: for<'x> FnMut(&'x Backend, &'x mut S, &'x &'a ()) -> Attempt<'x>,
{
    let anchor: &'a () = &();
    let protocol = origin.protocol;
    let began = Instant::now();
    let shared = core.shared();
    let limits = &shared.limits;
    let penalty = limits.auth_penalty(origin.ip);
    if !penalty.is_zero() {
        info!(
            penalty_ms = penalty.as_millis() as u64,
            "recent failed logins from this address: waiting"
        );
        monoio::time::sleep(penalty).await;
    }
    // Login latency, as counted, leaves out the penalty.
    let started = Instant::now();
    let mut route = Failover::new(core, key, origin);
    loop {
        let (backend_id, set) = match route.next_backend().await {
            Ok(b) => b,
            Err(e @ (RouteError::UserSessions | RouteError::UserIpSessions)) => {
                let limit = if e == RouteError::UserSessions {
                    Limit::SessionsPerUser
                } else {
                    Limit::SessionsPerUserIp
                };
                limits.hit(limit, origin.ip);
                core.counters
                    .login(LoginOutcome::Unavailable, started.elapsed());
                return Routed::OverLimit(limit);
            }
            Err(RouteError::Unavailable) => {
                warn!(
                    protocol = protocol.as_str(),
                    "the user's backend cannot serve this login now"
                );
                core.counters
                    .login(LoginOutcome::Unavailable, started.elapsed());
                return Routed::Unavailable;
            }
            Err(e) => {
                warn!(?e, "no backend for user");
                core.counters
                    .login(LoginOutcome::Unavailable, started.elapsed());
                return Routed::NoBackend;
            }
        };
        let Some(backend) = set.get(backend_id) else {
            route.release(backend_id);
            return Routed::NoBackend;
        };
        let Some(slot) = limits.backend_login(backend_id, origin.ip).await else {
            route.release(backend_id);
            core.counters
                .login(LoginOutcome::Unavailable, started.elapsed());
            return Routed::OverLimit(Limit::LoginsPerBackend);
        };
        let result = attempt(backend, client, &anchor).await;
        drop(slot);
        match result {
            Ok(Login::Accepted { stream, to_client }) => {
                core.counters.login(LoginOutcome::Ok, started.elapsed());
                info!("logged in");
                return Routed::Accepted {
                    stream,
                    to_client,
                    backend_id,
                    origin,
                };
            }
            Ok(Login::Rejected { answer, temporary }) => {
                route.release(backend_id);
                if temporary {
                    // The backend's own trouble ("try again later"): relayed
                    // as it is, with no failure counted against the address.
                    core.counters
                        .login(LoginOutcome::Unavailable, started.elapsed());
                    info!("backend refused the login with a temporary failure");
                    let _ = write_bytes(client, &answer).await;
                    return Routed::Rejected;
                }
                core.counters
                    .login(LoginOutcome::Refused, started.elapsed());
                info!("backend refused the login");
                let delay = limits.failure_delay(origin.ip, began);
                if !delay.is_zero() {
                    monoio::time::sleep(delay).await;
                }
                let _ = write_bytes(client, &answer).await;
                return Routed::Rejected;
            }
            Err(BackendError::ClientLeft) => {
                // The client went away mid-exchange: neither the backend's
                // fault nor a refusal to retry.
                core.counters
                    .login(LoginOutcome::Refused, started.elapsed());
                route.release(backend_id);
                return Routed::Rejected;
            }
            Err(e) => {
                if route.failed(backend_id, &e).await {
                    continue;
                }
                core.counters
                    .login(LoginOutcome::Unavailable, started.elapsed());
                return Routed::Unavailable;
            }
        }
    }
}
