//! One LMTP transaction's connection to one backend (RFC 2033).
//!
//! The director opens it when the first recipient routed to that backend
//! arrives: greeting, `LHLO`, Dovecot's `XCLIENT` with the client's address
//! when `forward = "id"` and the backend offers it (after which the backend
//! greets again and wants a new `LHLO`). From there the session code sends
//! the client's `MAIL FROM`, RCPTs, DATA or BDAT chunks and reads the
//! backend's replies, each of which is relayed as it is. To a backend that
//! announces PIPELINING (RFC 2920) a group of commands goes out in one write
//! and the replies are read afterwards, in order; to one that does not, one
//! command at a time.

use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::backend::client_info::ClientInfo;
use crate::backend::{connect, BackendError, LOGIN_TIMEOUT, MAX_BACKEND_LINE, XCLIENT_TTL};
use crate::config::{Forward, Protocol};
use crate::io::WriteSide;
use crate::proto::lines::LineReader;
use crate::proto::smtp::{filter_mail_params, parse_reply_line, Reply};
use crate::route::backends::Backend;

/// The name the director gives in its LHLO.
pub const LHLO_NAME: &str = "mailpin";

/// How long a backend may take to answer a command or to take a write.
pub const COMMAND_TIMEOUT: Duration = LOGIN_TIMEOUT;

/// How long a backend may take to answer after the end of a message
/// (it writes the message to every recipient's mailbox, runs Sieve).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Most commands written to a backend before its replies are read, so the
/// replies waiting in the socket stay far below its buffer (RFC 2920 §3.1:
/// no deadlock of both sides writing).
const PIPELINE_GROUP: usize = 64;

/// A backend connection inside one LMTP transaction.
pub struct LmtpBackend {
    stream: TcpStream,
    lines: LineReader,
    /// The backend announced CHUNKING (BDAT) in its LHLO reply.
    pub chunking: bool,
    /// The backend announced PIPELINING in its LHLO reply.
    pub pipelining: bool,
    /// Its LHLO reply (capabilities).
    caps: Reply,
}

/// Connects, greets and forwards the client's address; the connection is
/// ready for a transaction (see [`LmtpBackend::mail_command`]).
pub async fn open(backend: &Backend, info: &ClientInfo) -> Result<LmtpBackend, BackendError> {
    let stream = connect(backend, Protocol::Lmtp, info).await?;
    let mut conn = LmtpBackend {
        stream,
        lines: LineReader::new(),
        chunking: false,
        pipelining: false,
        caps: Reply::new(250, ""),
    };
    let greeting = conn.reply(COMMAND_TIMEOUT).await?;
    if greeting.code != 220 {
        return Err(BackendError::Protocol(format!(
            "greeting {}",
            greeting.code
        )));
    }
    let mut caps = conn.lhlo().await?;
    if backend.forward == Forward::Id {
        if let Some(fields) = xclient_fields(&caps) {
            let cmd = xclient_command(&fields, info);
            let answer = conn.command(cmd.as_bytes()).await?;
            // 220: a fresh session that wants LHLO again. Anything else
            // means the backend would not take it; go on without.
            if answer.code == 220 {
                caps = conn.lhlo().await?;
            }
        }
    }
    conn.chunking = has_capability(&caps, "CHUNKING");
    conn.pipelining = has_capability(&caps, "PIPELINING");
    conn.caps = caps;
    Ok(conn)
}

/// The attributes a backend's `XCLIENT` capability line names.
fn xclient_fields(lhlo: &Reply) -> Option<Vec<String>> {
    lhlo.wire
        .split(|&b| b == b'\n')
        .filter_map(|l| l.get(4..))
        .map(|l| String::from_utf8_lossy(l).trim_end().to_ascii_uppercase())
        .find_map(|l| {
            let rest = l.strip_prefix("XCLIENT")?;
            Some(rest.split_whitespace().map(str::to_owned).collect())
        })
}

fn has_capability(lhlo: &Reply, cap: &str) -> bool {
    lhlo.wire
        .split(|&b| b == b'\n')
        .filter_map(|l| l.get(4..))
        .any(|l| {
            let word = l
                .split(|&b| b == b' ' || b == b'\r')
                .next()
                .unwrap_or_default();
            word.eq_ignore_ascii_case(cap.as_bytes())
        })
}

/// The XCLIENT command with the attributes the backend listed.
fn xclient_command(fields: &[String], info: &ClientInfo) -> String {
    let mut cmd = String::from("XCLIENT");
    for f in fields {
        match f.as_str() {
            "ADDR" => cmd.push_str(&format!(" ADDR={}", info.peer.ip())),
            "PORT" => cmd.push_str(&format!(" PORT={}", info.peer.port())),
            "SESSION" => cmd.push_str(&format!(" SESSION={}", info.session_id)),
            "TTL" => cmd.push_str(&format!(" TTL={XCLIENT_TTL}")),
            _ => {}
        }
    }
    cmd
}

impl LmtpBackend {
    /// The `MAIL FROM:` line that starts a transaction on this connection,
    /// made from the client's. The director announces SIZE, 8BITMIME and
    /// SMTPUTF8 itself; their parameters go on only to a backend that
    /// announced them too.
    pub fn mail_command(&self, mail_line: &[u8]) -> Vec<u8> {
        let caps = &self.caps;
        filter_mail_params(mail_line, |name| match name {
            "SIZE" => has_capability(caps, "SIZE"),
            "BODY" => has_capability(caps, "8BITMIME"),
            "SMTPUTF8" => has_capability(caps, "SMTPUTF8"),
            _ => true,
        })
        .unwrap_or_else(|| mail_line.to_vec())
    }

    /// Sends command lines (CRLF added) and reads one reply to each, in
    /// order: pipelined in groups if the backend announced PIPELINING, one
    /// at a time otherwise. Returns the replies read; an error ends the
    /// list early (the connection is then unusable) and comes with it.
    pub async fn commands(&mut self, lines: &[Vec<u8>]) -> (Vec<Reply>, Option<BackendError>) {
        let mut replies = Vec::with_capacity(lines.len());
        let group = if self.pipelining { PIPELINE_GROUP } else { 1 };
        for batch in lines.chunks(group) {
            let mut out = Vec::with_capacity(batch.iter().map(|l| l.len() + 2).sum());
            for line in batch {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            if let (Err(e), _) = self.send(out).await {
                return (replies, Some(e));
            }
            for _ in batch {
                match self.reply(COMMAND_TIMEOUT).await {
                    Ok(r) => replies.push(r),
                    Err(e) => return (replies, Some(e)),
                }
            }
        }
        (replies, None)
    }

    async fn lhlo(&mut self) -> Result<Reply, BackendError> {
        let reply = self.command(format!("LHLO {LHLO_NAME}").as_bytes()).await?;
        if !reply.is_positive() {
            return Err(BackendError::Protocol(format!(
                "LHLO refused: {}",
                reply.code
            )));
        }
        Ok(reply)
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, BackendError> {
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        let (res, _) = self.send(out).await;
        res?;
        self.reply(COMMAND_TIMEOUT).await
    }

    /// Writes bytes as they are, within [`COMMAND_TIMEOUT`]; hands the
    /// buffer back when the write completed.
    pub async fn send(&mut self, bytes: Vec<u8>) -> (Result<(), BackendError>, Option<Vec<u8>>) {
        match monoio::time::timeout(COMMAND_TIMEOUT, self.stream.write_all(bytes)).await {
            Ok((Ok(()), buf)) => (Ok(()), Some(buf)),
            Ok((Err(e), buf)) => (Err(BackendError::Io(e)), Some(buf)),
            Err(_) => (Err(BackendError::Timeout), None),
        }
    }

    /// Writes a shared buffer as it is, within [`COMMAND_TIMEOUT`], so one
    /// piece of a message can go to several backends at once.
    pub async fn send_shared(&mut self, bytes: Rc<Vec<u8>>) -> Result<(), BackendError> {
        let write = monoio::io::AsyncWriteRentExt::write_all(&mut self.stream, bytes);
        match monoio::time::timeout(COMMAND_TIMEOUT, write).await {
            Ok((Ok(_), _)) => Ok(()),
            Ok((Err(e), _)) => Err(BackendError::Io(e)),
            Err(_) => Err(BackendError::Timeout),
        }
    }

    /// Reads one numbered reply (all its lines) within `limit`.
    pub async fn reply(&mut self, limit: Duration) -> Result<Reply, BackendError> {
        match monoio::time::timeout(limit, self.read_reply()).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, BackendError> {
        let mut wire = Vec::new();
        for _ in 0..1000 {
            let line = self
                .lines
                .read_line(&mut self.stream, MAX_BACKEND_LINE)
                .await
                .map_err(BackendError::Io)?;
            let Some((code, last)) = parse_reply_line(&line) else {
                return Err(BackendError::Protocol(format!(
                    "reply line {:?}",
                    String::from_utf8_lossy(&line[..line.len().min(80)])
                )));
            };
            wire.extend_from_slice(&line);
            wire.extend_from_slice(b"\r\n");
            if last {
                return Ok(Reply { code, wire });
            }
        }
        Err(BackendError::Protocol(
            "reply of more than 1000 lines".into(),
        ))
    }

    /// Ends the session politely without waiting for the answer.
    pub async fn quit(mut self) {
        let _ = monoio::time::timeout(
            Duration::from_secs(1),
            self.stream.write_all(b"QUIT\r\n".to_vec()),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lhlo(text: &str) -> Reply {
        Reply {
            code: 250,
            wire: text.as_bytes().to_vec(),
        }
    }

    #[test]
    fn reads_capabilities_and_xclient_fields() {
        let r = lhlo("250-host\r\n250-8BITMIME\r\n250-CHUNKING\r\n250-XCLIENT ADDR PORT TTL TIMEOUT\r\n250 SMTPUTF8\r\n");
        assert!(has_capability(&r, "CHUNKING"));
        assert!(has_capability(&r, "smtputf8"));
        assert!(!has_capability(&r, "STARTTLS"));
        let fields = xclient_fields(&r).unwrap();
        assert_eq!(fields, ["ADDR", "PORT", "TTL", "TIMEOUT"]);
        let info = ClientInfo {
            peer: "192.0.2.9:4000".parse().unwrap(),
            local: "127.0.0.1:24".parse().unwrap(),
            session_id: "s1".into(),
            tls: false,
        };
        assert_eq!(
            xclient_command(&fields, &info),
            "XCLIENT ADDR=192.0.2.9 PORT=4000 TTL=5"
        );
        assert_eq!(xclient_fields(&lhlo("250 host\r\n")), None);
    }
}
