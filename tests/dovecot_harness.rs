//! Proves the real-Dovecot test harness (`tests/support/`) by talking to
//! Dovecot directly, with no director in between: instances come up on
//! their own loopback addresses, share one store, count sessions with
//! `doveadm who`, reject bad passwords, die and come back on demand,
//! leave no process behind, and hold up only its own user's session when
//! a crashed process left a stale maildir lock. The Python client
//! `imap_sessions.py` is proven here too (LOGIN, literal LOGIN,
//! AUTHENTICATE PLAIN, STARTTLS, TLS).

mod support;

use std::collections::HashSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use support::dovecot::user_name;
use support::loopback::{candidate, LoopbackLease};
use support::procs;
use support::{
    require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions, InteractiveClient,
    LineClient, TlsFiles,
};

/// Upper bound for any one client run or poll in these tests.
const LIMIT: Duration = Duration::from_secs(10);

/// True when both Dovecot and python3 are here (or the test must fail on CI).
fn tools_present() -> bool {
    require_dovecot() && require_tool("python3")
}

/// Logs in on `backend` over IMAP with LOGIN and returns the connection.
fn imap_login(addr: std::net::SocketAddr, user: &str, password: &str) -> LineClient {
    let mut client = LineClient::connect(addr).expect("connect to IMAP");
    let greeting = client.read_line().expect("read the greeting");
    assert!(greeting.starts_with("* OK"), "greeting: {greeting}");
    let reply = client
        .imap(&format!("LOGIN {user} {password}"))
        .expect("send LOGIN");
    assert!(reply.is_ok(), "LOGIN {user}: {}", reply.status);
    client
}

/// Sessions of `user` on `backend`, as `imap_sessions.py` args.
fn client_args(addr: Ipv4Addr, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--host".to_owned(), addr.to_string()];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn held_sessions_show_in_who_on_their_backend_only() {
    if !tools_present() {
        return;
    }
    let cluster = DovecotCluster::start(3, DovecotOptions::default());
    let (first, second) = (cluster.instance(0), cluster.instance(1));
    let args = client_args(first.addr(), &["--user", "user0001", "--sessions", "3"]);
    let mut client = InteractiveClient::spawn("imap_sessions.py", &as_strs(&args));
    let ready = client.wait_for_line("READY", LIMIT).expect("client ready");
    assert_eq!(ready, "READY 3");

    first
        .wait_for_who("user0001", "imap", 3, LIMIT)
        .expect("three sessions on the first backend");
    assert_eq!(second.who_count("user0001", "imap"), 0);
    assert!(
        second.who().is_empty(),
        "second backend: {:?}",
        second.who()
    );

    client
        .send_line("done")
        .expect("tell the client to log out");
    let output = client.finish(LIMIT);
    assert!(output.success(), "client failed: {output:?}");
    let summary = output.summary_line().expect("a JSON summary");
    assert!(summary.contains("\"ok\": 3"), "summary: {summary}");
    first
        .wait_for_who("user0001", "imap", 0, LIMIT)
        .expect("sessions gone after logout");
}

#[test]
fn message_appended_on_one_backend_is_read_on_another() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(2, DovecotOptions::default());
    let message = "Subject: shared store\r\n\r\nhello from backend 0\r\n";
    let mut writer = imap_login(cluster.instance(0).imap_addr(), "user0002", "pass");
    let append = writer
        .imap(&format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()))
        .expect("APPEND");
    assert!(append.is_ok(), "APPEND: {}", append.status);
    writer.imap("LOGOUT").expect("LOGOUT");

    let mut reader = imap_login(cluster.instance(1).imap_addr(), "user0002", "pass");
    let select = reader.imap("SELECT INBOX").expect("SELECT");
    assert!(
        select.untagged.iter().any(|line| line == "* 1 EXISTS"),
        "SELECT on backend 1: {:?}",
        select.untagged
    );
    let fetch = reader.imap("FETCH 1 BODY.PEEK[TEXT]").expect("FETCH");
    assert!(
        fetch
            .untagged
            .iter()
            .any(|line| line == "hello from backend 0"),
        "FETCH on backend 1: {:?}",
        fetch.untagged
    );
    assert!(cluster.maildir("user0002").join("cur").is_dir());
}

#[test]
fn lmtp_delivery_on_one_backend_is_read_on_another() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(2, DovecotOptions::default());
    let mut lmtp = LineClient::connect(cluster.instance(1).lmtp_addr()).expect("connect LMTP");
    let mut step = |line: Option<&str>, expect: &str| {
        if let Some(line) = line {
            lmtp.send_line(line).expect("send to LMTP");
        }
        let reply = lmtp.smtp_reply().expect("LMTP reply");
        let last = reply.last().cloned().unwrap_or_default();
        assert!(last.starts_with(expect), "{line:?} -> {reply:?}");
    };
    step(None, "220");
    step(Some("LHLO test.example"), "250");
    step(Some("MAIL FROM:<sender@example.org>"), "250");
    step(Some("RCPT TO:<user0003>"), "250");
    step(Some("DATA"), "354");
    step(
        Some("Subject: by lmtp\r\n\r\ndelivered over lmtp\r\n."),
        "250",
    );
    step(Some("QUIT"), "221");

    let mut reader = imap_login(cluster.instance(0).imap_addr(), "user0003", "pass");
    let select = reader.imap("SELECT INBOX").expect("SELECT");
    assert!(
        select.untagged.iter().any(|line| line == "* 1 EXISTS"),
        "SELECT on backend 0: {:?}",
        select.untagged
    );
}

#[test]
fn wrong_password_gets_no_and_is_never_printed() {
    if !tools_present() {
        return;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let password = "Wrong-Secret-4711";
    let args = client_args(
        cluster.instance(0).addr(),
        &[
            "--user",
            "user0001",
            "--password",
            password,
            "--expect-fail",
        ],
    );
    let output = run_client("imap_sessions.py", &as_strs(&args), LIMIT);
    assert!(output.success(), "expected a refused login: {output:?}");
    assert!(
        output.stdout.contains("NO [AUTHENTICATIONFAILED]"),
        "stdout: {}",
        output.stdout
    );
    assert!(!output.stdout.contains(password) && !output.stderr.contains(password));
    cluster
        .instance(0)
        .wait_for_log("Password mismatch", LIMIT)
        .expect("the failure logged");
    assert!(!cluster.instance(0).log().contains(password));

    // The same client without --expect-fail reports the failure. Another
    // client address: Dovecot's auth penalty would delay 127.0.0.1 now.
    let args = client_args(
        cluster.instance(0).addr(),
        &[
            "--user",
            "user0001",
            "--password",
            password,
            "--id",
            "x-originating-ip=192.0.2.80",
            "--hold",
            "0",
        ],
    );
    let output = run_client("imap_sessions.py", &as_strs(&args), LIMIT);
    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(output.stdout.starts_with("READY 0"), "{}", output.stdout);
}

#[test]
fn literal_login_and_authenticate_plain_work() {
    if !tools_present() {
        return;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    // A quoted string cannot carry 8-bit characters: this needs a literal.
    cluster.add_user("literal", "p\u{e4}ss\"word");
    let addr = cluster.instance(0).addr();
    let literal = client_args(
        addr,
        &[
            "--user",
            "literal",
            "--password",
            "p\u{e4}ss\"word",
            "--literal",
            "--hold",
            "0",
        ],
    );
    let output = run_client("imap_sessions.py", &as_strs(&literal), LIMIT);
    assert!(output.success(), "literal LOGIN: {output:?}");

    let plain = client_args(
        addr,
        &[
            "--users",
            "2",
            "--sessions",
            "2",
            "--auth",
            "plain",
            "--hold",
            "0",
        ],
    );
    let output = run_client("imap_sessions.py", &as_strs(&plain), LIMIT);
    assert!(output.success(), "AUTHENTICATE PLAIN: {output:?}");
    assert!(output.stdout.starts_with("READY 4"), "{}", output.stdout);
    cluster
        .instance(0)
        .wait_for_log("user=<user0002>, method=PLAIN", LIMIT)
        .expect("AUTHENTICATE PLAIN login logged");
}

#[test]
fn forwarded_client_address_reaches_the_log() {
    if !tools_present() {
        return;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let args = client_args(
        cluster.instance(0).addr(),
        &[
            "--user",
            "user0004",
            "--id",
            "x-originating-ip=192.0.2.44",
            "--id",
            "x-originating-port=40044",
            "--hold",
            "0",
        ],
    );
    let output = run_client("imap_sessions.py", &as_strs(&args), LIMIT);
    assert!(output.success(), "{output:?}");
    cluster
        .instance(0)
        .wait_for_log(
            "user=<user0004>, method=PLAIN, rip=192.0.2.44, rport=40044",
            LIMIT,
        )
        .expect("the forwarded address in the login line");
}

#[test]
fn proxy_v2_header_sets_the_client_address() {
    if !require_dovecot() {
        return;
    }
    let options = DovecotOptions {
        haproxy: vec![1],
        ..DovecotOptions::default()
    };
    let cluster = DovecotCluster::start(2, options);
    let backend = cluster.instance(1);
    assert!(backend.expects_proxy_header() && !cluster.instance(0).expects_proxy_header());
    let backend_ip = backend.addr().octets();
    let mut header = vec![
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, 0x11, 0x00, 0x0c, // v2 PROXY, TCP over IPv4, 12 address bytes
        192, 0, 2, 55, // source address
    ];
    header.extend_from_slice(&backend_ip);
    header.extend_from_slice(&[0x9c, 0x77, 0x00, 143]); // ports 40055, 143
    let mut client = LineClient::connect_after(backend.imap_addr(), &header).expect("connect");
    assert!(client.read_line().expect("greeting").starts_with("* OK"));
    let reply = client.imap("LOGIN user0005 pass").expect("LOGIN");
    assert!(reply.is_ok(), "{}", reply.status);
    backend
        .wait_for_log(
            "user=<user0005>, method=PLAIN, rip=192.0.2.55, rport=40055",
            LIMIT,
        )
        .expect("the PROXY source address in the login line");
}

#[test]
fn kill_hard_refuses_connections_and_restart_serves_again() {
    if !require_dovecot() {
        return;
    }
    let mut cluster = DovecotCluster::start(2, DovecotOptions::default());
    let held = imap_login(cluster.instance(0).imap_addr(), "user0006", "pass");
    let pids = cluster.instance(0).pids();
    assert!(pids.len() > 1, "master and children: {pids:?}");

    cluster.instance_mut(0).kill_hard();
    assert!(procs::wait_gone(&pids, Duration::ZERO).is_empty());
    let refused = TcpStream::connect(cluster.instance(0).imap_addr())
        .expect_err("the port of a killed backend must refuse");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(TcpStream::connect(cluster.instance(0).lmtp_addr()).is_err());
    // The other backend is untouched.
    drop(imap_login(
        cluster.instance(1).imap_addr(),
        "user0006",
        "pass",
    ));
    drop(held);

    cluster.instance_mut(0).restart();
    let mut client = imap_login(cluster.instance(0).imap_addr(), "user0006", "pass");
    assert!(client.imap("NOOP").expect("NOOP").is_ok());

    cluster.instance_mut(0).stop();
    assert!(TcpStream::connect(cluster.instance(0).imap_addr()).is_err());
    assert!(!cluster.instance_mut(0).is_running());
}

#[test]
fn drop_leaves_no_dovecot_process_or_file_behind() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(2, DovecotOptions::default());
    let pids: Vec<u32> = cluster.instances().iter().flat_map(|i| i.pids()).collect();
    assert!(pids.len() >= 4, "two masters and their children: {pids:?}");
    let root = cluster.root_dir().to_path_buf();
    let addrs: Vec<_> = cluster.instances().iter().map(|i| i.imap_addr()).collect();
    drop(cluster);
    let left = procs::wait_gone(&pids, Duration::from_secs(5));
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!root.exists(), "{} still exists", root.display());
    for addr in addrs {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still answers");
    }
}

#[test]
fn starttls_and_implicit_tls_clients_verify_the_certificate() {
    if !tools_present() {
        return;
    }
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generate a certificate");
    let dir = support::tempdir::TempDir::new().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let options = DovecotOptions {
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key,
        }),
        ..DovecotOptions::default()
    };
    let cluster = DovecotCluster::start(1, options);
    let backend = cluster.instance(0);
    let cafile = cert.to_string_lossy().into_owned();
    let imaps_port = backend.imaps_port().to_string();
    for mode_args in [
        vec!["--mode", "starttls"],
        vec!["--mode", "tls", "--port", imaps_port.as_str()],
    ] {
        let mut extra = mode_args.clone();
        extra.extend([
            "--cafile",
            cafile.as_str(),
            "--server-name",
            "localhost",
            "--users",
            "2",
            "--hold",
            "0",
        ]);
        let args = client_args(backend.addr(), &extra);
        let output = run_client("imap_sessions.py", &as_strs(&args), LIMIT);
        assert!(output.success(), "{mode_args:?}: {output:?}");
    }
    // A name the certificate does not carry fails verification.
    let args = client_args(
        backend.addr(),
        &[
            "--mode",
            "starttls",
            "--cafile",
            cafile.as_str(),
            "--user",
            "user0001",
            "--hold",
            "0",
        ],
    );
    let output = run_client("imap_sessions.py", &as_strs(&args), LIMIT);
    assert_eq!(output.code, Some(1), "{output:?}");
    assert!(
        output.stdout.contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        output.stdout
    );
}

#[test]
fn two_clusters_at_once_get_distinct_addresses_and_names() {
    if !require_dovecot() {
        return;
    }
    let one = DovecotCluster::start(2, DovecotOptions::default());
    let two = DovecotCluster::start(2, DovecotOptions::default());
    let all: Vec<_> = one.instances().iter().chain(two.instances()).collect();
    let addrs: HashSet<Ipv4Addr> = all.iter().map(|i| i.addr()).collect();
    let names: HashSet<&str> = all.iter().map(|i| i.name()).collect();
    assert_eq!(addrs.len(), 4);
    assert_eq!(names.len(), 4);
    assert_ne!(one.root_dir(), two.root_dir());
    assert!(addrs.iter().all(|addr| addr.octets()[1] != 0));
}

#[test]
fn address_leases_are_exclusive_and_avoid_127_0() {
    let leases: Vec<LoopbackLease> = (0..20).map(|_| LoopbackLease::acquire()).collect();
    let addrs: HashSet<Ipv4Addr> = leases.iter().map(LoopbackLease::addr).collect();
    assert_eq!(addrs.len(), leases.len());
    for pid in [1, 2, 32_768, 4_194_304] {
        for seq in 0..300 {
            let octets = candidate(pid, seq).octets();
            assert_eq!(octets[0], 127);
            assert_ne!(octets[1], 0, "127.0.x.x is reserved for the director");
            assert!(octets[3] != 0 && octets[3] != 255);
        }
    }
}

#[test]
fn who_output_is_parsed_robustly() {
    let output = "username\t#\tproto\t(pids)\t(ips)\n\
                  user0001\t2\timap\t(10 11)\t(127.0.0.1)\n\
                  user0001\t1\tpop3\t(12)\t(127.0.0.1)\n\
                  garbage line\n\n";
    let entries = support::dovecot::parse_who(output);
    assert_eq!(entries.len(), 2);
    assert_eq!(
        support::dovecot::sessions_of(&entries, "user0001", "imap"),
        2
    );
    assert_eq!(
        support::dovecot::sessions_of(&entries, "user0001", "pop3"),
        1
    );
    assert_eq!(user_name(7), "user0007");
}

#[test]
fn missing_tool_skips_off_ci() {
    assert!(support::tools::tool_path("mailpin-no-such-tool-x9").is_none());
    assert!(!support::tools::skip_or_fail_on(
        "mailpin-no-such-tool-x9 not installed",
        false
    ));
    assert!(support::tools::tool_path("sh").is_some());
}

#[test]
#[should_panic(expected = "CI=true: run scripts/install-test-deps")]
fn missing_tool_fails_on_ci() {
    support::tools::skip_or_fail_on("mailpin-no-such-tool-x9 not installed", true);
}

/// Reads ManageSieve lines up to the final OK, NO or BYE and returns it.
fn read_until_ok(sieve: &mut LineClient) -> String {
    loop {
        let line = sieve.read_line().expect("ManageSieve line");
        if line.starts_with("OK") || line.starts_with("NO") || line.starts_with("BYE") {
            return line;
        }
    }
}

#[test]
fn pop3_and_managesieve_log_in_and_store_scripts_in_the_home() {
    use base64::Engine as _;
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let backend = cluster.instance(0);

    let mut pop3 = LineClient::connect(backend.pop3_addr()).expect("connect POP3");
    assert!(pop3.read_line().expect("POP3 greeting").starts_with("+OK"));
    pop3.send_line("USER user0007").expect("USER");
    assert!(pop3.read_line().expect("USER reply").starts_with("+OK"));
    pop3.send_line("PASS pass").expect("PASS");
    let reply = pop3.read_line().expect("PASS reply");
    assert!(reply.starts_with("+OK"), "PASS: {reply}");
    backend
        .wait_for_who("user0007", "pop3", 1, LIMIT)
        .expect("the POP3 session in doveadm who");

    let mut sieve = LineClient::connect(backend.sieve_addr()).expect("connect ManageSieve");
    assert!(read_until_ok(&mut sieve).starts_with("OK"), "greeting");
    let credentials = base64::engine::general_purpose::STANDARD.encode("\0user0008\0pass");
    sieve
        .send_line(&format!("AUTHENTICATE \"PLAIN\" \"{credentials}\""))
        .expect("AUTHENTICATE");
    let reply = read_until_ok(&mut sieve);
    assert!(reply.starts_with("OK"), "AUTHENTICATE: {reply}");
    let script = "keep;\r\n";
    sieve
        .send_line(&format!(
            "PUTSCRIPT \"harness\" {{{}+}}\r\n{script}",
            script.len()
        ))
        .expect("PUTSCRIPT");
    let reply = read_until_ok(&mut sieve);
    assert!(reply.starts_with("OK"), "PUTSCRIPT: {reply}");
    let stored = cluster
        .store_dir()
        .join("user0008")
        .join("sieve")
        .join("harness.sieve");
    assert!(stored.is_file(), "{} missing", stored.display());
}

#[test]
fn hundreds_of_sessions_fit_on_one_backend() {
    if !tools_present() {
        return;
    }
    let options = DovecotOptions {
        users: 100,
        ..DovecotOptions::default()
    };
    let cluster = DovecotCluster::start(1, options);
    let backend = cluster.instance(0);
    let args = client_args(backend.addr(), &["--users", "100", "--sessions", "3"]);
    let mut client = InteractiveClient::spawn("imap_sessions.py", &as_strs(&args));
    let ready = client
        .wait_for_line("READY", Duration::from_secs(30))
        .expect("client ready");
    assert_eq!(ready, "READY 300");
    let entries = backend
        .wait_until_who(
            "300 IMAP sessions",
            |entries| entries.iter().map(|entry| entry.count).sum::<usize>() == 300,
            LIMIT,
        )
        .expect("every session registered");
    assert_eq!(entries.len(), 100, "one line per user");
    assert!(entries
        .iter()
        .all(|entry| entry.count == 3 && entry.protocol == "imap"));
    client.send_line("done").expect("release the client");
    let output = client.finish(Duration::from_secs(30));
    assert!(output.success(), "{output:?}");
}

/// Dovecot waits for a lock blocking its whole mail process. A backend
/// SIGKILLed mid-sync leaves its `dovecot-uidlist.lock` in the user's
/// maildir, which the next process overrides only once the lock is 2 s old
/// and its PID gone. The test backends run one client per mail process
/// (`tests/support/dovecot_conf.rs`), so only that user's session waits:
/// with 50 clients per process every user sharing it froze, which failed
/// logins in the failover test.
#[test]
fn a_stale_maildir_lock_holds_up_only_its_own_session() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let addr = cluster.instance(0).imap_addr();
    let mut locked = imap_login(addr, "user0003", "pass");
    assert!(locked.imap("SELECT INBOX").expect("SELECT").is_ok());
    let mut other = imap_login(addr, "user0004", "pass");
    assert!(other.imap("SELECT INBOX").expect("SELECT").is_ok());

    // What a killed process leaves: a fresh lock naming a dead PID on this
    // host, and new mail, so the next sync must take the lock.
    let mut exited = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead_pid = exited.id();
    exited.wait().expect("reap true");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let lock = cluster.maildir("user0003").join("dovecot-uidlist.lock");
    std::fs::write(&lock, format!("{dead_pid}:{}", host.trim())).expect("plant the lock");
    cluster.put_message(
        "user0003",
        "1.stale-lock.test",
        b"Subject: a\r\n\r\nbody\r\n",
    );

    // user0003's sync now waits for the lock...
    let started = std::time::Instant::now();
    locked.send_line("w1 NOOP").expect("send NOOP");
    std::thread::sleep(Duration::from_millis(300));
    // ...and another user on the same backend is served meanwhile.
    let reply = other.imap("NOOP").expect("NOOP of another user");
    let other_took = started.elapsed();
    assert!(reply.is_ok(), "{}", reply.status);
    // Once the lock is found stale, user0003 gets its new mail.
    let mut exists = false;
    loop {
        let line = locked.read_line().expect("user0003's NOOP answer");
        exists |= line == "* 1 EXISTS";
        if line.starts_with("w1 ") {
            assert!(line.starts_with("w1 OK"), "{line}");
            break;
        }
    }
    let locked_took = started.elapsed();
    assert!(
        exists,
        "the new message arrived once the lock was overridden"
    );
    assert!(
        locked_took >= Duration::from_millis(1500),
        "user0003 waited for the stale lock ({locked_took:?})"
    );
    assert!(
        other_took < Duration::from_millis(1300),
        "user0004 was served while user0003 waited: {other_took:?} \
         (user0003 waited {locked_took:?})"
    );
}
