//! Health per backend and per protocol port, against real Dovecot.
//!
//! A backend whose POP3 port is closed while its IMAP port works: held
//! IMAP sessions of its users survive 30 s of POP3 logins of the same
//! users, which all get `-ERR [SYS/TEMP]`; no user moves, IMAP health never
//! flips, and `/backends`, `ctl backends` and the metrics show the backend
//! degraded with its POP3 port down. A backend that greets with a refusal
//! for load (`* BYE`) has the login fail over and is not marked down.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::dovecot::DEFAULT_PASSWORD;
use support::mailpin::{http, Mailpin};
use support::{require_dovecot, DovecotCluster, DovecotOptions, LineClient};

/// How long the POP3 logins hammer the degraded backend.
const POP3_LOAD: Duration = Duration::from_secs(30);
/// Threads logging in over POP3 at once.
const POP3_CLIENTS: usize = 10;
/// IMAP sessions held on the degraded backend.
const HELD: usize = 10;

/// A GET on the admin API; returns (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

/// The `/backends` row of `name`.
fn backend_row(m: &Mailpin, name: &str) -> Value {
    let (code, body) = get(m.admin, "/backends");
    assert_eq!(code, 200, "{body}");
    let rows: Value = serde_json::from_str(&body).unwrap();
    rows.as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no backend {name} in {body}"))
}

/// The backend `/users/USER` names.
fn assigned(m: &Mailpin, user: &str) -> String {
    let (code, body) = get(m.admin, &format!("/users/{user}"));
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["backend"].as_str().unwrap_or_default().to_string()
}

/// The value of one metric series (`name{labels}`), panicking when absent.
fn metric(m: &Mailpin, series: &str) -> f64 {
    let (_, body) = get(m.admin, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {series} in:\n{body}"))
}

/// A port on `addr` where nothing listens (bound once, then released; the
/// address is this test's own loopback address).
fn closed_port(addr: std::net::Ipv4Addr) -> u16 {
    let l = TcpListener::bind((addr, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// Logs `user` in over IMAP through `listener`.
fn imap_login(listener: SocketAddr, user: &str) -> LineClient {
    let mut c = LineClient::connect(listener).unwrap();
    let greeting = c.read_line().unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let r = c.imap(&format!("LOGIN {user} {DEFAULT_PASSWORD}")).unwrap();
    assert!(r.is_ok(), "{user}: {}", r.status);
    c
}

/// One POP3 login of `user` through `listener`: the answer to PASS.
fn pop3_login(listener: SocketAddr, user: &str) -> std::io::Result<String> {
    let mut c = LineClient::connect(listener)?;
    let greeting = c.read_line()?;
    if !greeting.starts_with("+OK") {
        return Ok(format!("greeting {greeting}"));
    }
    c.send_line(&format!("USER {user}"))?;
    let user_reply = c.read_line()?;
    if !user_reply.starts_with("+OK") {
        return Ok(format!("USER: {user_reply}"));
    }
    c.send_line(&format!("PASS {DEFAULT_PASSWORD}"))?;
    let answer = c.read_line()?;
    let _ = c.send_line("QUIT");
    Ok(answer)
}

#[test]
fn a_closed_pop3_port_never_closes_or_moves_imap_sessions() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(
        2,
        DovecotOptions {
            users: 40,
            ..DovecotOptions::default()
        },
    );
    let (b0, b1) = (cluster.instance(0), cluster.instance(1));
    // A slow interval, so POP3 logins meet the closed port before the
    // checks have declared it down: the passive path is exercised too.
    let config = format!(
        "[server]\ncores = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [health]\ninterval = \"2s\"\nfall = 2\nrise = 2\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n\
         [[listen]]\nprotocol = \"pop3\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n\
         [[backend]]\nname = \"b0\"\nhost = \"{}\"\nimap = {}\npop3 = {}\n\n\
         [[backend]]\nname = \"b1\"\nhost = \"{}\"\nimap = {}\npop3 = {}\n\n",
        b0.addr(),
        b0.imap_port(),
        closed_port(b0.addr()),
        b1.addr(),
        b1.imap_port(),
        b1.pop3_port(),
    );
    let m = Mailpin::start(&config, 2);
    let (imap, pop3) = (m.listen[0], m.listen[1]);

    // Hold HELD IMAP sessions of users mailpin put on b0.
    let mut held: BTreeMap<String, LineClient> = BTreeMap::new();
    for n in 1..=40 {
        if held.len() == HELD {
            break;
        }
        let user = cluster.user(n);
        let mut c = imap_login(imap, &user);
        if assigned(&m, &user) == "b0" {
            held.insert(user, c);
        } else {
            let _ = c.imap("LOGOUT");
        }
    }
    assert_eq!(held.len(), HELD, "{HELD} of 40 users land on b0");

    // POP3 logins of those very users, from POP3_CLIENTS threads, 30 s.
    let users: Vec<String> = held.keys().cloned().collect();
    let stop_at = Instant::now() + POP3_LOAD;
    let workers: Vec<_> = (0..POP3_CLIENTS)
        .map(|i| {
            let user = users[i % users.len()].clone();
            std::thread::spawn(move || {
                let (mut temp_failures, mut other) = (0u64, Vec::new());
                while Instant::now() < stop_at {
                    match pop3_login(pop3, &user) {
                        Ok(a) if a.starts_with("-ERR [SYS/TEMP]") => temp_failures += 1,
                        Ok(a) => other.push(a),
                        Err(e) => other.push(format!("{e}")),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                (temp_failures, other)
            })
        })
        .collect();
    // Meanwhile the held IMAP sessions keep answering.
    let mut noops = 0;
    while Instant::now() < stop_at {
        for (user, c) in held.iter_mut() {
            let r = c
                .imap("NOOP")
                .unwrap_or_else(|e| panic!("{user}'s IMAP session was closed: {e}"));
            assert!(r.is_ok(), "{user}: NOOP {}", r.status);
            noops += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut temp_failures = 0;
    for w in workers {
        let (n, other) = w.join().unwrap();
        assert!(
            other.is_empty(),
            "every POP3 login gets -ERR [SYS/TEMP], not: {:?}",
            &other[..other.len().min(5)]
        );
        temp_failures += n;
    }
    eprintln!("{temp_failures} POP3 logins got -ERR [SYS/TEMP]; {noops} NOOPs answered OK");
    assert!(temp_failures >= 100, "POP3 logins made: {temp_failures}");
    assert!(noops >= HELD * 20, "NOOPs sent: {noops}");

    // Every IMAP session is still there, on b0, and nobody moved.
    let who = b0.who();
    for (user, c) in held.iter_mut() {
        assert!(c.imap("NOOP").unwrap().is_ok(), "{user}");
        assert_eq!(
            support::dovecot::sessions_of(&who, user, "imap"),
            1,
            "{user} on b0: {who:?}"
        );
        assert_eq!(assigned(&m, user), "b0", "{user} stays on b0");
    }
    assert_eq!(metric(&m, "mailpin_kicks_total"), 0.0, "no session closed");

    // The state shows b0 degraded: IMAP healthy, POP3 down; no flapping.
    let row = backend_row(&m, "b0");
    assert_eq!(row["health"], "degraded", "{row}");
    assert_eq!(
        row["protocols"],
        serde_json::json!({"imap": "healthy", "pop3": "unhealthy"}),
        "{row}"
    );
    assert_eq!(row["routable"], true, "{row}");
    assert_eq!(row["sessions"], HELD, "{row}");
    assert_eq!(backend_row(&m, "b1")["health"], "healthy");
    let flips = |b: &str, p: &str| {
        metric(
            &m,
            &format!("mailpin_backend_health_flips_total{{backend=\"{b}\",protocol=\"{p}\"}}"),
        )
    };
    assert_eq!(flips("b0", "imap"), 0.0, "IMAP health never flipped");
    assert_eq!(flips("b0", "pop3"), 1.0, "POP3 went down once and stayed");
    assert_eq!(flips("b1", "imap") + flips("b1", "pop3"), 0.0);
    assert_eq!(
        metric(
            &m,
            "mailpin_backend_protocol_healthy{backend=\"b0\",protocol=\"pop3\"}"
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            "mailpin_backend_protocol_healthy{backend=\"b0\",protocol=\"imap\"}"
        ),
        1.0
    );
    let (code, table, _) = m.ctl(&["backends"]);
    assert_eq!(code, 0);
    let b0_row = table
        .lines()
        .find(|l| l.starts_with("b0 "))
        .unwrap_or_else(|| panic!("b0 row in:\n{table}"));
    assert!(
        b0_row.contains("degraded") && b0_row.contains("imap=up,pop3=down"),
        "{b0_row}"
    );
    for (_, mut c) in held {
        let _ = c.imap("LOGOUT");
    }
}

/// A fake IMAP backend that greets every connection with `* BYE` (a
/// server at its process limit) and hangs up.
struct BusyBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyBackend {
    fn start() -> BusyBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(mut c) = conn {
                    let _ = c.write_all(b"* BYE Server is busy, try again later\r\n");
                }
            }
        });
        BusyBackend {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_load_refusing_greeting_fails_the_login_over_without_marking_the_backend_down() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(
        1,
        DovecotOptions {
            users: 30,
            ..DovecotOptions::default()
        },
    );
    let busy = BusyBackend::start();
    let real = cluster.instance(0);
    let config = format!(
        "[server]\ncores = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [health]\ninterval = \"200ms\"\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n\
         [[backend]]\nname = \"busy\"\nhost = \"127.0.0.1\"\nimap = {}\n\n\
         [[backend]]\nname = \"b0\"\nhost = \"{}\"\nimap = {}\n\n",
        busy.addr.port(),
        real.addr(),
        real.imap_port(),
    );
    let m = Mailpin::start(&config, 1);
    // Log users in until some of them ranked the busy backend first.
    let mut refused_seen = false;
    let mut logins = 0;
    for n in 1..=30 {
        let user = cluster.user(n);
        let mut c = imap_login(m.listen[0], &user);
        assert_eq!(assigned(&m, &user), "b0", "{user} failed over to b0");
        let _ = c.imap("LOGOUT");
        logins += 1;
        refused_seen = m.log().contains("refused for load");
        if refused_seen && logins >= 10 {
            break;
        }
    }
    let row = backend_row(&m, "busy");
    assert_eq!(
        row["health"], "healthy",
        "a load refusal is no death: {row}"
    );
    assert_eq!(row["routable"], true, "{row}");
    assert_eq!(metric(&m, "mailpin_health_flips_total"), 0.0);
    assert!(
        refused_seen,
        "some login met the busy backend:\n{}",
        m.log()
    );
    drop(busy);
}
