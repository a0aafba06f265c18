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
//!
//! Gates ([`support::gate`]) in front of both backends hold a move at
//! every boundary between two steps of either backend dialogue; there an
//! APPEND, EXPUNGE or STORE is made straight on Dovecot, or the client
//! sends `DONE` (and a command): the session moves with a right view,
//! every expunge told once, and one answer per command, or ends with BYE.

mod support;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::dovecot::DEFAULT_PASSWORD;
use support::gate::{Gate, Hold, Side};
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

/// How the director is set up for a test.
struct Setup {
    /// Write a master user with this password into the config (`None`: no
    /// master user at all).
    master_password: Option<&'static str>,
    /// Put a [`Gate`] in front of each backend.
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
    /// The gates in front of backends 0 and 1 (none without
    /// [`Setup::gate`]).
    gates: Vec<Gate>,
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
                users: 40,
                // Dovecot's "* OK Still here" comes at a time hashed from
                // the user within this interval (default 2 minutes): keep
                // it out of the checks that no byte arrives.
                extra_config: "imap_idle_notify_interval = 30 mins\n".into(),
                ..DovecotOptions::default()
            },
        );
        let dir = TempDir::new().unwrap();
        let gates: Vec<Gate> = match setup.gate {
            true => (0..2)
                .map(|i| Gate::new(cluster.instance(i).imap_addr()))
                .collect(),
            false => Vec::new(),
        };
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
            let addr = gates.get(i).map_or(inst.imap_addr(), |g| g.addr);
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
            gates,
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
    w.onto_backend_0(user);
    let moved_before = w.metric(MOVED);
    let gate = &w.gates[1];
    gate.arm(BEFORE_NEW_GREETING);
    w.move_user(user, 1);
    gate.wait_held(STEP);
    // The old side is closed, the new one not yet logged in.
    assert_eq!(w.cluster.instance(0).who_count(user, "imap"), 0);
    idle.send("DONE\r\nn NOOP\r\n");
    gate.release();
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
    w.onto_backend_0(user);
    let moved_before = w.metric(MOVED);
    let gate = &w.gates[1];
    gate.arm(BEFORE_NEW_GREETING);
    w.move_user(user, 1);
    gate.wait_held(STEP);
    // Straight to Dovecot, between the two sides of the move.
    let old = w.cluster.instance(0).imap_addr();
    let mut direct = Imap::login(old, user);
    direct.ok("s", &format!("SELECT {mailbox}"));
    change(old, &mut direct);
    direct.ok("z", "LOGOUT");
    gate.release();
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

// ---------------------------------------------------------------------
// Every step boundary of a move (issue 12): a change or the client's DONE
// while a gate holds the move between two steps of either backend
// dialogue (src/backend/imap_resume.rs).

/// Where the new backend's gate held the move in the first tests: the
/// connection open, its greeting not yet passed on.
const BEFORE_NEW_GREETING: Hold = Hold::before(Side::Backend, "* OK");

/// A step boundary of a move: which backend's gate holds it, and where.
struct Boundary {
    name: &'static str,
    /// 0: the old backend's gate, 1: the new backend's.
    gate: usize,
    hold: Hold,
}

impl Boundary {
    const fn old(name: &'static str, hold: Hold) -> Boundary {
        Boundary {
            name,
            gate: 0,
            hold,
        }
    }

    const fn new(name: &'static str, hold: Hold) -> Boundary {
        Boundary {
            name,
            gate: 1,
            hold,
        }
    }
}

/// Every boundary between two steps, in the order a move passes them. The
/// old side's commands go one at a time (`mpm0` STATUS after `DONE`,
/// `mpm1` NOOP, `mpm2` UID FETCH, `mpm4` EXAMINE, `mpm3` LOGOUT); the new
/// side's: greeting, `mpm4` ID + `mpm5` AUTHENTICATE, `mpm7` SELECT,
/// `mpm8` UID FETCH, the probe connection (`p1` ID, `p2` login, `p3`
/// STATUS, `p4`/`p5` only after a change), then `IDLE` and its `+`.
const BOUNDARIES: [Boundary; 13] = [
    Boundary::old(
        "old: idling, before DONE",
        Hold::before(Side::Director, "DONE"),
    ),
    Boundary::old(
        "old: STATUS answered, before NOOP",
        Hold::before(Side::Director, "mpm1 "),
    ),
    Boundary::old(
        "old: NOOP answered, before the UID listing",
        Hold::before(Side::Director, "mpm2 "),
    ),
    Boundary::old(
        "old: listed, before EXAMINE",
        Hold::before(Side::Director, "mpm4 "),
    ),
    Boundary::old(
        "old: EXAMINE answered, before LOGOUT",
        Hold::before(Side::Director, "mpm3 "),
    ),
    Boundary::old(
        "old: LOGOUT sent, before its answer",
        Hold::before(Side::Backend, "* BYE"),
    ),
    Boundary::new("new: connected, before the greeting", BEFORE_NEW_GREETING),
    Boundary::new(
        "new: greeted, before ID and the master login",
        Hold::before(Side::Director, "mpm4 "),
    ),
    Boundary::new(
        "new: logged in, before SELECT",
        Hold::after(Side::Backend, "mpm5 "),
    ),
    Boundary::new(
        "new: selected, before the UID listing",
        Hold::after(Side::Backend, "mpm7 "),
    ),
    Boundary::new(
        "new: listed, before the probe",
        Hold::before(Side::Director, "p1 "),
    ),
    Boundary::new(
        "new: probe's STATUS answered, before IDLE",
        Hold::after(Side::Backend, "p3 "),
    ),
    Boundary::new(
        "new: IDLE sent, before its continuation",
        Hold::before(Side::Backend, "+ "),
    ),
];

/// A change made straight on Dovecot while a move is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A fourth message.
    Append,
    /// Message 2 of 3 flagged `\Deleted` and expunged.
    Expunge,
    /// Message 1 flagged.
    Store,
}

impl Change {
    const ALL: [Change; 3] = [Change::Append, Change::Expunge, Change::Store];

    /// Makes the change on `direct` (INBOX selected), a session of its own.
    fn make(self, direct: &mut Imap) {
        match self {
            Change::Append => {
                let msg = "Subject: during the move\r\n\r\nbody\r\n";
                direct.send(&format!("a APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()));
                let lines = direct.until("a");
                assert!(lines.last().unwrap().starts_with("a OK"), "{lines:?}");
            }
            Change::Expunge => {
                direct.ok("d", "STORE 2 +FLAGS (\\Deleted)");
                direct.ok("x", "EXPUNGE");
            }
            Change::Store => drop(direct.ok("f", "STORE 1 +FLAGS (\\Flagged)")),
        }
    }
}

/// The UID and the flags (sorted, without `\Recent`) a FETCH line tells.
fn fetched(line: &str) -> Known {
    let uid = line
        .split_once("UID ")
        .and_then(|(_, r)| r.split([' ', ')']).next())
        .and_then(|n| n.parse().ok());
    let flags = line.split_once("FLAGS (").map(|(_, r)| {
        let mut flags: Vec<&str> = r[..r.find(')').unwrap_or(r.len())]
            .split_whitespace()
            .filter(|f| *f != "\\Recent")
            .collect();
        flags.sort_unstable();
        flags.join(" ")
    });
    (uid, flags)
}

/// A message as a client knows it: its UID and flags, once told.
type Known = (Option<u32>, Option<String>);

/// What a client knows of its selected mailbox from what it was told: per
/// message, in sequence order, its UID and flags once told.
#[derive(Debug, Default)]
struct View {
    messages: Vec<Known>,
    /// EXPUNGE responses applied.
    expunges: usize,
}

impl View {
    /// Applies one untagged line; an error for one that cannot be right
    /// for this view (an EXPUNGE or FETCH of a message the client does not
    /// have, EXISTS lowering the count, a message changing its UID).
    fn apply(&mut self, line: &str) -> Result<(), String> {
        let mut words = line.split(' ');
        let (star, n, what) = (words.next(), words.next(), words.next());
        let Some(n) = n.and_then(|n| n.parse::<usize>().ok()) else {
            return Ok(());
        };
        if star != Some("*") {
            return Ok(());
        }
        let have = self.messages.len();
        match what {
            Some("EXPUNGE") if (1..=have).contains(&n) => {
                self.messages.remove(n - 1);
                self.expunges += 1;
            }
            Some("EXISTS") if n >= have => self.messages.resize(n, (None, None)),
            Some("FETCH") if (1..=have).contains(&n) => {
                let (uid, flags) = fetched(line);
                let known = &mut self.messages[n - 1];
                if let (Some(was), Some(now)) = (known.0, uid) {
                    if was != now {
                        return Err(format!("{line}: message {n} was UID {was}"));
                    }
                }
                known.0 = known.0.or(uid);
                known.1 = flags.or(known.1.take());
            }
            Some("RECENT") => {}
            _ => return Err(format!("{line}: the client has {have} messages")),
        }
        Ok(())
    }

    /// Whether everything the client knows agrees with `truth` (UIDs and
    /// flags of an independent session), the count included.
    fn agrees(&self, truth: &[Known]) -> Result<(), String> {
        if self.messages.len() != truth.len() {
            return Err(format!(
                "the client counts {} messages, there are {}",
                self.messages.len(),
                truth.len()
            ));
        }
        for (i, (mine, real)) in self.messages.iter().zip(truth).enumerate() {
            let uid_wrong = mine.0.is_some() && mine.0 != real.0;
            let flags_wrong = mine.1.is_some() && mine.1 != real.1;
            if uid_wrong || flags_wrong {
                return Err(format!("message {}: {mine:?}, really {real:?}", i + 1));
            }
        }
        Ok(())
    }
}

/// The UIDs and flags of `FETCH 1:* (UID FLAGS)` lines, in order.
fn uid_flag_list(lines: &[String]) -> Vec<Known> {
    let mut list: Vec<(usize, Known)> = lines
        .iter()
        .filter_map(|l| {
            let n = l.strip_prefix("* ")?.split(' ').next()?.parse().ok()?;
            l.contains(" FETCH ").then(|| (n, fetched(l)))
        })
        .collect();
    list.sort_by_key(|(n, _)| *n);
    list.into_iter().map(|(_, m)| m).collect()
}

impl World {
    /// All live moves so far, whatever their result.
    fn live_moves(&self) -> f64 {
        let (_, body) = http(
            self.mailpin.admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        body.lines()
            .filter(|l| l.starts_with("mailpin_live_moves_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the live moves counted pass `before` (a move ended,
    /// one way or the other).
    fn wait_move_over(&self, before: f64) {
        let until = Instant::now() + STEP;
        while self.live_moves() <= before {
            assert!(Instant::now() < until, "the move did not end");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Moves `user` (its idling client) to backend 0 if it is on 1, and
    /// waits for the move to be over and counted: the session is on
    /// backend 0 once its new login shows, before the move ends.
    fn onto_backend_0(&self, user: &str) {
        if self.backend_of(user) == 1 {
            let before = self.live_moves();
            self.move_user(user, 0);
            self.wait_move_over(before);
            self.wait_on(user, 0);
        }
    }

    /// Waits until `user` has no IMAP session on either backend.
    fn wait_gone(&self, user: &str) {
        let until = Instant::now() + STEP;
        while (0..2).any(|i| self.cluster.instance(i).who_count(user, "imap") > 0) {
            assert!(Instant::now() < until, "{user} still open somewhere");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `user`'s client idles in INBOX on backend 0 (its first lines:
    /// `FETCH 1:* (UID FLAGS)` before IDLE make its view).
    fn idling_on_0(&self, user: &str) -> (Imap, View) {
        let mut c = Imap::login(self.addr(), user);
        c.ok("s", "SELECT INBOX");
        let view = View {
            messages: uid_flag_list(&c.ok("f", "FETCH 1:* (UID FLAGS)")),
            expunges: 0,
        };
        c.send("i IDLE\r\n");
        let cont = c.line();
        assert!(cont.starts_with("+ "), "{cont}");
        self.onto_backend_0(user);
        (c, view)
    }

    /// Moves `user` to backend 1 with `boundary`'s gate armed; once it
    /// holds, checks the user is open on one backend at most and runs
    /// `at_the_hold`, then releases the gate and waits for the move's end.
    fn move_held(&self, user: &str, boundary: &Boundary, at_the_hold: impl FnOnce()) {
        let before = self.live_moves();
        let gate = &self.gates[boundary.gate];
        gate.arm(boundary.hold);
        // The move's call returns once the old side is closed: from a
        // thread of its own, as the hold may come first.
        std::thread::scope(|s| {
            let mover = s.spawn(|| self.move_user(user, 1));
            let held = std::panic::catch_unwind(|| gate.wait_held(STEP));
            if held.is_ok() {
                let on: Vec<bool> = (0..2)
                    .map(|i| self.cluster.instance(i).who_count(user, "imap") > 0)
                    .collect();
                let split = on[0] && on[1];
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(at_the_hold));
                gate.release();
                assert!(!split, "{user} open on both backends at the hold");
                if let Err(e) = ran {
                    std::panic::resume_unwind(e);
                }
            }
            gate.release();
            mover.join().expect("the move's call");
            if let Err(e) = held {
                std::panic::resume_unwind(e);
            }
        });
        self.wait_move_over(before);
    }
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Moved,
    Bye,
}

/// One case: `user` (three messages) idles on backend 0, moves to backend
/// 1, and at `boundary` `change` is made straight on Dovecot. Either the
/// session moved — then after `DONE` and a `NOOP` everything the client
/// was told agrees with an independent session, every expunge told once,
/// and it is open on backend 1 only — or it ended with `* BYE` and is open
/// nowhere.
fn change_case(w: &World, user: &str, boundary: &Boundary, change: Change) -> Ended {
    for s in ["one", "two", "three"] {
        append(w.addr(), user, s);
    }
    let (mut idle, mut view) = w.idling_on_0(user);
    let moved_before = w.metric(MOVED);
    w.move_held(user, boundary, || {
        let mut direct = Imap::login(w.cluster.instance(0).imap_addr(), user);
        direct.ok("s", "SELECT INBOX");
        change.make(&mut direct);
        direct.ok("z", "LOGOUT");
    });
    if w.metric(MOVED) == moved_before {
        // Everything until the connection closes: updates the view can
        // take, then `* BYE`, nothing after.
        let mut told = Vec::new();
        let mut line = String::new();
        while idle.r.read_line(&mut line).is_ok_and(|n| n > 0) {
            told.push(line.trim_end().to_string());
            line.clear();
        }
        let bye = told.iter().position(|l| l.starts_with("* BYE"));
        assert_eq!(
            bye,
            Some(told.len().wrapping_sub(1)),
            "a BYE, last: {told:?}\n{}",
            w.mailpin.log()
        );
        for l in &told[..told.len() - 1] {
            view.apply(l)
                .unwrap_or_else(|e| panic!("{e}; told {told:?}"));
        }
        w.wait_gone(user);
        return Ended::Bye;
    }
    idle.send("DONE\r\n");
    let mut told = idle.until("i");
    told.extend(idle.ok("n", "NOOP"));
    let tagged: Vec<&String> = told.iter().filter(|l| !l.starts_with("* ")).collect();
    assert_eq!(tagged.len(), 2, "{told:?}");
    assert!(tagged[0].starts_with("i OK"), "{told:?}");
    for l in told.iter().filter(|l| l.starts_with("* ")) {
        view.apply(l)
            .unwrap_or_else(|e| panic!("{e}; told {told:?}"));
    }
    let expunged = usize::from(change == Change::Expunge);
    assert_eq!(view.expunges, expunged, "each expunge once: {told:?}");
    let mut other = Imap::login(w.addr(), user);
    other.ok("s", "SELECT INBOX");
    let truth = other.uid_flags();
    view.agrees(&uid_flag_list(&truth))
        .unwrap_or_else(|e| panic!("{e}; told {told:?}"));
    assert_eq!(idle.uid_flags(), truth);
    w.wait_on(user, 1);
    other.ok("z", "LOGOUT");
    idle.ok("z", "LOGOUT");
    Ended::Moved
}

/// A named case of a table-driven test, run for one user.
type Case<'w> = (String, Box<dyn FnOnce(&str) -> Ended + 'w>);

/// Runs `case` for each of `cases` (a fresh user each), catching each
/// failure; prints one line per case and the time all took; panics
/// listing every failed case.
fn run_cases(what: &str, cases: Vec<Case<'_>>, w: &World) {
    let started = Instant::now();
    let mut failed = Vec::new();
    for (i, (name, case)) in cases.into_iter().enumerate() {
        let user = format!("user{:04}", i + 1);
        let t = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&user)));
        for gate in &w.gates {
            gate.release();
        }
        let took = t.elapsed().as_secs_f64();
        match result {
            Ok(end) => eprintln!("{what}: {name}: {end:?} ({took:.2} s)"),
            Err(e) => {
                let why = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let log = w.mailpin.log();
                let about: Vec<&str> = log.lines().filter(|l| l.contains(&user)).collect();
                eprintln!(
                    "{what}: {name}: FAILED ({took:.2} s): {why}\n  {user} in the log:\n  {}",
                    about.join("\n  ")
                );
                failed.push(format!("{name}: {why}"));
            }
        }
    }
    eprintln!(
        "{what}: all cases in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn a_change_at_every_step_of_a_move_is_reconciled_or_ends_the_session_and_never_on_the_old_side() {
    let Some(w) = World::start(Setup {
        master_password: Some(MASTER_PASSWORD),
        gate: true,
    }) else {
        return;
    };
    let mut cases: Vec<Case<'_>> = Vec::new();
    for boundary in &BOUNDARIES {
        for change in Change::ALL {
            let w = &w;
            cases.push((
                format!("{} × {change:?}", boundary.name),
                Box::new(move |user| {
                    let ended = change_case(w, user, boundary, change);
                    // On the old side every change is told to the client
                    // (a listing taken again when one came during it).
                    if boundary.gate == 0 {
                        assert!(matches!(ended, Ended::Moved), "ended: {ended:?}");
                    }
                    ended
                }),
            ));
        }
    }
    run_cases("change", cases, &w);
}

/// One case: `user` idles on backend 0 and moves to backend 1; at
/// `boundary` the client sends `DONE` (and `n NOOP` with `noop`). It gets
/// exactly one tagged OK for `i` (and one for `n`), nothing tagged after,
/// and the session is on backend 1.
fn done_case(w: &World, user: &str, boundary: &Boundary, noop: bool) -> Ended {
    append(w.addr(), user, "one");
    let (mut idle, _) = w.idling_on_0(user);
    let moved_before = w.metric(MOVED);
    w.move_held(user, boundary, || {
        idle.send(if noop {
            "DONE\r\nn NOOP\r\n"
        } else {
            "DONE\r\n"
        });
    });
    let mut told = idle.until("i");
    if noop {
        told.extend(idle.until("n"));
    }
    told.extend(idle.ok("c", "NOOP"));
    let tagged: Vec<&str> = told
        .iter()
        .filter(|l| !l.starts_with("* "))
        .map(|l| l.split(' ').next().unwrap_or_default())
        .collect();
    let want: &[&str] = if noop { &["i", "n", "c"] } else { &["i", "c"] };
    assert_eq!(tagged, want, "{told:?}");
    assert!(
        told.iter()
            .filter(|l| !l.starts_with("* "))
            .all(|l| l.split(' ').nth(1) == Some("OK")),
        "{told:?}"
    );
    assert_eq!(w.metric(MOVED), moved_before + 1.0, "moved live");
    w.wait_on(user, 1);
    idle.ok("z", "LOGOUT");
    Ended::Moved
}

#[test]
fn done_or_done_and_a_command_at_every_step_of_a_move_get_one_answer_each() {
    let Some(w) = World::start(Setup {
        master_password: Some(MASTER_PASSWORD),
        gate: true,
    }) else {
        return;
    };
    let mut cases: Vec<Case<'_>> = Vec::new();
    for boundary in &BOUNDARIES {
        for noop in [false, true] {
            let w = &w;
            let sent = if noop { "DONE + NOOP" } else { "DONE" };
            cases.push((
                format!("{} × {sent}", boundary.name),
                Box::new(move |user| done_case(w, user, boundary, noop)),
            ));
        }
    }
    run_cases("done", cases, &w);
}
