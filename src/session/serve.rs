//! The life of one client connection, from accept to close.
//!
//! `serve` sets up the session's log span (session id, client, and once
//! known the user key and backend, on every line), reads the PROXY header
//! on `proxy_protocol` listeners, runs TLS and the protocol's pre-login
//! phase (IMAP, POP3, ManageSieve) or the LMTP dialogue, relays after
//! login, releases the user's session count and writes one closing line
//! for operators: the span's user, client, backend and protocol, then the
//! TLS version, bytes each way, duration and why the session ended
//! ([`Ending::reason`]); never a credential.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use tracing::{info, warn, Instrument};

use crate::backend::client_info::ClientInfo;
use crate::config::{Listen, Protocol, TlsMode};
use crate::io::{write_bytes, Connection};
use crate::limits::Limit;
use crate::plane::KickReason;
use crate::relay::{relay_split, ReadAhead, RelayEnd, RelayOptions, RelayStats, Split};
use crate::runtime::core::{Core, SessionGuard};
use crate::session::goodbye::goodbye;
use crate::session::imap::ImapPolicy;
use crate::session::lmtp::{Lmtp, LmtpPolicy};
use crate::session::outcome::{LoggedIn, Outcome};
use crate::session::pop3::Pop3Policy;
use crate::session::sieve::SievePolicy;
use crate::session::{imap, live_move, new_session_id, pop3, proxy_header, sieve};
use crate::tls;

/// What [`run_prelogin`] needs from a protocol's pre-login phase.
#[allow(async_fn_in_trait)]
pub trait PreloginPhase {
    /// The connection is under TLS from now on (implicit or after STARTTLS).
    fn upgraded(&mut self);
    /// Writes the greeting; false when the client is gone.
    async fn greet<S: Connection>(&mut self, s: &mut S) -> bool;
    /// Runs the dialogue until login, STARTTLS or the end.
    async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome;
}

impl PreloginPhase for imap::Prelogin<'_> {
    fn upgraded(&mut self) {
        imap::Prelogin::upgraded(self)
    }
    async fn greet<S: Connection>(&mut self, s: &mut S) -> bool {
        imap::Prelogin::greet(self, s).await
    }
    async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        imap::Prelogin::run(self, s).await
    }
}

impl PreloginPhase for pop3::Prelogin<'_> {
    fn upgraded(&mut self) {
        pop3::Prelogin::upgraded(self)
    }
    async fn greet<S: Connection>(&mut self, s: &mut S) -> bool {
        pop3::Prelogin::greet(self, s).await
    }
    async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        pop3::Prelogin::run(self, s).await
    }
}

impl PreloginPhase for sieve::Prelogin<'_> {
    fn upgraded(&mut self) {
        sieve::Prelogin::upgraded(self)
    }
    async fn greet<S: Connection>(&mut self, s: &mut S) -> bool {
        sieve::Prelogin::greet(self, s).await
    }
    async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        sieve::Prelogin::run(self, s).await
    }
}

impl PreloginPhase for Lmtp<'_> {
    fn upgraded(&mut self) {
        Lmtp::upgraded(self)
    }
    async fn greet<S: Connection>(&mut self, s: &mut S) -> bool {
        Lmtp::greet(self, s).await
    }
    async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        Lmtp::run(self, s).await
    }
}

/// Starts serving one accepted connection as a task of this core: the
/// session layer's [`crate::runtime::core::ServeFn`].
pub fn spawn_session(core: Rc<Core>, listen: Rc<Listen>, tcp: TcpStream, peer: SocketAddr) {
    monoio::spawn(serve(core, listen, tcp, peer));
}

/// Serves one accepted connection.
///
/// Everything up to a successful login runs in one heap allocation that is
/// freed when it ends; a logged-in session then continues as its own task
/// ([`relayed`]) whose state is only the relay's, so an idle session costs
/// as little memory as the relay needs.
pub async fn serve(core: Rc<Core>, listen: Rc<Listen>, tcp: TcpStream, peer: SocketAddr) {
    let guard = SessionGuard::new(core.clone());
    let session_id = new_session_id(core.id);
    let span = tracing::info_span!(
        "session",
        sid = %session_id,
        proto = listen.protocol.as_str(),
        client = %peer,
        lb = tracing::field::Empty,
        user = tracing::field::Empty,
        backend = tracing::field::Empty,
    );
    let started = Instant::now();
    let tls_version = Cell::new(None);
    let mut opening = Box::pin(
        open(&core, &listen, tcp, peer, session_id, &tls_version).instrument(span.clone()),
    );
    let opened = (&mut opening).await;
    let protocol = listen.protocol;
    let facts = |tls| Facts { started, tls };
    match opened {
        Ok(Ready::Plain(tcp, l)) => {
            let facts = facts(None);
            if l.live.is_some() {
                monoio::spawn(relayed_live(core.clone(), tcp, l, guard, facts).instrument(span));
            } else {
                monoio::spawn(
                    relayed(core.clone(), protocol, tcp, l, guard, facts).instrument(span),
                );
            }
        }
        Ok(Ready::Tls(tls, l)) => {
            let facts = facts(Some(tls.version_name()));
            if l.live.is_some() {
                monoio::spawn(relayed_live(core.clone(), tls, l, guard, facts).instrument(span));
            } else {
                monoio::spawn(
                    relayed(core.clone(), protocol, tls, l, guard, facts).instrument(span),
                );
            }
        }
        Err(before_login) => {
            let timed_out = started.elapsed() >= core.shared().config.server.prelogin_timeout;
            let ending = Ending::Prelogin(before_login.reason(protocol, timed_out));
            closed(
                &span,
                ending,
                RelayStats::default(),
                facts(tls_version.get()),
            )
        }
    }
    // Freed only now, after the relay task's allocation: were it freed
    // first, the relay's smaller block would be cut from it and the rest
    // left as a hole the next session's pre-login block does not fit in.
    drop(opening);
}

/// What the closing line needs to know from the session's opening.
#[derive(Debug, Clone, Copy)]
struct Facts {
    /// When the connection was accepted.
    started: Instant,
    /// The client connection's TLS version; `None` for plaintext.
    tls: Option<&'static str>,
}

/// How a session ended, for its closing line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Before a login reached the relay, for this reason.
    Prelogin(&'static str),
    /// The relay ended so; a stopped relay says why it was stopped.
    Relay(RelayEnd, Option<KickReason>),
}

impl Ending {
    /// The `end=` word: `prelogin` or how the relay ended.
    fn end(self) -> &'static str {
        match self {
            Ending::Prelogin(_) => "prelogin",
            Ending::Relay(end, _) => end_name(end),
        }
    }

    /// Why the session ended, in an operator's words (`reason=`). After an
    /// IMAP LOGOUT or POP3 QUIT the backend answers and closes while the
    /// client closes as it reads the answer, so either "disconnected by"
    /// line is a normal end (as in Dovecot's own proxy log).
    fn reason(self) -> &'static str {
        match self {
            Ending::Prelogin(reason) => reason,
            Ending::Relay(RelayEnd::Client, _) => "disconnected by client",
            Ending::Relay(RelayEnd::Backend, _) => "disconnected by backend",
            Ending::Relay(RelayEnd::Error, _) => "connection error",
            Ending::Relay(RelayEnd::Stalled, _) => "stalled: a side stopped reading",
            // A move ends sessions as a kick does (live moves aside: their
            // closing line says `live_moves` and `not_moved`).
            Ending::Relay(RelayEnd::Stopped, Some(KickReason::Admin | KickReason::Move)) => {
                "closed by admin"
            }
            Ending::Relay(RelayEnd::Stopped, Some(KickReason::BackendDown)) => {
                "backend marked down"
            }
            Ending::Relay(RelayEnd::Stopped, Some(KickReason::Shutdown)) => {
                "director shutting down"
            }
            Ending::Relay(RelayEnd::Stopped, Some(KickReason::Fenced)) => {
                "director fenced: cut off from etcd"
            }
            Ending::Relay(RelayEnd::Stopped, None) => "stopped",
        }
    }
}

/// Why a session ended before it logged in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreloginEnd {
    /// A PROXY header was missing, malformed or untrusted.
    ProxyRefused,
    /// The TLS handshake failed or timed out.
    TlsFailed,
    /// The client was gone before its greeting.
    Gone,
    /// A connection limit refused the client before its greeting.
    Limited,
    /// The pre-login dialogue ended without a login: the client logged out,
    /// left, failed to log in or was refused (the session's earlier lines
    /// say which), or timed out.
    Closed,
}

impl PreloginEnd {
    /// The closing line's reason. LMTP has no login: its dialogue just
    /// ends. A dialogue that lasted `server.prelogin_timeout` was cut by it.
    fn reason(self, protocol: Protocol, timed_out: bool) -> &'static str {
        match self {
            PreloginEnd::ProxyRefused => "bad PROXY header",
            PreloginEnd::TlsFailed => "TLS handshake failed",
            PreloginEnd::Gone => "disconnected by client before login",
            PreloginEnd::Limited => "connection limit reached",
            PreloginEnd::Closed if protocol == Protocol::Lmtp => "LMTP dialogue ended",
            PreloginEnd::Closed if timed_out => "prelogin timeout",
            PreloginEnd::Closed => "closed before login",
        }
    }
}

/// The session's closing line (the span adds sid, proto, client, user and
/// backend): TLS version, bytes from the client (`bytes_in`) and to it
/// (`bytes_out`), duration, how (`end`) and why (`reason`) it ended.
fn closed(span: &tracing::Span, ending: Ending, stats: RelayStats, facts: Facts) {
    info!(
        parent: span,
        tls = facts.tls.unwrap_or("none"),
        bytes_in = stats.up,
        bytes_out = stats.down,
        duration_ms = facts.started.elapsed().as_millis() as u64,
        end = ending.end(),
        reason = ending.reason(),
        "session closed"
    );
}

// Live IMAP moves (issue 12).
/// A logged-in IMAP session that may follow its user to another backend
/// live ([`live_move::relay`]), until its end; its closing line says how
/// many live moves it went through (`live_moves`) and, when a move ended
/// it instead, why (`not_moved`).
async fn relayed_live<C: Connection>(
    core: Rc<Core>,
    client: C,
    l: LoggedIn,
    guard: SessionGuard,
    facts: Facts,
) {
    let done = live_move::relay(core, client, l).await;
    let ending = Ending::Relay(done.end, done.kicked);
    info!(
        tls = facts.tls.unwrap_or("none"),
        bytes_in = done.stats.up,
        bytes_out = done.stats.down,
        duration_ms = facts.started.elapsed().as_millis() as u64,
        end = ending.end(),
        reason = ending.reason(),
        live_moves = done.moves,
        not_moved = done.not_moved.unwrap_or(""),
        "session closed"
    );
    drop(guard);
}

/// A logged-in session until its end, as a task of its own: registered so
/// it can be kicked, relayed, then released and logged.
///
/// Built by hand as one async block over the split connections, not as
/// nested async fns: a value an async fn takes stays in its state for the
/// whole session even after it was moved on, so each layer would keep its
/// own copy of the connections and the login state.
fn relayed<C: Connection>(
    core: Rc<Core>,
    protocol: Protocol,
    client: C,
    l: LoggedIn,
    guard: SessionGuard,
    facts: Facts,
) -> impl Future<Output = ()> {
    let LoggedIn {
        backend,
        backend_id,
        key,
        origin,
        to_backend,
        to_client,
        live: _,
    } = l;
    core.shared().config.server.keepalive().apply(&backend);
    let split = Split::new(client, backend);
    let ahead = ReadAhead::new(to_backend, to_client);
    async move {
        let kicked_for = Cell::new(None);
        let (registration, kick) = core.sessions.register(&key, backend_id, protocol);
        if !core
            .router
            .backends()
            .get(backend_id)
            .is_some_and(|b| b.keeps_users())
        {
            // The backend went down while this login was on its way.
            registration.kick(KickReason::BackendDown);
        }
        let kicked = &kicked_for;
        // Pinned here and lent to the relay: given by value, it would take
        // room twice in the session's state (the relay pins its own copy).
        let stop = std::pin::pin!(async move {
            let reason = kick.kicked().await;
            kicked.set(Some(reason));
            info!(?reason, "closing session");
            goodbye(protocol, reason)
        });
        let options = {
            let shared = core.shared();
            RelayOptions {
                splice: shared.config.server.splice,
                stall_timeout: shared.config.server.stall_timeout,
            }
        };
        // The user's session count is released the moment its backend
        // connection is closed, not after the client's goodbye: a move or a
        // backend's retired assignment waits for exactly that.
        let backend_closed = || {
            registration.backend_closed();
            core.router.release(&key, backend_id, Some(origin));
        };
        let (end, stats) = relay_split(split, ahead, stop, options, backend_closed).await;
        drop(registration);
        let ending = Ending::Relay(end, kicked_for.get());
        closed(&tracing::Span::current(), ending, stats, facts);
        drop(guard);
    }
}

/// The PROXY header (if the listener wants one) and the protocol's
/// pre-login phase, up to a successful login.
async fn open(
    core: &Rc<Core>,
    listen: &Listen,
    tcp: TcpStream,
    peer: SocketAddr,
    session_id: String,
    tls_version: &Cell<Option<&'static str>>,
) -> Result<Ready, PreloginEnd> {
    let mut tcp = tcp;
    let _ = tcp.set_nodelay(true);
    core.shared().config.server.keepalive().apply(&tcp);
    let mut local = tcp.local_addr().unwrap_or(listen.addr);
    let mut peer = peer;
    if listen.proxy_protocol {
        let limit = core.shared().config.server.handshake_timeout;
        match proxy_header::receive(&mut tcp, peer, listen, limit).await {
            Ok(header) => {
                let span = tracing::Span::current();
                if let Some(source) = header.source {
                    span.record("lb", tracing::field::display(peer));
                    span.record("client", tracing::field::display(source));
                    peer = source;
                }
                if let Some(destination) = header.destination {
                    local = destination;
                }
            }
            Err(e) => {
                warn!(error = %e, "PROXY header refused, closing");
                return Err(PreloginEnd::ProxyRefused);
            }
        }
    }
    // Counted until it logs in or closes, whichever comes first. LMTP has
    // no login: its client is the MTA, and its connections are not counted.
    // Counted in the limits the connection started under, even if a
    // reload puts new ones in force meanwhile.
    let shared = core.shared();
    let _prelogin = if listen.protocol == Protocol::Lmtp {
        None
    } else {
        match shared.limits.enter_prelogin(peer.ip()) {
            Ok(slot) => Some(slot),
            Err(limit) => {
                let bound = shared.config.server.handshake_timeout;
                refuse_connection(&mut tcp, listen, limit, bound).await;
                return Err(PreloginEnd::Limited);
            }
        }
    };
    let client = ClientInfo {
        peer,
        local,
        session_id,
        tls: false,
    };
    let server = &core.shared().config.server;
    let starttls = listen.tls == TlsMode::Starttls;
    let plaintext_auth = listen.plaintext_auth;
    match listen.protocol {
        Protocol::Imap => {
            let policy = ImapPolicy {
                starttls,
                plaintext_auth,
            };
            let pre = imap::Prelogin::new(core, policy, client);
            prelogin(core, listen, tcp, tls_version, Box::new(pre)).await
        }
        Protocol::Pop3 => {
            let policy = Pop3Policy {
                starttls,
                plaintext_auth,
            };
            let pre = pop3::Prelogin::new(core, policy, client);
            prelogin(core, listen, tcp, tls_version, Box::new(pre)).await
        }
        Protocol::Sieve => {
            let policy = SievePolicy {
                starttls,
                plaintext_auth,
            };
            let pre = sieve::Prelogin::new(core, policy, client);
            prelogin(core, listen, tcp, tls_version, Box::new(pre)).await
        }
        Protocol::Lmtp => {
            let policy = LmtpPolicy {
                starttls,
                idle_timeout: server.prelogin_timeout,
            };
            let lmtp = Lmtp::new(core, policy, client);
            prelogin(core, listen, tcp, tls_version, Box::new(lmtp)).await
        }
    }
}

fn end_name(end: RelayEnd) -> &'static str {
    match end {
        RelayEnd::Client => "client",
        RelayEnd::Backend => "backend",
        RelayEnd::Error => "error",
        RelayEnd::Stopped => "stopped",
        RelayEnd::Stalled => "stalled",
    }
}

/// A client connection that logged in, ready to relay.
enum Ready {
    /// Plaintext client.
    Plain(TcpStream, LoggedIn),
    /// TLS client (implicit or after STARTTLS).
    Tls(tls::TlsStream, LoggedIn),
}

/// TLS and the protocol's dialogue up to a successful login.
/// The TLS version of a handshake is noted in `tls_version`.
async fn prelogin<P: PreloginPhase>(
    core: &Rc<Core>,
    listen: &Listen,
    mut tcp: TcpStream,
    tls_version: &Cell<Option<&'static str>>,
    mut pre: Box<P>,
) -> Result<Ready, PreloginEnd> {
    if listen.tls == TlsMode::Implicit {
        let mut tls = handshake(core, tcp).await.ok_or(PreloginEnd::TlsFailed)?;
        tls_version.set(Some(tls.version_name()));
        pre.upgraded();
        if !pre.greet(&mut tls).await {
            return Err(PreloginEnd::Gone);
        }
        return match pre.run(&mut tls).await {
            Outcome::LoggedIn(l) => Ok(Ready::Tls(tls, l)),
            _ => Err(PreloginEnd::Closed),
        };
    }
    if !pre.greet(&mut tcp).await {
        return Err(PreloginEnd::Gone);
    }
    match pre.run(&mut tcp).await {
        Outcome::LoggedIn(l) => Ok(Ready::Plain(tcp, l)),
        Outcome::StartTls => {
            let mut tls = handshake(core, tcp).await.ok_or(PreloginEnd::TlsFailed)?;
            tls_version.set(Some(tls.version_name()));
            pre.upgraded();
            match pre.run(&mut tls).await {
                Outcome::LoggedIn(l) => Ok(Ready::Tls(tls, l)),
                _ => Err(PreloginEnd::Closed),
            }
        }
        Outcome::Closed => Err(PreloginEnd::Closed),
    }
}

/// The server side of a TLS handshake, bounded by `server.handshake_timeout`.
async fn handshake(core: &Core, tcp: TcpStream) -> Option<tls::TlsStream> {
    let shared = core.shared();
    let config = shared.tls.as_ref()?;
    let result = tls::accept(tcp, config, shared.config.server.handshake_timeout).await;
    core.counters.tls_handshake(result.is_ok());
    match result {
        Ok(s) => Some(s),
        Err(e) => {
            info!(error = %e, "TLS handshake failed");
            None
        }
    }
}

/// Tells a client refused by a pre-login limit why, in its protocol's
/// greeting form (the write bounded by `bound`), and lets the connection
/// close. An implicit-TLS client would not understand plaintext, and a
/// handshake is what the limit spares, so it is closed without a word.
async fn refuse_connection(tcp: &mut TcpStream, listen: &Listen, limit: Limit, bound: Duration) {
    if listen.tls == TlsMode::Implicit {
        return;
    }
    let text = match limit {
        Limit::PreloginPerIp => "Too many connections from your IP",
        _ => "Too many connections, try again later",
    };
    let reply = match listen.protocol {
        Protocol::Imap => format!("* BYE [UNAVAILABLE] {text}.\r\n"),
        Protocol::Pop3 => format!("-ERR [SYS/TEMP] {text}.\r\n"),
        Protocol::Sieve => format!("BYE (TRYLATER) \"{text}.\"\r\n"),
        // Not counted (no login), so never refused; RFC 5321's answer.
        Protocol::Lmtp => format!("421 4.7.0 {text}\r\n"),
    };
    let _ = monoio::time::timeout(bound, write_bytes(tcp, reply.as_bytes())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What monoio adds around a spawned future in the task's one heap
    /// allocation: header (state, vtable, owner) and trailer (join waker),
    /// 40 bytes (`-Zprint-type-sizes`: `task::core::Cell<T>` is `T` + 40).
    const MONOIO_TASK_OVERHEAD: usize = 40;

    /// mimalloc's size class the task of an idle session must fit in; the
    /// classes around it are 768 and 1024 bytes, so a task a few bytes
    /// larger costs 128 bytes more per session.
    const TASK_CLASS: usize = 896;

    /// The size of the task `spawn` allocates for the future `f` returns
    /// (wrapped in its tracing span, as `serve` spawns it), without
    /// calling `f`.
    fn task_size<F, A1, A2, A3, A4, A5, A6, O>(_f: F) -> usize
    where
        F: FnOnce(A1, A2, A3, A4, A5, A6) -> O,
    {
        std::mem::size_of::<tracing::instrument::Instrumented<O>>() + MONOIO_TASK_OVERHEAD
    }

    /// [`task_size`] for a function of five arguments.
    fn task_size5<F, A1, A2, A3, A4, A5, O>(_f: F) -> usize
    where
        F: FnOnce(A1, A2, A3, A4, A5) -> O,
    {
        std::mem::size_of::<tracing::instrument::Instrumented<O>>() + MONOIO_TASK_OVERHEAD
    }

    /// The task of a logged-in session is the largest part of what an
    /// idle session costs (PERF.md, "Idle sessions"): it went from 1,016 to 1,336
    /// bytes unnoticed (mimalloc's 1,536-byte class: +0.5 KiB per idle
    /// session) when the relay gained its backend-closed callback, stall
    /// timeout and session-end facts, because async fns keep a second copy
    /// of every argument. This pins it below the class it fits in now.
    /// The same for a session that may move live (issue 12): its relay
    /// holds the tracker and the handover's state, so its class is larger
    /// (2,048 bytes; it was 2,584 bytes, in the 3,072-byte class, while
    /// the relay kept a second copy of the login and the connection).
    #[test]
    fn an_idle_live_session_task_fits_in_2048_bytes() {
        const LIVE_TASK_CLASS: usize = 2048;
        let plain = task_size5(relayed_live::<TcpStream>);
        let tls = task_size5(relayed_live::<tls::TlsStream>);
        assert!(
            plain <= LIVE_TASK_CLASS && tls <= LIVE_TASK_CLASS,
            "a live-capable session's task is {plain} bytes plain, {tls} TLS, more than \
             {LIVE_TASK_CLASS}: every idle session pays for it (PERF.md, Live IMAP moves)"
        );
    }

    #[test]
    fn an_idle_session_task_fits_in_896_bytes() {
        let plain = task_size(relayed::<TcpStream>);
        let tls = task_size(relayed::<tls::TlsStream>);
        assert!(
            plain <= TASK_CLASS,
            "a plain session's task is {plain} bytes, more than {TASK_CLASS}: \
             every idle session pays for it (PERF.md, Idle sessions)"
        );
        assert!(
            tls <= TASK_CLASS,
            "a TLS session's task is {tls} bytes, more than {TASK_CLASS}: \
             every idle session pays for it (PERF.md, Idle sessions)"
        );
    }
}
