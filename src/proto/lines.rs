//! Reading CRLF-terminated lines from a connection, bounded.
//!
//! Used wherever the director talks line by line to a peer outside the
//! relay: backend greetings and login answers, health checks. A line longer
//! than the bound is an error, never an unbounded allocation; bytes after
//! the last whole line stay buffered for the caller (they belong to the
//! relay once login is done).

use std::io;

use crate::io::ReadSide;

/// A buffered line reader over any [`ReadSide`].
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// How far `buf` has been searched for a line end.
    scanned: usize,
}

impl LineReader {
    /// An empty reader.
    pub fn new() -> LineReader {
        LineReader::default()
    }

    /// Reads one line, returned without its line end (CRLF or a bare LF).
    /// Fails with `InvalidData` if no line end comes within `max` bytes, and
    /// with `UnexpectedEof` if the peer closes first.
    pub async fn read_line<R: ReadSide>(&mut self, r: &mut R, max: usize) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                if end >= max {
                    // One read may bring more than `max` bytes (the buffer
                    // grows by doubling): the bound is on the line.
                    return Err(too_long(max));
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
            if self.buf.len() >= max {
                return Err(too_long(max));
            }
            let want = (max - self.buf.len()).min(4096);
            self.buf.reserve(want);
            let (res, buf) = r.read_into(std::mem::take(&mut self.buf)).await;
            self.buf = buf;
            if res? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ));
            }
        }
    }

    /// Bytes read past the last line returned.
    pub fn into_leftover(self) -> Vec<u8> {
        self.buf
    }
}

/// The error for a line whose end does not come within `max` bytes.
fn too_long(max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("line longer than {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::testing::{block_on, Script};

    #[test]
    fn splits_lines_across_chunks_and_keeps_leftover() {
        block_on(async {
            let mut s = Script(vec![b"* OK he", b"llo\r\na1 OK", b" done\nrest"]);
            let mut r = LineReader::new();
            assert_eq!(r.read_line(&mut s, 100).await.unwrap(), b"* OK hello");
            assert_eq!(r.read_line(&mut s, 100).await.unwrap(), b"a1 OK done");
            assert_eq!(r.into_leftover(), b"rest");
        });
    }

    #[test]
    fn overlong_line_is_an_error() {
        block_on(async {
            let mut s = Script(vec![b"0123456789", b"0123456789", b"\r\n"]);
            let err = LineReader::new().read_line(&mut s, 15).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        });
    }

    #[test]
    fn eof_before_line_end_is_an_error() {
        block_on(async {
            let mut s = Script(vec![b"* OK"]);
            let err = LineReader::new().read_line(&mut s, 100).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        });
    }

    /// Found by the `lines` fuzz target: a read into a buffer that had
    /// grown by doubling brought the line end past the bound, and the
    /// over-long line was returned.
    #[test]
    fn line_end_past_the_bound_in_the_same_read_is_an_error() {
        block_on(async {
            let first: &'static [u8] = &[b'x'; 4096];
            let second: &'static [u8] = b"yyyyyyyyyyyyyyyyyyyy\r\n";
            let mut s = Script(vec![first, second]);
            let err = LineReader::new().read_line(&mut s, 4100).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        });
    }
}
