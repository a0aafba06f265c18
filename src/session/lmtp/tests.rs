//! Tests of a transaction split over scripted LMTP backends: pipelined
//! groups to a backend that announces PIPELINING, one command at a time to
//! one that does not, replies in RCPT order, and a backend that dies.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::{TcpListener, TcpStream};

use super::transaction::{IdlePool, Routed, Transaction};
use crate::backend::client_info::ClientInfo;
use crate::config::{Forward, Protocol};
use crate::io::testing::block_on;
use crate::io::{write_bytes, ReadSide};
use crate::route::backends::{Backend, BackendSet};

/// How a scripted backend behaves.
#[derive(Clone, Copy)]
struct Script {
    name: &'static str,
    pipelining: bool,
    /// Recipients it refuses with 550.
    reject: &'static [&'static str],
    /// It closes the connection at the end of the message, unanswered.
    dies_after_message: bool,
}

/// What a scripted backend saw.
#[derive(Default)]
struct Seen {
    /// Every command line, in order.
    commands: Vec<String>,
    /// The most command lines that arrived in one read.
    most_per_read: usize,
    /// Connections accepted.
    connections: usize,
}

/// Starts a scripted backend on loopback; it serves connections one after
/// another until the test's runtime ends.
fn start(script: Script) -> (SocketAddr, Rc<RefCell<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Rc::new(RefCell::new(Seen::default()));
    let log = seen.clone();
    monoio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            log.borrow_mut().connections += 1;
            serve(conn, script, &log).await;
        }
    });
    (addr, seen)
}

async fn serve(mut conn: TcpStream, script: Script, seen: &RefCell<Seen>) {
    if write_bytes(&mut conn, b"220 fake\r\n").await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut in_data = false;
    for _ in 0..10_000 {
        buf.reserve(4096);
        let (res, b) = conn.read_into(buf).await;
        buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
        let mut out = Vec::new();
        let mut lines_this_read = 0;
        loop {
            if in_data {
                let Some(end) = buf.windows(5).position(|w| w == b"\r\n.\r\n") else {
                    break;
                };
                buf.drain(..end + 5);
                in_data = false;
                if script.dies_after_message {
                    return;
                }
                for r in rcpts.drain(..) {
                    out.extend(format!("250 2.0.0 <{r}> saved by {}\r\n", script.name).bytes());
                }
                continue;
            }
            let Some(end) = buf.iter().position(|&b| b == b'\n') else {
                break;
            };
            let line: Vec<u8> = buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            lines_this_read += 1;
            seen.borrow_mut().commands.push(line.clone());
            let verb = line
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase();
            let reply = match verb.as_str() {
                "LHLO" if script.pipelining => "250-fake\r\n250 PIPELINING\r\n".to_owned(),
                "LHLO" => "250-fake\r\n250 8BITMIME\r\n".to_owned(),
                "MAIL" | "RSET" => "250 2.1.0 OK\r\n".to_owned(),
                "RCPT" => {
                    let user = line
                        .split('<')
                        .nth(1)
                        .and_then(|r| r.split('>').next())
                        .unwrap_or_default()
                        .to_owned();
                    if script.reject.contains(&user.as_str()) {
                        format!("550 5.1.1 <{user}> unknown\r\n")
                    } else {
                        let reply = format!("250 2.1.5 <{user}> OK at {}\r\n", script.name);
                        rcpts.push(user);
                        reply
                    }
                }
                "DATA" if rcpts.is_empty() => "503 5.5.1 No recipients\r\n".to_owned(),
                "DATA" => {
                    in_data = true;
                    "354 go\r\n".to_owned()
                }
                "QUIT" => return,
                _ => "500 5.5.2 what\r\n".to_owned(),
            };
            out.extend_from_slice(reply.as_bytes());
        }
        {
            let mut s = seen.borrow_mut();
            s.most_per_read = s.most_per_read.max(lines_this_read);
        }
        if !out.is_empty() && write_bytes(&mut conn, &out).await.is_err() {
            return;
        }
    }
}

fn backend_set(addrs: &[SocketAddr]) -> BackendSet {
    let backends = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            Backend::new(
                i as u16,
                &format!("b{i}"),
                "127.0.0.1".into(),
                [*addr; Protocol::COUNT],
                1,
                Forward::None,
                Duration::from_secs(5),
            )
        })
        .collect();
    BackendSet::new(backends)
}

fn client() -> ClientInfo {
    ClientInfo {
        peer: "127.0.0.1:4000".parse().expect("peer"),
        local: "127.0.0.1:24".parse().expect("local"),
        session_id: "t1".into(),
        tls: false,
    }
}

fn rcpt(user: &str, backend: u16) -> Routed {
    Routed {
        key: user.into(),
        backend,
        line: format!("RCPT TO:<{user}>").into_bytes(),
    }
}

fn lines(wire: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(wire)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Runs one DATA transaction of `rcpts` over the backends of `set` and
/// returns the RCPT replies' first lines and the final replies' lines.
async fn deliver(
    set: &BackendSet,
    rcpts: &[Routed],
    idle: &mut IdlePool,
) -> (Vec<String>, Vec<String>) {
    let mut tx = Transaction::new(b"MAIL FROM:<s@example.org>".to_vec());
    let replies = tx.add_recipients(rcpts, set, &client(), idle, true).await;
    let rcpt_lines = replies.iter().flat_map(|r| lines(&r.wire)).collect();
    assert!(
        tx.start_data().await.is_ok(),
        "some backend takes the message"
    );
    let _ = tx
        .stream(b"Subject: t\r\n\r\nhello\r\n.\r\n".to_vec())
        .await;
    let (wire, _) = tx.final_replies().await;
    tx.keep_connections(idle);
    (rcpt_lines, lines(&wire))
}

#[test]
fn replies_follow_rcpt_order_across_pipelining_and_plain_backends() {
    block_on(async {
        let (a, seen_a) = start(Script {
            name: "A",
            pipelining: true,
            reject: &["nobody"],
            dies_after_message: false,
        });
        let (b, seen_b) = start(Script {
            name: "B",
            pipelining: false,
            reject: &[],
            dies_after_message: false,
        });
        let set = backend_set(&[a, b]);
        let rcpts = [
            rcpt("a1", 0),
            rcpt("b1", 1),
            rcpt("nobody", 0),
            rcpt("b2", 1),
            rcpt("a2", 0),
        ];
        let mut idle = IdlePool::new();
        let (rcpt_replies, finals) = deliver(&set, &rcpts, &mut idle).await;
        assert_eq!(
            rcpt_replies,
            [
                "250 2.1.5 <a1> OK at A",
                "250 2.1.5 <b1> OK at B",
                "550 5.1.1 <nobody> unknown",
                "250 2.1.5 <b2> OK at B",
                "250 2.1.5 <a2> OK at A",
            ]
        );
        assert_eq!(
            finals,
            [
                "250 2.0.0 <a1> saved by A",
                "250 2.0.0 <b1> saved by B",
                "250 2.0.0 <b2> saved by B",
                "250 2.0.0 <a2> saved by A",
            ]
        );
        // A got MAIL, its three RCPTs and DATA in one group; B, without
        // PIPELINING, never had a second command before its reply.
        assert_eq!(
            seen_a.borrow().commands[1..],
            [
                "MAIL FROM:<s@example.org>",
                "RCPT TO:<a1>",
                "RCPT TO:<nobody>",
                "RCPT TO:<a2>",
                "DATA"
            ]
        );
        assert!(seen_a.borrow().most_per_read >= 5, "pipelined to A");
        assert_eq!(seen_b.borrow().most_per_read, 1, "one at a time to B");
        assert_eq!(
            seen_b.borrow().commands.len(),
            5,
            "LHLO MAIL RCPT RCPT DATA"
        );

        // The next transaction reuses both connections.
        assert_eq!(idle.len(), 2);
        let (_, finals) = deliver(&set, &[rcpt("b3", 1), rcpt("a3", 0)], &mut idle).await;
        assert_eq!(
            finals,
            ["250 2.0.0 <b3> saved by B", "250 2.0.0 <a3> saved by A"]
        );
        assert_eq!(seen_a.borrow().connections, 1);
        assert_eq!(seen_b.borrow().connections, 1);
    });
}

#[test]
fn a_backend_dying_after_the_message_fails_only_its_recipients() {
    block_on(async {
        let (a, _) = start(Script {
            name: "A",
            pipelining: true,
            reject: &[],
            dies_after_message: true,
        });
        let (b, _) = start(Script {
            name: "B",
            pipelining: true,
            reject: &[],
            dies_after_message: false,
        });
        let set = backend_set(&[a, b]);
        let rcpts = [rcpt("a1", 0), rcpt("b1", 1), rcpt("a2", 0)];
        let mut idle = IdlePool::new();
        let (_, finals) = deliver(&set, &rcpts, &mut idle).await;
        assert_eq!(finals.len(), 3);
        assert!(
            finals[0].starts_with("451 4.4.0 Delivery server b0 failed"),
            "{finals:?}"
        );
        assert_eq!(finals[1], "250 2.0.0 <b1> saved by B");
        assert!(
            finals[2].starts_with("451 4.4.0 Delivery server b0 failed"),
            "{finals:?}"
        );
        assert_eq!(idle.len(), 1, "only the live connection is kept");
    });
}

#[test]
fn an_unreachable_backend_fails_its_recipients_at_rcpt() {
    block_on(async {
        let (b, _) = start(Script {
            name: "B",
            pipelining: true,
            reject: &[],
            dies_after_message: false,
        });
        // A port nothing listens on: bind, note it, close.
        let gone = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let set = backend_set(&[gone, b]);
        let mut idle = IdlePool::new();
        let (rcpt_replies, finals) =
            deliver(&set, &[rcpt("a1", 0), rcpt("b1", 1)], &mut idle).await;
        assert!(rcpt_replies[0].starts_with("451 4.4.0"), "{rcpt_replies:?}");
        assert_eq!(rcpt_replies[1], "250 2.1.5 <b1> OK at B");
        assert_eq!(finals, ["250 2.0.0 <b1> saved by B"]);
    });
}
