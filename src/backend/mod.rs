//! Connections to backends: connect, forward the client's address, log in.
//!
//! [`connect`] opens a TCP connection within the backend's
//! `connect_timeout` and, with `forward = "proxy"`, starts it with a PROXY
//! v2 header; each protocol's module then replays the client's credentials.

use std::io;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::backend::client_info::ClientInfo;
use crate::config::{Forward, Protocol};
use crate::io::write_bytes;
use crate::proto::proxy_v2;
use crate::route::backends::Backend;

pub mod client_info;
pub mod greeting;
pub mod imap;
pub mod imap_reconcile;
pub mod imap_resume;
pub mod lmtp;
pub mod pop3;
pub mod sasl_relay;
pub mod sieve;

/// Hop count sent with Dovecot's XCLIENT (POP3, LMTP, ManageSieve): how
/// many more proxies may forward it.
pub const XCLIENT_TTL: u8 = 5;

/// Reads one line of a backend's answer; an I/O failure is
/// [`BackendError::Io`].
pub async fn read_line(
    lines: &mut crate::proto::lines::LineReader,
    stream: &mut TcpStream,
) -> Result<Vec<u8>, BackendError> {
    lines
        .read_line(stream, MAX_BACKEND_LINE)
        .await
        .map_err(BackendError::Io)
}

/// How a login dialogue ended when the backend gave its final answer.
pub enum Answer {
    /// Accepted; the bytes the backend sent past its positive answer.
    Accepted(Vec<u8>),
    /// Refused; the backend's answer, not yet sent to the client (the
    /// session delays it, `limits.auth_failure_delay`).
    Refused(Vec<u8>),
}

/// Turns a protocol's login dialogue, run under [`LOGIN_TIMEOUT`], into a
/// [`Login`].
pub fn login_outcome(
    stream: TcpStream,
    dialogue: Result<Result<Answer, BackendError>, monoio::time::error::Elapsed>,
) -> Result<Login, BackendError> {
    match dialogue {
        Ok(Ok(Answer::Accepted(to_client))) => Ok(Login::Accepted { stream, to_client }),
        Ok(Ok(Answer::Refused(answer))) => Ok(Login::Rejected {
            temporary: is_temporary_refusal(&answer),
            answer,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BackendError::Timeout),
    }
}

/// Reads a backend's greeting line within `limit`; any failure is a
/// [`BackendError::Greeting`].
pub async fn read_greeting(
    stream: &mut TcpStream,
    lines: &mut crate::proto::lines::LineReader,
    limit: Duration,
) -> Result<Vec<u8>, BackendError> {
    match monoio::time::timeout(limit, lines.read_line(stream, MAX_BACKEND_LINE)).await {
        Ok(Ok(line)) => Ok(line),
        Ok(Err(e)) => Err(BackendError::Greeting(e.to_string())),
        Err(_) => Err(BackendError::Greeting(format!("none within {limit:?}"))),
    }
}

/// How long a backend may take to greet and to answer a login. Dovecot
/// delays failed logins (`auth_failure_delay`, 2 s by default), so this is
/// generous; a backend that is merely slow is not a dead one.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest line accepted from a backend before login completes.
pub const MAX_BACKEND_LINE: usize = 64 * 1024;

/// How a backend login ended (every protocol).
pub enum Login {
    /// The backend accepted: relay from here on. `to_client` holds bytes
    /// the backend sent after its positive answer.
    Accepted {
        /// The logged-in backend connection.
        stream: TcpStream,
        /// Backend bytes read past the positive answer, for the client.
        to_client: Vec<u8>,
    },
    /// The backend refused; `answer` is its reply, word for word, for the
    /// session to relay to the client.
    Rejected {
        /// The backend's refusal, lines with CRLF.
        answer: Vec<u8>,
        /// The refusal says "try again later" ([`is_temporary_refusal`]):
        /// the backend's trouble, not a wrong credential.
        temporary: bool,
    },
}

/// Whether a backend's refusal of a login is a temporary failure of the
/// backend rather than a refused credential: its final line carries IMAP
/// `[UNAVAILABLE]`, `[SERVERBUG]` or `[INUSE]` (RFC 5530), POP3
/// `[SYS/TEMP]` or `[IN-USE]` (RFC 3206), or ManageSieve `(TRYLATER)`
/// (RFC 5804) right after its status word. Such a refusal is relayed as
/// it is but does not count as a failed login of the client's address.
pub fn is_temporary_refusal(answer: &[u8]) -> bool {
    const TEMPORARY: [&[u8]; 6] = [
        b"[UNAVAILABLE]",
        b"[SERVERBUG]",
        b"[INUSE]",
        b"[SYS/TEMP]",
        b"[IN-USE]",
        b"(TRYLATER)",
    ];
    let last = answer
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .rfind(|l| !l.is_empty());
    let Some(line) = last else { return false };
    // IMAP: `tag NO [CODE] text`; POP3: `-ERR [CODE] text`; ManageSieve:
    // `NO (CODE) "text"`. The code follows the status word.
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let status_then_code = match words.next() {
        Some(b"-ERR") | Some(b"NO") => words.next(),
        Some(_) => match words.next() {
            Some(w) if w.eq_ignore_ascii_case(b"NO") || w.eq_ignore_ascii_case(b"BAD") => {
                words.next()
            }
            _ => None,
        },
        None => None,
    };
    status_then_code.is_some_and(|code| {
        TEMPORARY
            .iter()
            .any(|t| code.len() >= t.len() && code[..t.len()].eq_ignore_ascii_case(t))
    })
}

#[cfg(test)]
mod refusal_tests {
    use super::is_temporary_refusal;

    #[test]
    fn temporary_refusals_are_told_from_refused_credentials() {
        for temporary in [
            &b"a1 NO [UNAVAILABLE] Internal error occurred.\r\n"[..],
            b"a1 NO [SERVERBUG] Internal error\r\n",
            b"x no [inuse] Mailbox in use\r\n",
            b"-ERR [SYS/TEMP] Try again later\r\n",
            b"-ERR [IN-USE] Mailbox locked\r\n",
            b"NO (TRYLATER) \"Internal error\"\r\n",
            b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\na1 NO [UNAVAILABLE] Try later\r\n",
        ] {
            assert!(
                is_temporary_refusal(temporary),
                "{:?}",
                String::from_utf8_lossy(temporary)
            );
        }
        for refused in [
            &b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"[..],
            b"a1 NO [AUTHORIZATIONFAILED] Authorization failed\r\n",
            b"a1 NO Login failed: [UNAVAILABLE] in the text\r\n",
            b"-ERR [AUTH] Authentication failed.\r\n",
            b"-ERR Authentication failed.\r\n",
            b"NO \"Authentication failed.\"\r\n",
            b"",
        ] {
            assert!(
                !is_temporary_refusal(refused),
                "{:?}",
                String::from_utf8_lossy(refused)
            );
        }
    }
}

/// Why a backend could not take a session.
#[derive(Debug)]
pub enum BackendError {
    /// The TCP connection failed (refused, unreachable).
    Connect(io::Error),
    /// No connection within `connect_timeout`.
    ConnectTimeout(Duration),
    /// The connection opened but no proper greeting came within
    /// `connect_timeout` (a backend that is starting, stopping or stuck).
    Greeting(String),
    /// The backend greeted with a refusal for load (its process or
    /// connection limit): alive, but not taking this session.
    Busy(String),
    /// The backend connection broke during login before any of its answer
    /// reached the client (the backend crashed mid-login): safe to retry.
    Lost(io::Error),
    /// The backend stopped answering during login.
    Timeout,
    /// The connection failed after it was established.
    Io(io::Error),
    /// The backend said something the director did not expect.
    Protocol(String),
    /// The client left (or ran into a pre-login bound) in the middle of a
    /// relayed SASL exchange; the session has said its goodbye.
    ClientLeft,
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Connect(e) => write!(f, "connect failed: {e}"),
            BackendError::ConnectTimeout(d) => write!(f, "no connection within {d:?}"),
            BackendError::Greeting(m) => write!(f, "no greeting: {m}"),
            BackendError::Busy(m) => write!(f, "refused for load: {m}"),
            BackendError::Lost(e) => write!(f, "connection lost during login: {e}"),
            BackendError::Timeout => write!(f, "no answer within {LOGIN_TIMEOUT:?}"),
            BackendError::Io(e) => write!(f, "connection failed: {e}"),
            BackendError::Protocol(m) => write!(f, "unexpected answer: {m}"),
            BackendError::ClientLeft => f.write_str("the client left during the SASL exchange"),
        }
    }
}

impl std::error::Error for BackendError {}

impl BackendError {
    /// True when the backend refused the session for load: the login may
    /// go elsewhere, but it is no health failure.
    pub fn is_busy(&self) -> bool {
        matches!(self, BackendError::Busy(_))
    }

    /// True when the failure says the backend itself is unreachable (as
    /// opposed to one session going wrong) and nothing reached the client
    /// yet: what passive health checks count, and when a login may be
    /// retried elsewhere.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            BackendError::Connect(_)
                | BackendError::ConnectTimeout(_)
                | BackendError::Greeting(_)
                | BackendError::Lost(_)
        )
    }
}

/// Connects to `backend` for `protocol`, sending a PROXY v2 header first
/// when the backend is configured with `forward = "proxy"`.
pub async fn connect(
    backend: &Backend,
    protocol: Protocol,
    client: &ClientInfo,
) -> Result<TcpStream, BackendError> {
    let addr = backend.addr(protocol);
    let stream =
        match monoio::time::timeout(backend.connect_timeout, TcpStream::connect_addr(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(BackendError::Connect(e)),
            Err(_) => return Err(BackendError::ConnectTimeout(backend.connect_timeout)),
        };
    let _ = stream.set_nodelay(true);
    let mut stream = stream;
    if backend.forward == Forward::Proxy {
        let header = proxy_v2::encode(client.peer, client.local);
        write_bytes(&mut stream, &header)
            .await
            .map_err(BackendError::Io)?;
    }
    Ok(stream)
}
