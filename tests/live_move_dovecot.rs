//! Live IMAP moves (issue 12) against real Dovecot 2.3: two backends on one
//! shared maildir, a master user in a master passdb, raw-socket IMAP
//! clients. A client idling in its INBOX follows its user to the other
//! backend without a byte; `doveadm who`, sampled throughout, never shows
//! the user on both; what cannot move (not idling, no master user, a
//! refused master login, a backend down, a mailbox changed mid-move) ends
//! with BYE as before, never with a wrong view. Expunges, appends and flag
//! changes made between the old backend's snapshot and the new backend's
//! SELECT are reconciled (EXPUNGE or VANISHED, EXISTS, FETCH FLAGS, MODSEQ
//! only for clients that enabled CONDSTORE).

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::dovecot::DEFAULT_PASSWORD;
use support::mailpin::{http, Mailpin};
use support::tempdir::TempDir;
use support::{require_dovecot, DovecotCluster, DovecotOptions};

const MASTER: &str = "mailpin";
const MASTER_PASSWORD: &str = "master-secret";
const STEP: Duration = Duration::from_secs(10);

/// A raw IMAP client over one TCP connection.
struct Imap {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Imap {
    fn connect(addr: SocketAddr) -> Imap {
        let w = TcpStream::connect(addr).expect("connect");
        w.set_read_timeout(Some(STEP)).unwrap();
        let mut c = Imap {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        };
        let greeting = c.line();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c
    }

    fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).expect("send");
    }

    /// The next line (without CRLF); panics after [`STEP`].
    fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.r.read_line(&mut line).expect("a line in time");
        assert!(n > 0, "connection closed");
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    /// Lines up to and including the one tagged `tag`.
    fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
    }

    fn ok(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(&format!("{tag} {command}\r\n"));
        let lines = self.until(tag);
        assert!(
            lines.last().unwrap().starts_with(&format!("{tag} OK")),
            "{command}: {lines:?}"
        );
        lines
    }

    fn login(addr: SocketAddr, user: &str) -> Imap {
        let mut c = Imap::connect(addr);
        c.ok("l", &format!("LOGIN {user} {DEFAULT_PASSWORD}"));
        c
    }

    /// Selects INBOX and starts IDLE under tag `i`.
    fn idling(addr: SocketAddr, user: &str) -> Imap {
        Imap::idling_in(addr, user, "INBOX", Enabled::Nothing)
    }

    /// Enables `enabled`, selects `mailbox` and starts IDLE under tag `i`.
    fn idling_in(addr: SocketAddr, user: &str, mailbox: &str, enabled: Enabled) -> Imap {
        let mut c = Imap::login(addr, user);
        c.enable(enabled);
        c.ok("s", &format!("SELECT {mailbox}"));
        c.send("i IDLE\r\n");
        let cont = c.line();
        assert!(cont.starts_with("+ "), "{cont}");
        c
    }

    /// Sends `ENABLE` for `enabled`, if anything.
    fn enable(&mut self, enabled: Enabled) {
        match enabled {
            Enabled::Nothing => {}
            Enabled::Condstore => drop(self.ok("e", "ENABLE CONDSTORE")),
            Enabled::Qresync => drop(self.ok("e", "ENABLE QRESYNC")),
        }
    }

    /// Whatever arrives within `d`: `None` when nothing does.
    fn quiet_for(&mut self, d: Duration) -> Option<String> {
        if !self.r.buffer().is_empty() {
            return Some(String::from_utf8_lossy(self.r.buffer()).into_owned());
        }
        self.w.set_read_timeout(Some(d)).unwrap();
        let mut byte = [0u8; 1];
        let got = match self.r.get_mut().read(&mut byte) {
            Ok(0) => Some("<closed>".to_string()),
            Ok(_) => {
                let mut rest = String::new();
                self.w
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let _ = self.r.read_line(&mut rest);
                Some(format!("{}{rest}", byte[0] as char))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => Some(format!("<error {e}>")),
        };
        self.w.set_read_timeout(Some(STEP)).unwrap();
        got
    }

    /// `FETCH 1:* (UID FLAGS)` lines, sorted, without `\\Recent` (a flag
    /// of one session, RFC 3501 §2.3.2: it cannot move with the session).
    fn uid_flags(&mut self) -> Vec<String> {
        let mut lines = self.ok("f", "FETCH 1:* (UID FLAGS)");
        lines.pop();
        for l in &mut lines {
            *l = l.replace(" \\Recent", "").replace("\\Recent", "");
        }
        lines.sort();
        lines
    }
}

/// What a test client enabled before selecting its mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enabled {
    Nothing,
    Condstore,
    Qresync,
}

/// Appends a small message to `user`'s INBOX through its own session.
fn append(addr: SocketAddr, user: &str, subject: &str) {
    append_to(addr, user, "INBOX", subject);
}

/// Appends a small message to `user`'s `mailbox` through its own session.
fn append_to(addr: SocketAddr, user: &str, mailbox: &str, subject: &str) {
    let mut c = Imap::login(addr, user);
    let msg = format!("Subject: {subject}\r\n\r\nbody\r\n");
    c.send(&format!(
        "a APPEND {mailbox} {{{}+}}\r\n{msg}\r\n",
        msg.len()
    ));
    let lines = c.until("a");
    assert!(lines.last().unwrap().starts_with("a OK"), "{lines:?}");
    c.ok("z", "LOGOUT");
}

/// A TCP forwarder in front of a backend that, while armed, holds each new
/// connection (nothing passes either way) until released: a live move can
/// be caught between its old side's close and its new side's login.
struct Gate {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    release: Arc<AtomicBool>,
}

impl Gate {
    fn new(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let gate = Gate {
            addr: listener.local_addr().unwrap(),
            armed: Arc::new(AtomicBool::new(false)),
            held: Arc::new(AtomicUsize::new(0)),
            release: Arc::new(AtomicBool::new(false)),
        };
        let (armed, held, release) = (gate.armed.clone(), gate.held.clone(), gate.release.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { return };
                let hold = armed.load(Ordering::SeqCst);
                let (held, release) = (held.clone(), release.clone());
                std::thread::spawn(move || {
                    if hold {
                        held.fetch_add(1, Ordering::SeqCst);
                        let until = Instant::now() + Duration::from_secs(30);
                        while !release.load(Ordering::SeqCst) && Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    let Ok(backend) = TcpStream::connect(target) else {
                        return;
                    };
                    let (mut c2, mut b2) =
                        (client.try_clone().unwrap(), backend.try_clone().unwrap());
                    let (mut c, mut b) = (client, backend);
                    let up = std::thread::spawn(move || {
                        let _ = io::copy(&mut c2, &mut b2);
                        let _ = b2.shutdown(std::net::Shutdown::Write);
                    });
                    let _ = io::copy(&mut b, &mut c);
                    let _ = c.shutdown(std::net::Shutdown::Write);
                    let _ = up.join();
                });
            }
        });
        gate
    }

    fn wait_held(&self) {
        let until = Instant::now() + STEP;
        while self.held.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < until, "no connection reached the gate");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// How the director is set up for a test.
struct Setup {
    /// Write a master user with this password into the config (`None`: no
    /// master user at all).
    master_password: Option<&'static str>,
    /// Put a [`Gate`] in front of backend 1.
    gate: bool,
}

impl Setup {
    /// A master user with the right password, no gate.
    const PLAIN: Setup = Setup {
        master_password: Some(MASTER_PASSWORD),
        gate: false,
    };
}

struct World {
    cluster: DovecotCluster,
    mailpin: Mailpin,
    gate: Option<Gate>,
    _dir: TempDir,
}

impl World {
    fn start(setup: Setup) -> Option<World> {
        if !require_dovecot() {
            return None;
        }
        let cluster = DovecotCluster::start(
            2,
            DovecotOptions {
                master_user: Some((MASTER.into(), MASTER_PASSWORD.into())),
                users: 20,
                ..DovecotOptions::default()
            },
        );
        let dir = TempDir::new().unwrap();
        let gate = setup
            .gate
            .then(|| Gate::new(cluster.instance(1).imap_addr()));
        let mut c = String::from(
            "[server]\ncores = 2\ndrain_timeout = \"1s\"\n\n[health]\ninterval = \"60s\"\n\n\
             [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n",
        );
        if let Some(password) = setup.master_password {
            let file = dir.path().join("master.pass");
            std::fs::write(&file, format!("{password}\n")).unwrap();
            c.push_str(&format!(
                "[backends]\nmaster_user = \"{MASTER}\"\nmaster_password_file = {:?}\n\n",
                file
            ));
        }
        for (i, inst) in cluster.instances().iter().enumerate() {
            let addr = match (&gate, i) {
                (Some(g), 1) => g.addr,
                _ => inst.imap_addr(),
            };
            c.push_str(&format!(
                "[[backend]]\nname = \"b{i}\"\nhost = \"{}\"\nimap = {}\n\n",
                addr.ip(),
                addr.port()
            ));
        }
        let mailpin = Mailpin::start(&c, 1);
        Some(World {
            cluster,
            mailpin,
            gate,
            _dir: dir,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.mailpin.listen[0]
    }

    /// The instance `user` has an IMAP session on (exactly one).
    fn backend_of(&self, user: &str) -> usize {
        let on: Vec<usize> = (0..2)
            .filter(|i| self.cluster.instance(*i).who_count(user, "imap") > 0)
            .collect();
        assert_eq!(on.len(), 1, "{user} is on {on:?}");
        on[0]
    }

    fn move_user(&self, user: &str, to: usize) {
        let (code, body) = http(
            self.mailpin.admin,
            &format!("POST /users/{user}/move?to=b{to} HTTP/1.1\r\nHost: x\r\n\r\n"),
        );
        assert_eq!(code, 200, "{body}");
    }

    /// Waits until `user` has an IMAP session on instance `i` and none on
    /// the other.
    fn wait_on(&self, user: &str, i: usize) {
        let until = Instant::now() + STEP;
        loop {
            let here = self.cluster.instance(i).who_count(user, "imap");
            let there = self.cluster.instance(1 - i).who_count(user, "imap");
            if here > 0 && there == 0 {
                return;
            }
            assert!(
                Instant::now() < until,
                "{user}: {here} on {i}, {there} on the other\n{}",
                self.mailpin.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes sure `user`'s idling session is on backend 0: moves it there
    /// if it is on 1, and waits until that live move is over and counted
    /// (the move's call returns before the session has resumed).
    fn put_on_first(&self, user: &str) {
        if self.backend_of(user) != 1 {
            return;
        }
        let before = self.metric(MOVED);
        self.move_user(user, 0);
        self.wait_on(user, 0);
        let until = Instant::now() + STEP;
        while self.metric(MOVED) < before + 1.0 {
            assert!(Instant::now() < until, "the first move was not counted");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, body) = http(
            self.mailpin.admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

/// The director's connections (sockets of `mine`) to `backend` still open
/// on its side, read from /proc/net/tcp at once for every backend: every
/// state but
/// TIME_WAIT, CLOSE, CLOSE_WAIT (the backend closed: its session is over;
/// our close may still be queued), LAST_ACK and LISTEN.
fn open_connections(table: &str, backend: SocketAddr, mine: &[String]) -> usize {
    let SocketAddr::V4(v4) = backend else {
        return 0;
    };
    let ip = u32::from_ne_bytes(v4.ip().octets());
    let remote = format!("{ip:08X}:{:04X}", v4.port());
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9
                && fields[2] == remote
                && !matches!(fields[3], "06" | "07" | "08" | "09" | "0A")
                && mine.iter().any(|inode| inode == fields[9])
        })
        .count()
}

/// The socket inodes the process `pid` holds open.
fn socket_inodes(pid: u32) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| {
        let target = std::fs::read_link(fd.ok()?.path()).ok()?;
        let target = target.to_str()?;
        Some(
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .to_owned(),
        )
    })
    .collect()
}

/// Waits until `taken` reaches `n` (bounded).
fn wait_samples(taken: &AtomicUsize, n: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    while taken.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < until, "doveadm who did not answer");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Samples, until `stop`, whether `user` is open on both backends:
/// the director's connections to both (one read of /proc/net/tcp, an
/// instant) and `doveadm who` on both in the order a, b, a (it is shown on
/// both only if the first backend still has it after the second showed it).
/// Returns (samples, splits).
fn sample_both(
    cluster: &DovecotCluster,
    director: u32,
    user: &str,
    stop: &AtomicBool,
    taken: &AtomicUsize,
) -> (usize, usize) {
    let (mut samples, mut splits) = (0, 0);
    let addrs = [
        cluster.instance(0).imap_addr(),
        cluster.instance(1).imap_addr(),
    ];
    let on = |i: usize| {
        cluster
            .instance(i)
            .try_who()
            .is_ok_and(|w| w.iter().any(|e| e.user == user && e.count > 0))
    };
    let mut first = 0;
    while !stop.load(Ordering::SeqCst) {
        let mine = socket_inodes(director);
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let tcp_split = addrs
            .iter()
            .all(|a| open_connections(&table, *a, &mine) > 0);
        let who_split = on(first) && on(1 - first) && on(first);
        samples += 1;
        taken.fetch_add(1, Ordering::SeqCst);
        if tcp_split || who_split {
            eprintln!("split seen: director connections {tcp_split}, doveadm who {who_split}");
            splits += 1;
        }
        first = 1 - first;
    }
    (samples, splits)
}

const MOVED: &str = "mailpin_live_moves_total{result=\"moved\",reason=\"ok\"}";

#[test]
fn an_idle_client_follows_its_user_without_a_byte_and_sees_new_mail_there() {
    let Some(w) = World::start(Setup::PLAIN) else {
        return;
    };
    let user = "user0001";
    append(w.addr(), user, "one");
    append(w.addr(), user, "two");
    let mut idle = Imap::idling(w.addr(), user);
    let from = w.backend_of(user);
    let to = 1 - from;
    // The sampler sees the director's connection (not a vacuous check).
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mine = socket_inodes(w.mailpin.pid());
    let addr = |i: usize| w.cluster.instance(i).imap_addr();
    assert_eq!(open_connections(&table, addr(from), &mine), 1);
    assert_eq!(open_connections(&table, addr(to), &mine), 0);
    let (stop, taken) = (AtomicBool::new(false), AtomicUsize::new(0));
    let (samples, both) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_both(&w.cluster, w.mailpin.pid(), user, &stop, &taken));
        wait_samples(&taken, 1);
        w.move_user(user, to);
        w.wait_on(user, to);
        wait_samples(&taken, taken.load(Ordering::SeqCst) + 2);
        stop.store(true, Ordering::SeqCst);
        sampler.join().unwrap()
    });
    assert!(samples >= 2, "who was sampled ({samples})");
    assert_eq!(both, 0, "never on two backends ({samples} samples)");
    assert_eq!(
        idle.quiet_for(Duration::from_millis(300)),
        None,
        "no byte during the move"
    );
    assert_eq!(w.metric(MOVED), 1.0);
    // New mail through another session on the new backend reaches the
    // moved client.
    append(w.addr(), user, "three");
    assert_eq!(idle.line(), "* 3 EXISTS");
    idle.send("DONE\r\n");
    let done: Vec<String> = idle
        .until("i")
        .into_iter()
        .filter(|l| !l.starts_with("* "))
        .collect();
    assert_eq!(done.len(), 1, "exactly one tagged OK: {done:?}");
    assert!(done[0].starts_with("i OK"), "{done:?}");
    let mut other = Imap::login(w.addr(), user);
    other.ok("s", "SELECT INBOX");
    assert_eq!(idle.uid_flags(), other.uid_flags());
    assert_eq!(idle.uid_flags().len(), 3);
    assert!(w
        .mailpin
        .wait_for_log(&["session moved live"], STEP)
        .is_some());
    // The same client moves back again.
    idle.send("i2 IDLE\r\n");
    assert!(idle.line().starts_with("+ "));
    w.move_user(user, from);
    w.wait_on(user, from);
    assert_eq!(idle.quiet_for(Duration::from_millis(200)), None);
    idle.send("DONE\r\n");
    assert!(idle.line().starts_with("i2 OK"));
    assert_eq!(w.metric(MOVED), 2.0);
}

#[test]
fn done_and_a_command_sent_during_the_move_are_answered_by_the_new_backend() {
    let Some(w) = World::start(Setup {
        master_password: Some(MASTER_PASSWORD),
        gate: true,
    }) else {
        return;
    };
    let user = "user0002";
    append(w.addr(), user, "one");
    // Logged in on b0 for sure: b1's gate is open until armed.
    let mut idle = Imap::idling(w.addr(), user);
    w.put_on_first(user);
    let moved_before = w.metric(MOVED);
    let gate = w.gate.as_ref().unwrap();
    gate.armed.store(true, Ordering::SeqCst);
    w.move_user(user, 1);
    gate.wait_held();
    // The old side is closed, the new one not yet logged in.
    assert_eq!(w.cluster.instance(0).who_count(user, "imap"), 0);
    idle.send("DONE\r\nn NOOP\r\n");
    gate.release.store(true, Ordering::SeqCst);
    let lines: Vec<String> = idle
        .until("n")
        .into_iter()
        .filter(|l| !l.starts_with("* "))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("i OK"), "{lines:?}");
    assert!(lines[1].starts_with("n OK"), "{lines:?}");
    w.wait_on(user, 1);
    assert_eq!(w.metric(MOVED), moved_before + 1.0);
}

/// `user`'s client (with `enabled`) idles in `mailbox` (created when not
/// INBOX) holding `messages` messages on backend 0; the user moves to
/// backend 1, and while the move is caught between its old side's close
/// and its new side's login, `change` runs on a session straight on
/// Dovecot (backend 0's address and that session, `mailbox` selected).
/// Returns the world, the moving client (the gate released) and the
/// moved count before.
fn move_with_a_change(
    user: &str,
    messages: usize,
    mailbox: &str,
    enabled: Enabled,
    change: impl FnOnce(SocketAddr, &mut Imap),
) -> Option<(World, Imap, f64)> {
    let w = World::start(Setup {
        master_password: Some(MASTER_PASSWORD),
        gate: true,
    })?;
    if mailbox != "INBOX" {
        let mut c = Imap::login(w.addr(), user);
        c.ok("c", &format!("CREATE {mailbox}"));
        c.ok("z", "LOGOUT");
    }
    for i in 0..messages {
        append_to(w.addr(), user, mailbox, &format!("m{i}"));
    }
    let idle = Imap::idling_in(w.addr(), user, mailbox, enabled);
    w.put_on_first(user);
    let moved_before = w.metric(MOVED);
    let gate = w.gate.as_ref().unwrap();
    gate.armed.store(true, Ordering::SeqCst);
    w.move_user(user, 1);
    gate.wait_held();
    // Straight to Dovecot, between the two sides of the move.
    let old = w.cluster.instance(0).imap_addr();
    let mut direct = Imap::login(old, user);
    direct.ok("s", &format!("SELECT {mailbox}"));
    change(old, &mut direct);
    direct.ok("z", "LOGOUT");
    gate.release.store(true, Ordering::SeqCst);
    Some((w, idle, moved_before))
}

/// After a reconciled move: nothing more arrives, `DONE` gets exactly one
/// tagged OK and no EXPUNGE, `FETCH 1:* (UID FLAGS)` equals an independent
/// session's (with the same extensions); returns every line the client
/// got after the move.
fn after_the_move(w: &World, idle: &mut Imap, user: &str, enabled: Enabled) -> Vec<String> {
    assert_eq!(idle.quiet_for(Duration::from_millis(300)), None);
    w.wait_on(user, 1);
    idle.send("DONE\r\n");
    let mut seen = idle.until("i");
    let tagged: Vec<&String> = seen.iter().filter(|l| !l.starts_with("* ")).collect();
    assert_eq!(tagged.len(), 1, "{seen:?}");
    assert!(tagged[0].starts_with("i OK"), "{seen:?}");
    let noop = idle.ok("n", "NOOP");
    let mut other = Imap::login(w.addr(), user);
    other.enable(enabled);
    other.ok("s", "SELECT INBOX");
    let mine = idle.uid_flags();
    assert_eq!(mine, other.uid_flags());
    seen.extend(noop);
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("EXPUNGE") || l.contains("VANISHED")),
        "no expunge twice: {seen:?}"
    );
    seen.extend(mine);
    seen
}

#[test]
fn an_append_between_the_snapshot_and_the_new_select_is_reconciled_with_exists() {
    let Some((w, mut idle, moved_before)) =
        move_with_a_change("user0003", 2, "INBOX", Enabled::Nothing, |old, _| {
            append(old, "user0003", "three")
        })
    else {
        return;
    };
    assert_eq!(idle.line(), "* 3 EXISTS", "the appended message, once");
    assert_eq!(idle.quiet_for(Duration::from_millis(300)), None);
    w.wait_on("user0003", 1);
    idle.send("DONE\r\n");
    let done: Vec<String> = idle
        .until("i")
        .into_iter()
        .filter(|l| !l.starts_with("* "))
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(done[0].starts_with("i OK"), "{done:?}");
    let mut other = Imap::login(w.addr(), "user0003");
    other.ok("s", "SELECT INBOX");
    assert_eq!(idle.uid_flags(), other.uid_flags());
    assert_eq!(w.metric(MOVED), moved_before + 1.0);
}

const CHANGED: &str = "mailpin_live_moves_total{result=\"ended\",reason=\"mailbox_changed\"}";

/// Four messages; message 4 flagged, messages 2 and 3 expunged between the
/// snapshot and the new SELECT.
fn expunge_two_and_flag_one(_old: SocketAddr, direct: &mut Imap) {
    direct.ok("f", "STORE 4 +FLAGS (\\Flagged)");
    direct.ok("d", "STORE 2:3 +FLAGS (\\Deleted)");
    direct.ok("x", "EXPUNGE");
}

#[test]
fn an_expunge_and_a_flag_change_between_the_snapshot_and_the_new_select_are_reconciled() {
    for (user, enabled) in [
        ("user0011", Enabled::Nothing),
        ("user0012", Enabled::Condstore),
    ] {
        let Some((w, mut idle, moved_before)) =
            move_with_a_change(user, 4, "INBOX", enabled, expunge_two_and_flag_one)
        else {
            return;
        };
        // Highest first, so neither shifts the other; then message 4 (now
        // 2) with its new flags.
        let mut got = vec![idle.line(), idle.line(), idle.line()];
        assert_eq!(got[..2], ["* 3 EXPUNGE", "* 2 EXPUNGE"], "{enabled:?}");
        if enabled == Enabled::Nothing {
            assert_eq!(got[2], "* 2 FETCH (FLAGS (\\Flagged))");
        } else {
            assert!(
                got[2].starts_with("* 2 FETCH (FLAGS (\\Flagged) MODSEQ ("),
                "{}",
                got[2]
            );
        }
        got.extend(after_the_move(&w, &mut idle, user, enabled));
        if enabled == Enabled::Nothing {
            assert!(
                !got.iter().any(|l| l.contains("MODSEQ")),
                "a client without CONDSTORE never sees MODSEQ: {got:?}"
            );
        }
        assert_eq!(idle.uid_flags().len(), 2);
        assert_eq!(w.metric(MOVED), moved_before + 1.0, "{enabled:?}");
        assert_eq!(w.metric(CHANGED), 0.0);
        assert!(w
            .mailpin
            .wait_for_log(
                &["session moved live", "expunged=2", "flags_changed=1"],
                STEP
            )
            .is_some());
    }
}

#[test]
fn a_keyword_created_between_the_two_views_is_announced_with_flags() {
    let user = "user0019";
    let Some((w, mut idle, moved_before)) =
        move_with_a_change(user, 2, "INBOX", Enabled::Nothing, |_, direct| {
            // Created and taken off again: no message carries it, the
            // mailbox's keyword list still does.
            direct.ok("k", "STORE 1 +FLAGS (Urgent)");
            direct.ok("r", "STORE 1 -FLAGS (Urgent)");
        })
    else {
        return;
    };
    let flags = idle.line();
    assert!(
        flags.starts_with("* FLAGS (") && flags.contains(" Urgent"),
        "{flags}"
    );
    let permanent = idle.line();
    assert!(
        permanent.starts_with("* OK [PERMANENTFLAGS ("),
        "{permanent}"
    );
    assert_eq!(idle.line(), "* 1 FETCH (FLAGS ())");
    after_the_move(&w, &mut idle, user, Enabled::Nothing);
    assert_eq!(w.metric(MOVED), moved_before + 1.0);
}

#[test]
fn a_qresync_client_gets_vanished_for_what_was_expunged_between_the_two_views() {
    let user = "user0013";
    let Some((w, mut idle, moved_before)) =
        move_with_a_change(user, 4, "INBOX", Enabled::Qresync, expunge_two_and_flag_one)
    else {
        return;
    };
    assert_eq!(idle.line(), "* VANISHED 2:3");
    assert_eq!(idle.line(), "* 2 EXISTS");
    let fetch = idle.line();
    assert!(
        fetch.starts_with("* 2 FETCH (UID 4 FLAGS (\\Flagged) MODSEQ ("),
        "{fetch}"
    );
    let got = after_the_move(&w, &mut idle, user, Enabled::Qresync);
    assert!(!got.iter().any(|l| l.ends_with(" EXPUNGE")), "{got:?}");
    assert_eq!(w.metric(MOVED), moved_before + 1.0);
}

#[test]
fn an_expunge_the_old_backend_already_reported_is_not_sent_again() {
    for (user, enabled) in [
        ("user0014", Enabled::Nothing),
        ("user0016", Enabled::Qresync),
    ] {
        let Some(w) = World::start(Setup::PLAIN) else {
            return;
        };
        for s in ["one", "two", "three"] {
            append(w.addr(), user, s);
        }
        let mut idle = Imap::idling_in(w.addr(), user, "INBOX", enabled);
        let from = w.backend_of(user);
        // Expunged on the old backend just before the move: the client
        // hears of it from its IDLE or from the old side's NOOP, and only
        // once (a QRESYNC client as VANISHED, which lowers its count).
        let mut direct = Imap::login(w.cluster.instance(from).imap_addr(), user);
        direct.ok("s", "SELECT INBOX");
        direct.ok("d", "STORE 2 +FLAGS (\\Deleted)");
        direct.ok("x", "EXPUNGE");
        direct.ok("z", "LOGOUT");
        w.move_user(user, 1 - from);
        w.wait_on(user, 1 - from);
        // Its IDLE may have seen the \\Deleted flag before the expunge.
        let mut line = idle.line();
        while line.starts_with("* 2 FETCH ") {
            line = idle.line();
        }
        let expunged = if enabled == Enabled::Qresync {
            "* VANISHED 2"
        } else {
            "* 2 EXPUNGE"
        };
        assert_eq!(line, expunged, "{enabled:?}");
        // Then at most the new \\Recent count, and nothing more.
        // (quiet_for consumes what it reads, but not what was buffered.)
        let buffered = !idle.r.buffer().is_empty();
        if idle.quiet_for(Duration::from_millis(300)).as_deref() == Some("* 2 RECENT\r\n")
            && buffered
        {
            assert_eq!(idle.line(), "* 2 RECENT");
        }
        assert_eq!(
            idle.quiet_for(Duration::from_millis(300)),
            None,
            "{enabled:?}"
        );
        idle.send("DONE\r\n");
        let done = idle.until("i");
        let noop = idle.ok("n", "NOOP");
        assert!(
            !done
                .iter()
                .chain(&noop)
                .any(|l| l.contains("EXPUNGE") || l.contains("VANISHED")),
            "no expunge twice: {done:?} {noop:?}"
        );
        let mut other = Imap::login(w.addr(), user);
        other.enable(enabled);
        other.ok("s", "SELECT INBOX");
        assert_eq!(idle.uid_flags(), other.uid_flags());
        assert_eq!(w.metric(MOVED), 1.0, "{enabled:?}: moved live");
    }
}

#[test]
fn a_uidvalidity_change_between_the_snapshot_and_the_new_select_still_ends_the_session() {
    let user = "user0015";
    let Some((w, mut idle, _)) =
        move_with_a_change(user, 2, "Box", Enabled::Nothing, |old, direct| {
            direct.ok("u", "UNSELECT");
            direct.ok("d", "DELETE Box");
            direct.ok("c", "CREATE Box");
            append_to(old, user, "Box", "again");
            append_to(old, user, "Box", "and again");
        })
    else {
        return;
    };
    let bye = idle.line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    assert_eq!(
        idle.quiet_for(Duration::from_millis(300)).as_deref(),
        Some("<closed>")
    );
    assert_eq!(w.metric(CHANGED), 1.0);
    assert!(w
        .mailpin
        .wait_for_log(&["UIDVALIDITY differs on the new backend"], STEP)
        .is_some());
    // Ended on the new side: nothing left open anywhere.
    let until = Instant::now() + STEP;
    while w.cluster.instance(1).who_count(user, "imap") > 0 {
        assert!(Instant::now() < until, "still open on the new backend");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sessions_not_idling_end_with_bye_as_before() {
    let Some(w) = World::start(Setup::PLAIN) else {
        return;
    };
    let user = "user0004";
    append(w.addr(), user, "one");
    let mut selected = Imap::login(w.addr(), user);
    selected.ok("s", "SELECT INBOX");
    let from = w.backend_of(user);
    w.move_user(user, 1 - from);
    let bye = selected.line();
    assert!(bye.starts_with("* BYE"), "{bye}");
    let not_movable = "mailpin_live_moves_total{result=\"ended\",reason=\"not_movable\"}";
    assert_eq!(w.metric(not_movable), 1.0);
    assert!(w
        .mailpin
        .wait_for_log(&["not_moved=\"not idling\""], STEP)
        .is_some());
}

#[test]
fn idle_sessions_that_used_compress_or_notify_end_with_bye_as_before() {
    let Some(w) = World::start(Setup::PLAIN) else {
        return;
    };
    let commands = [
        (
            "user0005",
            "NOTIFY SET (selected (MessageNew MessageExpunge))",
        ),
        ("user0006", "COMPRESS DEFLATE"),
    ];
    for (user, command) in commands {
        append(w.addr(), user, "one");
        let mut c = Imap::login(w.addr(), user);
        c.ok("s", "SELECT INBOX");
        // Whatever Dovecot answers (it has no zlib plugin here), a client
        // that asked for it may rely on it: the session is not movable.
        c.send(&format!("x {command}\r\n"));
        let answer = c.until("x");
        assert!(
            !answer.last().unwrap().starts_with("x OK COMPRESS"),
            "{answer:?}"
        );
        c.send("i IDLE\r\n");
        let cont = c.line();
        assert!(cont.starts_with("+ "), "{cont}");
        let from = w.backend_of(user);
        w.move_user(user, 1 - from);
        let bye = c.line();
        assert!(bye.starts_with("* BYE"), "{command}: {bye}");
    }
    let not_movable = "mailpin_live_moves_total{result=\"ended\",reason=\"not_movable\"}";
    assert_eq!(w.metric(not_movable), 2.0);
    for why in ["NOTIFY in use", "COMPRESS in use"] {
        assert!(
            w.mailpin
                .wait_for_log(&[&format!("not_moved=\"{why}\"")], STEP)
                .is_some(),
            "{why}"
        );
    }
}

#[test]
fn an_authenticated_session_without_a_mailbox_moves_between_commands() {
    let Some(w) = World::start(Setup::PLAIN) else {
        return;
    };
    let user = "user0005";
    let mut c = Imap::login(w.addr(), user);
    let from = w.backend_of(user);
    w.move_user(user, 1 - from);
    w.wait_on(user, 1 - from);
    assert_eq!(c.quiet_for(Duration::from_millis(200)), None);
    let list = c.ok("x", "LIST \"\" INBOX");
    assert!(list[0].starts_with("* LIST"), "{list:?}");
    assert_eq!(w.metric(MOVED), 1.0);
}

#[test]
fn a_refused_master_login_or_a_dead_new_backend_ends_the_session_never_on_two() {
    for case in ["wrong master password", "new backend down"] {
        let wrong = case == "wrong master password";
        let Some(mut w) = World::start(Setup {
            master_password: Some(if wrong {
                "not-the-password"
            } else {
                MASTER_PASSWORD
            }),
            gate: false,
        }) else {
            return;
        };
        let user = "user0006";
        append(w.addr(), user, "one");
        let mut idle = Imap::idling(w.addr(), user);
        let from = w.backend_of(user);
        let to = 1 - from;
        if !wrong {
            w.cluster.instance_mut(to).kill_hard();
        }
        let (stop, taken) = (AtomicBool::new(false), AtomicUsize::new(0));
        let (_, both) = std::thread::scope(|s| {
            let sampler = s.spawn(|| sample_both(&w.cluster, w.mailpin.pid(), user, &stop, &taken));
            wait_samples(&taken, 1);
            w.move_user(user, to);
            let bye = idle.line();
            assert!(bye.starts_with("* BYE"), "{case}: {bye}");
            assert_eq!(
                idle.quiet_for(Duration::from_millis(300)).as_deref(),
                Some("<closed>")
            );
            stop.store(true, Ordering::SeqCst);
            sampler.join().unwrap()
        });
        assert_eq!(both, 0, "{case}: never on two backends");
        for i in 0..2 {
            if i == to && !wrong {
                continue;
            }
            let until = Instant::now() + STEP;
            while w.cluster.instance(i).who_count(user, "imap") > 0 {
                assert!(Instant::now() < until, "{case}: still open on {i}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let ended = "mailpin_live_moves_total{result=\"ended\",reason=\"new_backend\"}";
        assert_eq!(w.metric(ended), 1.0, "{case}");
    }
}

#[test]
fn without_a_master_user_idle_sessions_end_as_before() {
    let Some(w) = World::start(Setup {
        master_password: None,
        gate: false,
    }) else {
        return;
    };
    let user = "user0007";
    let mut idle = Imap::idling(w.addr(), user);
    let from = w.backend_of(user);
    w.move_user(user, 1 - from);
    let bye = idle.line();
    assert_eq!(
        bye,
        "* BYE Session closed by the administrator, please reconnect."
    );
    assert_eq!(w.metric(MOVED), 0.0);
}

#[test]
fn drain_and_flush_move_idle_sessions_live() {
    let Some(w) = World::start(Setup::PLAIN) else {
        return;
    };
    let users = ["user0008", "user0009"];
    let mut clients: Vec<Imap> = users.iter().map(|u| Imap::idling(w.addr(), u)).collect();
    let on: Vec<usize> = users.iter().map(|u| w.backend_of(u)).collect();
    // Drain and flush the backend of the first user; both users end up on
    // the other one, the first moved live.
    let drained = on[0];
    let (code, out, err) = w.mailpin.ctl(&["backend", &format!("b{drained}"), "drain"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = w.mailpin.ctl(&["backend", &format!("b{drained}"), "flush"]);
    assert_eq!(code, 0, "{out}{err}");
    for (u, c) in users.iter().zip(clients.iter_mut()) {
        w.wait_on(u, 1 - drained);
        assert_eq!(c.quiet_for(Duration::from_millis(200)), None, "{u}");
        c.send("DONE\r\n");
        assert!(c.line().starts_with("i OK"), "{u}");
    }
    let flushed = on.iter().filter(|b| **b == drained).count() as f64;
    assert_eq!(w.metric(MOVED), flushed);
}

#[test]
fn a_backend_removed_by_a_reload_hands_its_idle_sessions_over_live() {
    let Some(w) = World::start(Setup::PLAIN) else {
        return;
    };
    let user = "user0010";
    let mut idle = Imap::idling(w.addr(), user);
    let from = w.backend_of(user);
    // The same configuration without the user's backend.
    let path = w.mailpin.dir().join("mailpin.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let block = format!("[[backend]]\nname = \"b{from}\"\n");
    let start = config.find(&block).expect("the backend's block");
    let end = config[start + 1..]
        .find("[[backend]]")
        .map_or(config.len(), |i| start + 1 + i);
    let mut without = config.clone();
    without.replace_range(start..end, "");
    std::fs::write(&path, without).unwrap();
    let (code, out, err) = w.mailpin.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    // server.drain_timeout = 1s, then the backend retires.
    w.wait_on(user, 1 - from);
    assert_eq!(idle.quiet_for(Duration::from_millis(200)), None);
    idle.send("DONE\r\n");
    assert!(idle.line().starts_with("i OK"));
    assert_eq!(w.metric(MOVED), 1.0);
}
