//! PROXY protocol v1 and v2 in front of mailpin, with real Dovecot behind
//! it: the header's source address becomes the client's (the backend logs
//! it as `rip=`), a header is required and only accepted from
//! `proxy_trusted` networks, and broken, oversized, missing or slow headers
//! close the connection without a word.

mod support;

use std::time::{Duration, Instant};

use support::director::{config, ListenSpec};
use support::mailpin::Mailpin;
use support::{require_dovecot, DovecotCluster, DovecotOptions, LineClient};

struct Setup {
    cluster: DovecotCluster,
    mailpin: Mailpin,
}

const TRUSTED: &str = "proxy_protocol = true\nproxy_trusted = [\"127.0.0.0/8\"]";
const UNTRUSTED: &str = "proxy_protocol = true\nproxy_trusted = [\"10.0.0.0/8\"]";

/// One backend; listeners: 0 IMAP with PROXY from loopback, 1 POP3 with
/// PROXY from loopback, 2 IMAP with PROXY only from 10.0.0.0/8.
fn setup() -> Option<Setup> {
    if !require_dovecot() {
        return None;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let listen = |protocol, extra| ListenSpec {
        protocol,
        tls: "none",
        extra,
    };
    let cfg = config(
        &cluster,
        None,
        "handshake_timeout = \"2s\"",
        &[
            listen("imap", TRUSTED),
            listen("pop3", TRUSTED),
            listen("imap", UNTRUSTED),
        ],
        "",
    );
    let mailpin = Mailpin::start(&cfg, 3);
    Some(Setup { cluster, mailpin })
}

fn wait_for_backend_log(s: &Setup, needles: &[&str]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.cluster.instance(0).log();
        if log.lines().any(|l| needles.iter().all(|n| l.contains(n))) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn v1_header_address_reaches_the_imap_backend() {
    let Some(s) = setup() else { return };
    // Header and the first command in one write: only the header is eaten.
    let mut c = LineClient::connect_after(
        s.mailpin.listen[0],
        b"PROXY TCP4 192.0.2.77 127.0.0.1 5555 143\r\n",
    )
    .unwrap();
    assert!(c.read_line().unwrap().starts_with("* OK"));
    let r = c.imap("LOGIN user0001 pass").unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert!(
        wait_for_backend_log(&s, &["imap-login", "user=<user0001>", "rip=192.0.2.77"]),
        "backend log:\n{}",
        s.cluster.instance(0).log()
    );
    s.mailpin
        .wait_for_log(
            &["client=192.0.2.77:5555", "logged in"],
            Duration::from_secs(5),
        )
        .expect("the director logs the header's address as the client");
}

#[test]
fn v2_header_address_reaches_the_pop3_backend_even_with_data_right_behind() {
    let Some(s) = setup() else { return };
    let mut preamble = mailpin::proto::proxy_v2::encode(
        "198.51.100.9:6666".parse().unwrap(),
        "127.0.0.1:110".parse().unwrap(),
    );
    preamble.extend_from_slice(b"USER user0002\r\n");
    let mut c = LineClient::connect_after(s.mailpin.listen[1], &preamble).unwrap();
    assert!(c.read_line().unwrap().starts_with("+OK"), "greeting");
    assert!(
        c.read_line().unwrap().starts_with("+OK"),
        "USER pipelined after the header"
    );
    c.send_line("PASS pass").unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    assert!(
        wait_for_backend_log(&s, &["pop3-login", "user=<user0002>", "rip=198.51.100.9"]),
        "backend log:\n{}",
        s.cluster.instance(0).log()
    );
}

/// Connects, sends `preamble` (the director may close while it is still
/// being written), and expects the connection to end without a byte.
fn closed_silently(addr: std::net::SocketAddr, preamble: &[u8]) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = c.write_all(preamble);
    let mut buf = [0u8; 64];
    match c.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!(
            "no reply expected, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("expected the connection closed, got {e}"),
    }
}

#[test]
fn missing_broken_oversized_and_untrusted_headers_close_the_connection() {
    let Some(s) = setup() else { return };
    let imap = s.mailpin.listen[0];
    let mut huge_v2 = mailpin::proto::proxy_in::V2_SIGNATURE.to_vec();
    huge_v2.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let mut long_v1 = b"PROXY UNKNOWN ".to_vec();
    long_v1.resize(10 << 20, b'x');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("missing", b"A1 LOGIN user0001 pass\r\n".to_vec()),
        ("tls first", vec![0x16, 0x03, 0x01, 0x00, 0x05]),
        (
            "bad v1 address",
            b"PROXY TCP4 1.2.3 4.5.6.7 1 2\r\n".to_vec(),
        ),
        (
            "bad v1 port",
            b"PROXY TCP4 1.2.3.4 4.5.6.7 99999 2\r\n".to_vec(),
        ),
        ("v1 LF only", b"PROXY TCP4 1.2.3.4 4.5.6.7 1 2\n".to_vec()),
        ("10 MB v1", long_v1),
        ("huge v2", huge_v2),
    ];
    for (name, preamble) in &cases {
        eprintln!("case: {name}");
        closed_silently(imap, preamble);
    }
    // A trusted header on a listener that trusts only 10.0.0.0/8.
    closed_silently(
        s.mailpin.listen[2],
        b"PROXY TCP4 192.0.2.1 127.0.0.1 1 143\r\n",
    );
    s.mailpin
        .wait_for_log(&["not in proxy_trusted"], Duration::from_secs(5))
        .expect("the untrusted sender is logged");
    // A client that never sends a header is cut off at handshake_timeout.
    let started = Instant::now();
    closed_silently(imap, b"");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Log lines arrive through a pipe: wait (bounded) for all of them.
    let expected = cases.len() + 2;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut refusals = 0;
    while Instant::now() < deadline {
        refusals = s.mailpin.log().matches("PROXY header refused").count();
        if refusals >= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(refusals, expected, "logged once per connection");
    // And a good client is still served.
    let mut c =
        LineClient::connect_after(imap, b"PROXY TCP4 192.0.2.5 127.0.0.1 1 143\r\n").unwrap();
    assert!(c.read_line().unwrap().starts_with("* OK"));
}
