//! The invariant's hard cases against real Dovecot: a client that has
//! stopped reading in the middle of a large FETCH, then `move`, `kick`,
//! `backend down` and `drain` + `flush`. What corrupts a mail store is two
//! backend sessions of one user, so each action must close the backend
//! side first: `doveadm who`, sampled every 100 ms on both backends, never
//! shows the user on two, and the first sample after the command's answer
//! no longer shows the old session. A stalled client is closed on both
//! sides after `server.stall_timeout`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::director::{config, ListenSpec};
use support::mailpin::Mailpin;
use support::{require_dovecot, require_tool, DovecotCluster, DovecotOptions, InteractiveClient};

/// Bigger than every socket buffer between Dovecot and the client
/// (loopback autotuning tops out at a few MiB per socket), so the FETCH is
/// still in progress while the client reads nothing.
const MESSAGE_BYTES: usize = 32 << 20;

/// A client that logs in, selects INBOX, starts `FETCH 1 BODY[]` of a
/// large message and then reads nothing.
struct SlowReader {
    stream: TcpStream,
}

impl SlowReader {
    fn start(addr: SocketAddr, user: &str) -> SlowReader {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        // A small window: the client takes little before it stops.
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .expect("connect to the director");
        let mut stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        read_until(&mut stream, "* OK");
        stream
            .write_all(format!("a LOGIN {user} pass\r\n").as_bytes())
            .unwrap();
        read_until(&mut stream, "a OK");
        stream.write_all(b"b SELECT INBOX\r\n").unwrap();
        read_until(&mut stream, "b OK");
        stream.write_all(b"c FETCH 1 BODY[]\r\n").unwrap();
        SlowReader { stream }
    }

    /// Waits until the FETCH has filled the client's receive queue and the
    /// queue has stopped growing: the director can write no more.
    fn wait_stalled(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = (queued(&self.stream), Instant::now());
        loop {
            assert!(Instant::now() < deadline, "the FETCH never stalled");
            std::thread::sleep(Duration::from_millis(50));
            let now = queued(&self.stream);
            if now != last.0 {
                last = (now, Instant::now());
            } else if now > 0 && last.1.elapsed() >= Duration::from_millis(300) {
                return;
            }
        }
    }

    /// Reads (and drops) everything until the director closes the
    /// connection; panics if it is still open after `limit`.
    fn wait_closed(mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            assert!(
                Instant::now() < deadline,
                "the director did not close the client"
            );
            match self.stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return, // a reset ends it too
            }
        }
    }
}

/// Bytes waiting in the socket's receive queue (FIONREAD).
fn queued(stream: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: a live socket and an int out value, as FIONREAD wants.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD");
    usize::try_from(n).unwrap_or(0)
}

/// Reads lines until one starts with `prefix`.
fn read_until(stream: &mut TcpStream, prefix: &str) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = stream.read(&mut byte).expect("read a reply");
        assert_eq!(n, 1, "connection closed while waiting for {prefix:?}");
        line.push(byte[0]);
        if byte[0] == b'\n' {
            let text = String::from_utf8_lossy(&line).to_string();
            if text.starts_with(prefix) {
                return;
            }
            assert!(!text.contains(" NO ") && !text.contains(" BAD "), "{text}");
            line.clear();
        }
    }
}

/// A large message: header and 32 MiB of body lines.
fn large_message() -> Vec<u8> {
    let mut m = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: big\r\n\r\n".to_vec();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuv\r\n";
    while m.len() < MESSAGE_BYTES {
        m.extend_from_slice(line);
    }
    m
}

/// Samples `doveadm who` on every backend every 100 ms while `running`,
/// counting samples and those that show `user` on more than one backend.
fn sample(
    cluster: &DovecotCluster,
    user: &str,
    running: &AtomicBool,
    samples: &AtomicUsize,
    splits: &AtomicUsize,
) {
    while running.load(Ordering::Relaxed) {
        let on = cluster
            .instances()
            .iter()
            .filter(|i| {
                i.try_who()
                    .map(|who| who.iter().any(|e| e.user == user))
                    .unwrap_or(false)
            })
            .count();
        samples.fetch_add(1, Ordering::Relaxed);
        if on > 1 {
            splits.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two Dovecot backends with a 32 MiB message for `user`, and a director.
fn start(user: &str, server_extra: &str) -> Option<(DovecotCluster, Mailpin)> {
    if !require_dovecot() || !require_tool("python3") {
        return None;
    }
    let cluster = DovecotCluster::start(2, DovecotOptions::default());
    cluster.put_message(user, "1.big", &large_message());
    let mut c = config(
        &cluster,
        None,
        server_extra,
        &[ListenSpec::plain("imap")],
        "",
    );
    // No health check during the scenario: a check's own connection to
    // the backend's IMAP port (open, or closing in FIN_WAIT) would count
    // in `open_connections_to` as if it were the session's.
    c.push_str("\n[health]\ninterval = \"1h\"\n");
    let m = Mailpin::start(&c, 1);
    Some((cluster, m))
}

/// The index of the backend `user` has an IMAP session on.
fn backend_of(cluster: &DovecotCluster, user: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let on = (0..cluster.instances().len()).find(|&i| {
            cluster
                .instance(i)
                .try_who()
                .is_ok_and(|who| who.iter().any(|e| e.user == user && e.protocol == "imap"))
        });
        if let Some(i) = on {
            return i;
        }
        assert!(Instant::now() < deadline, "{user} is on no backend");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connections of this machine to `backend` (IP and port) that are still
/// open on our side: every TCP state but TIME_WAIT and CLOSE, read from
/// /proc/net/tcp at once (no process to start, unlike `doveadm who`).
fn open_connections_to(backend: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = backend else {
        return 0;
    };
    // /proc/net/tcp shows addresses as the IPv4 bytes in host order (hex).
    let ip = u32::from_ne_bytes(v4.ip().octets());
    let remote = format!("{ip:08X}:{:04X}", v4.port());
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // 06 TIME_WAIT, 07 CLOSE, 0A LISTEN.
            fields.len() > 3 && fields[2] == remote && !matches!(fields[3], "06" | "07" | "0A")
        })
        .count()
}

/// Stops the sampler when the scenario ends, panicking or not.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Holds one logged-in session of `user` until dropped.
fn hold(m: &Mailpin, user: &str) -> InteractiveClient {
    let port = m.listen[0].port().to_string();
    let mut c = InteractiveClient::spawn(
        "imap_sessions.py",
        &["--host", "127.0.0.1", "--port", &port, "--user", user],
    );
    c.wait_for_line("READY 1", Duration::from_secs(30))
        .expect("logged in");
    c
}

/// What the test does to the stalled session's user.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Move,
    Kick,
    Down,
    DrainFlush,
}

/// The scenario: a stalled FETCH, the action, the first `who` after the
/// answer, a new session of the same user, and no split at any sample.
fn stalled_fetch_then(action: Action) {
    let user = "user0007";
    let Some((cluster, m)) = start(user, "") else {
        return;
    };
    let slow = SlowReader::start(m.listen[0], user);
    let old = backend_of(&cluster, user);
    let other = 1 - old;
    slow.wait_stalled();
    assert_eq!(
        cluster.instance(old).who_count(user, "imap"),
        1,
        "the FETCH is in progress"
    );

    let running = AtomicBool::new(true);
    let samples = AtomicUsize::new(0);
    let splits = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| sample(&cluster, user, &running, &samples, &splits));
        let _stop = StopOnDrop(&running);
        let old_name = cluster.instance(old).name().to_string();
        let other_name = cluster.instance(other).name().to_string();
        let (code, out, err) = match action {
            Action::Move => m.ctl(&["move", user, &other_name]),
            Action::Kick => m.ctl(&["kick", user]),
            Action::Down => m.ctl(&["backend", &old_name, "down"]),
            Action::DrainFlush => {
                let (code, out, err) = m.ctl(&["backend", &old_name, "drain"]);
                assert_eq!(code, 0, "{out}{err}");
                assert_eq!(
                    cluster.instance(old).who_count(user, "imap"),
                    1,
                    "drain keeps the session"
                );
                m.ctl(&["backend", &old_name, "flush"])
            }
        };
        // At the answer the old backend connection is closed on both ends
        // already (only TIME_WAIT is left of it)...
        let open = open_connections_to(cluster.instance(old).imap_addr());
        let answered = Instant::now();
        assert_eq!(code, 0, "{action:?}: {out}{err}");
        assert_eq!(
            open, 0,
            "{action:?}: a connection to the old backend is open at the answer"
        );
        // ... and Dovecot's first report after it has no session left.
        let left = cluster.instance(old).who_count(user, "imap");
        let looked = answered.elapsed();
        assert_eq!(
            left, 0,
            "{action:?}: the old backend still has the session {looked:?} after the answer"
        );

        // The user logs in again at once: it must land where the action
        // says, and never beside a session still open on the old backend.
        let again = hold(&m, user);
        let expected = if action == Action::Kick { old } else { other };
        cluster
            .instance(expected)
            .wait_for_who(user, "imap", 1, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{action:?}: new session not on b{expected}: {e}"));
        slow.wait_closed(Duration::from_secs(20));
        // The action can be over before the sampler (a `doveadm who` per
        // backend, each a process start) had its third look: it goes on
        // sampling, with the new session open, until it has (bounded).
        let enough = Instant::now() + Duration::from_secs(10);
        while samples.load(Ordering::Relaxed) < 3 && Instant::now() < enough {
            std::thread::sleep(Duration::from_millis(20));
        }
        running.store(false, Ordering::Relaxed);
        drop(again);
    });
    let taken = samples.load(Ordering::Relaxed);
    assert!(taken >= 3, "too few samples: {taken}");
    assert_eq!(
        splits.load(Ordering::Relaxed),
        0,
        "{action:?}: the user was on two backends in some of {taken} samples"
    );
}

#[test]
fn move_of_a_stalled_fetch_closes_the_backend_first() {
    stalled_fetch_then(Action::Move);
}

#[test]
fn kick_of_a_stalled_fetch_closes_the_backend_first() {
    stalled_fetch_then(Action::Kick);
}

#[test]
fn backend_down_under_a_stalled_fetch_closes_the_backend_first() {
    stalled_fetch_then(Action::Down);
}

#[test]
fn drain_and_flush_of_a_stalled_fetch_closes_the_backend_first() {
    stalled_fetch_then(Action::DrainFlush);
}

#[test]
fn a_client_that_stops_reading_is_closed_on_both_sides_after_stall_timeout() {
    let user = "user0009";
    let Some((cluster, m)) = start(user, "stall_timeout = \"2s\"") else {
        return;
    };
    let slow = SlowReader::start(m.listen[0], user);
    let on = backend_of(&cluster, user);
    slow.wait_stalled();
    let line = m
        .wait_for_log(
            &["session closed", "end=\"stalled\""],
            Duration::from_secs(15),
        )
        .unwrap_or_else(|| panic!("no stalled end in the log:\n{}", m.log()));
    assert!(line.contains(user), "{line}");
    let lasted: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("duration_ms="))
        .and_then(|d| d.parse().ok())
        .expect("duration_ms in the closing line");
    assert!(lasted >= 2000, "closed before the stall timeout: {line}");
    assert_eq!(
        open_connections_to(cluster.instance(on).imap_addr()),
        0,
        "the backend connection is closed"
    );
    cluster
        .instance(on)
        .wait_for_who(user, "imap", 0, Duration::from_secs(2))
        .expect("the backend session is gone");
    slow.wait_closed(Duration::from_secs(20));
}
