//! A blocking IMAP session held open on its own thread: log in (plain
//! LOGIN), then wait until the far end closes it. The `cluster` scenario
//! holds a few of these to time how fast a move or a failover ends or
//! replaces sessions; the open-loop clients of [`crate::client::imap`] are
//! for load, these are for watching a handful of sessions precisely.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::scenario::PASSWORD;

/// The longest line read before the LOGIN answer.
const MAX_LINE: u64 = 16 << 10;

/// How many lines may come before the LOGIN answer.
const MAX_LINES: usize = 100;

/// A logged-in plain IMAP session.
pub struct HeldSession {
    stream: TcpStream,
}

impl HeldSession {
    /// Connects to `addr`, reads the greeting and logs `user` in; every
    /// step within `limit`. Fails on anything but a tagged OK.
    pub fn login(addr: SocketAddr, user: &str, limit: Duration) -> Result<HeldSession, String> {
        let fail = |e: std::io::Error| format!("{user} at {addr}: {e}");
        let stream = TcpStream::connect_timeout(&addr, limit).map_err(fail)?;
        stream.set_read_timeout(Some(limit)).map_err(fail)?;
        stream.set_write_timeout(Some(limit)).map_err(fail)?;
        let mut reader = BufReader::new(stream.try_clone().map_err(fail)?);
        let mut line = String::new();
        let mut read_line = |line: &mut String| -> Result<(), String> {
            line.clear();
            match (&mut reader).take(MAX_LINE).read_line(line) {
                Ok(0) => Err(format!("{user} at {addr}: closed")),
                Ok(_) => Ok(()),
                Err(e) => Err(fail(e)),
            }
        };
        read_line(&mut line)?;
        if !line.starts_with("* OK") {
            return Err(format!("{user} at {addr}: greeting {:?}", line.trim_end()));
        }
        (&stream)
            .write_all(format!("a LOGIN {user} {PASSWORD}\r\n").as_bytes())
            .map_err(fail)?;
        for _ in 0..MAX_LINES {
            read_line(&mut line)?;
            if line.starts_with("a OK") {
                return Ok(HeldSession { stream });
            }
            if line.starts_with("a ") {
                return Err(format!("{user} at {addr}: {:?}", line.trim_end()));
            }
        }
        Err(format!("{user} at {addr}: no LOGIN answer"))
    }

    /// Waits until the far end closes the session (EOF or a reset) and
    /// returns when it did, or `None` if it stayed open for `limit`.
    pub fn wait_closed(mut self, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            if self
                .stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .is_err()
            {
                return Some(Instant::now());
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(Instant::now()),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(Instant::now()),
            }
        }
    }
}

/// Logs `user` in through `addr` over and over (a new connection each
/// time, `pause` between tries) until one succeeds or `limit` passes;
/// returns when it succeeded and the session, or the last error.
pub fn login_until_ok(
    addr: SocketAddr,
    user: &str,
    pause: Duration,
    limit: Duration,
) -> Result<(Instant, HeldSession), String> {
    let deadline = Instant::now() + limit;
    loop {
        let step = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_secs(5));
        match HeldSession::login(addr, user, step) {
            Ok(session) => return Ok((Instant::now(), session)),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(pause),
        }
    }
}
