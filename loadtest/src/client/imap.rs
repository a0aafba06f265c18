//! A minimal IMAP4rev1 client for load: greeting, STARTTLS, LOGIN,
//! SELECT, IDLE, FETCH of whole bodies, LOGOUT. It parses just enough to find tagged
//! replies and to skip literals (counting their bytes), so it costs little
//! CPU per byte and per session.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use super::conn::{Endpoint, Transport};
use super::sasl::SaslLogin;
use super::wire::{protocol_error, Wire};

/// The status of a tagged reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok,
    /// `NO`.
    No,
    /// `BAD` (or anything else).
    Bad,
}

/// The outcome of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// The tagged status.
    pub status: Status,
    /// Bytes of literal data in the untagged responses (message bodies).
    pub literal_bytes: u64,
}

/// An IMAP client session.
pub struct ImapClient {
    wire: Wire,
    next_tag: u32,
}

/// The literal length `{N}` or `{N+}` at the end of a line, if any.
fn trailing_literal(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"}")?;
    let open = line.iter().rposition(|b| *b == b'{')?;
    let digits = &line[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits).ok()?.parse().ok()
}

impl ImapClient {
    /// Connects and reads the greeting, which must be `* OK`; over a
    /// STARTTLS endpoint, then upgrades with `STARTTLS`.
    pub async fn connect(
        endpoint: Endpoint,
        tls: &Arc<rustls::ClientConfig>,
    ) -> io::Result<ImapClient> {
        ImapClient::connect_from(endpoint, tls, None).await
    }

    /// Like [`ImapClient::connect`], from the loopback address `source`
    /// when given.
    pub async fn connect_from(
        endpoint: Endpoint,
        tls: &Arc<rustls::ClientConfig>,
        source: Option<IpAddr>,
    ) -> io::Result<ImapClient> {
        let mut client = ImapClient {
            wire: Wire::connect_from(endpoint, tls, source).await?,
            next_tag: 1,
        };
        let greeting = client.wire.read_line().await?;
        if !greeting.starts_with(b"* OK") {
            return Err(protocol_error(format!(
                "greeting: {}",
                String::from_utf8_lossy(&greeting)
            )));
        }
        if endpoint.transport == Transport::Starttls {
            client.expect_ok("STARTTLS", "STARTTLS").await?;
            client.wire = client.wire.start_tls(tls).await?;
        }
        Ok(client)
    }

    /// Whether the TLS handshake resumed an earlier session (None: plain).
    pub fn resumed(&self) -> Option<bool> {
        self.wire.resumed()
    }

    fn tag(&mut self) -> String {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        tag
    }

    /// Reads until the tagged reply of `tag`, skipping literals.
    async fn await_tagged(&mut self, tag: &str) -> io::Result<Reply> {
        let mut literal_bytes = 0;
        loop {
            let mut line = self.wire.read_line().await?;
            // A line may continue after each literal.
            while let Some(n) = trailing_literal(&line) {
                self.wire.skip(n).await?;
                literal_bytes += n;
                line = self.wire.read_line().await?;
            }
            let Some(rest) = line
                .strip_prefix(tag.as_bytes())
                .and_then(|r| r.strip_prefix(b" "))
            else {
                continue;
            };
            let status = if rest.starts_with(b"OK") {
                Status::Ok
            } else if rest.starts_with(b"NO") {
                Status::No
            } else {
                Status::Bad
            };
            return Ok(Reply {
                status,
                literal_bytes,
            });
        }
    }

    /// Sends `command` (without tag and CRLF) and awaits its reply.
    pub async fn command(&mut self, command: &str) -> io::Result<Reply> {
        let tag = self.tag();
        self.wire
            .write_all(format!("{tag} {command}\r\n").into_bytes())
            .await?;
        self.await_tagged(&tag).await
    }

    /// Sends a command that must succeed.
    pub async fn expect_ok(&mut self, command: &str, what: &str) -> io::Result<Reply> {
        let reply = self.command(command).await?;
        if reply.status != Status::Ok {
            return Err(protocol_error(format!("{what}: {:?}", reply.status)));
        }
        Ok(reply)
    }

    /// `AUTHENTICATE` with SASL-IR, answering each challenge, until the
    /// tagged reply, which must be OK.
    pub async fn authenticate(&mut self, login: &mut SaslLogin) -> io::Result<()> {
        let tag = self.tag();
        let command = format!(
            "{tag} AUTHENTICATE {} {}\r\n",
            login.mechanism(),
            login.initial_response()
        );
        self.wire.write_all(command.into_bytes()).await?;
        for _ in 0..8 {
            let line = self.wire.read_line().await?;
            if let Some(challenge) = line.strip_prefix(b"+") {
                let answer = login.answer(challenge)?;
                self.wire
                    .write_all(format!("{answer}\r\n").into_bytes())
                    .await?;
                continue;
            }
            let Some(rest) = line
                .strip_prefix(tag.as_bytes())
                .and_then(|r| r.strip_prefix(b" "))
            else {
                continue;
            };
            if !rest.starts_with(b"OK") {
                return Err(protocol_error(format!(
                    "AUTHENTICATE: {}",
                    String::from_utf8_lossy(rest)
                )));
            }
            return login.finished();
        }
        Err(protocol_error("AUTHENTICATE: too many lines"))
    }

    /// `LOGIN user password`; the user name is a plain atom.
    pub async fn login(&mut self, user: &str, password: &str) -> io::Result<()> {
        self.expect_ok(&format!("LOGIN {user} \"{password}\""), "LOGIN")
            .await
            .map(|_| ())
    }

    /// Starts IDLE and waits for the continuation.
    pub async fn idle(&mut self) -> io::Result<String> {
        let tag = self.tag();
        self.wire
            .write_all(format!("{tag} IDLE\r\n").into_bytes())
            .await?;
        loop {
            let line = self.wire.read_line().await?;
            if line.starts_with(b"+") {
                return Ok(tag);
            }
            if line.starts_with(tag.as_bytes()) {
                return Err(protocol_error("IDLE refused"));
            }
        }
    }

    /// Waits for an untagged line during IDLE (e.g. `* 2 EXISTS`).
    pub async fn idle_wait(&mut self) -> io::Result<Vec<u8>> {
        self.wire.read_line().await
    }

    /// Ends IDLE started with `tag`.
    pub async fn idle_done(&mut self, tag: &str) -> io::Result<()> {
        self.wire.write_all(b"DONE\r\n".to_vec()).await?;
        let reply = self.await_tagged(tag).await?;
        if reply.status != Status::Ok {
            return Err(protocol_error("IDLE ended badly"));
        }
        Ok(())
    }

    /// `LOGOUT`, then closes.
    pub async fn logout(mut self) -> io::Result<()> {
        let result = self.command("LOGOUT").await.map(|_| ());
        self.wire.shutdown().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_literal_lengths_at_line_end() {
        assert_eq!(trailing_literal(b"* 1 FETCH (BODY[] {1024}"), Some(1024));
        assert_eq!(trailing_literal(b"a1 APPEND x {5+}"), Some(5));
        assert_eq!(trailing_literal(b"* OK done"), None);
        assert_eq!(trailing_literal(b"* OK {x}"), None);
    }
}
