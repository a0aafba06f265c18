//! Stopping against real Dovecot: SIGTERM stops accepting at once, lets a
//! logged-in session run until `server.drain_timeout`, then closes it with
//! a goodbye (backend side first) and exits 0; a second SIGTERM ends the
//! process at once; SIGHUP never ends it; clients still before login get
//! their protocol's goodbye as soon as the drain begins.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::director::{config, ListenSpec};
use support::mailpin::Mailpin;
use support::procs::{pid_alive, send_signal};
use support::{require_dovecot, DovecotCluster, DovecotOptions};

/// A logged-in IMAP session, read line by line.
struct Session {
    stream: TcpStream,
}

impl Session {
    fn login(addr: SocketAddr, user: &str) -> Session {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut s = Session { stream };
        assert!(s.line().starts_with("* OK"));
        s.send(&format!("a LOGIN {user} pass"));
        s.until("a ");
        s
    }

    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }

    /// One line, or "" at end of stream.
    fn line(&mut self) -> String {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        while self.stream.read(&mut byte).unwrap_or(0) == 1 {
            out.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        String::from_utf8_lossy(&out).to_string()
    }

    /// Lines until one starts with `prefix`; that line.
    fn until(&mut self, prefix: &str) -> String {
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "closed while waiting for {prefix:?}");
            if line.starts_with(prefix) {
                assert!(line.contains(" OK"), "{line}");
                return line;
            }
        }
    }
}

fn start(drain: &str) -> Option<(DovecotCluster, Mailpin)> {
    if !require_dovecot() {
        return None;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let c = config(
        &cluster,
        None,
        &format!("drain_timeout = \"{drain}\""),
        &[ListenSpec::plain("imap")],
        "",
    );
    let m = Mailpin::start(&c, 1);
    Some((cluster, m))
}

#[test]
fn sigterm_drains_logged_in_sessions_until_drain_timeout_then_exits_0() {
    let Some((cluster, mut m)) = start("3s") else {
        return;
    };
    let user = cluster.user(1);
    let mut session = Session::login(m.listen[0], &user);
    let signalled = Instant::now();
    send_signal(m.pid(), libc::SIGTERM);
    assert!(
        m.wait_for_log(&["stopping"], Duration::from_secs(5))
            .is_some(),
        "{}",
        m.log()
    );
    // New connections are not accepted any more...
    let refused = (0..50).any(|_| {
        let gone = TcpStream::connect_timeout(&m.listen[0], Duration::from_secs(1)).is_err();
        if !gone {
            std::thread::sleep(Duration::from_millis(20));
        }
        gone
    });
    assert!(refused, "the listener is closed during the drain");
    // ... while the logged-in session goes on.
    session.send("b NOOP");
    session.until("b ");
    assert_eq!(cluster.instance(0).who_count(&user, "imap"), 1);
    // At drain_timeout it is closed with a goodbye, and the process exits 0.
    let mut heard = String::new();
    loop {
        let line = session.line();
        if line.is_empty() {
            break;
        }
        heard.push_str(&line);
    }
    let lasted = signalled.elapsed();
    assert!(heard.contains("* BYE"), "goodbye: {heard:?}");
    assert!(lasted >= Duration::from_millis(2500), "{lasted:?}");
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(0));
    cluster
        .instance(0)
        .wait_for_who(&user, "imap", 0, Duration::from_secs(5))
        .expect("the backend session is gone");
}

#[test]
fn a_second_sigterm_ends_the_drain_at_once() {
    let Some((cluster, mut m)) = start("60s") else {
        return;
    };
    let _session = Session::login(m.listen[0], &cluster.user(2));
    send_signal(m.pid(), libc::SIGTERM);
    assert!(m
        .wait_for_log(&["stopping"], Duration::from_secs(5))
        .is_some());
    let again = Instant::now();
    send_signal(m.pid(), libc::SIGTERM);
    assert!(m.wait_exit(Duration::from_secs(5)).is_some());
    assert!(again.elapsed() < Duration::from_secs(5));
}

#[test]
fn sighup_never_ends_the_process() {
    let Some((cluster, m)) = start("30s") else {
        return;
    };
    let mut session = Session::login(m.listen[0], &cluster.user(3));
    send_signal(m.pid(), libc::SIGHUP);
    assert!(m
        .wait_for_log(&["SIGHUP"], Duration::from_secs(5))
        .is_some());
    assert!(pid_alive(m.pid()));
    session.send("b NOOP");
    session.until("b ");
}

/// Everything a client hears until the server closes, at most `limit`.
fn until_closed(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    let deadline = Instant::now() + limit;
    let mut heard = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            ))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&heard).into_owned(), true),
            Ok(n) => heard.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break
            }
            Err(_) => return (String::from_utf8_lossy(&heard).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&heard).into_owned(), false)
}

/// Connects and reads the greeting (up to the line starting with `last`).
fn greeted(addr: SocketAddr, last: &str) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut s = Session {
        stream: stream.try_clone().unwrap(),
    };
    loop {
        let line = s.line();
        assert!(!line.is_empty(), "closed before its greeting");
        if line.starts_with(last) {
            break;
        }
    }
    stream.set_read_timeout(None).unwrap();
    stream
}

#[test]
fn clients_before_login_get_their_goodbye_as_the_drain_begins() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let listeners = ["imap", "pop3", "sieve", "lmtp"].map(ListenSpec::plain);
    let c = config(&cluster, None, "drain_timeout = \"6s\"", &listeners, "");
    let mut m = Mailpin::start(&c, 4);
    let user = cluster.user(4);
    let mut logged_in = Session::login(m.listen[0], &user);
    let mut imap = greeted(m.listen[0], "* OK");
    let mut pop3 = greeted(m.listen[1], "+OK");
    let mut sieve = greeted(m.listen[2], "OK");
    let mut lmtp = greeted(m.listen[3], "220");
    let signalled = Instant::now();
    send_signal(m.pid(), libc::SIGTERM);
    // Within a bound far below drain_timeout: the goodbye, then the close.
    let bound = Duration::from_secs(3);
    let (heard, closed) = until_closed(&mut imap, bound);
    assert!(
        heard.starts_with("* BYE [UNAVAILABLE]") && closed,
        "IMAP: {heard:?} closed={closed}"
    );
    let (heard, closed) = until_closed(&mut sieve, bound);
    assert!(
        heard.starts_with("BYE (TRYLATER)") && closed,
        "Sieve: {heard:?} closed={closed}"
    );
    let (heard, closed) = until_closed(&mut lmtp, bound);
    assert!(
        heard.starts_with("421 4.3.2") && closed,
        "LMTP: {heard:?} closed={closed}"
    );
    // POP3 has no unsolicited reply: its next command is refused.
    m.wait_for_log(&["stopping"], Duration::from_secs(5))
        .expect("stopping");
    pop3.write_all(b"CAPA\r\n").unwrap();
    let (heard, closed) = until_closed(&mut pop3, bound);
    assert!(
        heard.starts_with("-ERR [SYS/TEMP]") && closed,
        "POP3: {heard:?} closed={closed}"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    // The logged-in session goes on until drain_timeout.
    logged_in.send("b NOOP");
    logged_in.until("b ");
    assert_eq!(cluster.instance(0).who_count(&user, "imap"), 1);
    let (heard, closed) = until_closed(&mut logged_in.stream, Duration::from_secs(15));
    assert!(heard.contains("* BYE") && closed, "{heard:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(5500),
        "{:?}",
        signalled.elapsed()
    );
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(0));
}
