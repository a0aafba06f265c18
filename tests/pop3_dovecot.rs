//! POP3 through mailpin to real Dovecot backends, with Python's poplib
//! (plaintext and STLS) and a raw client: USER/PASS, AUTH PLAIN with and
//! without an initial response, the backend's own `-ERR [AUTH]`, the
//! client's address forwarded with XCLIENT, `-ERR [SYS/TEMP]` when the
//! user's backend is gone, and hostile input.

mod support;

use std::time::Duration;

use base64::Engine;
use support::director::{config, ListenSpec};
use support::mailpin::Mailpin;
use support::{
    require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions, LineClient,
};

struct Setup {
    cluster: DovecotCluster,
    mailpin: Mailpin,
    cert: std::path::PathBuf,
    _dir: support::tempdir::TempDir,
}

/// Backends, and mailpin with POP3 plaintext (listener 0), POP3 STLS
/// (listener 1) and LMTP (listener 2).
fn setup(backends: usize) -> Option<Setup> {
    if !require_dovecot() || !require_tool("python3") {
        return None;
    }
    let cluster = DovecotCluster::start(backends, DovecotOptions::default());
    let dir = support::tempdir::TempDir::new().expect("temp dir");
    let cert = mailpin::tls::DevCert::generate().expect("certificate");
    let (cert_path, key_path) = cert.write_to(dir.path()).expect("write certificate");
    let cfg = config(
        &cluster,
        Some((&cert_path, &key_path)),
        "",
        &[
            ListenSpec::plain("pop3"),
            ListenSpec {
                protocol: "pop3",
                tls: "starttls",
                extra: "",
            },
            ListenSpec::plain("lmtp"),
        ],
        "",
    );
    let mailpin = Mailpin::start(&cfg, 3);
    Some(Setup {
        cluster,
        mailpin,
        cert: cert_path,
        _dir: dir,
    })
}

fn deliver(s: &Setup, user: &str, subject: &str) {
    let port = s.mailpin.listen[2].port().to_string();
    let out = run_client(
        "lmtp_deliver.py",
        &["--port", &port, "--rcpt", user, "--subject", subject],
        Duration::from_secs(30),
    );
    assert!(
        out.stdout.contains("[250, \"2.0.0"),
        "delivered: {}",
        out.stdout
    );
}

#[test]
fn poplib_plain_and_stls_read_the_delivered_message() {
    let Some(s) = setup(3) else { return };
    deliver(&s, "user0001", "for pop3");
    let plain = s.mailpin.listen[0].port().to_string();
    let out = run_client(
        "pop3_session.py",
        &["--port", &plain, "--user", "user0001"],
        Duration::from_secs(30),
    );
    assert!(
        out.success(),
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        s.mailpin.log()
    );
    assert!(out.stdout.contains("\"count\": 1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\"first\": \"for pop3\""),
        "{}",
        out.stdout
    );

    let stls = s.mailpin.listen[1].port().to_string();
    let cafile = s.cert.to_string_lossy().into_owned();
    let out = run_client(
        "pop3_session.py",
        &[
            "--port", &stls, "--user", "user0001", "--stls", "--cafile", &cafile,
        ],
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("\"tls\": true"), "{}", out.stdout);
    assert!(out.stdout.contains("\"count\": 1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("\"STLS\""),
        "CAPA offers STLS: {}",
        out.stdout
    );
}

#[test]
fn wrong_password_gets_the_backends_err_auth() {
    let Some(s) = setup(1) else { return };
    let port = s.mailpin.listen[0].port().to_string();
    let out = run_client(
        "pop3_session.py",
        &[
            "--port",
            &port,
            "--user",
            "user0002",
            "--password",
            "wrong-secret",
            "--expect-fail",
        ],
        Duration::from_secs(30),
    );
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("-ERR [AUTH]"),
        "Dovecot's own answer: {}",
        out.stdout
    );
    assert!(
        !s.mailpin.log().contains("wrong-secret"),
        "the password is never logged"
    );
}

#[test]
fn auth_plain_with_and_without_initial_response_and_address_forwarded() {
    let Some(s) = setup(1) else { return };
    let addr = s.mailpin.listen[0];
    let token = base64::engine::general_purpose::STANDARD.encode(b"\0user0003\0pass");

    let from: std::net::IpAddr = "127.0.0.56".parse().unwrap();
    let mut c = LineClient::connect_from(from, addr).expect("connect");
    assert!(c.read_line().unwrap().starts_with("+OK"));
    c.send_line(&format!("AUTH PLAIN {token}")).unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    c.send_line("STAT").unwrap();
    assert!(c.read_line().unwrap().starts_with("+OK 0 0"));
    c.send_line("QUIT").unwrap();
    assert!(c.read_line().unwrap().starts_with("+OK"));

    let mut c = LineClient::connect(addr).expect("connect");
    c.read_line().unwrap();
    c.send_line("AUTH PLAIN").unwrap();
    assert_eq!(c.read_line().unwrap(), "+ ");
    c.send_line(&token).unwrap();
    assert!(c.read_line().unwrap().starts_with("+OK"));

    let mut c = LineClient::connect(addr).expect("connect");
    c.read_line().unwrap();
    c.send_line("AUTH PLAIN").unwrap();
    c.read_line().unwrap();
    c.send_line("*").unwrap();
    assert!(c.read_line().unwrap().starts_with("-ERR"), "cancelled");
    c.send_line("PASS x").unwrap();
    assert!(
        c.read_line().unwrap().starts_with("-ERR"),
        "PASS without USER"
    );
    c.send_line("RETR 1").unwrap();
    assert!(c.read_line().unwrap().starts_with("-ERR"), "log in first");

    assert!(
        wait_for_line(
            || s.cluster.instance(0).log(),
            &["pop3-login", "user=<user0003>", "rip=127.0.0.56"]
        ),
        "XCLIENT forwarded the client's address:\n{}",
        s.cluster.instance(0).log()
    );
}

#[test]
fn dead_backend_gives_sys_temp_and_long_lines_are_refused() {
    let Some(mut s) = setup(1) else { return };
    let addr = s.mailpin.listen[0];
    let mut c = LineClient::connect(addr).unwrap();
    c.read_line().unwrap();
    let _ = c.send_raw(&vec![b'a'; 10 << 20]);
    let r = c.read_line().unwrap_or_default();
    assert!(r.starts_with("-ERR"), "told off: {r}");
    assert!(c.read_line().is_err(), "and closed");

    s.cluster.instance_mut(0).kill_hard();
    let mut c = LineClient::connect(addr).unwrap();
    c.read_line().unwrap();
    c.send_line("USER user0004").unwrap();
    c.read_line().unwrap();
    c.send_line("PASS pass").unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
}

/// Waits (bounded) until `log()` has a line containing every needle.
fn wait_for_line(log: impl Fn() -> String, needles: &[&str]) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        if log().lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
