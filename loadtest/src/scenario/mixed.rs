//! `mixed`: a day in the life. Every simulated user keeps one desktop
//! session open in IDLE on INBOX (fetching each new message as it arrives)
//! and runs a phone-like loop of short sessions: IMAP (log in, SELECT,
//! fetch the newest message, log out) or, for `--pop3-share` of them, POP3
//! (log in, STAT, RETR the newest, QUIT), then think. Mail arrives for
//! random users at `--deliver-rate` per second through the target's LMTP
//! listener (into the store directly if the target has none), waking the
//! IDLE sessions; afterwards the messages stored are compared with the
//! deliveries acknowledged. `--tls-share` of the sessions use TLS, and
//! `--starttls-share` of those upgrade with STARTTLS/STLS instead of
//! implicit TLS.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailpin::config::Protocol;
use mailpin::dev::Store;
use serde_json::json;

use super::{message, stored, user_name, Rng, PASSWORD};
use crate::client::conn::{Endpoint, Transport};
use crate::client::imap::ImapClient;
use crate::client::lmtp::{DataBody, LmtpClient};
use crate::client::pop3::Pop3Client;
use crate::client::tls::client_config;
use crate::harness::{CommonArgs, Harness};
use crate::metrics::{merged, Counters, Latency};
use crate::report::Report;
use crate::runner::{join, monitor, spawn_clients, Progress};

/// The user-name prefix of the run.
const PREFIX: &str = "mixed";
/// The envelope sender of deliveries.
const SENDER: &str = "loadtest@example.org";
/// Most recipients of one wake-up transaction at the end.
const WAKE_BATCH: usize = 500;

/// Options of `mixed`.
#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    /// Simulated users (each: one IDLE session plus a loop of short ones).
    #[arg(long, default_value_t = 200)]
    pub users: usize,
    /// Seconds of activity.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Share of sessions over TLS, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    pub tls_share: f64,
    /// Share of the TLS sessions that start plain and upgrade with
    /// STARTTLS (IMAP) or STLS (POP3), 0 to 1; the rest use implicit TLS.
    #[arg(long, default_value_t = 0.25)]
    pub starttls_share: f64,
    /// Share of the short sessions that are POP3, 0 to 1.
    #[arg(long, default_value_t = 0.2)]
    pub pop3_share: f64,
    /// New messages per second, for random users.
    #[arg(long, default_value_t = 50.0)]
    pub deliver_rate: f64,
    /// Size of delivered messages, bytes.
    #[arg(long, default_value_t = 20_000)]
    pub message_size: usize,
    /// Longest think time between short sessions, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub think_ms: u64,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

/// What one client thread measured.
#[derive(Default)]
struct ThreadResult {
    login: Latency,
    fetch: Latency,
    deliver: Latency,
    imap_sessions: u64,
    pop3_sessions: u64,
    delivered: u64,
    failed_deliveries: u64,
}

/// Where the sessions of one protocol connect, per transport.
#[derive(Debug, Clone, Copy)]
struct ProtocolEndpoints {
    plain: Endpoint,
    tls: Endpoint,
    /// The STARTTLS listener, if the target has one (else implicit TLS).
    starttls: Option<Endpoint>,
}

impl ProtocolEndpoints {
    /// The target's endpoints for `protocol`.
    fn of(harness: &Harness, protocol: Protocol) -> Result<ProtocolEndpoints, String> {
        Ok(ProtocolEndpoints {
            plain: harness.endpoint(protocol, Transport::Plain)?,
            tls: harness.endpoint(protocol, Transport::Tls)?,
            starttls: harness.endpoint(protocol, Transport::Starttls).ok(),
        })
    }

    /// The endpoint for a session `rng` draws with these shares.
    fn pick(&self, rng: &mut Rng, shares: Shares) -> Endpoint {
        if !rng.chance(shares.tls) {
            return self.plain;
        }
        match self.starttls {
            Some(e) if rng.chance(shares.starttls) => e,
            _ => self.tls,
        }
    }
}

/// How sessions are split.
#[derive(Debug, Clone, Copy)]
struct Shares {
    tls: f64,
    starttls: f64,
    pop3: f64,
}

/// Everything the sessions of a run connect to.
#[derive(Debug, Clone, Copy)]
struct Targets {
    imap: ProtocolEndpoints,
    /// None: the target has no POP3 listener (POP3 share ignored).
    pop3: Option<ProtocolEndpoints>,
    /// None: the target has no LMTP listener (mail goes into the store).
    lmtp: Option<Endpoint>,
}

/// The desktop session: IDLE, and on each new message DONE, FETCH, IDLE;
/// after the deadline it leaves at its next wake-up. (A TLS read must not
/// be cancelled and the stream reused, so it never times out a wait; the
/// thread wakes it with one last delivery instead.)
async fn desktop(
    endpoint: Endpoint,
    tls: Arc<rustls::ClientConfig>,
    user: String,
    deadline: Instant,
    counters: Arc<Counters>,
    active: Rc<Cell<bool>>,
) -> std::io::Result<()> {
    let session = async {
        let mut client = ImapClient::connect(endpoint, &tls).await?;
        client.login(&user, PASSWORD).await?;
        client.expect_ok("SELECT INBOX", "SELECT").await?;
        counters.opened();
        let result = async {
            while Instant::now() < deadline {
                let tag = client.idle().await?;
                client.idle_wait().await?;
                client.idle_done(&tag).await?;
                let reply = client.expect_ok("FETCH * BODY.PEEK[]", "FETCH").await?;
                counters.add_bytes(reply.literal_bytes);
                counters.ok();
            }
            Ok(())
        }
        .await;
        counters.closed();
        let _ = client.logout().await;
        result
    };
    let result = session.await;
    active.set(false);
    result
}

/// What a phone loop needs.
struct Phone {
    targets: Targets,
    shares: Shares,
    tls: Arc<rustls::ClientConfig>,
    user: String,
    deadline: Instant,
    think: Duration,
    seed: u64,
    counters: Arc<Counters>,
    result: Rc<RefCell<ThreadResult>>,
}

impl Phone {
    /// A short IMAP session: LOGIN, SELECT, FETCH the newest, LOGOUT.
    async fn imap_session(&self, endpoint: Endpoint) -> std::io::Result<()> {
        let started = Instant::now();
        let mut client = ImapClient::connect(endpoint, &self.tls).await?;
        client.login(&self.user, PASSWORD).await?;
        self.result.borrow_mut().login.record(started.elapsed());
        self.counters.ok();
        client.expect_ok("SELECT INBOX", "SELECT").await?;
        let started = Instant::now();
        let reply = client.expect_ok("FETCH * BODY.PEEK[]", "FETCH").await?;
        self.result.borrow_mut().fetch.record(started.elapsed());
        self.counters.add_bytes(reply.literal_bytes);
        self.counters.ok();
        client.logout().await?;
        self.result.borrow_mut().imap_sessions += 1;
        Ok(())
    }

    /// A short POP3 session: USER/PASS, STAT, RETR the newest, QUIT.
    async fn pop3_session(&self, endpoint: Endpoint) -> std::io::Result<()> {
        let started = Instant::now();
        let mut client = Pop3Client::connect(endpoint, &self.tls).await?;
        client.login(&self.user, PASSWORD).await?;
        self.result.borrow_mut().login.record(started.elapsed());
        self.counters.ok();
        let stat = client.stat().await?;
        if stat.messages > 0 {
            let started = Instant::now();
            let bytes = client.retr(stat.messages).await?;
            self.result.borrow_mut().fetch.record(started.elapsed());
            self.counters.add_bytes(bytes);
            self.counters.ok();
        }
        client.quit().await?;
        self.result.borrow_mut().pop3_sessions += 1;
        Ok(())
    }

    /// Short sessions until the deadline.
    async fn run(self) {
        let mut rng = Rng::new(self.seed);
        while Instant::now() < self.deadline {
            let pop3 = self.targets.pop3.filter(|_| rng.chance(self.shares.pop3));
            let outcome = match pop3 {
                Some(p) => self.pop3_session(p.pick(&mut rng, self.shares)).await,
                None => {
                    let endpoint = self.targets.imap.pick(&mut rng, self.shares);
                    self.imap_session(endpoint).await
                }
            };
            if outcome.is_err() {
                self.counters.error();
            }
            monoio::time::sleep(rng.between(Duration::ZERO, self.think)).await;
        }
    }
}

/// Delivers mail for a thread's users: through an LMTP connection (opened
/// again after a failure) or, without one, into the store.
struct Postman {
    lmtp: Option<Endpoint>,
    conn: Option<LmtpClient>,
    tls: Arc<rustls::ClientConfig>,
    store: Store,
    result: Rc<RefCell<ThreadResult>>,
}

impl Postman {
    /// Delivers `body` to `users`; counts what was acknowledged.
    async fn deliver(&mut self, users: &[String], body: &DataBody, raw: &[u8]) {
        let Some(endpoint) = self.lmtp else {
            for user in users {
                let ok = self.store.deliver(user, "INBOX", raw.to_vec()).is_ok();
                self.count(u64::from(ok), u64::from(!ok));
            }
            return;
        };
        let attempt = async {
            if self.conn.is_none() {
                self.conn = Some(LmtpClient::connect(endpoint, &self.tls).await?);
            }
            match self.conn.as_mut() {
                Some(c) => c.send(SENDER, users, body).await,
                None => Err(std::io::Error::other("no LMTP connection")),
            }
        };
        match attempt.await {
            Ok(outcomes) => {
                let delivered = outcomes.iter().filter(|o| o.delivered()).count() as u64;
                self.count(delivered, users.len() as u64 - delivered);
            }
            Err(_) => {
                self.conn = None;
                self.count(0, users.len() as u64);
            }
        }
    }

    fn count(&self, delivered: u64, failed: u64) {
        let mut r = self.result.borrow_mut();
        r.delivered += delivered;
        r.failed_deliveries += failed;
    }

    /// Says goodbye to the LMTP server.
    async fn close(self) {
        if let Some(c) = self.conn {
            let _ = c.quit().await;
        }
    }
}

/// Runs `mixed`.
pub fn run(args: &MixedArgs) -> Result<Report, String> {
    let mut harness = Harness::start(&args.common)?;
    let mut report = Report::new("mixed", &harness);
    let counters = harness.fresh_counters();
    let shares = Shares {
        tls: args.tls_share.clamp(0.0, 1.0),
        starttls: args.starttls_share.clamp(0.0, 1.0),
        pop3: args.pop3_share.clamp(0.0, 1.0),
    };
    let targets = Targets {
        imap: ProtocolEndpoints::of(&harness, Protocol::Imap)?,
        pop3: ProtocolEndpoints::of(&harness, Protocol::Pop3).ok(),
        lmtp: harness.endpoint(Protocol::Lmtp, Transport::Plain).ok(),
    };
    if shares.pop3 > 0.0 && targets.pop3.is_none() {
        report.line("the target has no POP3 listener: short sessions are all IMAP");
    }
    if targets.lmtp.is_none() {
        report.line("the target has no LMTP listener: mail goes straight into the store");
    }
    let threads = harness.args.client_threads.max(1);
    let duration = Duration::from_secs_f64(args.duration.max(0.5));
    let store = harness.backends().store().clone();
    // Every account exists from the start, with its welcome message (so
    // a short session always has a newest message to fetch).
    let baseline = stored(&store, PREFIX, args.users);
    let raw = message(args.message_size);
    let body = DataBody::new(&raw);
    let cfg = args.clone();
    let before = harness.target_sample();
    let started = Instant::now();
    let handles = {
        let counters = counters.clone();
        let store = store.clone();
        spawn_clients(threads, move |t| {
            let counters = counters.clone();
            let store = store.clone();
            let (raw, body) = (raw.clone(), body.clone());
            let cfg = cfg.clone();
            async move {
                let tls = client_config(true);
                let deadline = Instant::now() + duration;
                let result = Rc::new(RefCell::new(ThreadResult::default()));
                let think = Duration::from_millis(cfg.think_ms.max(1));
                let mut tasks = Vec::new();
                let mut desktops = Vec::new();
                let mut rng = Rng::new(42 + t as u64);
                for u in (t..cfg.users).step_by(threads) {
                    let user = user_name(PREFIX, u);
                    let ep = targets.imap.pick(&mut rng, shares);
                    let active = Rc::new(Cell::new(true));
                    desktops.push((user.clone(), active.clone()));
                    let (c, tls2, user2) = (counters.clone(), tls.clone(), user.clone());
                    tasks.push(monoio::spawn(async move {
                        if desktop(ep, tls2, user2, deadline, c.clone(), active)
                            .await
                            .is_err()
                        {
                            c.error();
                        }
                    }));
                    let phone = Phone {
                        targets,
                        shares,
                        tls: tls.clone(),
                        user,
                        deadline,
                        think,
                        seed: u as u64,
                        counters: counters.clone(),
                        result: result.clone(),
                    };
                    tasks.push(monoio::spawn(phone.run()));
                }
                let mut postman = Postman {
                    lmtp: targets.lmtp,
                    conn: None,
                    tls: tls.clone(),
                    store,
                    result: result.clone(),
                };
                // Open loop: each delivery's latency runs from when it was
                // due.
                let gap = Duration::from_secs_f64(threads as f64 / cfg.deliver_rate.max(0.01));
                let mut due = Instant::now();
                while cfg.deliver_rate > 0.0 && !desktops.is_empty() && due < deadline {
                    if due > Instant::now() {
                        monoio::time::sleep_until(monoio::time::Instant::from_std(due)).await;
                    }
                    let (user, _) = &desktops[rng.below(desktops.len() as u64) as usize];
                    postman
                        .deliver(std::slice::from_ref(user), &body, &raw)
                        .await;
                    result.borrow_mut().deliver.record(due.elapsed());
                    due += gap;
                }
                // Wake the desktop sessions still in IDLE so they leave.
                let bye_raw = b"Subject: bye\r\n\r\nbye\r\n".to_vec();
                let bye = DataBody::new(&bye_raw);
                let give_up = Instant::now() + Duration::from_secs(10);
                while desktops.iter().any(|(_, a)| a.get()) && Instant::now() < give_up {
                    let waiting: Vec<String> = desktops
                        .iter()
                        .filter(|(_, a)| a.get())
                        .map(|(u, _)| u.clone())
                        .collect();
                    for batch in waiting.chunks(WAKE_BATCH) {
                        postman.deliver(batch, &bye, &bye_raw).await;
                    }
                    monoio::time::sleep(Duration::from_millis(100)).await;
                }
                postman.close().await;
                for task in tasks {
                    task.await;
                }
                result.take()
            }
        })
    };
    let finished = || handles.iter().all(|h| h.is_finished());
    let timeline = monitor(
        &harness,
        "mixed",
        Progress::Duration(duration),
        Vec::new(),
        |_| finished(),
    );
    let (results, client_cpu) = join(handles);
    let elapsed = started.elapsed().as_secs_f64();
    let after = harness.target_sample();
    let login = merged(results.iter().map(|r| &r.login)).summary();
    let fetch = merged(results.iter().map(|r| &r.fetch)).summary();
    let deliver = merged(results.iter().map(|r| &r.deliver)).summary();
    let sum = |f: fn(&ThreadResult) -> u64| results.iter().map(f).sum::<u64>();
    let (imap_sessions, pop3_sessions) = (sum(|r| r.imap_sessions), sum(|r| r.pop3_sessions));
    let (delivered, failed_deliveries) = (sum(|r| r.delivered), sum(|r| r.failed_deliveries));
    let stored = stored(&store, PREFIX, args.users).saturating_sub(baseline);
    let lost = delivered.saturating_sub(stored);
    let unacknowledged = stored.saturating_sub(delivered);
    let (ok, errors, _, bytes) = counters.snapshot();
    let director_busy = after.cpu.saturating_sub(before.cpu).as_secs_f64() / elapsed;
    report.line(format!(
        "{} users over {:.0} s: {} operations ({:.0}/s), {} failed sessions, {:.1} MB of mail fetched",
        args.users,
        elapsed,
        ok,
        ok as f64 / elapsed,
        errors,
        bytes as f64 / 1e6
    ));
    report.line(format!(
        "short sessions: {imap_sessions} IMAP, {pop3_sessions} POP3"
    ));
    report.line(format!("login {login}"));
    report.line(format!("fetch {fetch}"));
    let via = if targets.lmtp.is_some() {
        "LMTP through the target"
    } else {
        "straight into the store"
    };
    report.line(format!(
        "deliveries ({via}): {delivered} acknowledged, {failed_deliveries} failed, {stored} stored{}; {deliver}",
        if lost + unacknowledged == 0 {
            ": nothing lost".to_owned()
        } else {
            format!(": MISMATCH, {lost} lost, {unacknowledged} unacknowledged")
        }
    ));
    report.line(format!(
        "director {:.2} cores busy, RSS {:.1} MiB; client {:.2} cores",
        director_busy,
        after.rss_bytes as f64 / 1048576.0,
        client_cpu.as_secs_f64() / elapsed
    ));
    report.work = ok;
    report.errors = errors + failed_deliveries + lost + unacknowledged;
    report.timeline = timeline;
    report.results = json!({
        "users": args.users,
        "operations": ok,
        "failed_sessions": errors,
        "imap_sessions": imap_sessions,
        "pop3_sessions": pop3_sessions,
        "bytes": bytes,
        "login": login,
        "fetch": fetch,
        "deliveries": {
            "via_lmtp": targets.lmtp.is_some(),
            "acknowledged": delivered,
            "failed": failed_deliveries,
            "stored": stored,
            "lost": lost,
            "unacknowledged": unacknowledged,
            "latency": deliver,
        },
        "director_cores_busy": director_busy,
    });
    crate::report::finish(report, &harness)
}
