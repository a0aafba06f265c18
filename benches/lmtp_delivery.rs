//! LMTP deliveries per second through mailpin against straight into one
//! backend: 10 KB messages, 1 and 5 recipients per message.
//!
//! By default it starts the embedded dev setup in this process (three dev
//! backends with LMTP, and the director in front of them) and compares
//! the director's LMTP listener with one dev backend's own LMTP port. To
//! measure real backends instead, point it at them:
//!
//! ```sh
//! cargo bench --bench lmtp_delivery
//! MAILPIN_BENCH_DIRECTOR=127.0.0.1:24024 MAILPIN_BENCH_BACKEND=127.0.0.2:24 \
//!     MAILPIN_BENCH_USERS=user0001,user0002,user0003,user0004,user0005 \
//!     cargo bench --bench lmtp_delivery
//! ```
//!
//! Each case runs `CONNECTIONS` client threads, each delivering messages
//! back to back on one LMTP connection (MAIL, RCPTs and DATA pipelined, as
//! RFC 2920 allows), and prints messages and recipient deliveries per
//! second. `MAILPIN_BENCH_MESSAGES` sets the messages per case (default 2000).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 4;
const MESSAGE_BYTES: usize = 10 * 1024;

fn message() -> Vec<u8> {
    let mut m = b"From: bench@example.org\r\nSubject: bench\r\n\r\n".to_vec();
    while m.len() < MESSAGE_BYTES - 80 {
        m.extend_from_slice(&[b'b'; 76]);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn reply(r: &mut BufReader<TcpStream>) -> u16 {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("server closed the connection");
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line[..3].parse().unwrap_or(0);
        }
    }
}

/// Delivers `count` messages to `rcpts` over one connection.
fn deliver(addr: SocketAddr, rcpts: &[String], count: usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    assert_eq!(reply(&mut r), 220);
    w.write_all(b"LHLO bench\r\n").unwrap();
    assert_eq!(reply(&mut r), 250);
    let msg = message();
    let mut envelope = b"MAIL FROM:<bench@example.org>\r\n".to_vec();
    for u in rcpts {
        envelope.extend_from_slice(format!("RCPT TO:<{u}>\r\n").as_bytes());
    }
    envelope.extend_from_slice(b"DATA\r\n");
    for _ in 0..count {
        w.write_all(&envelope).unwrap();
        for _ in 0..=rcpts.len() {
            assert_eq!(reply(&mut r), 250);
        }
        assert_eq!(reply(&mut r), 354);
        w.write_all(&msg).unwrap();
        for _ in rcpts {
            assert_eq!(reply(&mut r), 250);
        }
    }
    let _ = w.write_all(b"QUIT\r\n");
}

fn run_case(label: &str, addr: SocketAddr, rcpts: &[String], messages: usize) {
    let per = messages / CONNECTIONS;
    let started = Instant::now();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let rcpts = rcpts.to_vec();
            std::thread::spawn(move || deliver(addr, &rcpts, per))
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = (per * CONNECTIONS) as f64;
    println!(
        "{label:<10} rcpts={}  {:>8.0} msg/s  {:>8.0} deliveries/s  ({} messages in {secs:.2} s)",
        rcpts.len(),
        sent / secs,
        sent * rcpts.len() as f64 / secs,
        per * CONNECTIONS
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // useful either way: only run when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let messages: usize = std::env::var("MAILPIN_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let users: Vec<String> = std::env::var("MAILPIN_BENCH_USERS")
        .map(|v| v.split(',').map(str::to_owned).collect())
        .unwrap_or_else(|_| (1..=5).map(|n| format!("bench{n}")).collect());
    let external = (
        std::env::var("MAILPIN_BENCH_DIRECTOR").ok(),
        std::env::var("MAILPIN_BENCH_BACKEND").ok(),
    );
    let (_keep, director, backend) = match external {
        (Some(d), Some(b)) => (
            None,
            d.parse().expect("director addr"),
            b.parse().expect("backend addr"),
        ),
        _ => {
            let setup =
                mailpin::devmode::setup(mailpin::devmode::DevPorts::EPHEMERAL).expect("dev setup");
            let backend = setup.protocols.addrs()[0].1.lmtp;
            let director = mailpin::launch::launch(setup.config.clone()).expect("launch director");
            let lmtp = setup
                .config
                .listen
                .iter()
                .position(|l| l.protocol == mailpin::config::Protocol::Lmtp)
                .expect("an LMTP listener");
            let addr = director.listen_addrs[lmtp];
            (Some((setup, director)), addr, backend)
        }
    };
    for n in [1, 5] {
        let rcpts = &users[..n.min(users.len())];
        run_case("direct", backend, rcpts, messages);
        run_case("mailpin", director, rcpts, messages);
    }
    // The director's threads do not stop on their own; end the process.
    std::process::exit(0);
}
