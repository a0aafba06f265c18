//! The byte stream under every protocol client: a [`Conn`] with a read
//! buffer, giving lines (without CRLF), skipped byte counts (literals,
//! message bodies), writes, and the STARTTLS upgrade.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use super::conn::{Conn, Connected, Endpoint};

/// How much spare room a read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// A server line longer than this (outside literals) is an error.
const MAX_LINE: usize = 64 * 1024;

/// An error for a server that broke its protocol.
pub fn protocol_error(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// A connection with its read buffer.
pub struct Wire {
    conn: Conn,
    /// Bytes read and not yet consumed start at `start`.
    buf: Vec<u8>,
    start: usize,
    /// Whether a TLS handshake on this connection resumed a session
    /// (None: no TLS yet).
    resumed: Option<bool>,
}

impl Wire {
    /// Connects to `endpoint` (implicit TLS is negotiated here; STARTTLS
    /// is the protocol client's to ask for).
    pub async fn connect(endpoint: Endpoint, tls: &Arc<rustls::ClientConfig>) -> io::Result<Wire> {
        Wire::connect_from(endpoint, tls, None).await
    }

    /// Like [`Wire::connect`], from the loopback address `source` when
    /// given.
    pub async fn connect_from(
        endpoint: Endpoint,
        tls: &Arc<rustls::ClientConfig>,
        source: Option<IpAddr>,
    ) -> io::Result<Wire> {
        let Connected { conn, resumed } = Conn::connect_from(endpoint, tls, source).await?;
        Ok(Wire {
            conn,
            buf: Vec::new(),
            start: 0,
            resumed,
        })
    }

    /// Whether the TLS handshake resumed an earlier session (None: plain).
    pub fn resumed(&self) -> Option<bool> {
        self.resumed
    }

    /// Upgrades to TLS after the server accepted STARTTLS/STLS. Bytes the
    /// server sent after its go-ahead would have been injected before the
    /// handshake (RFC 3207 §4.2 attack): that is an error.
    pub async fn start_tls(self, tls: &Arc<rustls::ClientConfig>) -> io::Result<Wire> {
        if self.start < self.buf.len() {
            return Err(protocol_error("data after the STARTTLS go-ahead"));
        }
        let (conn, resumed) = self.conn.start_tls(tls).await?;
        Ok(Wire {
            conn,
            buf: Vec::new(),
            start: 0,
            resumed: Some(resumed),
        })
    }

    /// Reads more bytes; end of stream is an error.
    async fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(READ_CHUNK);
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = self.conn.read_append(buf).await;
        self.buf = buf;
        match res? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )),
            _ => Ok(()),
        }
    }

    /// The next line without its CRLF.
    pub async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let pending = &self.buf[self.start..];
            if let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                let mut line = pending[..nl].to_vec();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.start += nl + 1;
                return Ok(line);
            }
            if pending.len() > MAX_LINE {
                return Err(protocol_error("server line too long"));
            }
            self.fill().await?;
        }
    }

    /// Consumes `n` bytes without keeping them.
    pub async fn skip(&mut self, mut n: u64) -> io::Result<()> {
        loop {
            let available = (self.buf.len() - self.start) as u64;
            let take = available.min(n);
            self.start += take as usize;
            n -= take;
            if n == 0 {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// Consumes lines up to and including a line that is a single `.`
    /// (a POP3 multi-line reply, read from the start of a line), without
    /// keeping them; returns the bytes consumed, dot-stuffing and line ends
    /// included.
    pub async fn skip_dot_terminated(&mut self) -> io::Result<u64> {
        let mut scan = DotEnd::at_line_start();
        let mut bytes = 0u64;
        loop {
            let pending = &self.buf[self.start..];
            let found = scan.feed(pending);
            let used = found.unwrap_or(pending.len());
            self.start += used;
            bytes += used as u64;
            if found.is_some() {
                return Ok(bytes);
            }
            self.fill().await?;
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.conn.write_all(data).await
    }

    /// Closes the write side.
    pub async fn shutdown(&mut self) {
        self.conn.shutdown().await;
    }
}

/// Finds the end of a multi-line reply, `CRLF . CRLF`, across reads.
#[derive(Debug, Clone, Copy)]
struct DotEnd {
    /// How much of `\r\n.\r\n` the bytes so far end with.
    matched: usize,
}

impl DotEnd {
    const PATTERN: &'static [u8] = b"\r\n.\r\n";

    /// A scanner at the start of a line (as if after a CRLF).
    fn at_line_start() -> DotEnd {
        DotEnd { matched: 2 }
    }

    /// Scans `bytes`; returns how many of them end the reply, if they do.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            self.matched = if b == Self::PATTERN[self.matched] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == Self::PATTERN.len() {
                return Some(i + 1);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_final_dot_line_across_reads() {
        let mut d = DotEnd::at_line_start();
        assert_eq!(d.feed(b"a\r\n..b\r"), None);
        assert_eq!(d.feed(b"\n."), None);
        assert_eq!(d.feed(b"\r\nnext"), Some(2));
        let mut empty = DotEnd::at_line_start();
        assert_eq!(empty.feed(b".\r\n"), Some(3));
        let mut stuffed = DotEnd::at_line_start();
        assert_eq!(stuffed.feed(b"..\r\n\r\r\n.\r\n"), Some(10));
    }
}
