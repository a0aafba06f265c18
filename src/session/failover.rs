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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use tracing::{info, warn};

use crate::backend::{BackendError, Login};
use crate::config::Protocol;
use crate::proto::sasl::Credentials;
use crate::route::backends::{Backend, BackendId, BackendSet};
use crate::route::router::RouteError;
use crate::route::user_key::{check_login_name, BadLoginName};
use crate::runtime::core::Core;
use crate::runtime::stats::LoginOutcome;
use crate::session::imap::LoggedIn;

/// Backends one login tries at most.
pub const MAX_ATTEMPTS: u32 = 4;

/// The routing state of one login.
pub struct Failover<'a> {
    core: &'a Core,
    key: &'a str,
    protocol: Protocol,
    attempts: u32,
    /// Backends that refused this login for load.
    refused: Vec<BackendId>,
}

impl<'a> Failover<'a> {
    /// Starts routing a login of `key` over `protocol`.
    pub fn new(core: &'a Core, key: &'a str, protocol: Protocol) -> Failover<'a> {
        Failover {
            core,
            key,
            protocol,
            attempts: 0,
            refused: Vec::new(),
        }
    }

    /// The backend to try next (its session is counted), with the snapshot
    /// it was chosen from.
    pub async fn next_backend(&mut self) -> Result<(BackendId, Arc<BackendSet>), RouteError> {
        self.attempts += 1;
        let id = self
            .core
            .router
            .acquire(self.key, self.protocol, &self.refused)
            .await?;
        let set = self.core.router.backends();
        if set.get(id).is_none() {
            self.core.router.release(self.key, id);
            return Err(RouteError::NoBackend);
        }
        tracing::Span::current().record("backend", set.get(id).map_or("", |b| &*b.name));
        Ok((id, set))
    }

    /// The attempt on `id` failed with `error`: releases its count, and
    /// says whether to try again (after the backend was declared down, or
    /// refused for load).
    pub async fn failed(&mut self, id: BackendId, error: &BackendError) -> bool {
        self.core.router.release(self.key, id);
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
        let health = &self.core.shared.config.health;
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
    let key = core.shared.user_key.key(login_name);
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
    },
    /// The backend refused; its answer has been relayed to the client.
    Rejected,
    /// No backend can take the user: answer the protocol's "try later".
    NoBackend,
    /// The user's backends failed: answer the protocol's "unavailable".
    Unavailable,
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
}

impl Refusal {
    /// The text the protocol's "try later" reply carries, if the client
    /// has not been answered yet.
    pub fn message(self) -> Option<&'static str> {
        match self {
            Refusal::Rejected => None,
            Refusal::NoBackend => Some("No server is available for this account, try again later."),
            Refusal::Unavailable => Some("Server unavailable, try again later."),
        }
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
            } => Ok(LoggedIn {
                backend: stream,
                backend_id,
                key,
                to_backend: to_backend(),
                to_client,
            }),
            Routed::Rejected => Err(Refusal::Rejected),
            Routed::NoBackend => Err(Refusal::NoBackend),
            Routed::Unavailable => Err(Refusal::Unavailable),
        }
    }
}

/// One protocol's backend login: replays the credentials on a backend and
/// relays its answer to the client stream it is given.
pub type Attempt<'x> = Pin<Box<dyn Future<Output = Result<Login, BackendError>> + 'x>>;

/// Routes a login of `key` and runs `attempt` on the user's backend, with
/// failover, counting the outcome and its latency. The session count of an
/// accepted login stays acquired (the relay releases it).
///
/// `attempt` gets the backend, the client stream and a `&&'a ()` whose only
/// job is to tell the compiler that what the closure borrows for `'a` (the
/// credentials, the client's details) outlives each attempt.
pub async fn login_routed<'a, S, F>(
    core: &Core,
    key: &str,
    protocol: Protocol,
    client: &mut S,
    mut attempt: F,
) -> Routed
where
    F: for<'x> FnMut(&'x Backend, &'x mut S, &'x &'a ()) -> Attempt<'x>,
{
    let anchor: &'a () = &();
    let started = Instant::now();
    let mut route = Failover::new(core, key, protocol);
    loop {
        let (backend_id, set) = match route.next_backend().await {
            Ok(b) => b,
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
            return Routed::NoBackend;
        };
        match attempt(backend, client, &anchor).await {
            Ok(Login::Accepted { stream, to_client }) => {
                core.counters.login(LoginOutcome::Ok, started.elapsed());
                info!("logged in");
                return Routed::Accepted {
                    stream,
                    to_client,
                    backend_id,
                };
            }
            Ok(Login::Rejected) => {
                core.counters
                    .login(LoginOutcome::Refused, started.elapsed());
                info!("backend refused the login");
                core.router.release(key, backend_id);
                return Routed::Rejected;
            }
            Err(BackendError::ClientLeft) => {
                // The client went away mid-exchange: neither the backend's
                // fault nor a refusal to retry.
                core.counters
                    .login(LoginOutcome::Refused, started.elapsed());
                core.router.release(key, backend_id);
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
