//! OAUTHBEARER, XOAUTH2 and SCRAM through mailpin to real Dovecot 2.3
//! backends (issue 13): an `oauth2` passdb whose introspection endpoint is
//! a server started here (tokens `valid-<user>` are active for that user,
//! any other token is expired), SCRAM derived from the passwd-file.
//!
//! Clients: tests/clients/sasl_login.py (raw exchanges printed line by
//! line, imaplib's authenticate, its own SCRAM client), curl's
//! `--oauth2-bearer` for IMAP and POP3, and raw lines from here. Each
//! mechanism must land on the backend of the user's PLAIN logins
//! (`doveadm who`, the backends' login lines), and a refused token or proof
//! must reach the client exactly as the backend says it when asked
//! directly.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use support::director::{config, ListenSpec};
use support::mailpin::Mailpin;
use support::oauth2_server::IntrospectionServer;
use support::{
    require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions, InteractiveClient,
    LineClient,
};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    introspection: IntrospectionServer,
    cluster: DovecotCluster,
    mailpin: Mailpin,
}

impl Setup {
    fn imap(&self) -> SocketAddr {
        self.mailpin.listen[0]
    }
    fn pop3(&self) -> SocketAddr {
        self.mailpin.listen[1]
    }
    fn sieve(&self) -> SocketAddr {
        self.mailpin.listen[2]
    }
}

fn setup() -> Option<Setup> {
    if !require_dovecot() || !require_tool("python3") || !require_tool("curl") {
        return None;
    }
    let introspection = IntrospectionServer::start();
    let options = DovecotOptions {
        oauth2_introspection: Some(introspection.url()),
        ..DovecotOptions::default()
    };
    let cluster = DovecotCluster::start(2, options);
    let listeners = [
        ListenSpec::plain("imap"),
        ListenSpec::plain("pop3"),
        ListenSpec::plain("sieve"),
    ];
    let mailpin = Mailpin::start(&config(&cluster, None, "", &listeners, ""), 3);
    Some(Setup {
        introspection,
        cluster,
        mailpin,
    })
}

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Runs the Python client to the end: (ok, its wire lines, final line).
fn login(
    proto: &str,
    addr: SocketAddr,
    mech: &str,
    user: &str,
    secret: &str,
    extra: &[&str],
) -> (bool, Vec<String>, String) {
    let addr = addr.to_string();
    let mut args = vec![
        "--proto", proto, "--addr", &addr, "--mech", mech, "--user", user, "--secret", secret,
    ];
    args.extend_from_slice(extra);
    let out = run_client("sasl_login.py", &args, Duration::from_secs(60));
    let summary: serde_json::Value = serde_json::from_str(
        out.summary_line()
            .unwrap_or_else(|| panic!("no summary from sasl_login.py: {out:?}")),
    )
    .expect("JSON summary");
    let wire = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("S: ") || l.starts_with("C: "))
        .map(str::to_owned)
        .collect();
    (
        summary["ok"].as_bool().unwrap_or(false),
        wire,
        summary["final"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The exchange after the client's first message (which names the
/// server's host and port): what the backend decided, and the client's
/// answers, for comparing a login through mailpin with the same login made
/// directly.
fn after_first_message(wire: &[String]) -> Vec<String> {
    let first = wire
        .iter()
        .position(|l| l.starts_with("C: "))
        .expect("the client sent something");
    wire[first + 1..].to_vec()
}

/// The instance whose log has a login of `user` with `mechanism`.
fn instances_with_login(s: &Setup, user: &str, mechanism: &str) -> Vec<usize> {
    let needle = format!("Login: user=<{user}>, method={mechanism},");
    s.cluster
        .instances()
        .iter()
        .filter(|i| i.log().contains(&needle))
        .map(|i| i.index())
        .collect()
}

/// Waits until the login of `user` with `mechanism` is in a backend's log
/// and says which backend that is (exactly one).
fn landed(s: &Setup, user: &str, mechanism: &str) -> usize {
    let needle = format!("Login: user=<{user}>, method={mechanism},");
    for _ in 0..100 {
        let found = instances_with_login(s, user, mechanism);
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "{needle} on one backend only: {found:?}");
            return found[0];
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs: Vec<String> = s.cluster.instances().iter().map(|i| i.log()).collect();
    panic!("no backend logged {needle}:\n{}", logs.join("\n----\n"));
}

/// The index of the backend holding `user`'s open IMAP session.
fn plain_backend(s: &Setup, user: &str) -> usize {
    for _ in 0..200 {
        for i in s.cluster.instances() {
            if i.who_count(user, "imap") > 0 {
                return i.index();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no backend has an IMAP session of {user}");
}

fn plain_imap_login(addr: SocketAddr, user: &str) -> LineClient {
    let mut c = LineClient::connect(addr).unwrap();
    c.read_line().unwrap();
    let reply = c
        .imap(&format!(
            "AUTHENTICATE PLAIN {}",
            b64(format!("\0{user}\0pass").as_bytes())
        ))
        .unwrap();
    assert!(reply.is_ok(), "PLAIN login of {user}: {reply:?}");
    c
}

#[test]
fn imap_oauth_and_scram_land_where_plain_does() {
    let Some(s) = setup() else {
        return;
    };
    let user = "user0001";
    let mut plain = plain_imap_login(s.imap(), user);
    let home = plain_backend(&s, user);
    let backend = s.cluster.instance(home);
    backend.wait_for_who(user, "imap", 1, WAIT).unwrap();

    // Thunderbird-style OAUTHBEARER with SASL-IR, held open: a second
    // session of the user on the same backend.
    let token = format!("valid-{user}");
    let addr = s.imap().to_string();
    let mut held = InteractiveClient::spawn(
        "sasl_login.py",
        &[
            "--proto",
            "imap",
            "--addr",
            &addr,
            "--mech",
            "OAUTHBEARER",
            "--user",
            user,
            "--secret",
            &token,
            "--ir",
            "--hold",
        ],
    );
    held.wait_for_line("READY", WAIT)
        .expect("OAUTHBEARER login");
    backend.wait_for_who(user, "imap", 2, WAIT).unwrap();
    held.send_line("done").unwrap();
    assert!(held.finish(WAIT).success());
    assert_eq!(landed(&s, user, "OAUTHBEARER"), home);

    // imaplib's authenticate: no initial response, the first message
    // answers mailpin's empty challenge.
    let (ok, _, last) = login(
        "imap",
        s.imap(),
        "OAUTHBEARER",
        user,
        &token,
        &["--imaplib"],
    );
    assert!(ok, "imaplib OAUTHBEARER: {last}");
    let (ok, wire, last) = login("imap", s.imap(), "XOAUTH2", user, &token, &["--ir"]);
    assert!(ok, "XOAUTH2: {last} {wire:?}");
    assert_eq!(landed(&s, user, "XOAUTH2"), home);

    // SCRAM, relayed round by round: with and without SASL-IR, SHA-1 too.
    let (ok, wire, last) = login("imap", s.imap(), "SCRAM-SHA-256", user, "pass", &["--ir"]);
    assert!(ok, "SCRAM-SHA-256: {last} {wire:?}");
    let (ok, _, last) = login(
        "imap",
        s.imap(),
        "SCRAM-SHA-256",
        user,
        "pass",
        &["--imaplib"],
    );
    assert!(ok, "imaplib SCRAM-SHA-256: {last}");
    assert_eq!(landed(&s, user, "SCRAM-SHA-256"), home);
    let (ok, _, last) = login("imap", s.imap(), "SCRAM-SHA-1", user, "pass", &[]);
    assert!(ok, "SCRAM-SHA-1: {last}");
    assert_eq!(landed(&s, user, "SCRAM-SHA-1"), home);
    plain.send_line("z LOGOUT").unwrap();

    // Refusals reach the client as the backend words them: the same
    // exchange made directly with the backend.
    // Each refused login comes from its own address: Dovecot delays every
    // later login from an address that failed (its auth penalty).
    let direct = backend.imap_addr();
    for (n, (mech, secret, reason)) in [
        ("OAUTHBEARER", "expired-token".to_owned(), "expired token"),
        (
            "OAUTHBEARER",
            "valid-user0002".to_owned(),
            "another user's token",
        ),
        ("XOAUTH2", "expired-token".to_owned(), "expired token"),
    ]
    .into_iter()
    .enumerate()
    {
        let (a, b) = (
            format!("127.0.3.{}", 2 * n + 1),
            format!("127.0.3.{}", 2 * n + 2),
        );
        let (ok, through, _) = login(
            "imap",
            s.imap(),
            mech,
            user,
            &secret,
            &["--ir", "--source", &a],
        );
        assert!(!ok, "{mech} with {reason} refused");
        let (_, straight, _) = login(
            "imap",
            direct,
            mech,
            user,
            &secret,
            &["--ir", "--source", &b],
        );
        assert_eq!(
            after_first_message(&through),
            after_first_message(&straight),
            "{mech} with {reason}: relayed word for word"
        );
        assert!(
            through.iter().any(|l| l.starts_with("S: + ey")),
            "the JSON error challenge was relayed: {through:?}"
        );
    }
    let (ok, through, last) = login(
        "imap",
        s.imap(),
        "SCRAM-SHA-256",
        user,
        "wrong",
        &["--ir", "--source", "127.0.3.20"],
    );
    assert!(!ok, "bad SCRAM proof refused");
    let (_, straight, _) = login(
        "imap",
        direct,
        "SCRAM-SHA-256",
        user,
        "wrong",
        &["--ir", "--source", "127.0.3.21"],
    );
    assert_eq!(
        through.last(),
        straight.last(),
        "bad proof: the backend's NO word for word ({last})"
    );
}

#[test]
fn refused_before_any_backend() {
    let Some(s) = setup() else {
        return;
    };
    let mut c = LineClient::connect(s.imap()).unwrap();
    let greeting = c.read_line().unwrap();
    for mech in [
        "AUTH=PLAIN",
        "AUTH=LOGIN",
        "AUTH=OAUTHBEARER",
        "AUTH=XOAUTH2",
        "AUTH=SCRAM-SHA-1",
        "AUTH=SCRAM-SHA-256",
    ] {
        assert!(greeting.contains(mech), "{mech} in {greeting}");
    }
    assert!(
        !greeting.contains("-PLUS") && !greeting.contains("CRAM-MD5"),
        "{greeting}"
    );
    let cases: [(&[u8], &str, &str); 5] = [
        (b"user=us\x07er\x01auth=Bearer valid-user0001\x01\x01", "XOAUTH2", "BAD Invalid login: user name contains a control character."),
        (b"n,,\x01auth=Bearer valid-user0001\x01\x01", "OAUTHBEARER", "NO [AUTHENTICATIONFAILED] Cannot log in: OAUTHBEARER needs the user name in the GS2 header (a=user) for routing."),
        (b"n,a=user0001,\x01user=user0002\x01auth=Bearer valid-user0001\x01\x01", "OAUTHBEARER", "NO [AUTHENTICATIONFAILED] Cannot log in: the user name disagrees with the authorization identity."),
        (b"p=tls-exporter,,n=user0001,r=abc", "SCRAM-SHA-256", "NO [AUTHENTICATIONFAILED] Cannot log in: channel binding is not available through this proxy (TLS ends here)."),
        (b"n,a=ad\x01min,n=user0001,r=abc", "SCRAM-SHA-256", "BAD Invalid login: authorization identity contains a control character."),
    ];
    for (message, mech, want) in cases {
        let reply = c
            .imap(&format!("AUTHENTICATE {mech} {}", b64(message)))
            .unwrap();
        assert_eq!(reply.status, want, "{mech} {message:?}");
    }
    let reply = c.imap("AUTHENTICATE CRAM-MD5").unwrap();
    assert_eq!(reply.status, "NO Unsupported authentication mechanism.");
    assert_eq!(s.introspection.requests(), 0, "no token was checked");
    for i in s.cluster.instances() {
        assert!(!i.log().contains("Login: user="), "no backend saw a login");
    }
}

#[test]
fn pop3_and_managesieve_oauth_and_scram() {
    let Some(s) = setup() else {
        return;
    };
    let user = "user0003";
    let token = format!("valid-{user}");
    let plain = plain_imap_login(s.imap(), user);
    let home = plain_backend(&s, user);
    drop(plain);
    let backend = s.cluster.instance(home);

    // curl: OAUTHBEARER over POP3 and IMAP.
    for url in [
        format!("pop3://{}/", s.pop3()),
        format!("imap://{}/", s.imap()),
    ] {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "-u",
                &format!("{user}:"),
                "--oauth2-bearer",
                &token,
                &url,
            ])
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(landed(&s, user, "OAUTHBEARER"), home);

    // POP3 SCRAM held open: the user's session is on its backend.
    let addr = s.pop3().to_string();
    let mut held = InteractiveClient::spawn(
        "sasl_login.py",
        &[
            "--proto",
            "pop3",
            "--addr",
            &addr,
            "--mech",
            "SCRAM-SHA-256",
            "--user",
            user,
            "--secret",
            "pass",
            "--hold",
        ],
    );
    held.wait_for_line("READY", WAIT).expect("POP3 SCRAM login");
    backend.wait_for_who(user, "pop3", 1, WAIT).unwrap();
    held.send_line("done").unwrap();
    assert!(held.finish(WAIT).success());
    assert_eq!(landed(&s, user, "SCRAM-SHA-256"), home);
    let (ok, _, last) = login("pop3", s.pop3(), "XOAUTH2", user, &token, &["--ir"]);
    assert!(ok, "POP3 XOAUTH2: {last}");
    assert_eq!(landed(&s, user, "XOAUTH2"), home);

    // ManageSieve: OAUTHBEARER with an initial response, SCRAM after the
    // empty challenge.
    let (ok, wire, last) = login("sieve", s.sieve(), "OAUTHBEARER", user, &token, &["--ir"]);
    assert!(ok, "ManageSieve OAUTHBEARER: {last} {wire:?}");
    let (ok, wire, last) = login("sieve", s.sieve(), "SCRAM-SHA-256", user, "pass", &[]);
    assert!(ok, "ManageSieve SCRAM-SHA-256: {last} {wire:?}");
    for mech in ["OAUTHBEARER", "SCRAM-SHA-256"] {
        let needle = format!("managesieve-login: Info: Login: user=<{user}>, method={mech},");
        backend.wait_for_log(&needle, WAIT).unwrap();
    }

    // Refusals word for word, against the same exchange made directly.
    for (n, proto, via, direct) in [
        (0, "pop3", s.pop3(), backend.pop3_addr()),
        (1, "sieve", s.sieve(), backend.sieve_addr()),
    ] {
        let source = |k: u8| format!("127.0.4.{}", n * 4 + k);
        let (ok, through, _) = login(
            proto,
            via,
            "OAUTHBEARER",
            user,
            "expired-token",
            &["--ir", "--source", &source(1)],
        );
        assert!(!ok, "{proto}: expired token refused");
        let (_, straight, _) = login(
            proto,
            direct,
            "OAUTHBEARER",
            user,
            "expired-token",
            &["--ir", "--source", &source(2)],
        );
        assert_eq!(
            after_first_message(&through),
            after_first_message(&straight),
            "{proto}: the JSON challenge, AQ== and the refusal relayed word for word"
        );
        assert!(
            through.contains(&"C: AQ==".to_owned()) || through.contains(&"C: \"AQ==\"".to_owned()),
            "{through:?}"
        );
        let (ok, through, _) = login(
            proto,
            via,
            "SCRAM-SHA-256",
            user,
            "wrong",
            &["--ir", "--source", &source(3)],
        );
        assert!(!ok, "{proto}: bad proof refused");
        let (_, straight, _) = login(
            proto,
            direct,
            "SCRAM-SHA-256",
            user,
            "wrong",
            &["--ir", "--source", &source(4)],
        );
        assert_eq!(
            through.last(),
            straight.last(),
            "{proto}: bad proof refusal"
        );
    }
}

#[test]
fn oauth_and_scram_before_tls_only_where_plaintext_auth_is() {
    let Some(s) = setup() else {
        return;
    };
    let dir = s.mailpin.dir().join("cert");
    let (cert, key) = mailpin::tls::DevCert::generate()
        .expect("dev cert")
        .write_to(&dir)
        .expect("write dev cert");
    let starttls = |protocol| ListenSpec {
        protocol,
        tls: "starttls",
        extra: "",
    };
    let listeners = [starttls("imap"), starttls("pop3"), starttls("sieve")];
    let cfg = config(&s.cluster, Some((&cert, &key)), "", &listeners, "")
        .replace("plaintext_auth = true", "plaintext_auth = false");
    let guarded = Mailpin::start(&cfg, 3);
    let ir = b64(b"n,a=user0001,\x01auth=Bearer valid-user0001\x01\x01");

    let mut c = LineClient::connect(guarded.listen[0]).unwrap();
    let greeting = c.read_line().unwrap();
    assert!(
        greeting.contains("LOGINDISABLED") && !greeting.contains("AUTH="),
        "{greeting}"
    );
    for mech in ["OAUTHBEARER", "SCRAM-SHA-256"] {
        let reply = c.imap(&format!("AUTHENTICATE {mech} {ir}")).unwrap();
        assert_eq!(
            reply.status,
            "NO [PRIVACYREQUIRED] Use STARTTLS before logging in."
        );
    }

    let mut c = LineClient::connect(guarded.listen[1]).unwrap();
    c.read_line().unwrap();
    c.send_line(&format!("AUTH OAUTHBEARER {ir}")).unwrap();
    assert_eq!(
        c.read_line().unwrap(),
        "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
    );

    let mut c = LineClient::connect(guarded.listen[2]).unwrap();
    let mut caps = Vec::new();
    loop {
        let line = c.read_line().unwrap();
        if line.starts_with("OK") {
            break;
        }
        caps.push(line);
    }
    assert!(caps.contains(&"\"SASL\" \"\"".to_owned()), "{caps:?}");
    c.send_line(&format!("AUTHENTICATE \"SCRAM-SHA-256\" \"{ir}\""))
        .unwrap();
    assert_eq!(
        c.read_line().unwrap(),
        "NO \"(ENCRYPT-NEEDED) Use STARTTLS before logging in.\""
    );
    assert_eq!(s.introspection.requests(), 0);
}
