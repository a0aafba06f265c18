//! The `cluster` scenario's timed events, each on a handful of held IMAP
//! sessions ([`crate::client::held`]): a move issued on one director while
//! the user has sessions through two; SIGKILL of a director whose users
//! then log in through another; a backend killed under the directors.
//!
//! The directors know the simulated backends' IMAP ports only, so a
//! killed backend (its IMAP listener closed, its sessions cut) is down for
//! them: their health checks see it, the majority verdict gives it up, and
//! its users are placed elsewhere. With `down_after` an operator's `POST
//! /backends/B/down` (on one director: it acts on every one) comes too.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use mailpin::config::Protocol;
use serde::Serialize;

use crate::client::admin;
use crate::client::conn::Transport;
use crate::client::held::{login_until_ok, HeldSession};
use crate::director::DirectorProcess;
use crate::harness::Harness;
use crate::scenario::user_name;

/// How long a held session waits to be closed, and a user to get in again.
const EVENT_LIMIT: Duration = Duration::from_secs(20);

/// The pause between two login tries of a user waiting to get back in.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// How long the other director may take to name a moved user's new
/// backend, and how often it is asked.
const AGREE_LIMIT: Duration = Duration::from_secs(5);
const AGREE_POLL: Duration = Duration::from_millis(1);

/// The step timeout of one held login.
const LOGIN_LIMIT: Duration = Duration::from_secs(10);

/// Durations in milliseconds: how many, median, largest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spread {
    /// How many were measured.
    pub count: usize,
    /// The median, ms.
    pub p50_ms: f64,
    /// The largest, ms.
    pub max_ms: f64,
}

impl Spread {
    /// The spread of `times`.
    pub fn of(mut times: Vec<Duration>) -> Spread {
        times.sort();
        let ms = |d: Option<&Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
        Spread {
            count: times.len(),
            p50_ms: ms(times.get(times.len() / 2)),
            max_ms: ms(times.last()),
        }
    }
}

impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} ms, max {:.1} ms (n={})",
            self.p50_ms, self.max_ms, self.count
        )
    }
}

/// A director's plain IMAP and admin addresses.
fn addrs(d: &DirectorProcess) -> Result<(SocketAddr, SocketAddr), String> {
    let imap = d
        .addrs
        .get(Protocol::Imap, Transport::Plain)
        .ok_or("a director without plain IMAP")?;
    let admin = d.addrs.admin().ok_or("a director without an admin API")?;
    Ok((imap, admin))
}

/// What [`moves`] measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MoveTimes {
    /// From the POST to its answer.
    pub call: Spread,
    /// From the POST until both sessions were closed.
    pub closed: Spread,
    /// From the call's answer until `GET /users/U` on the other director
    /// named the new backend (0 when it did at once).
    pub other_agrees: Spread,
    /// Moves after whose answer the other director's first `GET /users/U`
    /// still named the old backend.
    pub stale_reads: usize,
    /// Moves whose call failed, or whose sessions stayed open, or after
    /// which the other director did not name the new backend in time.
    pub failed: usize,
    /// What went wrong with the last failed move.
    pub error: Option<String>,
}

/// Times `count` moves: user U logs in through `a` and through `b`, then
/// `POST /users/U/move?to=B` (B another backend) goes to `a` and `b` in
/// turn; measured until the call returns and until both sessions closed.
pub fn moves(
    a: &DirectorProcess,
    b: &DirectorProcess,
    backends: &[String],
    count: usize,
) -> Result<MoveTimes, String> {
    let (a, b) = (addrs(a)?, addrs(b)?);
    let (mut calls, mut closes, mut failed, mut error) = (Vec::new(), Vec::new(), 0, None);
    let (mut agrees, mut stale_reads) = (Vec::new(), 0);
    for i in 0..count {
        let user = user_name("clmove", i);
        let one = HeldSession::login(a.0, &user, LOGIN_LIMIT)?;
        let two = HeldSession::login(b.0, &user, LOGIN_LIMIT)?;
        let from = admin::user_backend(a.1, &user)?.ok_or("a logged-in user with no backend")?;
        let to = backends
            .iter()
            .find(|n| **n != from)
            .ok_or("a move needs two backends")?
            .clone();
        let watchers: Vec<_> = [one, two]
            .into_iter()
            .map(|s| thread::spawn(move || s.wait_closed(EVENT_LIMIT)))
            .collect();
        let (issuer, other) = if i % 2 == 0 { (a, b) } else { (b, a) };
        let posted = Instant::now();
        let answer = admin::request(issuer.1, "POST", &format!("/users/{user}/move?to={to}"))?;
        let answered = Instant::now();
        calls.push(answered.duration_since(posted));
        // The other director's view right after the answer, until it
        // names the new backend.
        let mut now_on = admin::user_backend(other.1, &user)?;
        if now_on.as_deref() != Some(to.as_str()) {
            stale_reads += 1;
            while now_on.as_deref() != Some(to.as_str()) && answered.elapsed() < AGREE_LIMIT {
                thread::sleep(AGREE_POLL);
                now_on = admin::user_backend(other.1, &user)?;
            }
        }
        if now_on.as_deref() == Some(to.as_str()) {
            agrees.push(answered.elapsed());
        }
        let closed: Vec<Option<Instant>> = watchers
            .into_iter()
            .map(|w| w.join().unwrap_or(None))
            .collect();
        match closed.iter().copied().collect::<Option<Vec<_>>>() {
            Some(times) if answer.status == 200 && now_on.as_deref() == Some(to.as_str()) => {
                let last = times.into_iter().max().unwrap_or(posted);
                closes.push(last.saturating_duration_since(posted));
            }
            _ => {
                failed += 1;
                error = Some(format!(
                    "{user} {from} -> {to}: answer {} {}, sessions closed {:?}, the other director says {now_on:?}",
                    answer.status,
                    answer.body.trim(),
                    closed.iter().map(Option::is_some).collect::<Vec<_>>()
                ));
            }
        }
    }
    Ok(MoveTimes {
        call: Spread::of(calls),
        closed: Spread::of(closes),
        other_agrees: Spread::of(agrees),
        stale_reads,
        failed,
        error,
    })
}

/// What a failover measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverTimes {
    /// From the kill until each user was logged in again.
    pub back_in: Spread,
    /// Users that did not get in again within the limit.
    pub failed: usize,
    /// Users whose backend changed (a director's death must move none;
    /// a backend's death must move all of its users).
    pub moved: usize,
    /// The last error of a user that did not get in again.
    pub error: Option<String>,
}

/// A user waiting to get back in: name, backend before, and the director
/// (plain IMAP, admin) it logs in through.
type Returning = (String, String, (SocketAddr, SocketAddr));

/// Logs each of `users` in through its director until it succeeds, all at
/// once from `since`, and tells how long each took and who now has
/// another backend than before.
fn back_in(users: &[Returning], since: Instant) -> Result<FailoverTimes, String> {
    let tries: Vec<_> = users
        .iter()
        .map(|(user, _, (imap, admin_addr))| {
            let (imap, admin_addr) = (*imap, *admin_addr);
            let user = user.clone();
            thread::spawn(move || {
                login_until_ok(imap, &user, RETRY_PAUSE, EVENT_LIMIT).map_err(|e| {
                    // What the director said of the user, for the report.
                    let said = admin::request(admin_addr, "GET", &format!("/users/{user}"))
                        .map(|a| a.body)
                        .unwrap_or_else(|e| e);
                    format!("{e}; GET /users/{user} there: {}", said.trim())
                })
            })
        })
        .collect();
    let mut times = Vec::new();
    let (mut failed, mut error) = (0, None);
    let mut sessions = Vec::new();
    for t in tries {
        match t.join() {
            Ok(Ok((at, session))) => {
                times.push(at.saturating_duration_since(since));
                sessions.push(session);
            }
            Ok(Err(e)) => (failed, error) = (failed + 1, Some(e)),
            Err(_) => (failed, error) = (failed + 1, Some("login thread panicked".into())),
        }
    }
    let mut moved = 0;
    for (user, before, (_, admin_addr)) in users {
        if admin::user_backend(*admin_addr, user)?.as_deref() != Some(before.as_str()) {
            moved += 1;
        }
    }
    drop(sessions);
    Ok(FailoverTimes {
        back_in: Spread::of(times),
        failed,
        moved,
        error,
    })
}

/// Holds `held` sessions through `victim`, SIGKILLs it, and times until
/// each of those users is logged in again through `others` (in turn).
pub fn director_death(
    victim: &mut DirectorProcess,
    others: &[DirectorProcess],
    held: usize,
) -> Result<FailoverTimes, String> {
    let (imap, admin_addr) = addrs(victim)?;
    let through: Vec<_> = others.iter().map(addrs).collect::<Result<_, _>>()?;
    let mut users = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..held {
        let user = user_name("clfail", i);
        sessions.push(HeldSession::login(imap, &user, LOGIN_LIMIT)?);
        let backend = admin::user_backend(admin_addr, &user)?.ok_or("no backend")?;
        users.push((user, backend, through[i % through.len()]));
    }
    let killed = Instant::now();
    victim.kill_hard();
    drop(sessions);
    back_in(&users, killed)
}

/// What a backend's death measured, by the director the users came back
/// through.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendDeath {
    /// The backend killed.
    pub backend: String,
    /// From the kill to the operator's `down`, ms (`None`: none posted).
    pub down_after_ms: Option<f64>,
    /// Users that logged in again through the director they held their
    /// session through.
    pub same_director: FailoverTimes,
    /// Users that logged in again through another director than the one
    /// they held their session through.
    pub other_director: FailoverTimes,
}

/// Holds `held` sessions through `directors` (in turn), kills the backend
/// that serves the first of them, times until each of its users is logged
/// in again — every other one through the director it held its session
/// through, the rest through the next director — and starts the backend
/// again.
pub fn backend_death(
    harness: &Harness,
    directors: &[DirectorProcess],
    held: usize,
    down_after: Option<Duration>,
) -> Result<BackendDeath, String> {
    let through: Vec<_> = directors.iter().map(addrs).collect::<Result<_, _>>()?;
    let mut users = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..held {
        let (imap, admin_addr) = through[i % through.len()];
        let user = user_name("clback", i);
        sessions.push(HeldSession::login(imap, &user, LOGIN_LIMIT)?);
        let backend = admin::user_backend(admin_addr, &user)?.ok_or("no backend")?;
        users.push((user, backend, i));
    }
    let victim = users.first().map(|(_, b, _)| b.clone()).ok_or("no users")?;
    let (mut same, mut other) = (Vec::new(), Vec::new());
    for (j, (user, backend, i)) in users
        .into_iter()
        .filter(|(_, b, _)| *b == victim)
        .enumerate()
    {
        if j % 2 == 0 {
            same.push((user, backend, through[i % through.len()]));
        } else {
            other.push((user, backend, through[(i + 1) % through.len()]));
        }
    }
    let killed = Instant::now();
    harness
        .backends()
        .kill(&victim)
        .map_err(|e| format!("killing {victim}: {e}"))?;
    let (same, other, down) = thread::scope(|s| {
        let other = s.spawn(|| back_in(&other, killed));
        let down = s.spawn(|| {
            let Some(after) = down_after else {
                return Ok(None);
            };
            thread::sleep(after.saturating_sub(killed.elapsed()));
            let at = killed.elapsed();
            let (_, admin_addr) = through[0];
            admin::request(admin_addr, "POST", &format!("/backends/{victim}/down"))?;
            Ok(Some(at))
        });
        let same = back_in(&same, killed);
        (
            same,
            other.join().unwrap_or_else(|_| Err("panicked".to_owned())),
            down.join().unwrap_or_else(|_| Err("panicked".to_owned())),
        )
    });
    drop(sessions);
    harness
        .backends()
        .restart(&victim)
        .map_err(|e| format!("restarting {victim}: {e}"))?;
    let down = down?;
    if down.is_some() {
        admin::request(through[0].1, "POST", &format!("/backends/{victim}/up"))?;
    }
    Ok(BackendDeath {
        backend: victim,
        down_after_ms: down.map(|at| at.as_secs_f64() * 1000.0),
        same_director: same?,
        other_director: other?,
    })
}
