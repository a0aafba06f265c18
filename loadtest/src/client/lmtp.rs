//! A minimal LMTP client for load (RFC 2033): greeting, LHLO, and mail
//! transactions — MAIL FROM, one RCPT TO per recipient, DATA with the
//! message dot-stuffed, then one reply per accepted recipient — pipelined
//! (RFC 2920) when the server offers PIPELINING; RSET and QUIT.

use std::io;
use std::sync::Arc;

use super::conn::Endpoint;
use super::wire::{protocol_error, Wire};

/// A message ready for DATA: dot-stuffed, CRLF-terminated, with the final
/// `.` line. Built once and sent many times.
#[derive(Debug, Clone)]
pub struct DataBody(Vec<u8>);

impl DataBody {
    /// Dot-stuffs `message` (a line starting with `.` gets another) and
    /// appends the end-of-data line; a last line without CRLF gets one.
    pub fn new(message: &[u8]) -> DataBody {
        let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b".") {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            if out.ends_with(b"\n") {
                out.pop();
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        DataBody(out)
    }

    /// The bytes sent after `354`.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// One reply: its code and its text lines (code and separator removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line.
    pub lines: Vec<String>,
}

impl SmtpReply {
    /// A 2xx reply.
    pub fn positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// What one recipient of a transaction got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientOutcome {
    /// The code of the reply to its `RCPT TO`.
    pub rcpt: u16,
    /// The code of its reply after the message, if it was accepted at RCPT
    /// and the message was sent.
    pub delivery: Option<u16>,
}

impl RecipientOutcome {
    /// Accepted at RCPT and `250` after the message: delivered.
    pub fn delivered(&self) -> bool {
        matches!(self.delivery, Some(c) if (200..300).contains(&c))
    }
}

/// The code of a reply line: three digits, then ` `, `-` or the end.
fn reply_code(line: &[u8]) -> Option<(u16, bool, &[u8])> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None => Some((code, true, b"")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// An LMTP client session.
pub struct LmtpClient {
    wire: Wire,
    pipelining: bool,
}

impl LmtpClient {
    /// Connects, reads the `220` greeting and says LHLO.
    pub async fn connect(
        endpoint: Endpoint,
        tls: &Arc<rustls::ClientConfig>,
    ) -> io::Result<LmtpClient> {
        let mut client = LmtpClient {
            wire: Wire::connect(endpoint, tls).await?,
            pipelining: false,
        };
        let greeting = client.reply().await?;
        if greeting.code != 220 {
            return Err(protocol_error(format!("greeting: {}", greeting.code)));
        }
        client
            .wire
            .write_all(b"LHLO loadtest.example.org\r\n".to_vec())
            .await?;
        let lhlo = client.reply().await?;
        if !lhlo.positive() {
            return Err(protocol_error(format!("LHLO: {}", lhlo.code)));
        }
        client.pipelining = lhlo
            .lines
            .iter()
            .any(|l| l.eq_ignore_ascii_case("PIPELINING"));
        Ok(client)
    }

    /// Whether the server offered PIPELINING (and transactions use it).
    pub fn pipelining(&self) -> bool {
        self.pipelining
    }

    /// Reads one (possibly multi-line) reply.
    async fn reply(&mut self) -> io::Result<SmtpReply> {
        let mut lines = Vec::new();
        loop {
            let line = self.wire.read_line().await?;
            let Some((code, last, text)) = reply_code(&line) else {
                return Err(protocol_error(format!(
                    "bad reply line: {}",
                    String::from_utf8_lossy(&line)
                )));
            };
            lines.push(String::from_utf8_lossy(text).into_owned());
            if last {
                return Ok(SmtpReply { code, lines });
            }
        }
    }

    /// Sends `command` (without CRLF) and reads its reply.
    async fn command(&mut self, command: &str) -> io::Result<SmtpReply> {
        self.wire
            .write_all(format!("{command}\r\n").into_bytes())
            .await?;
        self.reply().await
    }

    /// One mail transaction from `from` to `recipients` (addresses without
    /// angle brackets) carrying `body`; returns each recipient's outcome in
    /// order. A refused MAIL FROM refuses every recipient with its code.
    pub async fn send(
        &mut self,
        from: &str,
        recipients: &[String],
        body: &DataBody,
    ) -> io::Result<Vec<RecipientOutcome>> {
        let mail = format!("MAIL FROM:<{from}>\r\n");
        let rcpts: Vec<String> = recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n"))
            .collect();
        let (mail_reply, rcpt_codes, data_reply) = if self.pipelining {
            let mut batch = mail.into_bytes();
            for r in &rcpts {
                batch.extend_from_slice(r.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.wire.write_all(batch).await?;
            let mail_reply = self.reply().await?;
            let mut codes = Vec::with_capacity(rcpts.len());
            for _ in &rcpts {
                codes.push(self.reply().await?.code);
            }
            let data_reply = self.reply().await?;
            (mail_reply, codes, Some(data_reply))
        } else {
            self.wire.write_all(mail.into_bytes()).await?;
            let mail_reply = self.reply().await?;
            let mut codes = Vec::with_capacity(rcpts.len());
            if mail_reply.positive() {
                for r in rcpts {
                    self.wire.write_all(r.into_bytes()).await?;
                    codes.push(self.reply().await?.code);
                }
            }
            let any_accepted = codes.iter().any(|c| (200..300).contains(c));
            let data_reply = if any_accepted {
                Some(self.command("DATA").await?)
            } else {
                if mail_reply.positive() {
                    self.rset().await?;
                }
                None
            };
            (mail_reply, codes, data_reply)
        };
        let mut outcomes: Vec<RecipientOutcome> = if mail_reply.positive() {
            rcpt_codes
                .iter()
                .map(|&rcpt| RecipientOutcome {
                    rcpt,
                    delivery: None,
                })
                .collect()
        } else {
            recipients
                .iter()
                .map(|_| RecipientOutcome {
                    rcpt: mail_reply.code,
                    delivery: None,
                })
                .collect()
        };
        match data_reply.map(|r| r.code) {
            Some(354) => {}
            // Pipelined: the transaction may still hold MAIL and RCPTs.
            Some(_) if mail_reply.positive() => {
                self.rset().await?;
                return Ok(outcomes);
            }
            _ => return Ok(outcomes),
        }
        self.wire.write_all(body.bytes().to_vec()).await?;
        let accepted: Vec<usize> = (0..outcomes.len())
            .filter(|&i| (200..300).contains(&outcomes[i].rcpt))
            .collect();
        if accepted.is_empty() {
            // A server that said 354 with no recipient: one reply.
            self.reply().await?;
        }
        for i in accepted {
            outcomes[i].delivery = Some(self.reply().await?.code);
        }
        Ok(outcomes)
    }

    /// `RSET`: abandons a transaction.
    pub async fn rset(&mut self) -> io::Result<()> {
        let reply = self.command("RSET").await?;
        if !reply.positive() {
            return Err(protocol_error(format!("RSET: {}", reply.code)));
        }
        Ok(())
    }

    /// `QUIT`, then closes.
    pub async fn quit(mut self) -> io::Result<()> {
        let result = self.command("QUIT").await.map(|_| ());
        self.wire.shutdown().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffs_and_terminates() {
        let body = DataBody::new(b"a\r\n.b\r\n..c\r\nend");
        assert_eq!(body.bytes(), b"a\r\n..b\r\n...c\r\nend\r\n.\r\n");
        assert_eq!(DataBody::new(b"x\r\n").bytes(), b"x\r\n.\r\n");
    }

    #[test]
    fn parses_reply_lines() {
        assert_eq!(
            reply_code(b"250-PIPELINING"),
            Some((250, false, &b"PIPELINING"[..]))
        );
        assert_eq!(
            reply_code(b"250 2.0.0 OK"),
            Some((250, true, &b"2.0.0 OK"[..]))
        );
        assert_eq!(reply_code(b"354"), Some((354, true, &b""[..])));
        assert_eq!(reply_code(b"25x ok"), None);
        assert_eq!(reply_code(b"250+x"), None);
    }

    #[test]
    fn delivered_needs_a_positive_final_reply() {
        let ok = RecipientOutcome {
            rcpt: 250,
            delivery: Some(250),
        };
        let later = RecipientOutcome {
            rcpt: 250,
            delivery: Some(451),
        };
        let refused = RecipientOutcome {
            rcpt: 550,
            delivery: None,
        };
        assert!(ok.delivered());
        assert!(!later.delivered() && !refused.delivered());
    }
}
