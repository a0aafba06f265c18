//! The IMAP sessions `live-move` holds in IDLE, as their clients see
//! them: plain blocking sockets for the set-up (LOGIN, SELECT INBOX,
//! IDLE), then non-blocking ones watched together with poll(2), every
//! byte read and judged. A session in IDLE may legally receive only
//! untagged data (`* n EXISTS` after a delivery) and Dovecot's `* OK`
//! keepalive; a `* BYE` or a closed connection ends it; anything else —
//! or any data at all while nothing is delivered — is a violation of what
//! a live move promises (the client notices nothing).
//!
//! Blocking sockets and poll rather than the async clients: a watched
//! session must be read without ever cancelling a read, and it must still
//! be written to (`DONE`) at the end.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The IDLE tag every held session uses.
const IDLE_TAG: &str = "i";
/// Bound on each set-up step and on the final `DONE`.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the bytes buffered for one session without a line end.
const MAX_PENDING: usize = 64 * 1024;

/// Where a held session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Still in IDLE, nothing wrong seen.
    Idling,
    /// Ended by the other side: `* BYE` (the line) or the connection
    /// closed.
    Ended(String),
    /// Received something a client in IDLE must never see.
    Violated(String),
}

/// One session held in IDLE.
pub struct Held {
    stream: TcpStream,
    /// Its user.
    pub user: String,
    pending: Vec<u8>,
    /// Where it stands.
    pub state: State,
    /// Untagged `* n EXISTS` lines received while idling.
    pub exists: u64,
    /// Other untagged data lines received while idling.
    pub other_data: u64,
    /// `* OK` keepalives received while idling.
    pub keepalives: u64,
    /// The first of them, as received.
    pub first_keepalive: Option<String>,
}

/// What one line received during IDLE is.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Bye,
    Keepalive,
    Exists,
    Data,
    Foreign,
}

/// Sorts a line received during IDLE.
fn classify(line: &[u8]) -> Line {
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_ascii_whitespace();
    if words.next() != Some("*") {
        return Line::Foreign;
    }
    match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("BYE") => Line::Bye,
        Some("OK") => Line::Keepalive,
        Some(n) if n.bytes().all(|b| b.is_ascii_digit()) => {
            match words.next().map(str::to_ascii_uppercase).as_deref() {
                Some("EXISTS") => Line::Exists,
                Some("RECENT" | "EXPUNGE" | "FETCH") => Line::Data,
                _ => Line::Foreign,
            }
        }
        _ => Line::Foreign,
    }
}

impl Held {
    /// Connects to `addr` and logs `user` in, selects INBOX and starts
    /// IDLE; the session is then non-blocking.
    pub fn open(addr: SocketAddr, user: &str, password: &str) -> io::Result<Held> {
        let stream = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)?;
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        stream.set_write_timeout(Some(STEP_TIMEOUT))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let greeting = read_line(&mut reader)?;
        if !greeting.starts_with("* OK") {
            return Err(io::Error::other(format!("greeting: {greeting}")));
        }
        let mut writer = stream.try_clone()?;
        let mut command = |tag: &str, text: &str| -> io::Result<()> {
            writer.write_all(format!("{tag} {text}\r\n").as_bytes())?;
            loop {
                let line = read_line(&mut reader)?;
                if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
                    return if rest.starts_with("OK") {
                        Ok(())
                    } else {
                        Err(io::Error::other(format!("{text}: {line}")))
                    };
                }
            }
        };
        command("l", &format!("LOGIN {user} \"{password}\""))?;
        command("s", "SELECT INBOX")?;
        (&stream).write_all(format!("{IDLE_TAG} IDLE\r\n").as_bytes())?;
        loop {
            let line = read_line(&mut reader)?;
            if line.starts_with('+') {
                break;
            }
            if line.starts_with(&format!("{IDLE_TAG} ")) {
                return Err(io::Error::other(format!("IDLE: {line}")));
            }
        }
        let pending = reader.buffer().to_vec();
        stream.set_nonblocking(true)?;
        let mut held = Held {
            stream,
            user: user.to_owned(),
            pending: Vec::new(),
            state: State::Idling,
            exists: 0,
            other_data: 0,
            keepalives: 0,
            first_keepalive: None,
        };
        held.take(&pending, true);
        Ok(held)
    }

    /// Reads what has arrived (non-blocking) and judges each whole line;
    /// `data_allowed`: untagged data is expected (deliveries run).
    fn read_available(&mut self, data_allowed: bool) {
        let mut buf = [0u8; 4096];
        while self.state == State::Idling {
            match self.stream.read(&mut buf) {
                Ok(0) => self.state = State::Ended("connection closed".into()),
                Ok(n) => self.take(&buf[..n], data_allowed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.state = State::Ended(format!("connection error: {e}")),
            }
        }
    }

    /// Takes in received bytes.
    fn take(&mut self, bytes: &[u8], data_allowed: bool) {
        self.pending.extend_from_slice(bytes);
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=nl).collect();
            let line = line
                .strip_suffix(b"\r\n")
                .unwrap_or(&line[..line.len() - 1]);
            if self.state != State::Idling {
                return;
            }
            let text = || String::from_utf8_lossy(line).into_owned();
            match classify(line) {
                Line::Bye => self.state = State::Ended(text()),
                Line::Keepalive => {
                    self.keepalives += 1;
                    self.first_keepalive.get_or_insert_with(text);
                }
                Line::Exists if data_allowed => self.exists += 1,
                Line::Data if data_allowed => self.other_data += 1,
                Line::Exists | Line::Data => {
                    self.state = State::Violated(format!("data while nothing changed: {}", text()))
                }
                Line::Foreign => {
                    self.state = State::Violated(format!("not an IDLE response: {}", text()))
                }
            }
        }
        if self.pending.len() > MAX_PENDING {
            self.state = State::Violated("a line over 64 KiB".into());
        }
    }

    /// Ends IDLE: `DONE`, then exactly one tagged `OK` (untagged data
    /// before it is fine); then `LOGOUT` without waiting. Err says what
    /// came instead.
    pub fn done(&mut self) -> Result<(), String> {
        let fail = |e: io::Error| format!("DONE: {e}");
        self.stream.set_nonblocking(false).map_err(fail)?;
        self.stream
            .set_read_timeout(Some(STEP_TIMEOUT))
            .map_err(fail)?;
        (&self.stream).write_all(b"DONE\r\n").map_err(fail)?;
        let mut reader = BufReader::new(self.stream.try_clone().map_err(fail)?);
        let mut pending = std::mem::take(&mut self.pending);
        loop {
            let line = match pending.iter().position(|b| *b == b'\n') {
                Some(nl) => {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    String::from_utf8_lossy(&line).trim_end().to_owned()
                }
                None if !pending.is_empty() => {
                    let mut rest = String::from_utf8_lossy(&pending).into_owned();
                    pending.clear();
                    rest.push_str(&read_line(&mut reader).map_err(fail)?);
                    rest
                }
                None => read_line(&mut reader).map_err(fail)?,
            };
            if line.starts_with("* ") {
                continue;
            }
            if line == format!("{IDLE_TAG} OK") || line.starts_with(&format!("{IDLE_TAG} OK ")) {
                let _ = (&self.stream).write_all(b"z LOGOUT\r\n");
                return Ok(());
            }
            return Err(format!("DONE answered by {line:?}"));
        }
    }
}

/// One line (without CRLF), blocking; EOF is an error.
fn read_line(reader: &mut BufReader<TcpStream>) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Opens a session for each user of `users` through `addr`, `threads` at a
/// time: the sessions held, and the errors of those that failed.
pub fn open_all(
    addr: SocketAddr,
    users: &[String],
    password: &str,
    threads: usize,
) -> (Vec<Held>, Vec<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let held = Arc::new(Mutex::new(Vec::with_capacity(users.len())));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let users: Arc<Vec<String>> = Arc::new(users.to_vec());
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let (next, held, failed, users) =
                (next.clone(), held.clone(), failed.clone(), users.clone());
            let password = password.to_owned();
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = users.get(i) else { return };
                match Held::open(addr, user, &password) {
                    Ok(h) => held.lock().unwrap_or_else(|e| e.into_inner()).push(h),
                    Err(e) => failed
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("{user}: {e}")),
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    (drain(&held), drain(&failed))
}

/// Empties a shared vector.
fn drain<T>(v: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *v.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Waits up to `wait` for any idling session to become readable, then
/// reads and judges what every readable one received.
pub fn pump(sessions: &mut [Held], wait: Duration, data_allowed: bool) {
    let idling: Vec<usize> = (0..sessions.len())
        .filter(|i| sessions[*i].state == State::Idling)
        .collect();
    if idling.is_empty() {
        std::thread::sleep(wait);
        return;
    }
    let mut fds: Vec<libc::pollfd> = idling
        .iter()
        .map(|i| libc::pollfd {
            fd: sessions[*i].stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let timeout = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a valid array of its length for the whole call, and
    // every fd in it belongs to a socket `sessions` keeps open.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if ready <= 0 {
        return;
    }
    for (fd, i) in fds.iter().zip(&idling) {
        if fd.revents != 0 {
            sessions[*i].read_available(data_allowed);
        }
    }
}

/// Client-side counts over held sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Still idling.
    pub idling: usize,
    /// Ended with `* BYE`.
    pub bye: usize,
    /// Ended by a closed connection without BYE.
    pub closed: usize,
    /// Violated IDLE.
    pub violated: usize,
    /// `* n EXISTS` lines received.
    pub exists: u64,
    /// `* OK` keepalives received.
    pub keepalives: u64,
    /// The text of one of them.
    pub keepalive_text: Option<String>,
}

impl Tally {
    /// Counts `sessions`.
    pub fn of(sessions: &[Held]) -> Tally {
        let mut t = Tally::default();
        for s in sessions {
            match &s.state {
                State::Idling => t.idling += 1,
                State::Ended(why) if why.starts_with('*') => t.bye += 1,
                State::Ended(_) => t.closed += 1,
                State::Violated(_) => t.violated += 1,
            }
            t.exists += s.exists;
            t.keepalives += s.keepalives;
            if t.keepalive_text.is_none() {
                t.keepalive_text.clone_from(&s.first_keepalive);
            }
        }
        t
    }

    /// Sessions ended, BYE or closed.
    pub fn ended(&self) -> usize {
        self.bye + self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_lines_are_sorted() {
        assert_eq!(classify(b"* BYE Server shutting down."), Line::Bye);
        assert_eq!(classify(b"* OK Still here"), Line::Keepalive);
        assert_eq!(classify(b"* 3 EXISTS"), Line::Exists);
        assert_eq!(classify(b"* 1 RECENT"), Line::Data);
        assert_eq!(classify(b"* 2 FETCH (FLAGS (\\Seen))"), Line::Data);
        assert_eq!(classify(b"i OK Idle completed."), Line::Foreign);
        assert_eq!(classify(b"+ idling"), Line::Foreign);
        assert_eq!(classify(b"* CAPABILITY IMAP4rev1"), Line::Foreign);
    }
}
