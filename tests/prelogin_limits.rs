//! Every byte before login is bounded, end to end, against the real
//! `mailpin` binary: a client streaming up to 200 MB before login — IMAP
//! and ManageSieve literals inside one unfinished command, a POP3 line that
//! never ends, an LMTP line that never ends or a flood of LMTP commands — is
//! closed with its protocol's goodbye long before that, the director's RSS
//! grows by less than 1 MiB per such client, and the hit is counted in
//! `mailpin_prelogin_limit_total`. Login names with NUL or other control
//! characters are refused before any backend is contacted.
//!
//! The backend is a recorder: four listeners that greet like a mail server
//! and count the connections on which the director said anything (health
//! checks only connect). A normal login in each test proves the recorder
//! sees logins, so "no contact" is not an accident.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::mailpin::Mailpin;
use support::LineClient;

/// What each hostile client would send at most.
const STREAM_MAX: usize = 200 << 20;
/// How many hostile clients run at once against one protocol.
const CLIENTS: usize = 4;
/// The most the director's RSS may grow per hostile client.
const RSS_PER_CLIENT: u64 = 1 << 20;

/// Listener order in [`start`]'s config.
const IMAP: usize = 0;
const POP3: usize = 1;
const SIEVE: usize = 2;
const LMTP: usize = 3;

/// A fake backend: per protocol, a listener that greets and counts the
/// connections on which the director sent anything.
struct Recorder {
    addrs: [SocketAddr; 4],
    spoken: Arc<[AtomicUsize; 4]>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Recorder {
    fn start() -> Recorder {
        let greetings: [&'static [u8]; 4] = [
            b"* OK [CAPABILITY IMAP4rev1 ID LITERAL+ SASL-IR AUTH=PLAIN] recorder\r\n",
            b"+OK recorder\r\n",
            b"\"IMPLEMENTATION\" \"recorder\"\r\n\"SASL\" \"PLAIN\"\r\nOK \"ready\"\r\n",
            b"220 recorder LMTP\r\n",
        ];
        let spoken: Arc<[AtomicUsize; 4]> = Arc::new(Default::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut addrs = Vec::new();
        let mut threads = Vec::new();
        for (i, greeting) in greetings.into_iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
            addrs.push(listener.local_addr().expect("recorder address"));
            let (spoken, stop) = (spoken.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut conn) = conn else { continue };
                    let spoken = spoken.clone();
                    std::thread::spawn(move || {
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = conn.write_all(greeting);
                        let mut buf = [0u8; 1024];
                        if matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                            spoken[i].fetch_add(1, Ordering::SeqCst);
                        }
                    });
                }
            }));
        }
        Recorder {
            addrs: addrs.try_into().expect("four listeners"),
            spoken,
            stop,
            threads,
        }
    }

    /// Connections of protocol `index` on which the director spoke.
    fn spoken(&self, index: usize) -> usize {
        self.spoken[index].load(Ordering::SeqCst)
    }

    /// Waits until the director has spoken on a connection of protocol
    /// `index`; false after 10 s.
    fn wait_spoken(&self, index: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spoken(index) > 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for addr in self.addrs {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A director with plaintext IMAP, POP3, ManageSieve and LMTP listeners
/// (in that order) in front of the recorder, with `extra` config.
fn start(recorder: &Recorder, extra: &str) -> Mailpin {
    let [imap, pop3, sieve, lmtp] = recorder.addrs;
    let mut config = String::from("[server]\ncores = 2\n\n[health]\ncheck = \"connect\"\n\n");
    config.push_str(extra);
    for protocol in ["imap", "pop3", "sieve", "lmtp"] {
        config.push_str(&format!(
            "\n[[listen]]\nprotocol = \"{protocol}\"\naddr = \"127.0.0.1:0\"\nplaintext_auth = true\n"
        ));
    }
    config.push_str(&format!(
        "\n[[backend]]\nname = \"recorder\"\nhost = \"127.0.0.1\"\nimap = {}\npop3 = {}\nsieve = {}\nlmtp = {}\n",
        imap.port(),
        pop3.port(),
        sieve.port(),
        lmtp.port()
    ));
    Mailpin::start(&config, 4)
}

/// The director's resident memory, bytes (`VmRSS` in /proc/PID/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// How one hostile client ended.
struct Streamed {
    /// Bytes written before the director closed.
    sent: usize,
    /// Everything the director said.
    heard: String,
}

/// Connects to `addr`, reads the greeting, sends `opening`, then `chunk`
/// over and over until the director closes the connection, `STREAM_MAX`
/// bytes are sent or `abort` is raised; collects what the director said.
fn stream(addr: SocketAddr, opening: &[u8], chunk: &[u8], abort: &AtomicBool) -> Streamed {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    conn.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = conn.try_clone().expect("clone");
    let listening = std::thread::spawn(move || {
        let mut heard = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || heard.len() > 1 << 20 {
                break;
            }
            heard.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&heard).into_owned()
    });
    let mut sent = 0;
    if conn.write_all(opening).is_ok() {
        sent += opening.len();
        while sent < STREAM_MAX && !abort.load(Ordering::Relaxed) {
            if conn.write_all(chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
    let heard = listening.join().expect("reader thread");
    Streamed { sent, heard }
}

/// Runs [`CLIENTS`] hostile clients at once against listener `index`
/// while watching the director's RSS; each must be closed with a reply
/// containing `goodbye` long before [`STREAM_MAX`], and the RSS may grow
/// by less than [`RSS_PER_CLIENT`] per client, at its peak and after.
fn hostile_clients(m: &Mailpin, index: usize, opening: &[u8], chunk: &[u8], goodbye: &str) {
    let pid = m.pid();
    let addr = m.listen[index];
    // Fault in the protocol's code paths and buffers once.
    let mut warm = LineClient::connect(addr).expect("connect");
    warm.read_line().expect("greeting");
    drop(warm);
    // Measurements, not waits for an event: let the director finish the
    // warm-up session, and below let the allocator settle after the close.
    std::thread::sleep(Duration::from_millis(300));
    let before = rss(pid);
    let allowed = RSS_PER_CLIENT * CLIENTS as u64;
    let abort = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (abort, done) = (abort.clone(), done.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while done.load(Ordering::SeqCst) < CLIENTS {
                peak = peak.max(rss(pid));
                // A director that keeps what it is sent would eat the
                // machine: stop the clients well before that.
                if peak > before + 64 * allowed {
                    abort.store(true, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss(pid))
        })
    };
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (opening, chunk) = (opening.to_vec(), chunk.to_vec());
            let (abort, done) = (abort.clone(), done.clone());
            std::thread::spawn(move || {
                let out = stream(addr, &opening, &chunk, &abort);
                done.fetch_add(1, Ordering::SeqCst);
                out
            })
        })
        .collect();
    let results: Vec<Streamed> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();
    let peak = watcher.join().expect("watcher");
    std::thread::sleep(Duration::from_millis(300));
    let after = rss(pid);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "listener {index}: {CLIENTS} clients closed after {:?}, sent {:?} bytes; RSS {:.1} -> peak {:.1} -> {:.1} MiB",
        started.elapsed(),
        results.iter().map(|r| r.sent).collect::<Vec<_>>(),
        mib(before),
        mib(peak),
        mib(after)
    );
    assert!(
        peak.saturating_sub(before) < allowed,
        "RSS grew {:.1} MiB at its peak with {CLIENTS} hostile clients (allowed {:.1})",
        mib(peak.saturating_sub(before)),
        mib(allowed)
    );
    assert!(
        after.saturating_sub(before) < allowed,
        "RSS stayed {:.1} MiB higher after {CLIENTS} hostile clients closed (allowed {:.1})",
        mib(after.saturating_sub(before)),
        mib(allowed)
    );
    for r in &results {
        assert!(
            r.heard.contains(goodbye),
            "expected {goodbye:?} before the close; heard {:?}",
            r.heard
        );
        assert!(
            r.sent < 32 << 20,
            "the director took {} bytes before closing",
            r.sent
        );
    }
}

/// `chunk` repeated `n` times, then `tail`.
fn repeated(chunk: &[u8], n: usize, tail: &[u8]) -> Vec<u8> {
    let mut out = chunk.repeat(n);
    out.extend_from_slice(tail);
    out
}

/// 8 KiB of literal data and the announcement of the next 8 KiB literal.
fn next_literal() -> Vec<u8> {
    repeated(b"x", 8192, b" {8192+}\r\n")
}

/// `mailpin_prelogin_limit_total{protocol,limit}` as scraped.
fn limit_count(m: &Mailpin, protocol: &str, limit: &str) -> u64 {
    let mut s = TcpStream::connect_timeout(&m.admin, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        m.admin
    );
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let needle =
        format!("mailpin_prelogin_limit_total{{protocol=\"{protocol}\",limit=\"{limit}\"}} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in /metrics:\n{out}"))
}

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The protocol names of the listeners, as metrics label them.
const PROTOCOLS: [&str; 4] = ["imap", "pop3", "sieve", "lmtp"];

/// [`hostile_clients`] on listener `index`, then: each was counted as a
/// hit of `limit`, and the backend never heard from the director.
fn cut_off(
    recorder: &Recorder,
    m: &Mailpin,
    index: usize,
    stream: (&[u8], &[u8]),
    goodbye: &str,
    limit: &str,
) {
    let counted = limit_count(m, PROTOCOLS[index], limit);
    hostile_clients(m, index, stream.0, stream.1, goodbye);
    assert_eq!(
        limit_count(m, PROTOCOLS[index], limit) - counted,
        CLIENTS as u64,
        "every client counted in mailpin_prelogin_limit_total"
    );
    assert_eq!(recorder.spoken(index), 0, "no backend was contacted");
}

#[test]
fn sieve_literals_streamed_before_login_are_cut_off() {
    let recorder = Recorder::start();
    let m = start(&recorder, "");
    let opening = b"AUTHENTICATE \"PLAIN\" {8192+}\r\n";
    let goodbye = "BYE \"Too much data before login.\"";
    cut_off(
        &recorder,
        &m,
        SIEVE,
        (opening, &next_literal()),
        goodbye,
        "bytes",
    );
    // A literal larger than limits.literal_max is refused before it is read.
    let mut c = LineClient::connect(m.listen[SIEVE]).unwrap();
    while !c.read_line().unwrap().starts_with("OK") {}
    c.send_line("AUTHENTICATE \"PLAIN\" {100000000+}").unwrap();
    assert_eq!(c.read_line().unwrap(), "BYE \"Literal too large.\"");
    assert_eq!(recorder.spoken(SIEVE), 0, "no backend was contacted");
}

#[test]
fn imap_literals_streamed_before_login_are_cut_off() {
    let recorder = Recorder::start();
    let m = start(&recorder, "");
    let opening = b"a LOGIN {8192+}\r\n";
    let goodbye = "* BYE Too much data before login.";
    cut_off(
        &recorder,
        &m,
        IMAP,
        (opening, &next_literal()),
        goodbye,
        "bytes",
    );
}

#[test]
fn pop3_endless_line_before_login_is_cut_off() {
    let recorder = Recorder::start();
    let m = start(&recorder, "");
    let endless = (&b"USER "[..], &[b'a'; 64 * 1024][..]);
    cut_off(&recorder, &m, POP3, endless, "-ERR Line too long.", "line");
}

#[test]
fn lmtp_endless_line_and_command_flood_are_cut_off() {
    let recorder = Recorder::start();
    let m = start(&recorder, "");
    let endless = (&b"LHLO client\r\nMAIL FROM:<"[..], &[b'a'; 64 * 1024][..]);
    cut_off(
        &recorder,
        &m,
        LMTP,
        endless,
        "500 5.5.2 Line too long",
        "line",
    );
    let flood = (&b"LHLO client\r\n"[..], &b"NOOP\r\n".repeat(10_000)[..]);
    let goodbye = "421 4.7.0 Too many commands between messages";
    cut_off(&recorder, &m, LMTP, flood, goodbye, "commands");
}

#[test]
fn pre_login_commands_and_sasl_responses_are_bounded() {
    let recorder = Recorder::start();
    let m = start(
        &recorder,
        "[limits]\nprelogin_commands = 5\nsasl_max = 2048\n\n",
    );
    // IMAP: the sixth command is one too many.
    let mut c = LineClient::connect(m.listen[IMAP]).unwrap();
    c.read_line().unwrap();
    for _ in 0..5 {
        assert!(c.imap("NOOP").unwrap().is_ok());
    }
    c.send_line("a9 NOOP").unwrap();
    assert_eq!(
        c.read_line().unwrap(),
        "* BYE Too many commands before login."
    );
    assert!(c.read_line().is_err(), "closed");
    // POP3.
    let mut c = LineClient::connect(m.listen[POP3]).unwrap();
    c.read_line().unwrap();
    for _ in 0..5 {
        c.send_line("NOOP").unwrap();
        assert_eq!(c.read_line().unwrap(), "+OK");
    }
    c.send_line("NOOP").unwrap();
    assert_eq!(
        c.read_line().unwrap(),
        "-ERR Too many commands before login."
    );
    assert!(c.read_line().is_err(), "closed");
    // ManageSieve.
    let mut c = LineClient::connect(m.listen[SIEVE]).unwrap();
    while !c.read_line().unwrap().starts_with("OK") {}
    for _ in 0..5 {
        c.send_line("NOOP").unwrap();
        assert!(c.read_line().unwrap().starts_with("OK"));
    }
    c.send_line("NOOP").unwrap();
    assert_eq!(
        c.read_line().unwrap(),
        "BYE \"Too many commands before login.\""
    );
    // SASL responses past limits.sasl_max, after the continuation.
    let long = "A".repeat(3000);
    let mut c = LineClient::connect(m.listen[IMAP]).unwrap();
    c.read_line().unwrap();
    c.send_line("a1 AUTHENTICATE PLAIN").unwrap();
    assert_eq!(c.read_line().unwrap(), "+ ");
    c.send_line(&long).unwrap();
    assert_eq!(c.read_line().unwrap(), "* BYE SASL response too long.");
    let mut c = LineClient::connect(m.listen[POP3]).unwrap();
    c.read_line().unwrap();
    c.send_line("AUTH PLAIN").unwrap();
    assert_eq!(c.read_line().unwrap(), "+ ");
    c.send_line(&long).unwrap();
    assert_eq!(c.read_line().unwrap(), "-ERR SASL response too long.");
    let mut c = LineClient::connect(m.listen[SIEVE]).unwrap();
    while !c.read_line().unwrap().starts_with("OK") {}
    c.send_line(&format!("AUTHENTICATE \"PLAIN\" \"{long}\""))
        .unwrap();
    assert_eq!(c.read_line().unwrap(), "BYE \"SASL response too long.\"");
    assert_eq!(limit_count(&m, "imap", "commands"), 1);
    assert_eq!(limit_count(&m, "sieve", "sasl"), 1);
    for p in [IMAP, POP3, SIEVE] {
        assert_eq!(recorder.spoken(p), 0, "no backend was contacted");
    }
}

#[test]
fn control_characters_in_login_names_never_reach_a_backend() {
    let recorder = Recorder::start();
    let m = start(&recorder, "");
    let refused = "contains a control character";

    // IMAP LOGIN with the user name as a literal holding NUL.
    let mut c = LineClient::connect(m.listen[IMAP]).unwrap();
    c.read_line().unwrap();
    c.send_raw(b"a1 LOGIN {17+}\r\nuser0001\0user0002 pass\r\n")
        .unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("a1 BAD ") && r.contains(refused), "{r}");
    // AUTHENTICATE PLAIN: a control character in the authcid, then in
    // the authzid (NUL separators themselves are fine).
    for message in [&b"\0user\x01x\0pass"[..], b"ad\x7fmin\0user\0pass"] {
        let r = c
            .imap(&format!("AUTHENTICATE PLAIN {}", b64(message)))
            .unwrap();
        assert!(
            r.status.starts_with("BAD ") && r.status.contains(refused),
            "{r:?}"
        );
    }
    // AUTHENTICATE LOGIN: NUL in the user name, sent base64 as SASL-IR.
    c.send_line(&format!(
        "a9 AUTHENTICATE LOGIN {}",
        b64(b"user0001\0user0002")
    ))
    .unwrap();
    assert_eq!(c.read_line().unwrap(), "+ UGFzc3dvcmQ6");
    c.send_line(&b64(b"pass")).unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("a9 BAD ") && r.contains(refused), "{r}");
    // POP3 USER with NUL or an escape sequence, and AUTH PLAIN.
    let mut c = LineClient::connect(m.listen[POP3]).unwrap();
    c.read_line().unwrap();
    for user in [&b"user0001\0user0002"[..], b"user\x1b[31m"] {
        c.send_raw(&[&b"USER "[..], user, b"\r\n"].concat())
            .unwrap();
        let r = c.read_line().unwrap();
        assert!(r.starts_with("-ERR ") && r.contains(refused), "{r}");
    }
    c.send_line(&format!("AUTH PLAIN {}", b64(b"\0us\0er\0pass")))
        .unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("-ERR "), "three NULs are refused: {r}");
    c.send_line(&format!("AUTH PLAIN {}", b64(b"\0user\tx\0pass")))
        .unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("-ERR ") && r.contains(refused), "{r}");
    // ManageSieve AUTHENTICATE, initial response and after the challenge.
    let mut c = LineClient::connect(m.listen[SIEVE]).unwrap();
    while !c.read_line().unwrap().starts_with("OK") {}
    c.send_line(&format!(
        "AUTHENTICATE \"PLAIN\" \"{}\"",
        b64(b"\0user0001\x00\0pass")
    ))
    .unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("NO "), "{r}");
    c.send_line(&format!(
        "AUTHENTICATE \"PLAIN\" \"{}\"",
        b64(b"\0user\x7f\0pass")
    ))
    .unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("NO ") && r.contains(refused), "{r}");
    c.send_line("AUTHENTICATE \"PLAIN\"").unwrap();
    assert_eq!(c.read_line().unwrap(), "\"\"");
    c.send_line(&format!("\"{}\"", b64(b"adm\x01in\0user\0pass")))
        .unwrap();
    let r = c.read_line().unwrap();
    assert!(r.starts_with("NO ") && r.contains(refused), "{r}");

    // LMTP: a recipient with a control character is no user.
    let mut c = LineClient::connect(m.listen[LMTP]).unwrap();
    c.read_line().unwrap();
    c.send_line("LHLO client").unwrap();
    c.smtp_reply().unwrap();
    c.send_line("MAIL FROM:<a@example.com>").unwrap();
    assert!(c.smtp_reply().unwrap()[0].starts_with("250"));
    c.send_raw(b"RCPT TO:<us\x01er@example.com>\r\n").unwrap();
    let r = c.smtp_reply().unwrap();
    assert!(r[0].starts_with("501 "), "{r:?}");

    // Each refusal above was answered before any backend was chosen.
    for p in [IMAP, POP3, SIEVE, LMTP] {
        assert_eq!(recorder.spoken(p), 0, "no backend was contacted");
    }
    // The same clients with clean names do reach the backend: the recorder
    // would have seen the refused ones.
    let mut c = LineClient::connect(m.listen[IMAP]).unwrap();
    c.read_line().unwrap();
    c.send_raw(b"a1 LOGIN {8+}\r\nuser0001 pass\r\n").unwrap();
    assert!(
        recorder.wait_spoken(IMAP),
        "a clean IMAP login reaches the backend"
    );
    let mut c = LineClient::connect(m.listen[POP3]).unwrap();
    c.read_line().unwrap();
    c.send_line(&format!("AUTH PLAIN {}", b64(b"\0user0001\0pass")))
        .unwrap();
    assert!(
        recorder.wait_spoken(POP3),
        "a clean POP3 login reaches the backend"
    );
    let mut c = LineClient::connect(m.listen[SIEVE]).unwrap();
    while !c.read_line().unwrap().starts_with("OK") {}
    c.send_line(&format!(
        "AUTHENTICATE \"PLAIN\" \"{}\"",
        b64(b"\0user0001\0pass")
    ))
    .unwrap();
    assert!(
        recorder.wait_spoken(SIEVE),
        "a clean Sieve login reaches the backend"
    );
}
