//! Binary upgrade against real Dovecot (issue 10, item 3): `kill -USR2`
//! and `mailpin ctl upgrade` start the same binary as a new process that
//! takes over the listening sockets and the routing state while the old
//! one drains.
//!
//! - Under a load of ≥ 1,000 connects/s, an upgrade refuses, resets and
//!   leaves unanswered no connection; once the old process exited, each
//!   address has exactly one listening socket per core.
//! - A session held in the old process (IMAP IDLE) works on until the old
//!   process's `drain_timeout`, then ends with BYE; a user moved by admin
//!   before the upgrade lands, after it, on the backend of its session
//!   still open in the old process, never on two (`doveadm who`); a kick
//!   on the new process closes a session held in the old one.
//! - A new process that fails before it is ready leaves the old one
//!   serving, refusing nothing; upgrades repeat, and a second one waits
//!   (409) while the first old process still drains.
//!
//! - A backend marked down on the new process closes the old process's
//!   sessions there before the call returns.
//!
//! Every process a test starts is stopped by PID. Cost: about 10 s of
//! wall time when run side by side (17 s in all), mostly the IDLE
//! session's 8 s drain and the 3 s of load.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::director::{config, ListenSpec};
use support::mailpin::{http, Mailpin};
use support::procs::{pid_alive, send_signal};
use support::{require_dovecot, DovecotCluster, DovecotOptions};

/// Stops a process this test started indirectly (the new process of an
/// upgrade), by PID: SIGTERM, then SIGKILL after 10 s.
struct PidGuard(u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        send_signal(self.0, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pid_alive(self.0) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if pid_alive(self.0) {
            send_signal(self.0, libc::SIGKILL);
        }
    }
}

/// A director in front of `backends` Dovecot instances with an IMAP and a
/// POP3 listener (two cores each) and `drain` as its drain_timeout.
fn start(backends: usize, drain: &str) -> Option<(DovecotCluster, Mailpin)> {
    if !require_dovecot() {
        return None;
    }
    let cluster = DovecotCluster::start(backends, DovecotOptions::default());
    let c = config(
        &cluster,
        None,
        &format!("drain_timeout = \"{drain}\""),
        &[ListenSpec::plain("imap"), ListenSpec::plain("pop3")],
        "",
    );
    let m = Mailpin::start(&c, 2);
    Some((cluster, m))
}

/// `GET /status`'s "pid" at `admin`.
fn status_pid(admin: SocketAddr) -> u32 {
    let (code, body) = http(admin, "GET /status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["pid"].as_u64().expect("pid") as u32
}

/// `mailpin ctl upgrade`: the new process's PID.
fn ctl_upgrade(m: &Mailpin) -> u32 {
    let (code, out, err) = m.ctl(&["upgrade"]);
    assert_eq!(code, 0, "ctl upgrade: {out}{err}\n{}", m.log());
    new_pid_in(&out).unwrap_or_else(|| panic!("no pid in {out:?}"))
}

/// The PID after "the new process " in ctl's answer.
fn new_pid_in(out: &str) -> Option<u32> {
    let (_, rest) = out.split_once("the new process ")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Waits until `pid` has exited, at most `limit`.
fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// An IMAP client, line by line.
struct Imap {
    stream: TcpStream,
}

impl Imap {
    fn connect(addr: SocketAddr) -> Imap {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut s = Imap { stream };
        assert!(s.line().starts_with("* OK"));
        s
    }

    fn login(addr: SocketAddr, user: &str) -> Imap {
        let mut s = Imap::connect(addr);
        s.send(&format!("a LOGIN {user} pass"));
        let done = s.until("a ");
        assert!(done.contains(" OK"), "{done}");
        s
    }

    fn send(&mut self, line: &str) {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
    }

    /// One line, or "" at end of stream (or on an error).
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
                return line;
            }
        }
    }

    /// Everything until the server closes.
    fn rest(&mut self) -> String {
        let mut heard = String::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                return heard;
            }
            heard.push_str(&line);
        }
    }
}

/// How the load's connections ended.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    greeted: u64,
    refused: u64,
    reset: u64,
    eof: u64,
    timeout: u64,
    other: u64,
    /// The slowest greeting, from connect to its line.
    slowest: Duration,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.greeted += o.greeted;
        self.refused += o.refused;
        self.reset += o.reset;
        self.eof += o.eof;
        self.timeout += o.timeout;
        self.other += o.other;
        self.slowest = self.slowest.max(o.slowest);
    }

    fn failures(&self) -> u64 {
        self.refused + self.reset + self.eof + self.timeout + self.other
    }
}

/// Connects to `addr` at `rate` connections a second (over 16 threads)
/// until `stop`, each waiting up to 6 s for the IMAP greeting.
fn load(addr: SocketAddr, rate: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Tally> {
    std::thread::spawn(move || {
        const THREADS: u32 = 16;
        let every = Duration::from_secs(1) * THREADS / rate;
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    let mut next = Instant::now() + every * i / THREADS;
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if now < next {
                            std::thread::sleep(next - now);
                        }
                        next += every;
                        one_connection(addr, &mut tally);
                    }
                    tally
                })
            })
            .collect();
        let mut all = Tally::default();
        for w in workers {
            all.add(w.join().unwrap());
        }
        all
    })
}

fn one_connection(addr: SocketAddr, tally: &mut Tally) {
    use std::io::ErrorKind;
    let started = Instant::now();
    let mut s = match TcpStream::connect_timeout(&addr, Duration::from_secs(6)) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return tally.refused += 1,
        Err(e) if e.kind() == ErrorKind::TimedOut => return tally.timeout += 1,
        Err(_) => return tally.other += 1,
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(6)));
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return tally.eof += 1,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.contains(&b'\n') {
                    if got.starts_with(b"* OK") {
                        tally.greeted += 1;
                        tally.slowest = tally.slowest.max(started.elapsed());
                    } else {
                        tally.other += 1;
                    }
                    return;
                }
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return tally.reset += 1,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return tally.timeout += 1
            }
            Err(_) => return tally.other += 1,
        }
    }
}

/// Listening sockets on `addr` (from /proc/net/tcp, state 0A = LISTEN).
fn listeners_on(addr: SocketAddr) -> usize {
    let SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only")
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
        .count()
}

#[test]
fn an_upgrade_under_load_refuses_resets_and_drops_nothing() {
    let Some((_cluster, mut m)) = start(1, "5s") else {
        return;
    };
    let old_pid = m.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    // UPGRADE_LOAD_RATE raises the rate for a measurement (PERF.md).
    let rate: u32 = std::env::var("UPGRADE_LOAD_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1200);
    let load = load(m.listen[0], rate, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    send_signal(old_pid, libc::SIGUSR2);
    let line = m
        .wait_for_log(&["the new process serves"], Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no upgrade:\n{}", m.log()));
    let new_pid: u32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("new_pid="))
        .and_then(|p| p.parse().ok())
        .expect("new_pid in the log");
    let _new = PidGuard(new_pid);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let tally = load.join().unwrap();
    let rate = tally.greeted as f64 / started.elapsed().as_secs_f64();
    eprintln!("upgrade under load: {tally:?}, {rate:.0} greeted connections/s\n{line}");
    assert_eq!(tally.failures(), 0, "{tally:?}\n{}", m.log());
    assert!(rate >= 1000.0, "{rate:.0} connections/s");
    assert_eq!(
        status_pid(m.admin),
        new_pid,
        "the new process serves the API"
    );
    assert_eq!(m.wait_exit(Duration::from_secs(15)), Some(0), "{}", m.log());
    // One listening socket per core and address, the admin API's one.
    for addr in &m.listen {
        assert_eq!(listeners_on(*addr), 2, "{addr}");
    }
    assert_eq!(listeners_on(m.admin), 1);
    let (_, metrics) = http(m.admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        metrics.contains("mailpin_upgrades_total{result=\"ok\"} 0"),
        "the new process counts its own"
    );
}

/// The backend and session count `GET /users/USER` reports.
fn user_at(admin: SocketAddr, user: &str) -> (String, u64) {
    let (code, body) = http(
        admin,
        &format!("GET /users/{user} HTTP/1.1\r\nHost: x\r\n\r\n"),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v["backend"].as_str().unwrap().to_string(),
        v["sessions"].as_u64().unwrap(),
    )
}

/// On how many backends `doveadm who` shows `user` right now.
fn backends_with(cluster: &DovecotCluster, user: &str) -> usize {
    cluster
        .instances()
        .iter()
        .filter(|i| i.who_count(user, "imap") > 0)
        .count()
}

#[test]
fn sessions_held_in_the_old_process_are_followed_until_they_end() {
    let Some((cluster, mut m)) = start(2, "8s") else {
        return;
    };
    let addr = m.listen[0];
    let (idle_user, moved_user, kicked_user) = (cluster.user(1), cluster.user(2), cluster.user(3));
    let mut idle = Imap::login(addr, &idle_user);
    idle.send("i IDLE");
    idle.until("+ ");
    // Moved by admin before the upgrade, away from its first choice, and
    // logged in again there: that session stays in the old process.
    let mut first = Imap::login(addr, &moved_user);
    let (first_backend, _) = user_at(m.admin, &moved_user);
    let moved_to = cluster
        .instances()
        .iter()
        .map(|i| i.name().to_string())
        .find(|n| *n != first_backend)
        .unwrap();
    let (code, out, err) = m.ctl(&["move", &moved_user, &moved_to]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(first.rest().contains("* BYE"));
    let mut held = Imap::login(addr, &moved_user);
    assert_eq!(user_at(m.admin, &moved_user), (moved_to.clone(), 1));
    let mut kicked = Imap::login(addr, &kicked_user);

    let new_pid = ctl_upgrade(&m);
    let _new = PidGuard(new_pid);
    let handed_over = Instant::now();
    assert_eq!(status_pid(m.admin), new_pid);
    let mut never_split = true;
    // (3) A new login of the moved user goes through the new process to
    // the backend of its session still open in the old one.
    let mut again = Imap::login(addr, &moved_user);
    assert_eq!(
        user_at(m.admin, &moved_user),
        (moved_to.clone(), 2),
        "the old process's session counts in the new one"
    );
    never_split &= backends_with(&cluster, &moved_user) == 1;
    let on_target = cluster
        .instances()
        .iter()
        .find(|i| i.name() == moved_to)
        .unwrap();
    assert_eq!(on_target.who_count(&moved_user, "imap"), 2);
    // (4) A kick on the new process closes the session in the old one.
    let (code, out, err) = m.ctl(&["kick", &kicked_user]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": 1 sessions closed"), "{out}");
    assert!(kicked.rest().contains("* BYE"));
    assert!(cluster
        .instances()
        .iter()
        .all(|i| i.who_count(&kicked_user, "imap") == 0));
    // (2) The IDLE session in the old process works on...
    idle.send("DONE");
    assert!(idle.until("i ").contains(" OK"));
    idle.send("n NOOP");
    assert!(idle.until("n ").contains(" OK"));
    idle.send("j IDLE");
    idle.until("+ ");
    held.send("h NOOP");
    assert!(held.until("h ").contains(" OK"));
    never_split &= backends_with(&cluster, &moved_user) == 1;
    // ... until the old process's drain_timeout, then BYE, and it exits 0.
    assert!(idle.rest().contains("* BYE"));
    let lasted = handed_over.elapsed();
    assert!(lasted >= Duration::from_millis(7500), "{lasted:?}");
    assert!(held.rest().contains("* BYE"));
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(0), "{}", m.log());
    // The new process has seen the old session end: one left, its own.
    let deadline = Instant::now() + Duration::from_secs(5);
    while user_at(m.admin, &moved_user).1 != 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(user_at(m.admin, &moved_user), (moved_to.clone(), 1));
    never_split &= backends_with(&cluster, &moved_user) == 1;
    assert!(
        never_split,
        "doveadm who showed the moved user on two backends"
    );
    again.send("z NOOP");
    assert!(again.until("z ").contains(" OK"));
}

#[test]
fn a_new_process_that_fails_before_ready_leaves_the_old_one_serving() {
    let Some((cluster, mut m)) = start(1, "3s") else {
        return;
    };
    let old_pid = m.pid();
    let path = m.dir().join("mailpin.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{good}\n[server]\nnot toml at all [[\n")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(m.listen[0], 1000, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err) = m.ctl(&["upgrade"]);
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let tally = load.join().unwrap();
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("failed") && err.contains("configuration"),
        "{err}"
    );
    let failed_pid: u32 = err
        .split_once("(pid ")
        .and_then(|(_, r)| r.split(')').next()?.parse().ok())
        .expect("the failed process's pid");
    assert!(wait_gone(failed_pid, Duration::from_secs(5)));
    assert_eq!(tally.failures(), 0, "{tally:?}");
    assert!(tally.greeted > 500, "{tally:?}");
    assert_eq!(status_pid(m.admin), old_pid);
    let (_, metrics) = http(m.admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        metrics.contains("mailpin_upgrades_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    // Serving on: a login works, and with the file mended the upgrade does.
    Imap::login(m.listen[0], &cluster.user(1));
    std::fs::write(&path, good).unwrap();
    let new_pid = ctl_upgrade(&m);
    let _new = PidGuard(new_pid);
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(0));
    assert_eq!(status_pid(m.admin), new_pid);
}

#[test]
fn upgrades_repeat_and_wait_for_the_previous_drain() {
    let Some((cluster, mut m)) = start(1, "2s") else {
        return;
    };
    let user = cluster.user(5);
    let mut held = Imap::login(m.listen[0], &user);
    let first = ctl_upgrade(&m);
    let mut guards = vec![PidGuard(first)];
    // While the first old process drains, a second upgrade waits.
    let (code, out, err) = m.ctl(&["upgrade"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("still drains"), "{err}");
    assert!(held.rest().contains("* BYE"));
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(0));
    let mut previous = first;
    for round in 0..3 {
        let round_started = Instant::now();
        // The new process learns that its predecessor exited as it does.
        let deadline = Instant::now() + Duration::from_secs(10);
        let next = loop {
            let (code, out, err) = m.ctl(&["upgrade"]);
            if code == 0 {
                break new_pid_in(&out).expect("pid");
            }
            assert!(err.contains("still drains"), "{err}");
            assert!(Instant::now() < deadline, "{err}");
            std::thread::sleep(Duration::from_millis(100));
        };
        guards.push(PidGuard(next));
        assert!(
            wait_gone(previous, Duration::from_secs(10)),
            "{previous} drained and exited"
        );
        assert_eq!(status_pid(m.admin), next);
        let mut s = Imap::login(m.listen[0], &user);
        s.send("b LOGOUT");
        s.rest();
        eprintln!("upgrade {round}: {:?}", round_started.elapsed());
        previous = next;
    }
    for addr in &m.listen {
        assert_eq!(listeners_on(*addr), 2, "{addr}");
    }
    let (_, metrics) = http(m.admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(metrics.contains("mailpin_upgrades_total"), "{metrics}");
}

#[test]
fn a_backend_marked_down_on_the_new_process_closes_the_old_ones_sessions_first() {
    let Some((cluster, mut m)) = start(2, "20s") else {
        return;
    };
    let user = cluster.user(6);
    let mut held = Imap::login(m.listen[0], &user);
    let (backend, _) = user_at(m.admin, &user);
    let new_pid = ctl_upgrade(&m);
    let _new = PidGuard(new_pid);
    // The new process forwards the admin state and answers once the old
    // process's session there is closed.
    let (code, out, err) = m.ctl(&["backend", &backend, "down"]);
    assert_eq!(code, 0, "{out}{err}");
    // Closed now, not at the old process's drain_timeout (20 s).
    held.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(held.rest().contains("* BYE"));
    let instance = cluster
        .instances()
        .iter()
        .find(|i| i.name() == backend)
        .unwrap();
    assert_eq!(instance.who_count(&user, "imap"), 0);
    // The user's next login goes elsewhere, through the new process.
    let _again = Imap::login(m.listen[0], &user);
    let (now_on, sessions) = user_at(m.admin, &user);
    assert_ne!(now_on, backend);
    assert_eq!(sessions, 1);
    assert_eq!(backends_with(&cluster, &user), 1);
    // The old process had nothing left to drain: it is gone long before
    // its drain_timeout.
    assert_eq!(m.wait_exit(Duration::from_secs(10)), Some(0));
}
