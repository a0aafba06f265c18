//! ManageSieve through mailpin to a real Dovecot (Pigeonhole) backend,
//! driven by a client written here: the capability greeting, CAPABILITY,
//! AUTHENTICATE "PLAIN" with a quoted, a literal and a continuation
//! response, PUTSCRIPT/LISTSCRIPTS relayed after login, the backend's own
//! NO for a wrong password, the client's address forwarded, LOGOUT.

mod support;

use base64::Engine;
use support::director::{config, ListenSpec};
use support::mailpin::Mailpin;
use support::{require_dovecot, DovecotCluster, DovecotOptions, LineClient};

fn setup() -> Option<(DovecotCluster, Mailpin)> {
    if !require_dovecot() {
        return None;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let cfg = config(&cluster, None, "", &[ListenSpec::plain("sieve")], "");
    let mailpin = Mailpin::start(&cfg, 1);
    Some((cluster, mailpin))
}

/// Reads lines up to and including a status line (OK, NO, BYE).
fn response(c: &mut LineClient) -> (Vec<String>, String) {
    let mut data = Vec::new();
    for _ in 0..100 {
        let line = c.read_line().expect("response line");
        let word = line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        if ["OK", "NO", "BYE"].contains(&word.as_str()) {
            return (data, line);
        }
        data.push(line);
    }
    panic!("no status line in 100 lines: {data:?}");
}

fn token(user: &str, pass: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}

#[test]
fn authenticate_three_ways_and_manage_scripts() {
    let Some((cluster, mailpin)) = setup() else {
        return;
    };
    let addr = mailpin.listen[0];
    let from: std::net::IpAddr = "127.0.0.57".parse().unwrap();

    // Quoted initial response.
    let mut c = LineClient::connect_from(from, addr).unwrap();
    let (caps, ok) = response(&mut c);
    assert!(ok.starts_with("OK"), "{ok}");
    for want in [
        "\"IMPLEMENTATION\"",
        "\"SASL\" \"PLAIN OAUTHBEARER XOAUTH2 SCRAM-SHA-1 SCRAM-SHA-256\"",
        "\"VERSION\" \"1.0\"",
        "\"SIEVE\" \"",
    ] {
        assert!(
            caps.iter().any(|l| l.starts_with(want)),
            "{want} in {caps:?}"
        );
    }
    c.send_line("CAPABILITY").unwrap();
    let (again, ok) = response(&mut c);
    assert_eq!(again, caps);
    assert!(ok.starts_with("OK"));
    c.send_line("NOOP \"t1\"").unwrap();
    assert!(response(&mut c).1.starts_with("OK (TAG \"t1\")"));
    c.send_line("LISTSCRIPTS").unwrap();
    assert!(response(&mut c).1.starts_with("NO"), "log in first");
    c.send_line(&format!(
        "AUTHENTICATE \"PLAIN\" \"{}\"",
        token("user0001", "pass")
    ))
    .unwrap();
    let (_, ok) = response(&mut c);
    assert!(ok.starts_with("OK"), "logged in: {ok}\n{}", mailpin.log());
    let script = "require \"fileinto\";\r\nif header :contains \"subject\" \"x\" { fileinto \"INBOX\"; }\r\n";
    c.send_raw(format!("PUTSCRIPT \"mp\" {{{}+}}\r\n{script}\r\n", script.len()).as_bytes())
        .unwrap();
    let (_, ok) = response(&mut c);
    assert!(ok.starts_with("OK"), "PUTSCRIPT relayed: {ok}");
    c.send_line("LISTSCRIPTS").unwrap();
    let (scripts, ok) = response(&mut c);
    assert!(ok.starts_with("OK"));
    assert!(
        scripts.iter().any(|l| l.starts_with("\"mp\"")),
        "{scripts:?}"
    );
    c.send_line("LOGOUT").unwrap();
    assert!(response(&mut c).1.starts_with("OK"));

    // Literal initial response.
    let mut c = LineClient::connect(addr).unwrap();
    response(&mut c);
    let t = token("user0002", "pass");
    c.send_raw(format!("AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{t}\r\n", t.len()).as_bytes())
        .unwrap();
    assert!(response(&mut c).1.starts_with("OK"));

    // Empty challenge, then the response as a string.
    let mut c = LineClient::connect(addr).unwrap();
    response(&mut c);
    c.send_line("AUTHENTICATE \"PLAIN\"").unwrap();
    assert_eq!(c.read_line().unwrap(), "\"\"");
    c.send_line(&format!("\"{}\"", token("user0003", "pass")))
        .unwrap();
    assert!(response(&mut c).1.starts_with("OK"));

    // The backend's own NO.
    let mut c = LineClient::connect(addr).unwrap();
    response(&mut c);
    c.send_line(&format!(
        "AUTHENTICATE \"PLAIN\" \"{}\"",
        token("user0004", "nope")
    ))
    .unwrap();
    let (_, no) = response(&mut c);
    assert!(no.starts_with("NO"), "{no}");

    assert!(
        wait_for_line(
            || cluster.instance(0).log(),
            &["managesieve-login", "user=<user0001>", "rip=127.0.0.57"]
        ),
        "the client's address reached the backend:\n{}",
        cluster.instance(0).log()
    );
}

#[test]
fn hostile_input_before_login() {
    let Some((_cluster, mailpin)) = setup() else {
        return;
    };
    let addr = mailpin.listen[0];
    let mut c = LineClient::connect(addr).unwrap();
    response(&mut c);
    c.send_line("AUTHENTICATE \"PLAIN\" {99999999+}").unwrap();
    let (_, bye) = response(&mut c);
    assert!(bye.starts_with("BYE"), "{bye}");
    assert!(c.read_line().is_err(), "closed");

    let mut c = LineClient::connect(addr).unwrap();
    response(&mut c);
    let _ = c.send_raw(&vec![b'a'; 10 << 20]);
    let (_, bye) = response(&mut c);
    assert!(bye.starts_with("BYE"), "{bye}");
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
