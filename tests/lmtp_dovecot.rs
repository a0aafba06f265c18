//! LMTP through mailpin to three real Dovecot backends sharing one store,
//! with real clients (Python's smtplib.LMTP, swaks) and a raw one.
//!
//! The central checks: one transaction whose recipients live on all three
//! backends is split, each recipient gets its own backend's reply after the
//! message and finds it once over IMAP through mailpin; a backend killed
//! mid-transaction fails only its own recipients (451), the others are
//! delivered (250). Around them: a 50 MiB message, BDAT, bare LF line ends,
//! a RCPT flood (bounded), a 10 MB line, and a client that stops mid-DATA
//! (timed out, nothing delivered).

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use support::director::{backend_of, config, ListenSpec};
use support::mailpin::Mailpin;
use support::{
    require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions, LineClient,
};

struct Setup {
    cluster: DovecotCluster,
    mailpin: Mailpin,
}

impl Setup {
    fn lmtp(&self) -> std::net::SocketAddr {
        self.mailpin.listen[0]
    }
    fn imap(&self) -> std::net::SocketAddr {
        self.mailpin.listen[1]
    }
}

/// Three backends, mailpin with LMTP (listener 0) and IMAP (listener 1);
/// clients that go silent are cut off after 3 s.
fn setup(users: usize) -> Option<Setup> {
    if !require_dovecot() || !require_tool("python3") {
        return None;
    }
    let cluster = DovecotCluster::start(
        3,
        DovecotOptions {
            users,
            ..DovecotOptions::default()
        },
    );
    let cfg = config(
        &cluster,
        None,
        "prelogin_timeout = \"3s\"",
        &[ListenSpec::plain("lmtp"), ListenSpec::plain("imap")],
        "",
    );
    let mailpin = Mailpin::start(&cfg, 2);
    Some(Setup { cluster, mailpin })
}

/// Messages in `user`'s INBOX, asked over IMAP through mailpin.
fn inbox_count(s: &Setup, user: &str) -> usize {
    let mut c = LineClient::connect(s.imap()).expect("connect IMAP");
    c.read_line().expect("greeting");
    let r = c.imap(&format!("LOGIN {user} pass")).expect("login");
    assert!(r.is_ok(), "{user} logs in: {r:?}");
    let r = c.imap("SELECT INBOX").expect("select");
    assert!(r.is_ok(), "{r:?}");
    let exists = r
        .untagged
        .iter()
        .find_map(|l| l.strip_prefix("* ")?.strip_suffix(" EXISTS")?.parse().ok())
        .expect("EXISTS");
    let _ = c.imap("LOGOUT");
    exists
}

/// Opens a raw LMTP session: greeting and LHLO read.
fn lmtp_session(s: &Setup) -> LineClient {
    let mut c = LineClient::connect(s.lmtp()).expect("connect LMTP");
    let greeting = c.smtp_reply().expect("greeting");
    assert!(greeting[0].starts_with("220"), "{greeting:?}");
    c.send_line("LHLO test.example").unwrap();
    let caps = c.smtp_reply().expect("LHLO");
    assert!(caps.last().unwrap().starts_with("250 "), "{caps:?}");
    for cap in [
        "PIPELINING",
        "8BITMIME",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(
            caps.iter().any(|l| l[4..].starts_with(cap)),
            "{cap} in {caps:?}"
        );
    }
    c
}

/// The director's log once it holds a `recipient` line for every one of
/// `users` (log lines arrive through a pipe, a moment after the replies).
fn log_with_recipients(s: &Setup, users: &[String]) -> String {
    for u in users {
        s.mailpin
            .wait_for_log(
                &["recipient", &format!("user={u} ")],
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("{u} routed:\n{}", s.mailpin.log()));
    }
    s.mailpin.log()
}

fn command(c: &mut LineClient, line: &str) -> String {
    c.send_line(line).unwrap();
    c.smtp_reply().expect("reply").join("\n")
}

#[test]
fn one_transaction_split_over_three_backends_each_delivered_once() {
    // Backend names carry the test's PID, so where a user lands differs
    // from run to run: 30 recipients miss one of three backends with a
    // chance of 3 * (2/3)^30, about 1 in 70,000 (9 missed one in 13).
    let Some(s) = setup(32) else { return };
    let users: Vec<String> = (1..=30).map(|n| s.cluster.user(n)).collect();
    let port = s.lmtp().port().to_string();
    let mut args = vec!["--port".to_string(), port];
    for u in &users {
        args.push("--rcpt".into());
        args.push(u.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_client("lmtp_deliver.py", &args, Duration::from_secs(60));
    assert!(
        out.success(),
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        s.mailpin.log()
    );
    // Every recipient: RCPT 250 and its own post-DATA 250 from Dovecot.
    for u in &users {
        let rcpt = format!("\"{u}\": [250, \"2.1.5 OK\"]");
        assert!(out.stdout.contains(&rcpt), "RCPT {u}: {}", out.stdout);
        let data = format!("\"{u}\": [250, \"2.0.0 <{u}> ");
        assert!(
            out.stdout.contains(&data),
            "DATA reply for {u}: {}",
            out.stdout
        );
    }
    let log = log_with_recipients(&s, &users);
    let used: BTreeSet<String> = users
        .iter()
        .map(|u| backend_of(&log, u, &s.cluster).unwrap_or_else(|| panic!("{u} routed:\n{log}")))
        .collect();
    assert_eq!(
        used.len(),
        3,
        "the recipients live on all three backends: {used:?}"
    );
    for inst in s.cluster.instances() {
        assert!(
            inst.log().contains("lmtp("),
            "backend {} delivered some of them",
            inst.name()
        );
    }
    for u in &users {
        assert_eq!(inbox_count(&s, u), 1, "{u} got the message exactly once");
    }
}

#[test]
fn swaks_delivers_to_recipients_on_several_backends() {
    if !require_tool("swaks") {
        return;
    }
    let Some(s) = setup(12) else { return };
    let rcpts: Vec<String> = (4..=9).map(|n| s.cluster.user(n)).collect();
    let out = Command::new("swaks")
        .args(["--protocol", "LMTP", "--server"])
        .arg(s.lmtp().to_string())
        .args(["--from", "swaks@example.org", "--to"])
        .arg(rcpts.join(","))
        .args(["--header", "Subject: via swaks", "--timeout", "30"])
        .output()
        .expect("run swaks");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for u in &rcpts {
        assert!(
            text.lines().any(|l| l.starts_with("<-")
                && l.contains(" 250 2.0.0 ")
                && l.contains(&format!("<{u}>"))),
            "per-recipient reply for {u}:\n{text}"
        );
        assert_eq!(inbox_count(&s, u), 1, "{u} got the swaks message once");
    }
}

#[test]
fn backend_killed_mid_transaction_fails_only_its_recipients() {
    let Some(mut s) = setup(12) else { return };
    let users: Vec<String> = (1..=9).map(|n| s.cluster.user(n)).collect();
    let mut c = lmtp_session(&s);
    assert!(command(&mut c, "MAIL FROM:<a@example.org>").starts_with("250"));
    for u in &users {
        let r = command(&mut c, &format!("RCPT TO:<{u}>"));
        assert!(r.starts_with("250"), "{u}: {r}");
    }
    let log = log_with_recipients(&s, &users);
    let placement: Vec<(String, String)> = users
        .iter()
        .map(|u| (u.clone(), backend_of(&log, u, &s.cluster).expect("routed")))
        .collect();
    let victim_name = placement[0].1.clone();
    let victim = s
        .cluster
        .instances()
        .iter()
        .position(|i| i.name() == victim_name)
        .unwrap();
    s.cluster.instance_mut(victim).kill_hard();

    let r = command(&mut c, "DATA");
    assert!(
        r.starts_with("354"),
        "the live backends take the message: {r}"
    );
    c.send_raw(b"Subject: split\r\n\r\nbody\r\n.\r\n").unwrap();
    for (u, backend) in &placement {
        let reply = c.smtp_reply().expect("per-recipient reply").join("\n");
        if *backend == victim_name {
            assert!(
                reply.starts_with("451 4.4.0"),
                "{u} on the dead backend: {reply}"
            );
        } else {
            assert!(
                reply.starts_with("250 2.0.0"),
                "{u} on a live backend: {reply}"
            );
        }
    }
    assert!(command(&mut c, "QUIT").starts_with("221"));
    assert!(
        placement.iter().any(|(_, b)| *b != victim_name),
        "some recipients were elsewhere"
    );
}

#[test]
fn fifty_mib_message_and_bdat_chunks_are_streamed() {
    let Some(s) = setup(4) else { return };
    let (a, b) = (s.cluster.user(1), s.cluster.user(2));
    let mut c = lmtp_session(&s);
    assert!(command(&mut c, "MAIL FROM:<big@example.org> SIZE=52500000").starts_with("250"));
    for u in [&a, &b] {
        let r = command(&mut c, &format!("RCPT TO:<{u}>"));
        assert!(r.starts_with("250"), "{u}: {r}");
    }
    assert!(command(&mut c, "DATA").starts_with("354"));
    c.send_raw(b"Subject: big\r\n\r\n").unwrap();
    let line = [b'y'; 1022];
    let mut chunk = Vec::with_capacity(1 << 20);
    for _ in 0..1024 {
        chunk.extend_from_slice(&line);
        chunk.extend_from_slice(b"\r\n");
    }
    for _ in 0..50 {
        c.send_raw(&chunk).unwrap();
    }
    c.send_raw(b".\r\n").unwrap();
    for u in [&a, &b] {
        let r = c.smtp_reply().expect("reply").join("\n");
        assert!(r.starts_with("250 2.0.0"), "{u}: {r}");
    }
    // The same pair again with BDAT, in two chunks.
    assert!(command(&mut c, "MAIL FROM:<chunks@example.org>").starts_with("250"));
    for u in [&a, &b] {
        let r = command(&mut c, &format!("RCPT TO:<{u}>"));
        assert!(r.starts_with("250"), "{u}: {r}");
    }
    let first = b"Subject: bdat\r\n\r\n";
    c.send_raw(format!("BDAT {}\r\n", first.len()).as_bytes())
        .unwrap();
    c.send_raw(first).unwrap();
    assert!(c.smtp_reply().unwrap()[0].starts_with("250"));
    let second = b"chunked body\r\n";
    c.send_raw(format!("BDAT {} LAST\r\n", second.len()).as_bytes())
        .unwrap();
    c.send_raw(second).unwrap();
    for u in [&a, &b] {
        let r = c.smtp_reply().expect("reply").join("\n");
        assert!(r.starts_with("250 2.0.0"), "{u} (BDAT): {r}");
    }
    assert!(command(&mut c, "QUIT").starts_with("221"));
    for u in [&a, &b] {
        assert_eq!(
            inbox_count(&s, u),
            2,
            "{u} has the big and the chunked message"
        );
    }
    // The director never held the message: its resident memory stays far
    // below 50 MiB.
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.mailpin.pid())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        rss_kb < 40 * 1024,
        "peak RSS {rss_kb} kB: the message was streamed"
    );
}

#[test]
fn bare_lf_rset_noop_vrfy_and_errors() {
    let Some(s) = setup(4) else { return };
    let u = s.cluster.user(3);
    let mut c = lmtp_session(&s);
    assert!(
        command(&mut c, "RCPT TO:<x@y>").starts_with("503"),
        "RCPT before MAIL"
    );
    assert!(command(&mut c, "DATA").starts_with("503"));
    assert!(command(&mut c, "NOOP").starts_with("250"));
    assert!(command(&mut c, &format!("VRFY {u}")).starts_with("252"));
    assert!(command(&mut c, "EHLO x").starts_with("500"));
    assert!(command(&mut c, "MAIL FROM:<a@b>").starts_with("250"));
    assert!(
        command(&mut c, "MAIL FROM:<a@b>").starts_with("503"),
        "nested MAIL"
    );
    assert!(command(&mut c, "RSET").starts_with("250"));
    // Bare LF everywhere, commands and message.
    c.send_raw(format!("MAIL FROM:<lf@example.org>\nRCPT TO:<{u}>\nDATA\n").as_bytes())
        .unwrap();
    for expect in ["250", "250", "354"] {
        let r = c.smtp_reply().unwrap().join("\n");
        assert!(r.starts_with(expect), "{r}");
    }
    c.send_raw(b"Subject: bare lf\n\nline one\n..dot\n.\n")
        .unwrap();
    let r = c.smtp_reply().unwrap().join("\n");
    assert!(r.starts_with("250 2.0.0"), "bare-LF message delivered: {r}");
    assert!(command(&mut c, "QUIT").starts_with("221"));
    assert_eq!(inbox_count(&s, &u), 1);
}

#[test]
fn rcpt_flood_is_bounded() {
    let Some(s) = setup(4) else { return };
    let mut c = lmtp_session(&s);
    assert!(command(&mut c, "MAIL FROM:<flood@example.org>").starts_with("250"));
    let mut batch = String::new();
    for n in 0..1001 {
        batch.push_str(&format!("RCPT TO:<nobody{n}@example.org>\r\n"));
    }
    c.send_raw(batch.as_bytes()).unwrap();
    let mut last = String::new();
    for _ in 0..1001 {
        last = c.smtp_reply().expect("reply").join("\n");
    }
    assert!(
        last.starts_with("452 4.5.3"),
        "the 1001st recipient: {last}"
    );
    assert!(command(&mut c, "RSET").starts_with("250"));
}

#[test]
fn ten_megabyte_line_is_refused_and_the_next_client_served() {
    let Some(s) = setup(4) else { return };
    let mut c = lmtp_session(&s);
    let _ = c.send_raw(&vec![b'a'; 10 << 20]);
    let r = c.smtp_reply().map(|r| r.join("\n")).unwrap_or_default();
    assert!(r.starts_with("500 5.5.2"), "{r}");
    let mut next = lmtp_session(&s);
    assert!(command(&mut next, "QUIT").starts_with("221"));
}

#[test]
fn client_that_stops_mid_data_is_timed_out_and_nothing_is_delivered() {
    let Some(s) = setup(4) else { return };
    let u = s.cluster.user(4);
    let mut c = lmtp_session(&s);
    assert!(command(&mut c, "MAIL FROM:<slow@example.org>").starts_with("250"));
    assert!(command(&mut c, &format!("RCPT TO:<{u}>")).starts_with("250"));
    assert!(command(&mut c, "DATA").starts_with("354"));
    c.send_raw(b"Subject: never finished\r\n\r\nhalf a message")
        .unwrap();
    let started = Instant::now();
    let r = c.smtp_reply().map(|r| r.join("\n")).unwrap_or_default();
    assert!(
        r.starts_with("421 4.4.2"),
        "told off after the idle timeout: {r}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(c.read_line().is_err(), "then closed");
    s.mailpin
        .wait_for_log(&["nothing delivered"], Duration::from_secs(5))
        .expect("the director logged the aborted message");
    assert_eq!(inbox_count(&s, &u), 0, "no partial message was delivered");
}
