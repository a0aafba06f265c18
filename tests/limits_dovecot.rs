//! Connection and login limits (`[limits]`) through the real director
//! process: connections before login per client address, sessions per
//! user and address, backend logins in flight (against a fake backend
//! that answers logins only when told), and the failed-login delay and
//! penalty; each hit counted in `/metrics` and logged once per address.
//!
//! Clients bind their sockets to chosen 127.0.9.x addresses, so one test
//! has several client addresses. Every config here sets its own
//! `[limits]`, so loopback is not trusted (the harness trusts it only for
//! tests that do not).

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::director::{config, ListenSpec};
use support::dovecot::DEFAULT_PASSWORD;
use support::mailpin::Mailpin;
use support::{require_dovecot, DovecotCluster, DovecotOptions, LineClient};

/// Client address `127.0.9.n`.
fn ip(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 9, n])
}

/// A raw HTTP GET; returns the body.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of `mailpin_limit_hits_total{limit="NAME"}`.
fn hits(m: &Mailpin, limit: &str) -> u64 {
    let metrics = http_get(m.admin, "/metrics");
    let needle = format!("mailpin_limit_hits_total{{limit=\"{limit}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in:\n{metrics}"))
}

/// Log lines of `limit` hits by `client`.
fn limit_log_lines(m: &Mailpin, limit: &str, client: IpAddr) -> usize {
    m.log()
        .lines()
        .filter(|l| l.contains("limit reached") && l.contains(limit))
        .filter(|l| l.contains(&format!("client={client}")))
        .count()
}

/// Connects from `from` and reads the greeting line.
fn greeted(from: IpAddr, addr: SocketAddr) -> (LineClient, String) {
    let mut c = LineClient::connect_from(from, addr).expect("connect");
    let greeting = c.read_line().expect("greeting");
    (c, greeting)
}

/// Connects from `from` until the director greets with OK instead of a
/// refusal (a slot given back is seen by the director a moment after the
/// client's event), at most 5 seconds; returns the client and how many
/// attempts were refused on the way.
fn greeted_ok_eventually(from: IpAddr, addr: SocketAddr) -> (LineClient, u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refused = 0;
    loop {
        let (c, greeting) = greeted(from, addr);
        if greeting.starts_with("* OK") {
            return (c, refused);
        }
        refused += 1;
        assert!(Instant::now() < deadline, "still refused: {greeting}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn dovecot(users: usize) -> Option<DovecotCluster> {
    if !require_dovecot() {
        return None;
    }
    Some(DovecotCluster::start(
        1,
        DovecotOptions {
            users,
            ..DovecotOptions::default()
        },
    ))
}

#[test]
fn prelogin_connections_per_address_are_limited_and_freed_by_login_or_close() {
    let Some(cluster) = dovecot(1) else { return };
    let mut c = config(
        &cluster,
        None,
        "",
        &[ListenSpec::plain("imap"), ListenSpec::plain("pop3")],
        "",
    );
    c.push_str("[limits]\nprelogin_per_ip = 3\nlog_interval = \"1h\"\n");
    let m = Mailpin::start(&c, 2);
    let (imap, pop3) = (m.listen[0], m.listen[1]);
    let user = cluster.user(1);

    let mut held: Vec<LineClient> = (0..3)
        .map(|_| {
            let (c, greeting) = greeted(ip(1), imap);
            assert!(greeting.starts_with("* OK"), "{greeting}");
            c
        })
        .collect();
    let mut refused = 0;
    for _ in 0..2 {
        let (mut c, greeting) = greeted(ip(1), imap);
        assert_eq!(
            greeting,
            "* BYE [UNAVAILABLE] Too many connections from your IP."
        );
        assert!(c.read_line().is_err(), "the refused connection is closed");
        refused += 1;
    }
    let (_, greeting) = greeted(ip(1), pop3);
    assert_eq!(
        greeting, "-ERR [SYS/TEMP] Too many connections from your IP.",
        "the count is per address, across listeners"
    );
    refused += 1;
    let (_, greeting) = greeted(ip(2), imap);
    assert!(greeting.starts_with("* OK"), "another address: {greeting}");

    // A login gives its pre-login slot back...
    let login = held[0]
        .imap(&format!("LOGIN {user} {DEFAULT_PASSWORD}"))
        .unwrap();
    assert!(login.is_ok(), "{}", login.status);
    let (fourth, more) = greeted_ok_eventually(ip(1), imap);
    refused += more;
    // ...and so does a close.
    held.remove(1);
    let (_fifth, more) = greeted_ok_eventually(ip(1), imap);
    refused += more;
    let (_, greeting) = greeted(ip(1), imap);
    assert!(greeting.starts_with("* BYE"), "full again: {greeting}");
    refused += 1;
    drop(fourth);

    assert_eq!(hits(&m, "prelogin_per_ip"), refused);
    assert_eq!(hits(&m, "prelogin_total"), 0);
    assert_eq!(
        limit_log_lines(&m, "prelogin_per_ip", ip(1)),
        1,
        "{refused} hits, one log line per address and interval:\n{}",
        m.log()
    );
    assert_eq!(limit_log_lines(&m, "prelogin_per_ip", ip(2)), 0);
}

#[test]
fn sessions_per_user_and_address_are_limited_per_address() {
    let Some(cluster) = dovecot(1) else { return };
    let mut c = config(&cluster, None, "", &[ListenSpec::plain("imap")], "");
    // The default: 10 (the harness lifts Dovecot's own limit, so the
    // refusal can only be the director's).
    c.push_str("[limits]\n");
    let m = Mailpin::start(&c, 1);
    let addr = m.listen[0];
    let login = format!("LOGIN {} {DEFAULT_PASSWORD}", cluster.user(1));

    let mut sessions: Vec<LineClient> = (0..10)
        .map(|i| {
            let (mut c, _) = greeted(ip(1), addr);
            let r = c.imap(&login).unwrap();
            assert!(r.is_ok(), "session {i}: {}", r.status);
            c
        })
        .collect();
    let (mut extra, _) = greeted(ip(1), addr);
    let r = extra.imap(&login).unwrap();
    assert_eq!(
        r.status,
        "NO [LIMIT] Too many sessions for this account from your address, close one and try again."
    );
    let (mut other, _) = greeted(ip(2), addr);
    assert!(
        other.imap(&login).unwrap().is_ok(),
        "another address is its own count"
    );
    assert_eq!(hits(&m, "sessions_per_user_ip"), 1);

    // A session that ends makes room (its release reaches the owner core
    // a moment after the client saw the LOGOUT answer).
    let bye = sessions[0].imap("LOGOUT").unwrap();
    assert!(bye.is_ok(), "{}", bye.status);
    sessions.remove(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = extra.imap(&login).unwrap();
        if r.is_ok() {
            break;
        }
        assert!(r.status.starts_with("NO [LIMIT]"), "{}", r.status);
        assert!(Instant::now() < deadline, "no room after a logout");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A POP3 login of `user` from `from`: the answer to PASS.
fn pop3_login(from: IpAddr, addr: SocketAddr, user: &str) -> (LineClient, String) {
    let (mut c, greeting) = greeted(from, addr);
    assert!(greeting.starts_with("+OK"), "{greeting}");
    c.send_line(&format!("USER {user}")).unwrap();
    let ok = c.read_line().unwrap();
    assert!(ok.starts_with("+OK"), "{ok}");
    c.send_line(&format!("PASS {DEFAULT_PASSWORD}")).unwrap();
    let answer = c.read_line().unwrap();
    (c, answer)
}

#[test]
fn sessions_per_user_count_every_protocol_and_address() {
    let Some(cluster) = dovecot(1) else { return };
    let listeners = [ListenSpec::plain("imap"), ListenSpec::plain("pop3")];
    let mut c = config(&cluster, None, "", &listeners, "");
    c.push_str("[limits]\nsessions_per_user = 3\nsessions_per_user_ip = 2\n");
    let m = Mailpin::start(&c, 2);
    let (imap, pop3) = (m.listen[0], m.listen[1]);
    let user = cluster.user(1);
    let login = format!("LOGIN {user} {DEFAULT_PASSWORD}");

    let mut held = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = greeted(ip(1), imap);
        assert!(c.imap(&login).unwrap().is_ok());
        held.push(c);
    }
    // The per-address count is per protocol: POP3 from the same address
    // is the user's third session, and allowed.
    let (c, answer) = pop3_login(ip(1), pop3, &user);
    assert!(answer.starts_with("+OK"), "{answer}");
    held.push(c);
    // A fourth session of the user, from anywhere, is over the per-user limit.
    let (_c, answer) = pop3_login(ip(2), pop3, &user);
    assert_eq!(
        answer,
        "-ERR [IN-USE] Too many sessions for this account, close one and try again."
    );
    let (mut c, _) = greeted(ip(3), imap);
    assert_eq!(
        c.imap(&login).unwrap().status,
        "NO [LIMIT] Too many sessions for this account, close one and try again."
    );
    assert_eq!(hits(&m, "sessions_per_user"), 2);
    assert_eq!(hits(&m, "sessions_per_user_ip"), 0);
}

/// A fake IMAP backend that greets at once and answers a login by its
/// password: `wrong-password` is refused at once, `hold` is reported with
/// a sender and answered OK only when the test sends on it, anything else
/// is accepted at once. Its timing is the director's alone (Dovecot adds
/// penalties of its own to repeated failures).
struct FakeBackend {
    addr: SocketAddr,
    /// One sender per `hold` login that reached the backend, in arrival
    /// order.
    held: mpsc::Receiver<mpsc::Sender<()>>,
}

impl FakeBackend {
    fn start() -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (held_tx, held) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let held_tx = held_tx.clone();
                std::thread::spawn(move || serve_fake(stream, held_tx));
            }
        });
        FakeBackend { addr, held }
    }

    /// A director config with one plain IMAP listener in front of this
    /// backend, and `limits` as its `[limits]` section.
    fn director_config(&self, limits: &str) -> String {
        format!(
            "[server]\ncores = 2\n\n[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\nplaintext_auth = true\n\n\
             [[backend]]\nname = \"fake\"\nhost = \"127.0.0.1\"\nimap = {}\nforward = \"none\"\n\n\
             [health]\ncheck = \"connect\"\n\n[limits]\n{limits}\n",
            self.addr.port()
        )
    }
}

/// The password of an `AUTHENTICATE PLAIN <initial response>` line.
fn plain_password(line: &str) -> Option<String> {
    use base64::Engine;
    let b64 = line.split_whitespace().nth(3)?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let password = decoded.split(|&b| b == 0).nth(2)?;
    String::from_utf8(password.to_vec()).ok()
}

fn serve_fake(mut stream: TcpStream, held: mpsc::Sender<mpsc::Sender<()>>) {
    use std::io::BufRead;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if stream
        .write_all(b"* OK [CAPABILITY IMAP4rev1 SASL-IR] fake ready\r\n")
        .is_err()
    {
        return;
    }
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // a health check
    }
    let tag = line.split(' ').next().unwrap_or("*").to_string();
    let answer = match plain_password(line.trim_end()).as_deref() {
        Some("wrong-password") => "NO [AUTHENTICATIONFAILED] Authentication failed.",
        // What Dovecot answers when its own auth or storage fails.
        Some("backend-trouble") => "NO [UNAVAILABLE] Internal error occurred.",
        Some("hold") => {
            let (permit_tx, permit_rx) = mpsc::channel();
            let _ = held.send(permit_tx);
            if permit_rx.recv_timeout(Duration::from_secs(30)).is_err() {
                return;
            }
            "OK Logged in"
        }
        _ => "OK Logged in",
    };
    let _ = stream.write_all(format!("{tag} {answer}\r\n").as_bytes());
    // Hold the session until the director closes it.
    let _ = reader.read_line(&mut line);
}

#[test]
fn backend_logins_in_flight_are_limited_and_a_waiting_login_gets_a_freed_slot() {
    let backend = FakeBackend::start();
    let c = backend.director_config("logins_per_backend = 2\nlogin_queue_timeout = \"1s\"");
    let m = Mailpin::start(&c, 1);
    let addr = m.listen[0];
    let wait = Duration::from_secs(5);

    let mut clients: Vec<LineClient> = (1..=4).map(|n| greeted(ip(n), addr).0).collect();
    let mut in_flight = Vec::new();
    for c in &mut clients[..2] {
        c.send_line("a1 LOGIN someone hold").unwrap();
        let permit = backend.held.recv_timeout(wait);
        in_flight.push(permit.expect("login reaches the backend"));
    }
    // Two logins in flight: the third waits, then gets a temporary failure
    // without ever reaching the backend.
    let started = Instant::now();
    let refused = clients[2].imap("LOGIN someone hold").unwrap();
    assert_eq!(
        refused.status,
        "NO [UNAVAILABLE] Server busy, try again later."
    );
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    assert!(
        backend.held.try_recv().is_err(),
        "the backend never saw more than two logins at once"
    );
    assert_eq!(hits(&m, "logins_per_backend"), 1);

    // A fourth login waits; when one in flight finishes it goes through.
    clients[3].send_line("a1 LOGIN someone hold").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(backend.held.try_recv().is_err(), "it waits for a slot");
    let freed = Instant::now();
    in_flight[0].send(()).unwrap();
    assert_eq!(clients[0].read_line().unwrap(), "a1 OK Logged in");
    let fourth = backend
        .held
        .recv_timeout(wait)
        .expect("the waiting login took the freed slot");
    assert!(
        freed.elapsed() < Duration::from_secs(1),
        "it got the slot when it was freed, not at its timeout"
    );
    fourth.send(()).unwrap();
    in_flight[1].send(()).unwrap();
    assert_eq!(clients[3].read_line().unwrap(), "a1 OK Logged in");
    assert_eq!(clients[1].read_line().unwrap(), "a1 OK Logged in");
    assert_eq!(hits(&m, "logins_per_backend"), 1);
}

/// How long a LOGIN with a wrong password takes to be refused.
fn failed_login(c: &mut LineClient) -> Duration {
    let started = Instant::now();
    let r = c.imap("LOGIN someone wrong-password").unwrap();
    assert_eq!(r.status, "NO [AUTHENTICATIONFAILED] Authentication failed.");
    started.elapsed()
}

#[test]
fn failed_logins_are_delayed_and_an_address_that_keeps_failing_waits_longer() {
    let backend = FakeBackend::start();
    let c = backend.director_config(
        "auth_failure_delay = \"200ms\"\nauth_penalty_max = \"800ms\"\nlog_interval = \"1h\"",
    );
    let m = Mailpin::start(&c, 1);
    let addr = m.listen[0];
    let ms = Duration::from_millis;
    // Generous for a loaded machine, still well below the next step.
    let slack = ms(180);

    let (mut guesser, _) = greeted(ip(1), addr);
    let took: Vec<Duration> = (0..4).map(|_| failed_login(&mut guesser)).collect();
    // No failures yet: the base delay; then 2 × 200, 4 × 200, capped at 800.
    for (i, expected) in [200, 400, 800, 800].into_iter().enumerate() {
        assert!(
            took[i] >= ms(expected) && took[i] < ms(expected) + slack,
            "failure {}: took {:?}, expected {expected} ms (all: {took:?})",
            i + 1,
            took[i]
        );
    }
    let (mut other, _) = greeted(ip(2), addr);
    let first = failed_login(&mut other);
    assert!(
        first >= ms(200) && first < ms(200) + slack,
        "another address starts at the base delay: {first:?}"
    );
    // The penalty holds back any login of the address, even a good one,
    // so a guesser cannot tell a hit by its speed.
    let (mut good, _) = greeted(ip(1), addr);
    let started = Instant::now();
    let r = good.imap("LOGIN someone right-password").unwrap();
    assert!(r.is_ok(), "{}", r.status);
    assert!(started.elapsed() >= ms(800), "{:?}", started.elapsed());

    assert_eq!(hits(&m, "auth_penalty"), 4);
    assert_eq!(limit_log_lines(&m, "auth_penalty", ip(1)), 1, "{}", m.log());
}

#[test]
fn a_backends_temporary_failure_is_relayed_at_once_and_counts_no_failed_login() {
    let backend = FakeBackend::start();
    let c = backend.director_config(
        "auth_failure_delay = \"300ms\"\nauth_penalty_max = \"1200ms\"\nlog_interval = \"1h\"",
    );
    let m = Mailpin::start(&c, 1);
    let addr = m.listen[0];
    let ms = Duration::from_millis;
    let (mut client, _) = greeted(ip(5), addr);
    for i in 0..4 {
        let started = Instant::now();
        let r = client.imap("LOGIN someone backend-trouble").unwrap();
        assert_eq!(r.status, "NO [UNAVAILABLE] Internal error occurred.");
        assert!(
            started.elapsed() < ms(250),
            "temporary failure {} held back {:?} (a refused password waits 300 ms)",
            i + 1,
            started.elapsed()
        );
    }
    // No penalty grew: a good login of the same address goes through at once.
    let (mut good, _) = greeted(ip(5), addr);
    let started = Instant::now();
    let r = good.imap("LOGIN someone right-password").unwrap();
    assert!(r.is_ok(), "{}", r.status);
    assert!(started.elapsed() < ms(250), "{:?}", started.elapsed());
    assert_eq!(hits(&m, "auth_penalty"), 0);
    // ... while a refused password from it still waits the failure delay.
    let (mut guesser, _) = greeted(ip(5), addr);
    let took = failed_login(&mut guesser);
    assert!(took >= ms(300), "{took:?}");
}
