//! The stream attackers of `hostile`: connections that never log in and
//! feed the director's pre-login code what no mail client sends —
//! garbage, a line trickled one byte at a time, endless literals and
//! lines, a TLS ClientHello on a plaintext port — each against the
//! director's plaintext listeners in turn (and, in TLS mode, raw bytes to
//! its implicit-TLS ones).
//!
//! Each attacker runs a bounded loop: connect from its source address,
//! play its script until the director closes the connection or the attack
//! ends, pause, connect again. Every connection ends in one
//! [`ConnOutcome`]; a [`KindTally`] adds them up per kind and listener:
//! how many the director closed and how soon, how many were still open at
//! the end, and how many bytes the kernel took from the attacker.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use serde::Serialize;

use crate::client::conn::tcp_connect;
use crate::client::tls::client_config;
use crate::metrics::{Latency, LatencySummary};
use crate::scenario::Rng;

/// The attacks a `hostile` run can play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    /// Random bytes and non-protocol lines, 50 writes a second.
    Garbage,
    /// A command started and never finished: one byte every 300 ms, no
    /// line end (a ClientHello trickled the same way on TLS ports).
    Slowloris,
    /// `a LOGIN {1000000000+}` (IMAP), `AUTHENTICATE "PLAIN"
    /// {1000000000+}` (ManageSieve), or an endless line (POP3, LMTP),
    /// streamed at 16 KiB every 10 ms.
    Literal,
    /// A TLS ClientHello on a plaintext port, then waiting for an answer.
    TlsOnPlain,
    /// Wrong-password logins in a closed loop, from one address and from
    /// several (see `badlogin`).
    Badlogin,
}

impl AttackKind {
    /// Every kind, the default.
    pub const ALL: [AttackKind; 5] = [
        AttackKind::Garbage,
        AttackKind::Slowloris,
        AttackKind::Literal,
        AttackKind::TlsOnPlain,
        AttackKind::Badlogin,
    ];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            AttackKind::Garbage => "garbage",
            AttackKind::Slowloris => "slowloris",
            AttackKind::Literal => "literal",
            AttackKind::TlsOnPlain => "tls-on-plain",
            AttackKind::Badlogin => "badlogin",
        }
    }
}

impl std::fmt::Display for AttackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The protocol a director listener speaks, as the scripts need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// IMAP.
    Imap,
    /// POP3.
    Pop3,
    /// LMTP.
    Lmtp,
    /// ManageSieve.
    Sieve,
    /// Any protocol behind implicit TLS: the first bytes are TLS.
    Tls,
}

impl Dialect {
    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Imap => "imap",
            Dialect::Pop3 => "pop3",
            Dialect::Lmtp => "lmtp",
            Dialect::Sieve => "sieve",
            Dialect::Tls => "tls",
        }
    }
}

/// One listener an attacker may aim at.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// What it expects.
    pub dialect: Dialect,
}

/// The director's listeners the stream attackers aim at.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// The plaintext listeners (IMAP, POP3, LMTP, ManageSieve: those the
    /// target has).
    pub plain: Vec<Target>,
    /// The implicit-TLS listeners, attacked with raw bytes in TLS mode
    /// (empty in plain mode).
    pub tls: Vec<Target>,
}

impl Targets {
    /// The listeners `kind` cycles through.
    fn of(&self, kind: AttackKind) -> Vec<Target> {
        match kind {
            AttackKind::Garbage | AttackKind::Slowloris => {
                self.plain.iter().chain(&self.tls).copied().collect()
            }
            _ => self.plain.clone(),
        }
    }
}

/// How one attack connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The connection could not be opened (refused, timed out).
    ConnectFailed,
    /// The director closed it (end of stream or reset) this long after
    /// it opened.
    ClosedByDirector(Duration),
    /// Still open when the attack ended.
    OpenAtEnd,
}

/// The outcome of one attack connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnOutcome {
    /// How it ended.
    pub ending: Ending,
    /// Bytes the kernel accepted from the attacker (an upper bound on what
    /// the director read: up to the socket buffers more).
    pub sent: u64,
    /// Bytes the director sent back.
    pub received: u64,
    /// Whether a write was still blocked at the end: the director had
    /// stopped reading without closing.
    pub write_stalled: bool,
}

/// What one kind of attacker did, summed over its connections.
#[derive(Default)]
pub struct KindTally {
    /// Connections attempted.
    pub attempted: u64,
    /// Connections that could not be opened.
    pub connect_failed: u64,
    /// Connections the director closed.
    pub closed_by_director: u64,
    /// Connections still open when the attack ended.
    pub open_at_end: u64,
    /// Of those, the ones whose writes were blocked.
    pub write_stalled: u64,
    /// Time from connect to the director's close.
    pub time_to_close: Latency,
    /// Bytes the kernel took from the attackers.
    pub bytes_sent: u64,
    /// Bytes the director answered with.
    pub bytes_received: u64,
}

impl KindTally {
    /// Adds one connection.
    pub fn add(&mut self, c: &ConnOutcome) {
        self.attempted += 1;
        match c.ending {
            Ending::ConnectFailed => self.connect_failed += 1,
            Ending::ClosedByDirector(after) => {
                self.closed_by_director += 1;
                self.time_to_close.record(after);
            }
            Ending::OpenAtEnd => self.open_at_end += 1,
        }
        self.write_stalled += u64::from(c.write_stalled);
        self.bytes_sent += c.sent;
        self.bytes_received += c.received;
    }

    /// Adds another tally (another thread's).
    pub fn merge(&mut self, other: &KindTally) {
        self.attempted += other.attempted;
        self.connect_failed += other.connect_failed;
        self.closed_by_director += other.closed_by_director;
        self.open_at_end += other.open_at_end;
        self.write_stalled += other.write_stalled;
        self.time_to_close.merge(&other.time_to_close);
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
    }

    /// The figures for the report.
    pub fn summary(&self) -> KindSummary {
        KindSummary {
            attempted: self.attempted,
            connect_failed: self.connect_failed,
            closed_by_director: self.closed_by_director,
            open_at_end: self.open_at_end,
            write_stalled: self.write_stalled,
            time_to_close: self.time_to_close.summary(),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
        }
    }
}

/// [`KindTally`] as reported.
#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    /// Connections attempted.
    pub attempted: u64,
    /// Connections that could not be opened.
    pub connect_failed: u64,
    /// Connections the director closed.
    pub closed_by_director: u64,
    /// Connections still open when the attack ended.
    pub open_at_end: u64,
    /// Open at the end with a write blocked (the director stopped reading).
    pub write_stalled: u64,
    /// Time from connect to the director's close.
    pub time_to_close: LatencySummary,
    /// Bytes the kernel took from the attackers.
    pub bytes_sent: u64,
    /// Bytes the director answered with.
    pub bytes_received: u64,
}

/// A TLS ClientHello as rustls sends it (for a name the certificate does
/// not have: the server never gets that far).
pub fn client_hello() -> Vec<u8> {
    let name = ServerName::try_from("mail.example.org").map(|n| n.to_owned());
    let mut out = Vec::new();
    if let Ok(mut conn) = name
        .map_err(|_| ())
        .and_then(|n| rustls::ClientConnection::new(client_config(false), n).map_err(|_| ()))
    {
        let _ = conn.write_tls(&mut out);
    }
    out
}

/// The longest a connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How much a literal attacker writes at once.
const LITERAL_CHUNK: usize = 16 * 1024;
/// The announced size of the endless literals.
const HUGE: u64 = 1_000_000_000;

/// What a script does next: bytes to write (maybe none), then how long
/// to listen before the next step.
struct Step {
    write: Vec<u8>,
    listen: Duration,
}

/// The bytes of step `n` of `kind` against `dialect`.
fn script(kind: AttackKind, dialect: Dialect, n: u64, rng: &mut Rng, hello: &[u8]) -> Step {
    let ms = Duration::from_millis;
    match kind {
        AttackKind::Garbage => {
            let write = if rng.chance(0.5) {
                (0..256).map(|_| rng.below(256) as u8).collect()
            } else {
                const LINES: [&[u8]; 6] = [
                    b"GET / HTTP/1.1\r\nHost: mail\r\n\r\n",
                    b"xyzzy plugh\r\n",
                    b"\x00\x01\x02 EHLO ???\r\n",
                    b"SSH-2.0-OpenSSH_9.6\r\n",
                    b"* * * * * * * *\r\n",
                    b")))(((\"\"\"\r\n",
                ];
                LINES[rng.below(LINES.len() as u64) as usize].to_vec()
            };
            Step {
                write,
                listen: ms(20),
            }
        }
        AttackKind::Slowloris => {
            let start: &[u8] = match dialect {
                Dialect::Imap => b"a1 LOGIN user",
                Dialect::Pop3 => b"USER user",
                Dialect::Lmtp => b"LHLO client",
                Dialect::Sieve => b"AUTHENTICATE \"PLAIN\" \"",
                Dialect::Tls => hello,
            };
            // The first bytes at once for a line, byte by byte for TLS;
            // then filler, one byte each step, never a line end.
            let write = match (dialect, usize::try_from(n).unwrap_or(usize::MAX)) {
                (Dialect::Tls, i) => vec![*start.get(i).unwrap_or(&b'x')],
                (_, 0) => start.to_vec(),
                _ => vec![b'x'],
            };
            Step {
                write,
                listen: ms(300),
            }
        }
        AttackKind::Literal => {
            let write = match (n, dialect) {
                (0, Dialect::Imap) => format!("a1 LOGIN {{{HUGE}+}}\r\n").into_bytes(),
                (0, Dialect::Sieve) => {
                    format!("AUTHENTICATE \"PLAIN\" {{{HUGE}+}}\r\n").into_bytes()
                }
                (0, Dialect::Pop3) => b"USER ".to_vec(),
                (0, _) => b"LHLO ".to_vec(),
                _ => vec![b'A'; LITERAL_CHUNK],
            };
            Step {
                write,
                listen: ms(10),
            }
        }
        AttackKind::TlsOnPlain => Step {
            write: if n == 0 { hello.to_vec() } else { Vec::new() },
            listen: ms(300),
        },
        // Bad logins speak real IMAP: see `badlogin`.
        AttackKind::Badlogin => Step {
            write: Vec::new(),
            listen: ms(300),
        },
    }
}

/// Plays `kind` on one connection to `target` until the director closes
/// it or `end`.
async fn attack_connection(
    kind: AttackKind,
    target: Target,
    source: Option<IpAddr>,
    end: Instant,
    rng: &mut Rng,
    hello: &[u8],
) -> ConnOutcome {
    let mut outcome = ConnOutcome {
        ending: Ending::ConnectFailed,
        sent: 0,
        received: 0,
        write_stalled: false,
    };
    let mut stream: TcpStream =
        match monoio::time::timeout(CONNECT_TIMEOUT, tcp_connect(target.addr, source)).await {
            Ok(Ok(s)) => s,
            _ => return outcome,
        };
    let opened = Instant::now();
    let mut buf = Vec::with_capacity(4096);
    outcome.ending = Ending::OpenAtEnd;
    for n in 0u64.. {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let step = script(kind, target.dialect, n, rng, hello);
        if !step.write.is_empty() {
            let len = step.write.len() as u64;
            match monoio::time::timeout(left, stream.write_all(step.write)).await {
                Ok((Ok(_), _)) => outcome.sent += len,
                Ok((Err(_), _)) => {
                    outcome.ending = Ending::ClosedByDirector(opened.elapsed());
                    break;
                }
                Err(_) => {
                    outcome.write_stalled = true;
                    break;
                }
            }
        }
        let listen = step
            .listen
            .min(end.saturating_duration_since(Instant::now()));
        buf.clear();
        match monoio::time::timeout(listen, stream.read(buf)).await {
            Ok((Ok(0), _)) | Ok((Err(_), _)) => {
                outcome.ending = Ending::ClosedByDirector(opened.elapsed());
                break;
            }
            Ok((Ok(got), b)) => {
                outcome.received += got as u64;
                buf = b;
            }
            Err(_) => buf = Vec::with_capacity(4096),
        }
    }
    outcome
}

/// How long an attacker waits before it connects again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// Most connections one attacker opens in a run.
const MAX_CONNECTIONS: u64 = 100_000;

/// One stream attacker: number `index` of its kind, from `source`,
/// between `start` and `end`. Returns its connections' tally by listener
/// ([`Dialect::name`]).
pub async fn stream_attacker(
    kind: AttackKind,
    index: usize,
    targets: &Targets,
    source: Option<IpAddr>,
    start: Instant,
    end: Instant,
) -> BTreeMap<&'static str, KindTally> {
    let mut tally = BTreeMap::new();
    let aims = targets.of(kind);
    if aims.is_empty() {
        return tally;
    }
    let hello = client_hello();
    let mut rng = Rng::new(index as u64 + 1);
    monoio::time::sleep_until(monoio::time::Instant::from_std(start)).await;
    for n in 0..MAX_CONNECTIONS {
        if Instant::now() >= end {
            break;
        }
        let target = aims[(index + n as usize) % aims.len()];
        let outcome = attack_connection(kind, target, source, end, &mut rng, &hello).await;
        tally
            .entry(target.dialect.name())
            .or_insert_with(KindTally::default)
            .add(&outcome);
        monoio::time::sleep(RECONNECT_PAUSE).await;
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_hello_is_a_tls_handshake_record() {
        let hello = client_hello();
        assert!(hello.len() > 100, "{}", hello.len());
        // Content type handshake (22), then a handshake of type
        // ClientHello (1) after the 5-byte record header.
        assert_eq!((hello[0], hello[5]), (22, 1));
    }

    #[test]
    fn slowloris_never_ends_a_line_and_literals_announce_huge_sizes() {
        let mut rng = Rng::new(1);
        let hello = client_hello();
        for n in 0..50 {
            for dialect in [Dialect::Imap, Dialect::Pop3, Dialect::Lmtp, Dialect::Sieve] {
                let step = script(AttackKind::Slowloris, dialect, n, &mut rng, &hello);
                assert!(!step.write.contains(&b'\n'), "{dialect:?} step {n}");
                assert!(step.listen >= Duration::from_millis(300));
            }
            let tls = script(AttackKind::Slowloris, Dialect::Tls, n, &mut rng, &hello);
            assert_eq!(tls.write, [hello[n as usize]]);
        }
        let first = script(AttackKind::Literal, Dialect::Imap, 0, &mut rng, &hello);
        assert_eq!(first.write, b"a1 LOGIN {1000000000+}\r\n");
        let more = script(AttackKind::Literal, Dialect::Imap, 1, &mut rng, &hello);
        assert_eq!(more.write.len(), LITERAL_CHUNK);
    }

    #[test]
    fn tallies_count_each_ending() {
        let mut t = KindTally::default();
        let base = ConnOutcome {
            ending: Ending::ConnectFailed,
            sent: 10,
            received: 1,
            write_stalled: false,
        };
        t.add(&base);
        t.add(&ConnOutcome {
            ending: Ending::ClosedByDirector(Duration::from_millis(40)),
            ..base
        });
        t.add(&ConnOutcome {
            ending: Ending::OpenAtEnd,
            write_stalled: true,
            ..base
        });
        let s = t.summary();
        assert_eq!(
            (
                s.attempted,
                s.connect_failed,
                s.closed_by_director,
                s.open_at_end
            ),
            (3, 1, 1, 1)
        );
        assert_eq!(
            (s.write_stalled, s.bytes_sent, s.bytes_received),
            (1, 30, 3)
        );
        assert!((s.time_to_close.p50_ms - 40.0).abs() < 0.1);
    }
}
