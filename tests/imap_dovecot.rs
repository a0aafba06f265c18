//! IMAP through mailpin to three real Dovecot backends sharing one store,
//! driven by real clients (Python's imaplib, curl).
//!
//! The central check is the director's invariant: with many users each
//! holding several concurrent sessions, `doveadm who` on the backends shows
//! every user on exactly one backend. Around it: plaintext, STARTTLS and
//! implicit TLS; the backend's own NO for a wrong password; literal and
//! AUTHENTICATE PLAIN logins; the client's address forwarded with ID; and
//! an overlong line that ends one client without hurting the next.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use support::mailpin::Mailpin;
use support::{
    require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions, InteractiveClient,
    LineClient,
};

/// Files of a certificate for `localhost`, made for the test.
struct TestCert {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    _dir: support::tempdir::TempDir,
}

fn test_cert() -> TestCert {
    let dir = support::tempdir::TempDir::new().expect("temp dir");
    let cert = mailpin::tls::DevCert::generate().expect("certificate");
    let (cert_path, key_path) = cert.write_to(dir.path()).expect("write certificate");
    TestCert {
        cert: cert_path,
        key: key_path,
        _dir: dir,
    }
}

/// A director config in front of `cluster`: listeners 0 plain, 1 STARTTLS,
/// 2 implicit TLS, all on 127.0.0.1 with kernel-chosen ports.
fn director_config(cluster: &DovecotCluster, cert: &TestCert) -> String {
    let mut c = format!(
        "[server]\ncores = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[tls]\ncert = {:?}\nkey = {:?}\n\n",
        cert.cert, cert.key
    );
    for tls in ["none", "starttls", "implicit"] {
        c.push_str(&format!(
            "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"{tls}\"\nplaintext_auth = {}\n\n",
            tls == "none"
        ));
    }
    for inst in cluster.instances() {
        c.push_str(&format!(
            "[[backend]]\nname = \"{}\"\nhost = \"{}\"\nimap = {}\n\n",
            inst.name(),
            inst.addr(),
            inst.imap_port()
        ));
    }
    c
}

struct Setup {
    cluster: DovecotCluster,
    mailpin: Mailpin,
    cert: TestCert,
}

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
    let cert = test_cert();
    let mailpin = Mailpin::start(&director_config(&cluster, &cert), 3);
    Some(Setup {
        cluster,
        mailpin,
        cert,
    })
}

/// Opens `users` × `sessions` concurrent sessions through the listener
/// `listener` in `mode`, holds them, and checks with `doveadm who` that
/// every user is on exactly one backend with all its sessions.
fn users_stay_on_one_backend(listener: usize, mode: &str) {
    let users = 50;
    let sessions = 3;
    let Some(s) = setup(users) else { return };
    let addr = s.mailpin.listen[listener];
    let port = addr.port().to_string();
    let users_arg = users.to_string();
    let sessions_arg = sessions.to_string();
    let cafile = s.cert.cert.to_string_lossy().into_owned();
    let mut args = vec![
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--users",
        &users_arg,
        "--sessions",
        &sessions_arg,
        "--mode",
        mode,
    ];
    if mode != "plain" {
        args.extend(["--cafile", &cafile, "--server-name", "localhost"]);
    }
    let mut client = InteractiveClient::spawn("imap_sessions.py", &args);
    let ready = client
        .wait_for_line("READY", Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\nmailpin log:\n{}", s.mailpin.log()));
    assert_eq!(
        ready,
        format!("READY {}", users * sessions),
        "every session logs in"
    );

    // Where does each user live? Poll until every session is registered.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let placement = loop {
        let mut placement: BTreeMap<String, Vec<(String, usize)>> = BTreeMap::new();
        for inst in s.cluster.instances() {
            for e in inst.who().into_iter().filter(|e| e.protocol == "imap") {
                placement
                    .entry(e.user)
                    .or_default()
                    .push((inst.name().to_string(), e.count));
            }
        }
        let total: usize = placement.values().flatten().map(|(_, n)| n).sum();
        if total == users * sessions || std::time::Instant::now() >= deadline {
            break placement;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        placement.len(),
        users,
        "every user is seen on a backend: {placement:?}"
    );
    for (user, places) in &placement {
        assert_eq!(
            places.len(),
            1,
            "{user} is on more than one backend: {places:?}"
        );
        assert_eq!(
            places[0].1, sessions,
            "{user} has all its sessions on {}",
            places[0].0
        );
    }
    let used: std::collections::BTreeSet<&String> = placement.values().map(|p| &p[0].0).collect();
    assert!(
        used.len() >= 2,
        "50 users spread over more than one backend: {used:?}"
    );

    client
        .send_line("done")
        .expect("tell the client to log out");
    let out = client.finish(Duration::from_secs(60));
    assert!(out.success(), "clean logout: {}", out.stdout);
}

#[test]
fn plaintext_users_stay_on_one_backend() {
    users_stay_on_one_backend(0, "plain");
}

#[test]
fn starttls_users_stay_on_one_backend() {
    users_stay_on_one_backend(1, "starttls");
}

#[test]
fn implicit_tls_users_stay_on_one_backend() {
    users_stay_on_one_backend(2, "tls");
}

#[test]
fn wrong_password_gets_the_backends_no() {
    let Some(s) = setup(5) else { return };
    let port = s.mailpin.listen[0].port().to_string();
    let out = run_client(
        "imap_sessions.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            "user0001",
            "--password",
            "wrong",
            "--hold",
            "0",
            "--expect-fail",
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.success(),
        "login refused: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("AUTHENTICATIONFAILED"),
        "the client sees Dovecot's own answer: {}",
        out.stdout
    );
    assert!(
        !s.mailpin.log().contains("wrong"),
        "the password is never logged"
    );
}

#[test]
fn literal_and_authenticate_plain_logins_work() {
    let Some(s) = setup(5) else { return };
    let port = s.mailpin.listen[0].port().to_string();
    for extra in [&["--literal"][..], &["--auth", "plain"][..]] {
        let mut args = vec![
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            "user0002",
            "--hold",
            "0",
        ];
        args.extend_from_slice(extra);
        let out = run_client("imap_sessions.py", &args, Duration::from_secs(30));
        assert!(out.success(), "{extra:?}: {}\n{}", out.stdout, out.stderr);
    }
}

#[test]
fn curl_lists_inbox_plain_and_tls_and_the_client_address_is_forwarded() {
    if !require_tool("curl") {
        return;
    }
    let Some(s) = setup(5) else { return };
    let plain = s.mailpin.listen[0];
    let tls = s.mailpin.listen[2];
    // Connect from 127.0.0.55 so the forwarded address is told apart from
    // the director's own.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--interface", "127.0.0.55"])
        .arg("--url")
        .arg(format!("imap://{plain}/"))
        .args(["--user", "user0003:pass"])
        .output()
        .expect("run curl");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listing.contains("INBOX"), "LIST shows INBOX: {listing}");

    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&s.cert.cert)
        .arg("--url")
        .arg(format!("imaps://localhost:{}/", tls.port()))
        .args(["--user", "user0003:pass"])
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("INBOX"));

    let logs: String = s.cluster.instances().iter().map(|i| i.log()).collect();
    assert!(
        logs.lines()
            .any(|l| l.contains("user=<user0003>") && l.contains("rip=127.0.0.55")),
        "a backend logged the client's own address:\n{logs}"
    );
}

#[test]
fn overlong_line_ends_that_client_and_the_next_is_served() {
    let Some(s) = setup(5) else { return };
    let addr = s.mailpin.listen[0];
    let mut bad = LineClient::connect(addr).expect("connect");
    let greeting = bad.read_line().expect("greeting");
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let long = vec![b'a'; 100_000];
    // The director may close while we still write: that is the point.
    let _ = bad.send_raw(&long);
    let mut answer = String::new();
    while let Ok(line) = bad.read_line() {
        answer.push_str(&line);
        answer.push('\n');
        if line.is_empty() {
            break;
        }
    }
    assert!(
        answer.contains("* BYE") || answer.contains(" BAD"),
        "told off: {answer:?}"
    );

    let mut good = LineClient::connect(addr).expect("connect again");
    assert!(good.read_line().expect("greeting").starts_with("* OK"));
    let reply = good.imap("LOGIN user0004 pass").expect("login");
    assert!(reply.is_ok(), "{reply:?}");
}
