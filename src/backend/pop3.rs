//! Logging a client in on a POP3 backend (RFC 1939, RFC 5034).
//!
//! The director connects, reads the `+OK` greeting, forwards the client's
//! address with Dovecot's `XCLIENT ADDR= PORT= SESSION= TTL=` when
//! `forward = "id"` (Dovecot honours it from `login_trusted_networks`; a
//! refusal is not fatal), then replays the credentials as `AUTH PLAIN` with
//! an initial response. The backend's answer — `+OK ...` or `-ERR [AUTH]
//! ...` — reaches the client word for word. A relayed mechanism
//! (OAUTHBEARER, XOAUTH2, SCRAM) goes as `AUTH MECH <client's first
//! message>`; each `+ ` challenge is relayed to the client and its answer
//! back, until `+OK` or `-ERR` ([`crate::backend::sasl_relay`]).

use monoio::net::TcpStream;

use crate::backend::client_info::ClientInfo;
use crate::backend::greeting::{classify, shown, GreetingKind};
use crate::backend::sasl_relay::{Auth, SaslClient};
use crate::backend::{
    connect, login_outcome, read_greeting, read_line, Answer, BackendError, LOGIN_TIMEOUT,
    XCLIENT_TTL,
};
use crate::config::{Forward, Protocol};
use crate::io::write_bytes;
use crate::proto::lines::LineReader;
use crate::proto::pop3::{reply_status, xclient_command, Reply};
use crate::proto::sasl::encode_plain;
use crate::route::backends::Backend;

pub use super::Login;

/// Logs the client in on `backend` with `auth`, relaying the backend's
/// positive answer (and a relayed mechanism's challenges) to `client`; a
/// refusal comes back in [`crate::backend::Login::Rejected`], for the
/// session to delay.
pub async fn login<W: SaslClient>(
    backend: &Backend,
    auth: Auth<'_>,
    info: &ClientInfo,
    client: &mut W,
) -> Result<Login, BackendError> {
    let mut stream = connect(backend, Protocol::Pop3, info).await?;
    let talk = converse(
        &mut stream,
        backend.forward == Forward::Id,
        backend.connect_timeout,
        auth,
        info,
        client,
    );
    let dialogue = monoio::time::timeout(LOGIN_TIMEOUT, talk).await;
    login_outcome(stream, dialogue)
}

fn unexpected(what: &str, line: &[u8]) -> BackendError {
    BackendError::Protocol(format!(
        "{what} {:?}",
        String::from_utf8_lossy(&line[..line.len().min(80)])
    ))
}

async fn converse<W: SaslClient>(
    stream: &mut TcpStream,
    forward_id: bool,
    greeting_limit: std::time::Duration,
    auth: Auth<'_>,
    info: &ClientInfo,
    client: &mut W,
) -> Result<Answer, BackendError> {
    let mut lines = LineReader::new();
    let greeting = read_greeting(stream, &mut lines, greeting_limit).await?;
    match classify(Protocol::Pop3, &greeting) {
        Some(GreetingKind::Ready) => {}
        Some(GreetingKind::Refused) => return Err(BackendError::Busy(shown(&greeting))),
        _ => return Err(BackendError::Greeting(shown(&greeting))),
    }
    if forward_id {
        let xclient = xclient_command(
            info.peer.ip(),
            info.peer.port(),
            &info.session_id,
            XCLIENT_TTL,
        );
        write_bytes(stream, xclient.as_bytes())
            .await
            .map_err(BackendError::Io)?;
        // `-ERR` (an untrusted director) still serves the user, without
        // the client's address.
        let answer = read_line(&mut lines, stream).await?;
        if reply_status(&answer).is_none() {
            return Err(unexpected("XCLIENT answer", &answer));
        }
    }
    let mut command = zeroize::Zeroizing::new(Vec::with_capacity(256));
    command.extend_from_slice(b"AUTH ");
    match auth {
        Auth::Plain(creds) => {
            command.extend_from_slice(b"PLAIN ");
            command.extend_from_slice(encode_plain(creds).as_bytes());
        }
        Auth::Relayed(r) => {
            command.extend_from_slice(r.mechanism.name().as_bytes());
            command.push(b' ');
            command.extend_from_slice(&r.initial);
        }
    }
    command.extend_from_slice(b"\r\n");
    write_bytes(stream, &command)
        .await
        .map_err(BackendError::Io)?;
    drop(command);
    loop {
        let answer = read_line(&mut lines, stream).await?;
        let status = reply_status(&answer);
        let mut relayed = answer;
        relayed.extend_from_slice(b"\r\n");
        match status {
            Some(Reply::Ok) => {
                write_bytes(client, &relayed)
                    .await
                    .map_err(BackendError::Io)?;
                return Ok(Answer::Accepted(lines.into_leftover()));
            }
            Some(Reply::Err) => return Ok(Answer::Refused(relayed)),
            Some(Reply::Continue) if matches!(auth, Auth::Relayed(_)) => {
                write_bytes(client, &relayed)
                    .await
                    .map_err(BackendError::Io)?;
                let mut response = client
                    .sasl_response()
                    .await
                    .map_err(|_| BackendError::ClientLeft)?;
                response.extend_from_slice(b"\r\n");
                write_bytes(stream, &response)
                    .await
                    .map_err(BackendError::Io)?;
            }
            _ => return Err(unexpected("AUTH answer", &relayed)),
        }
    }
}
