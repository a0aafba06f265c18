//! The dev LMTP server (RFC 2033, with PIPELINING, 8BITMIME, CHUNKING,
//! ENHANCEDSTATUSCODES, SMTPUTF8 and Dovecot's XCLIENT): every recipient
//! exists; the message goes to each recipient's INBOX in the shared
//! [`Store`] and each gets its own `250` after the message. Messages are
//! bounded by [`MAX_MESSAGE`].

use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::dev::protocols::Liveness;
use crate::dev::registry::LiveSession;
use crate::dev::store::{Store, INBOX};
use crate::io::write_bytes;
use crate::proto::client_input::ClientInput;
use crate::proto::smtp::{
    mailbox_user, parse_bdat, parse_command, parse_path, strip_keyword, DotScanner,
};

/// The largest message the dev server takes.
pub const MAX_MESSAGE: usize = 64 << 20;

const IDLE: Duration = Duration::from_secs(600);

const LHLO_REPLY: &[u8] = b"250-dev\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250 XCLIENT ADDR PORT SESSION TTL\r\n";

/// Removes the dot-stuffing of a DATA body (CRLF line ends) and its final
/// `.` line.
fn unstuff(body: &[u8]) -> Vec<u8> {
    let body = body.strip_suffix(b".\r\n").unwrap_or(body);
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Serves one LMTP connection; each accepted recipient is live in
/// `liveness` from its RCPT until its delivery (or RSET, or the end of the
/// connection).
pub(crate) async fn serve(mut conn: TcpStream, store: Store, liveness: Liveness) {
    let mut input = ClientInput::new();
    if write_bytes(&mut conn, b"220 dev LMTP ready\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut mail = false;
    let mut rcpts: Vec<String> = Vec::new();
    let mut live: Vec<LiveSession> = Vec::new();
    let mut chunks: Vec<u8> = Vec::new();
    loop {
        let deadline = Instant::now() + IDLE;
        let Ok(line) = input.line(&mut conn, 65536, deadline).await else {
            return;
        };
        let Some(cmd) = parse_command(&line) else {
            if write_bytes(&mut conn, b"500 5.5.2 Unknown command\r\n")
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let reply: Vec<u8> = match cmd.verb.as_str() {
            "LHLO" => LHLO_REPLY.to_vec(),
            "XCLIENT" => b"220 dev LMTP ready\r\n".to_vec(),
            "NOOP" => b"250 2.0.0 OK\r\n".to_vec(),
            "RSET" => {
                mail = false;
                rcpts.clear();
                live.clear();
                chunks.clear();
                b"250 2.0.0 OK\r\n".to_vec()
            }
            "QUIT" => {
                let _ = write_bytes(&mut conn, b"221 2.0.0 Bye\r\n").await;
                return;
            }
            "MAIL" => {
                mail = true;
                b"250 2.1.0 OK\r\n".to_vec()
            }
            "RCPT" if mail => match strip_keyword(cmd.rest, b"TO:")
                .and_then(|a| parse_path(a).ok())
                .and_then(|p| mailbox_user(p.inner))
            {
                Some(user) => {
                    live.extend(liveness.login(&user));
                    rcpts.push(user);
                    b"250 2.1.5 OK\r\n".to_vec()
                }
                None => b"501 5.1.3 Bad address\r\n".to_vec(),
            },
            "DATA" if !rcpts.is_empty() => {
                if write_bytes(&mut conn, b"354 OK\r\n").await.is_err() {
                    return;
                }
                let mut scanner = DotScanner::new();
                let mut body = Vec::new();
                loop {
                    if input.buffered().is_empty() && input.fill(&mut conn, deadline).await.is_err()
                    {
                        return;
                    }
                    let n = input.buffered().len();
                    let end = scanner.feed(input.buffered(), &mut body);
                    input.consume(end.unwrap_or(n));
                    if body.len() > MAX_MESSAGE {
                        return;
                    }
                    if end.is_some() {
                        break;
                    }
                }
                live.clear();
                deliver(&store, &mut rcpts, &unstuff(&body))
            }
            "BDAT" if !rcpts.is_empty() => {
                let Some((size, last)) = parse_bdat(cmd.rest) else {
                    return;
                };
                if chunks.len() as u64 + size > MAX_MESSAGE as u64 {
                    return;
                }
                match input.exact(&mut conn, size as usize, deadline).await {
                    Ok(bytes) => chunks.extend_from_slice(&bytes),
                    Err(_) => return,
                }
                if last {
                    let body = std::mem::take(&mut chunks);
                    live.clear();
                    deliver(&store, &mut rcpts, &body)
                } else {
                    format!("250 2.0.0 {size} octets\r\n").into_bytes()
                }
            }
            "RCPT" | "DATA" | "BDAT" => b"503 5.5.1 Bad sequence of commands\r\n".to_vec(),
            _ => b"500 5.5.2 Unknown command\r\n".to_vec(),
        };
        if cmd.verb == "DATA" || (cmd.verb == "BDAT" && chunks.is_empty()) {
            mail = false;
        }
        if write_bytes(&mut conn, &reply).await.is_err() {
            return;
        }
    }
}

/// Stores `body` for every recipient and returns their replies.
fn deliver(store: &Store, rcpts: &mut Vec<String>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for user in rcpts.drain(..) {
        match store.deliver(&user, INBOX, body.to_vec()) {
            Ok(_) => out.extend_from_slice(format!("250 2.0.0 <{user}> Saved\r\n").as_bytes()),
            Err(e) => out.extend_from_slice(format!("451 4.3.0 <{user}> {e:?}\r\n").as_bytes()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstuffs_dot_lines() {
        assert_eq!(unstuff(b"a\r\n..b\r\n.\r\n"), b"a\r\n.b\r\n");
    }
}
