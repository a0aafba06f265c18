//! The life of one client connection, from accept to close.
//!
//! `serve` sets up the session's log span (session id, client, and once
//! known the user key and backend, on every line), runs TLS and the
//! protocol's pre-login phase, relays after login, releases the user's
//! session count and writes one closing line with bytes each way and
//! duration.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;
use tracing::{debug, info, Instrument};

use crate::config::{Listen, Protocol, TlsMode};
use crate::io::Connection;
use crate::relay::{relay, RelayEnd, RelayStats};
use crate::runtime::core::{Core, SessionGuard};
use crate::runtime::sessions::KickReason;
use crate::session::imap::{ImapPolicy, LoggedIn, Outcome, Prelogin};
use crate::session::{new_session_id, ClientInfo};
use crate::tls;

/// Serves one accepted connection to its end.
pub async fn serve(core: Rc<Core>, listen: Rc<Listen>, tcp: TcpStream, peer: SocketAddr) {
    let _guard = SessionGuard::new(core.clone());
    let session_id = new_session_id(core.id);
    let span = tracing::info_span!(
        "session",
        sid = %session_id,
        proto = listen.protocol.as_str(),
        client = %peer,
        user = tracing::field::Empty,
        backend = tracing::field::Empty,
    );
    async move {
        let started = Instant::now();
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(listen.addr);
        let client = ClientInfo {
            peer,
            local,
            session_id,
            tls: false,
        };
        let (end, stats) = match listen.protocol {
            Protocol::Imap => imap(&core, &listen, tcp, client).await,
            other => {
                debug!(protocol = other.as_str(), "protocol not served yet");
                (None, RelayStats::default())
            }
        };
        info!(
            bytes_up = stats.up,
            bytes_down = stats.down,
            duration_ms = started.elapsed().as_millis() as u64,
            end = end.map_or("prelogin", end_name),
            "session closed"
        );
    }
    .instrument(span)
    .await
}

fn end_name(end: RelayEnd) -> &'static str {
    match end {
        RelayEnd::Client => "client",
        RelayEnd::Backend => "backend",
        RelayEnd::Error => "error",
        RelayEnd::Stopped => "stopped",
    }
}

/// A client connection that logged in, ready to relay.
enum Ready {
    /// Plaintext client.
    Plain(TcpStream, LoggedIn),
    /// TLS client (implicit or after STARTTLS).
    Tls(tls::TlsStream, LoggedIn),
}

/// An IMAP session: TLS as the listener says, pre-login, then the relay.
///
/// Pre-login and the relay each run in their own heap allocation: the
/// pre-login state machine is large (parsers, the backend login) but short
/// lived, and is freed before the relay starts, so an idle session keeps
/// only the relay's state.
async fn imap(
    core: &Rc<Core>,
    listen: &Listen,
    tcp: TcpStream,
    client: ClientInfo,
) -> (Option<RelayEnd>, RelayStats) {
    match Box::pin(imap_prelogin(core, listen, tcp, client)).await {
        Some(Ready::Plain(tcp, l)) => Box::pin(relay_session(core, tcp, l)).await,
        Some(Ready::Tls(tls, l)) => Box::pin(relay_session(core, tls, l)).await,
        None => (None, RelayStats::default()),
    }
}

/// TLS and the IMAP dialogue up to a successful login.
async fn imap_prelogin(
    core: &Rc<Core>,
    listen: &Listen,
    mut tcp: TcpStream,
    client: ClientInfo,
) -> Option<Ready> {
    let policy = ImapPolicy {
        starttls: listen.tls == TlsMode::Starttls,
        plaintext_auth: listen.plaintext_auth,
    };
    let mut pre = Prelogin::new(core, policy, client);
    if listen.tls == TlsMode::Implicit {
        let mut tls = handshake(core, tcp).await?;
        pre.upgraded();
        if !pre.greet(&mut tls).await {
            return None;
        }
        return match pre.run(&mut tls).await {
            Outcome::LoggedIn(l) => Some(Ready::Tls(tls, l)),
            _ => None,
        };
    }
    if !pre.greet(&mut tcp).await {
        return None;
    }
    match pre.run(&mut tcp).await {
        Outcome::LoggedIn(l) => Some(Ready::Plain(tcp, l)),
        Outcome::StartTls => {
            let mut tls = handshake(core, tcp).await?;
            pre.upgraded();
            match pre.run(&mut tls).await {
                Outcome::LoggedIn(l) => Some(Ready::Tls(tls, l)),
                _ => None,
            }
        }
        Outcome::Closed => None,
    }
}

/// The server side of a TLS handshake, bounded by `server.handshake_timeout`.
async fn handshake(core: &Core, tcp: TcpStream) -> Option<tls::TlsStream> {
    let config = core.shared.tls.as_ref()?;
    let result = tls::accept(tcp, config, core.shared.config.server.handshake_timeout).await;
    core.counters.tls_handshake(result.is_ok());
    match result {
        Ok(s) => Some(s),
        Err(e) => {
            info!(error = %e, "TLS handshake failed");
            None
        }
    }
}

/// What an IMAP client is told when the director ends its session.
fn imap_goodbye(reason: KickReason) -> Vec<u8> {
    let text: &[u8] = match reason {
        KickReason::BackendDown => {
            b"* BYE [UNAVAILABLE] Mail server unavailable, please reconnect.\r\n"
        }
        KickReason::Admin => b"* BYE Session closed by the administrator, please reconnect.\r\n",
        KickReason::Shutdown => {
            b"* BYE [UNAVAILABLE] Director shutting down, please reconnect.\r\n"
        }
    };
    text.to_vec()
}

/// Relays a logged-in session, registered so it can be kicked, and
/// releases its count afterwards.
async fn relay_session<C: Connection>(
    core: &Core,
    client: C,
    l: LoggedIn,
) -> (Option<RelayEnd>, RelayStats) {
    let (registration, kick) = core.sessions.register(&l.key, l.backend_id, Protocol::Imap);
    let stop = async move {
        let reason = kick.kicked().await;
        info!(?reason, "closing session");
        imap_goodbye(reason)
    };
    let splice = core.shared.config.server.splice;
    let (end, stats) = relay(client, l.backend, l.to_backend, l.to_client, stop, splice).await;
    drop(registration);
    core.router.release(&l.key, l.backend_id);
    (Some(end), stats)
}
