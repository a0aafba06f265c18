//! Reload against real Dovecot: SIGHUP, `mailpin ctl reload` and
//! `POST /reload` re-read the configuration while IMAP sessions are held.
//! Backends are added, removed (they drain until `server.drain_timeout`)
//! and reweighted, a listener is added, the certificate is rotated, and
//! not one established session is dropped; an invalid file is refused
//! with its errors and the old configuration stays in force; SIGHUP never
//! ends the process.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpin::tls::DevCert;
use support::mailpin::Mailpin;
use support::procs::{pid_alive, send_signal};
use support::{require_dovecot, require_tool, DovecotCluster, DovecotOptions, InteractiveClient};

/// A director config over the given backends of `cluster`, with extra
/// `[server]` lines and extra blocks at the end.
fn config_text(
    cluster: &DovecotCluster,
    backends: &[(usize, u32)],
    server: &str,
    extra: &str,
) -> String {
    let mut c = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[limits]\ntrusted = [\"127.0.0.0/8\"]\n\n\
         [server]\ncores = 2\ndrain_timeout = \"8s\"\n{server}\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n"
    );
    for (i, weight) in backends {
        let inst = cluster.instance(*i);
        c.push_str(&format!(
            "[[backend]]\nname = \"{}\"\nhost = \"{}\"\nimap = {}\npop3 = {}\nweight = {weight}\n\n",
            inst.name(),
            inst.addr(),
            inst.imap_port(),
            inst.pop3_port()
        ));
    }
    c.push_str(extra);
    c
}

/// Users of `users` with an IMAP session on backend `i`, from `doveadm who`.
fn users_on(cluster: &DovecotCluster, i: usize, users: &[String]) -> BTreeSet<String> {
    cluster
        .instance(i)
        .who()
        .into_iter()
        .filter(|e| e.protocol == "imap" && users.contains(&e.user))
        .map(|e| e.user)
        .collect()
}

/// Waits for the `n`-th log line containing every needle.
fn wait_for_nth_log(m: &Mailpin, needles: &[&str], n: usize, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let count = m
            .log()
            .lines()
            .filter(|l| needles.iter().all(|x| l.contains(x)))
            .count();
        if count >= n {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The body of `GET path` on the admin API.
fn get(admin: SocketAddr, path: &str) -> String {
    let (status, body) = support::mailpin::http(
        admin,
        &format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn greeting(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[test]
fn sighup_changes_backends_and_listeners_without_dropping_a_session() {
    if !require_dovecot() || !require_tool("python3") {
        return;
    }
    let cluster = DovecotCluster::start(
        3,
        DovecotOptions {
            users: 60,
            ..DovecotOptions::default()
        },
    );
    let (b0, b1, b2) = (0, 1, 2);
    let m = Mailpin::start(&config_text(&cluster, &[(b0, 100), (b1, 100)], "", ""), 1);
    let users: Vec<String> = (1..=20).map(|n| cluster.user(n)).collect();
    let port = m.listen[0].port().to_string();
    let mut held = InteractiveClient::spawn(
        "imap_sessions.py",
        &["--host", "127.0.0.1", "--port", &port, "--users", "20"],
    );
    let ready = held
        .wait_for_line("READY", Duration::from_secs(60))
        .expect("logins done");
    assert_eq!(
        ready.trim(),
        "READY 20",
        "every session logged in:\n{}",
        m.log()
    );
    let on_b0 = users_on(&cluster, b0, &users);
    let on_b1 = users_on(&cluster, b1, &users);
    assert_eq!(on_b0.len() + on_b1.len(), 20, "{on_b0:?} {on_b1:?}");
    assert!(!on_b1.is_empty(), "some users are on b1");

    // b1 removed, b2 added, b0 reweighted, a POP3 listener added.
    let pop3 = "[[listen]]\nprotocol = \"pop3\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n";
    let next = config_text(
        &cluster,
        &[(b0, 250), (b2, 100)],
        "stall_timeout = \"30s\"",
        pop3,
    );
    std::fs::write(m.dir().join("mailpin.toml"), next).unwrap();
    let reloaded_at = Instant::now();
    send_signal(m.pid(), libc::SIGHUP);
    assert!(
        wait_for_nth_log(
            &m,
            &["configuration reloaded", "added"],
            2,
            Duration::from_secs(10)
        ),
        "no reload in the log:\n{}",
        m.log()
    );
    assert!(pid_alive(m.pid()), "SIGHUP never ends the process");
    let log = m.log();
    for change in [
        format!("backend {}: removed", cluster.instance(b1).name()),
        format!("backend {}: added", cluster.instance(b2).name()),
        format!("backend {}: weight 100 -> 250", cluster.instance(b0).name()),
        "server.stall_timeout: 60s -> 30s".to_string(),
        "listener pop3 127.0.0.1:0: added".to_string(),
    ] {
        assert!(log.contains(&change), "{change} not logged:\n{log}");
    }

    // Every session is still there, including those on the removed backend.
    assert_eq!(users_on(&cluster, b0, &users), on_b0);
    assert_eq!(users_on(&cluster, b1, &users), on_b1);

    // The new listener answers; the removed backend takes no new user.
    let pop3_addr: SocketAddr = log
        .lines()
        .filter(|l| l.contains("listening") && l.contains("protocol=\"pop3\""))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .and_then(|a| a.parse().ok())
        .expect("the new POP3 listener's address in the log");
    assert!(greeting(pop3_addr).starts_with("+OK"), "POP3 greets");
    let api = get(m.admin, "/backends");
    let rows: serde_json::Value = serde_json::from_str(&api).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&cluster.instance(b2).name()), "{api}");
    let b1_row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == cluster.instance(b1).name())
        .expect("a removed backend is listed while it drains");
    assert_eq!(b1_row["removed"], true, "{api}");
    assert_eq!(b1_row["routable"], false, "{api}");
    let newcomers: Vec<String> = (40..=59).map(|n| cluster.user(n)).collect();
    let out = support::run_client(
        "imap_sessions.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--users",
            "20",
            "--first-user",
            "40",
            "--hold",
            "0",
        ],
        Duration::from_secs(60),
    );
    assert!(out.success(), "new logins after the reload: {}", out.stderr);
    for u in &newcomers {
        let (_, out, _) = m.ctl(&["--json", "user", u]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        assert_ne!(
            v["backend"].as_str(),
            Some(cluster.instance(b1).name()),
            "{u} was assigned to the removed backend"
        );
    }

    // At drain_timeout the removed backend's sessions end, backend first;
    // the others run on.
    cluster
        .instance(b1)
        .wait_until_who(
            "the drained users gone",
            |who| who.iter().all(|e| !on_b1.contains(&e.user)),
            Duration::from_secs(15),
        )
        .expect("the removed backend's sessions end at drain_timeout");
    assert!(
        reloaded_at.elapsed() >= Duration::from_millis(7500),
        "not before drain_timeout"
    );
    assert_eq!(users_on(&cluster, b0, &users), on_b0, "the others run on");
    held.send_line("").unwrap();
    let _ = held.finish(Duration::from_secs(30));
}

#[test]
fn an_invalid_config_is_refused_and_the_old_one_stays() {
    if !require_dovecot() || !require_tool("python3") {
        return;
    }
    let cluster = DovecotCluster::start(2, DovecotOptions::default());
    let good = config_text(&cluster, &[(0, 100), (1, 100)], "", "");
    let m = Mailpin::start(&good, 1);
    let port = m.listen[0].port().to_string();
    let mut held = InteractiveClient::spawn(
        "imap_sessions.py",
        &["--host", "127.0.0.1", "--port", &port, "--users", "5"],
    );
    held.wait_for_line("READY 5", Duration::from_secs(60))
        .unwrap();
    let before = get(m.admin, "/backends");

    // A typo and a value out of range: both reported, nothing changes.
    let bad = good.replace(
        "cores = 2\n",
        "cores = 2\nstall_timout = \"1s\"\nkeepalive_probes = 0\n",
    );
    std::fs::write(m.dir().join("mailpin.toml"), &bad).unwrap();
    let (code, out, err) = m.ctl(&["reload"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("stall_timout"), "{err}");
    assert!(err.contains("keepalive_probes"), "{err}");
    send_signal(m.pid(), libc::SIGHUP);
    assert!(
        wait_for_nth_log(&m, &["reload refused"], 2, Duration::from_secs(10)),
        "{}",
        m.log()
    );
    assert!(pid_alive(m.pid()));
    // A setting that needs a restart is refused too.
    let restart = good.replace("cores = 2\n", "cores = 1\n");
    std::fs::write(m.dir().join("mailpin.toml"), &restart).unwrap();
    let (code, _, err) = m.ctl(&["reload"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server.cores cannot change on reload"),
        "{err}"
    );
    assert_eq!(get(m.admin, "/backends"), before);
    let metrics = get(m.admin, "/metrics");
    assert!(
        metrics.contains("mailpin_reloads_total{result=\"failed\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailpin_reloads_total{result=\"ok\"} 0"),
        "{metrics}"
    );

    // The good file again: a reload with nothing to change succeeds.
    std::fs::write(m.dir().join("mailpin.toml"), &good).unwrap();
    let (code, out, _) = m.ctl(&["reload"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing changed"), "{out}");
    held.send_line("").unwrap();
    let done = held.finish(Duration::from_secs(30));
    assert!(
        done.success(),
        "every held session lived on: {}",
        done.stderr
    );
}

/// A TLS client that trusts only `root` and tells whether the handshake
/// with `addr` succeeds.
fn tls_trusts(addr: SocketAddr, root: &DevCert) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls_pemfile_der(&root.cert_pem);
    roots.add(der).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = [0u8; 64];
    tls.read(&mut buf)
        .is_ok_and(|n| buf[..n].starts_with(b"* OK"))
}

/// The DER of the one certificate in `pem`.
fn rustls_pemfile_der(pem: &str) -> rustls::pki_types::CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn a_reload_rotates_the_certificate_for_new_connections_only() {
    if !require_dovecot() {
        return;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let first = DevCert::generate().unwrap();
    let second = DevCert::generate().unwrap();
    let dir = support::tempdir::TempDir::new().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();
    let tls = format!(
        "[tls]\ncert = {cert:?}\nkey = {key:?}\n\n[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"implicit\"\n\n"
    );
    let text = config_text(&cluster, &[(0, 100)], "", &tls);
    let m = Mailpin::start(&text, 2);
    let imaps = m.listen[1];
    assert!(tls_trusts(imaps, &first));
    assert!(!tls_trusts(imaps, &second));
    // A session that stays open across the rotation.
    let mut open = TcpStream::connect(m.listen[0]).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    assert!(open.read(&mut buf).unwrap() > 0);

    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    let (code, out, err) = m.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("tls: certificate and key re-read"), "{out}");
    assert!(
        tls_trusts(imaps, &second),
        "new connections get the new certificate"
    );
    assert!(!tls_trusts(imaps, &first));
    open.write_all(b"a NOOP\r\n").unwrap();
    let n = open.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"a OK"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}
