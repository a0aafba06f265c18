//! Reading a client's commands before login (and LMTP's whole dialogue):
//! bounded lines, exact byte counts (literals, BDAT chunks), and raw chunks,
//! each under a deadline; with a running count of the bytes received, which
//! the pre-login budget ([`crate::session::limits::Budget`]) is checked
//! against.
//!
//! Unlike [`crate::proto::lines::LineReader`], which reads backend answers,
//! this reader also hands out the bytes it holds for streaming (LMTP DATA)
//! and says *why* reading stopped, because each protocol answers a timeout,
//! an overlong line and a vanished client differently.

use monoio::time::Instant;

use crate::io::ReadSide;

/// How much is read from the client at a time.
const READ_CHUNK: usize = 16 * 1024;

/// Why no input came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputError {
    /// The client closed the connection or it failed.
    Closed,
    /// The deadline passed first.
    Timeout,
    /// A line ran past the allowed length.
    TooLong,
}

/// A buffer of client input with bounded line and byte reads.
#[derive(Debug, Default)]
pub struct ClientInput {
    buf: Vec<u8>,
    /// How far `buf` has been searched for a line end.
    scanned: usize,
    /// Bytes read from the client so far.
    received: u64,
}

impl ClientInput {
    /// An empty reader.
    pub fn new() -> ClientInput {
        ClientInput::default()
    }

    /// Forgets everything buffered (after a STARTTLS upgrade, so nothing
    /// sent in plaintext is taken as a command under TLS).
    pub fn reset(&mut self) {
        self.buf = Vec::new();
        self.scanned = 0;
    }

    /// Every byte read from the client so far (the buffered ones included).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes buffered and not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes every buffered byte (the bytes a client pipelined after its
    /// login command, for the relay).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        self.scanned = 0;
        std::mem::take(&mut self.buf)
    }

    /// Consumes the first `n` buffered bytes.
    pub fn consume(&mut self, n: usize) {
        self.buf.drain(..n.min(self.buf.len()));
        self.scanned = 0;
    }

    /// Reads one line (CRLF or bare LF, removed) of at most `max` bytes.
    pub async fn line<R: ReadSide>(
        &mut self,
        r: &mut R,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, InputError> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                if end > max {
                    return Err(InputError::TooLong);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                self.scanned = 0;
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > max {
                return Err(InputError::TooLong);
            }
            self.fill(r, deadline).await?;
        }
    }

    /// Reads until at least `n` bytes are buffered; `n` must be bounded by
    /// the caller (literal and chunk limits).
    pub async fn exact<R: ReadSide>(
        &mut self,
        r: &mut R,
        n: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, InputError> {
        while self.buf.len() < n {
            self.fill(r, deadline).await?;
        }
        let out: Vec<u8> = self.buf.drain(..n).collect();
        self.scanned = 0;
        Ok(out)
    }

    /// Reads one more chunk from the client into the buffer.
    pub async fn fill<R: ReadSide>(
        &mut self,
        r: &mut R,
        deadline: Instant,
    ) -> Result<(), InputError> {
        self.buf.reserve(READ_CHUNK);
        let read = monoio::time::timeout_at(deadline, r.read_into(std::mem::take(&mut self.buf)));
        match read.await {
            Ok((Ok(n), buf)) => {
                self.buf = buf;
                self.received += n as u64;
                if n == 0 {
                    Err(InputError::Closed)
                } else {
                    Ok(())
                }
            }
            Ok((Err(_), _)) => Err(InputError::Closed),
            Err(_) => Err(InputError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testing::{block_on, Script};

    fn later() -> Instant {
        Instant::now() + std::time::Duration::from_secs(5)
    }

    #[test]
    fn lines_exact_bytes_and_leftover() {
        block_on(async {
            let mut s = Script(vec![b"USER a", b"lice\nAUTH {3", b"}\r\nabcQUIT\r\nrest"]);
            let mut i = ClientInput::new();
            assert_eq!(i.line(&mut s, 100, later()).await.unwrap(), b"USER alice");
            assert_eq!(i.line(&mut s, 100, later()).await.unwrap(), b"AUTH {3}");
            assert_eq!(i.exact(&mut s, 3, later()).await.unwrap(), b"abc");
            assert_eq!(i.line(&mut s, 100, later()).await.unwrap(), b"QUIT");
            assert_eq!(i.take_buffered(), b"rest");
            assert_eq!(i.received(), 34, "every byte read is counted");
        });
    }

    #[test]
    fn overlong_line_and_closed_client() {
        block_on(async {
            let mut s = Script(vec![b"0123456789", b"0123456789\r\n"]);
            let mut i = ClientInput::new();
            assert_eq!(i.line(&mut s, 15, later()).await, Err(InputError::TooLong));
            let mut s = Script(vec![b"QUI"]);
            let mut i = ClientInput::new();
            assert_eq!(i.line(&mut s, 15, later()).await, Err(InputError::Closed));
        });
    }
}
