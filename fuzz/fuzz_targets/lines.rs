//! Fuzzes the bounded line reader (`proto::lines`) that reads backend
//! greetings, login answers and health-check replies.
//!
//! Input: a cut seed byte, a bound byte, then the peer's byte stream,
//! delivered by reads that respect the buffer's spare capacity, whole or
//! cut into pieces. Every line returned is within the bound and holds no
//! LF; whole and cut delivery give the same lines and the same error.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mailpin::io::ReadSide;
use mailpin::proto::lines::LineReader;
use mailpin_fuzz::Cuts;

/// A peer that sends `pieces`, one per read (as much as fits), then
/// closes.
struct Peer<'a> {
    pieces: Vec<&'a [u8]>,
}

impl ReadSide for Peer<'_> {
    async fn readable(&mut self) -> io::Result<()> {
        Ok(())
    }

    async fn read_into(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let Some(piece) = self.pieces.first_mut() else {
            return (Ok(0), buf);
        };
        let spare = buf.capacity() - buf.len();
        assert!(spare > 0, "read_into without spare capacity");
        let n = piece.len().min(spare);
        buf.extend_from_slice(&piece[..n]);
        *piece = &piece[n..];
        if piece.is_empty() {
            self.pieces.remove(0);
        }
        (Ok(n), buf)
    }
}

/// Polls a future that never waits (the peer is all in memory).
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the line reader waited on an in-memory peer"),
    }
}

/// The lines read from `pieces` and the error kind that ended them.
fn read_all(pieces: Vec<&[u8]>, max: usize) -> (Vec<Vec<u8>>, io::ErrorKind) {
    let pieces = pieces.into_iter().filter(|p| !p.is_empty()).collect();
    let mut peer = Peer { pieces };
    let mut reader = LineReader::new();
    let mut lines = Vec::new();
    loop {
        match ready(reader.read_line(&mut peer, max)) {
            Ok(line) => {
                assert!(
                    line.len() <= max,
                    "a line of {} bytes passed the bound {max}",
                    line.len()
                );
                assert!(!line.contains(&b'\n'));
                lines.push(line);
            }
            Err(e) => return (lines, e.kind()),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [seed, bound, stream @ ..] = data else {
        return;
    };
    let max = 1 + usize::from(*bound) * 4;
    let whole = read_all(vec![stream], max);
    let cut = read_all(Cuts::new(*seed).split(stream), max);
    assert_eq!(whole, cut, "cutting the stream changed the lines");
});
