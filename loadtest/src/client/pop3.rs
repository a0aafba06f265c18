//! A minimal POP3 client for load (RFC 1939, RFC 2595 STLS): greeting,
//! STLS, USER/PASS, STAT, RETR (counting the message's bytes, not keeping
//! them), QUIT.

use std::io;
use std::sync::Arc;

use super::conn::{Endpoint, Transport};
use super::sasl::SaslLogin;
use super::wire::{protocol_error, Wire};

/// A POP3 client session.
pub struct Pop3Client {
    wire: Wire,
}

/// The maildrop's size after STAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Messages.
    pub messages: u64,
    /// Their total size, octets.
    pub octets: u64,
}

/// Parses `+OK N SIZE`.
fn parse_stat(line: &[u8]) -> Option<Stat> {
    let text = std::str::from_utf8(line.strip_prefix(b"+OK ")?).ok()?;
    let mut words = text.split_whitespace();
    Some(Stat {
        messages: words.next()?.parse().ok()?,
        octets: words.next()?.parse().ok()?,
    })
}

impl Pop3Client {
    /// Connects and reads the `+OK` greeting; over a STARTTLS endpoint,
    /// then upgrades with `STLS`.
    pub async fn connect(
        endpoint: Endpoint,
        tls: &Arc<rustls::ClientConfig>,
    ) -> io::Result<Pop3Client> {
        let mut client = Pop3Client {
            wire: Wire::connect(endpoint, tls).await?,
        };
        client.status("greeting").await?;
        if endpoint.transport == Transport::Starttls {
            client.command("STLS", "STLS").await?;
            client.wire = client.wire.start_tls(tls).await?;
        }
        Ok(client)
    }

    /// Whether the TLS handshake resumed an earlier session (None: plain).
    pub fn resumed(&self) -> Option<bool> {
        self.wire.resumed()
    }

    /// Reads a status line, which must be `+OK`.
    async fn status(&mut self, what: &str) -> io::Result<Vec<u8>> {
        let line = self.wire.read_line().await?;
        if !line.starts_with(b"+OK") {
            return Err(protocol_error(format!(
                "{what}: {}",
                String::from_utf8_lossy(&line)
            )));
        }
        Ok(line)
    }

    /// Sends `command` (without CRLF); its reply must be `+OK`.
    async fn command(&mut self, command: &str, what: &str) -> io::Result<Vec<u8>> {
        self.wire
            .write_all(format!("{command}\r\n").into_bytes())
            .await?;
        self.status(what).await
    }

    /// `USER` and `PASS`.
    pub async fn login(&mut self, user: &str, password: &str) -> io::Result<()> {
        self.command(&format!("USER {user}"), "USER").await?;
        self.command(&format!("PASS {password}"), "PASS")
            .await
            .map(|_| ())
    }

    /// `AUTH` with an initial response, answering each challenge, until
    /// `+OK`.
    pub async fn authenticate(&mut self, login: &mut SaslLogin) -> io::Result<()> {
        let command = format!(
            "AUTH {} {}\r\n",
            login.mechanism(),
            login.initial_response()
        );
        self.wire.write_all(command.into_bytes()).await?;
        for _ in 0..8 {
            let line = self.wire.read_line().await?;
            if line.starts_with(b"+OK") {
                return login.finished();
            }
            if let Some(challenge) = line.strip_prefix(b"+") {
                let answer = login.answer(challenge)?;
                self.wire
                    .write_all(format!("{answer}\r\n").into_bytes())
                    .await?;
                continue;
            }
            return Err(protocol_error(format!(
                "AUTH: {}",
                String::from_utf8_lossy(&line)
            )));
        }
        Err(protocol_error("AUTH: too many lines"))
    }

    /// `STAT`.
    pub async fn stat(&mut self) -> io::Result<Stat> {
        let line = self.command("STAT", "STAT").await?;
        parse_stat(&line).ok_or_else(|| protocol_error("STAT: unreadable reply"))
    }

    /// `RETR n`; returns the bytes of the multi-line reply after its
    /// status line (the message, dot-stuffed, with the final `.` line).
    pub async fn retr(&mut self, n: u64) -> io::Result<u64> {
        self.command(&format!("RETR {n}"), "RETR").await?;
        self.wire.skip_dot_terminated().await
    }

    /// `QUIT`, then closes.
    pub async fn quit(mut self) -> io::Result<()> {
        let result = self.command("QUIT", "QUIT").await.map(|_| ());
        self.wire.shutdown().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stat_replies() {
        assert_eq!(
            parse_stat(b"+OK 3 1200"),
            Some(Stat {
                messages: 3,
                octets: 1200
            })
        );
        assert_eq!(parse_stat(b"+OK"), None);
        assert_eq!(parse_stat(b"-ERR no"), None);
    }
}
