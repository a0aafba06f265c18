//! Logging a client in on an IMAP backend.
//!
//! The director connects, reads the greeting, forwards the client's address
//! with Dovecot's ID extension (`forward = "id"`), then replays the client's
//! credentials as `AUTHENTICATE PLAIN` under the client's own tag. Whatever
//! the backend answers to that command — untagged lines and the tagged
//! OK/NO/BAD — goes to the client word for word, so the backend, not the
//! director, decides whether the password is right. ID and AUTHENTICATE go
//! out in one write when the backend announces SASL-IR, costing one round
//! trip after the greeting.
//!
//! A relayed mechanism (OAUTHBEARER, XOAUTH2, SCRAM) goes the same way with
//! the client's own first message; each later `+` challenge of the backend
//! is relayed to the client and the client's answer (`*` included) to the
//! backend, until the tagged answer ([`crate::backend::sasl_relay`]).

use monoio::net::TcpStream;

use crate::backend::client_info::ClientInfo;
use crate::backend::greeting::{classify, shown, GreetingKind};
use crate::backend::sasl_relay::{Auth, SaslClient};
use crate::backend::{
    connect, login_outcome, read_greeting, Answer, BackendError, LOGIN_TIMEOUT, MAX_BACKEND_LINE,
};
use crate::config::{Forward, Protocol};
use crate::io::write_bytes;
use crate::proto::imap::quote::{write_string, LiteralStyle};
use crate::proto::lines::LineReader;
use crate::proto::sasl::encode_plain;
use crate::route::backends::Backend;

/// The ID fields a client sent before login, kept to forward.
pub type IdFields = Vec<(Vec<u8>, Option<Vec<u8>>)>;

pub use super::Login;

/// The tag of the director's own ID command; never the client's tag.
fn id_tag(client_tag: &str) -> &'static str {
    if client_tag == "mpid" {
        "mpid2"
    } else {
        "mpid"
    }
}

/// The ID command that forwards the client's address and its own fields.
pub fn id_command(tag: &str, client: &ClientInfo, client_fields: &IdFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(b" ID (");
    let ours = [
        ("x-originating-ip", client.peer.ip().to_string()),
        ("x-originating-port", client.peer.port().to_string()),
        ("x-connected-ip", client.local.ip().to_string()),
        ("x-connected-port", client.local.port().to_string()),
        ("x-session-id", client.session_id.clone()),
    ];
    let mut first = true;
    let mut push = |out: &mut Vec<u8>, k: &[u8], v: Option<&[u8]>| {
        if !first {
            out.push(b' ');
        }
        first = false;
        // Strings that cannot be quoted go as LITERAL+ literals, which
        // need no round trip (Dovecot announces LITERAL+).
        write_string(out, k, LiteralStyle::NonSync);
        out.push(b' ');
        match v {
            Some(v) => write_string(out, v, LiteralStyle::NonSync),
            None => out.extend_from_slice(b"NIL"),
        }
    };
    for (k, v) in &ours {
        push(&mut out, k.as_bytes(), Some(v.as_bytes()));
    }
    for (k, v) in client_fields {
        // The client may not speak for the director's own fields.
        if k.len() >= 2 && k[..2].eq_ignore_ascii_case(b"x-") {
            continue;
        }
        push(&mut out, k, v.as_deref());
    }
    out.extend_from_slice(b")\r\n");
    out
}

/// Whether a greeting line's CAPABILITY code lists `cap`.
fn greeting_has(greeting: &[u8], cap: &str) -> bool {
    greeting
        .split(|&b| b == b' ' || b == b']' || b == b'[')
        .any(|w| w.eq_ignore_ascii_case(cap.as_bytes()))
}

/// The status word of a tagged line `TAG STATUS ...`, if it is tagged `tag`.
fn tagged_status<'a>(line: &'a [u8], tag: &str) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(tag.as_bytes())?.strip_prefix(b" ")?;
    Some(rest.split(|&b| b == b' ').next().unwrap_or(rest))
}

/// Logs the client in on `backend` with `auth`, for a client whose command
/// had tag `client_tag`, relaying the backend's positive answer (and, for
/// a relayed mechanism, its challenges) to `client`; a refusal comes back
/// in [`crate::backend::Login::Rejected`], for the session to delay.
pub async fn login<W: SaslClient>(
    backend: &Backend,
    auth: Auth<'_>,
    client_tag: &str,
    info: &ClientInfo,
    client_fields: &IdFields,
    client: &mut W,
) -> Result<Login, BackendError> {
    let mut stream = connect(backend, Protocol::Imap, info).await?;
    let dialogue = monoio::time::timeout(
        LOGIN_TIMEOUT,
        converse(
            &mut stream,
            backend,
            auth,
            client_tag,
            info,
            client_fields,
            client,
        ),
    )
    .await;
    login_outcome(stream, dialogue)
}

/// The dialogue after connect. `Some(leftover)` on OK, `None` on NO/BAD.
async fn converse<W: SaslClient>(
    stream: &mut TcpStream,
    backend: &Backend,
    auth: Auth<'_>,
    client_tag: &str,
    info: &ClientInfo,
    client_fields: &IdFields,
    client: &mut W,
) -> Result<Answer, BackendError> {
    let mut lines = LineReader::new();
    let greeting = read_greeting(stream, &mut lines, backend.connect_timeout).await?;
    match classify(Protocol::Imap, &greeting) {
        Some(GreetingKind::Ready) => {}
        Some(GreetingKind::Refused) => return Err(BackendError::Busy(shown(&greeting))),
        _ => return Err(BackendError::Greeting(shown(&greeting))),
    }
    let sasl_ir = greeting_has(&greeting, "SASL-IR");
    let (mechanism, first) = match auth {
        Auth::Plain(creds) => (
            "PLAIN",
            zeroize::Zeroizing::new(encode_plain(creds).as_bytes().to_vec()),
        ),
        Auth::Relayed(r) => (r.mechanism.name(), r.initial.clone()),
    };
    let relay_challenges = matches!(auth, Auth::Relayed(_));

    let mut out = Vec::with_capacity(512);
    let id_tag = id_tag(client_tag);
    let send_id = backend.forward == Forward::Id;
    if send_id {
        out.extend_from_slice(&id_command(id_tag, info, client_fields));
    }
    let mut out = zeroize::Zeroizing::new(out);
    out.extend_from_slice(client_tag.as_bytes());
    out.extend_from_slice(b" AUTHENTICATE ");
    out.extend_from_slice(mechanism.as_bytes());
    if sasl_ir {
        out.push(b' ');
        out.extend_from_slice(&first);
    }
    out.extend_from_slice(b"\r\n");
    write_bytes(stream, &out)
        .await
        .map_err(BackendError::Lost)?;
    drop(out);

    if send_id {
        // Skip the answer to our ID: `* ID (...)` and the tagged reply,
        // whatever it says (a backend without ID still serves the user).
        loop {
            let line = lines
                .read_line(stream, MAX_BACKEND_LINE)
                .await
                .map_err(BackendError::Lost)?;
            if tagged_status(&line, id_tag).is_some() {
                break;
            }
        }
    }
    let mut sent_response = sasl_ir;
    // Until something reached the client, a lost backend is retried elsewhere.
    let mut relayed_any = false;
    loop {
        let mut line = lines
            .read_line(stream, MAX_BACKEND_LINE)
            .await
            .map_err(|e| {
                if relayed_any {
                    BackendError::Io(e)
                } else {
                    BackendError::Lost(e)
                }
            })?;
        if line.starts_with(b"+") {
            let mut resp = if !sent_response {
                // The empty challenge of a backend without SASL-IR: the
                // first message is ours to send, the client never sees it.
                sent_response = true;
                first.clone()
            } else if relay_challenges {
                relayed_any = true;
                line.extend_from_slice(b"\r\n");
                write_bytes(client, &line).await.map_err(BackendError::Io)?;
                client
                    .sasl_response()
                    .await
                    .map_err(|_| BackendError::ClientLeft)?
            } else {
                return Err(BackendError::Protocol(
                    "second SASL challenge for PLAIN".into(),
                ));
            };
            resp.extend_from_slice(b"\r\n");
            write_bytes(stream, &resp).await.map_err(|e| {
                if relayed_any {
                    BackendError::Io(e)
                } else {
                    BackendError::Lost(e)
                }
            })?;
            continue;
        }
        let status = tagged_status(&line, client_tag).map(|s| s.to_ascii_uppercase());
        let mut relayed = line;
        relayed.extend_from_slice(b"\r\n");
        if let Some(status) = status {
            if status == b"OK" {
                write_bytes(client, &relayed)
                    .await
                    .map_err(BackendError::Io)?;
                return Ok(Answer::Accepted(lines.into_leftover()));
            }
            // NO or BAD: the client hears the backend's own words.
            return Ok(Answer::Refused(relayed));
        }
        // Untagged lines of the login answer (e.g. * CAPABILITY) go through.
        relayed_any = true;
        write_bytes(client, &relayed)
            .await
            .map_err(BackendError::Io)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ClientInfo {
        ClientInfo {
            peer: "192.0.2.1:50000".parse().unwrap(),
            local: "127.0.0.1:993".parse().unwrap(),
            session_id: "abc".into(),
            tls: true,
        }
    }

    #[test]
    fn id_command_forwards_address_and_client_fields() {
        let fields: IdFields = vec![
            (b"name".to_vec(), Some(b"Thunderbird".to_vec())),
            (b"version".to_vec(), None),
            (b"x-originating-ip".to_vec(), Some(b"6.6.6.6".to_vec())),
        ];
        let cmd = String::from_utf8(id_command("mpid", &info(), &fields)).unwrap();
        assert_eq!(
            cmd,
            "mpid ID (\"x-originating-ip\" \"192.0.2.1\" \"x-originating-port\" \"50000\" \
             \"x-connected-ip\" \"127.0.0.1\" \"x-connected-port\" \"993\" \
             \"x-session-id\" \"abc\" \"name\" \"Thunderbird\" \"version\" NIL)\r\n"
        );
    }

    #[test]
    fn id_tag_never_equals_client_tag() {
        assert_ne!(id_tag("mpid"), "mpid");
        assert_eq!(id_tag("a1"), "mpid");
    }

    #[test]
    fn reads_capabilities_and_tagged_status() {
        let g = b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID] ready";
        assert!(greeting_has(g, "SASL-IR"));
        assert!(greeting_has(g, "sasl-ir"));
        assert!(!greeting_has(g, "STARTTLS"));
        assert_eq!(
            tagged_status(b"a1 OK [CAPABILITY X] Logged in", "a1"),
            Some(&b"OK"[..])
        );
        assert_eq!(tagged_status(b"a10 OK", "a1"), None);
        assert_eq!(tagged_status(b"* OK", "a1"), None);
    }
}
