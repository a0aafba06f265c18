//! Logging a client in on a ManageSieve backend (RFC 5804).
//!
//! The director connects and reads the capability greeting up to its `OK`;
//! with `forward = "id"` and a backend that lists `XCLIENT` (Pigeonhole's
//! managesieve-login does for `login_trusted_networks`) it forwards the
//! client's address with `XCLIENT ADDR= PORT= SESSION= TTL=`; then it
//! replays the credentials as `AUTHENTICATE "PLAIN" "<base64>"`. The
//! backend's answer — `OK`, `NO` or `BYE` with their codes — reaches the
//! client word for word. A relayed mechanism (OAUTHBEARER, XOAUTH2, SCRAM)
//! goes as `AUTHENTICATE "MECH" "<client's first message>"`; each quoted
//! challenge is relayed to the client and its answer back as a string,
//! until the status line ([`crate::backend::sasl_relay`]).

use monoio::net::TcpStream;

use crate::backend::client_info::ClientInfo;
use crate::backend::greeting::{classify, shown, GreetingKind};
use crate::backend::sasl_relay::{Auth, SaslClient};
use crate::backend::{
    connect, login_outcome, read_line, Answer, BackendError, LOGIN_TIMEOUT, XCLIENT_TTL,
};
use crate::config::{Forward, Protocol};
use crate::io::write_bytes;
use crate::proto::lines::LineReader;
use crate::proto::sasl::encode_plain;
use crate::proto::sieve::{quote, response_status, Status};
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
    let mut stream = connect(backend, Protocol::Sieve, info).await?;
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

/// Reads data lines up to a status line; returns the data lines and it.
async fn read_response(
    lines: &mut LineReader,
    stream: &mut TcpStream,
) -> Result<(Vec<Vec<u8>>, Vec<u8>, Status), BackendError> {
    let mut data = Vec::new();
    for _ in 0..1000 {
        let line = read_line(lines, stream).await?;
        if let Some(status) = response_status(&line) {
            return Ok((data, line, status));
        }
        data.push(line);
    }
    Err(BackendError::Protocol(
        "response of more than 1000 lines".into(),
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
    let greeting = monoio::time::timeout(greeting_limit, read_response(&mut lines, stream)).await;
    let caps = match greeting {
        Ok(Ok((caps, _, Status::Ok))) => caps,
        Ok(Ok((_, line, _))) => {
            return Err(match classify(Protocol::Sieve, &line) {
                Some(GreetingKind::Refused) => BackendError::Busy(shown(&line)),
                _ => BackendError::Greeting(shown(&line)),
            });
        }
        Ok(Err(e)) => return Err(BackendError::Greeting(e.to_string())),
        Err(_) => {
            return Err(BackendError::Greeting(format!(
                "none within {greeting_limit:?}"
            )))
        }
    };
    let xclient = caps.iter().any(|c| c.eq_ignore_ascii_case(b"\"XCLIENT\""));
    if forward_id && xclient {
        let cmd = format!(
            "XCLIENT ADDR={} PORT={} SESSION={} TTL={XCLIENT_TTL}\r\n",
            info.peer.ip(),
            info.peer.port(),
            info.session_id
        );
        write_bytes(stream, cmd.as_bytes())
            .await
            .map_err(BackendError::Io)?;
        // NO (an untrusted director) still serves the user.
        let _ = read_response(&mut lines, stream).await?;
    }
    let mut command = zeroize::Zeroizing::new(Vec::with_capacity(256));
    command.extend_from_slice(b"AUTHENTICATE ");
    match auth {
        Auth::Plain(creds) => {
            command.extend_from_slice(b"\"PLAIN\" \"");
            command.extend_from_slice(encode_plain(creds).as_bytes());
            command.push(b'"');
        }
        Auth::Relayed(r) => {
            command.push(b'"');
            command.extend_from_slice(r.mechanism.name().as_bytes());
            command.extend_from_slice(b"\" ");
            command.extend_from_slice(&quote(&r.initial));
        }
    }
    command.extend_from_slice(b"\r\n");
    write_bytes(stream, &command)
        .await
        .map_err(BackendError::Io)?;
    drop(command);
    let mut relayed = Vec::new();
    for _ in 0..1000 {
        let line = read_line(&mut lines, stream).await?;
        let status = response_status(&line);
        relayed.extend_from_slice(&line);
        relayed.extend_from_slice(b"\r\n");
        match status {
            Some(Status::Ok) => {
                write_bytes(client, &relayed)
                    .await
                    .map_err(BackendError::Io)?;
                return Ok(Answer::Accepted(lines.into_leftover()));
            }
            Some(_) => return Ok(Answer::Refused(relayed)),
            // A challenge: a quoted string (Pigeonhole's form; base64 is
            // always quotable).
            None if line.starts_with(b"\"") && matches!(auth, Auth::Relayed(_)) => {
                write_bytes(client, &std::mem::take(&mut relayed))
                    .await
                    .map_err(BackendError::Io)?;
                let response = client
                    .sasl_response()
                    .await
                    .map_err(|_| BackendError::ClientLeft)?;
                let mut answer = zeroize::Zeroizing::new(quote(&response));
                answer.extend_from_slice(b"\r\n");
                write_bytes(stream, &answer)
                    .await
                    .map_err(BackendError::Io)?;
            }
            None => {}
        }
    }
    Err(BackendError::Protocol(
        "response of more than 1000 lines".into(),
    ))
}
