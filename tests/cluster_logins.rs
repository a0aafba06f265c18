//! Logins through several directors on one etcd (issue 11): real etcd
//! (3 members), real Dovecot (3 backends on one shared store), two or
//! three mailpin directors in cluster mode.
//!
//! - Users with sessions through three directors are on one backend, even
//!   when the directors weigh the backends differently (alone, each would
//!   place users elsewhere): `doveadm who` on every backend is sampled the
//!   whole time and never shows a user on two, and `GET /users/U` answers
//!   the same backend on every director.
//! - Failover, then return: a backend dies, its users log in again through
//!   one director and land elsewhere; the backend comes back and the users
//!   log in through the other director — they stay on their new backend
//!   (the split of the issue: 23 of 60 users on two backends).
//! - A director killed with SIGKILL: its users come back through another
//!   director to the same backends; nothing moves.
//! - A move issued on one director, and a flush, close the sessions held
//!   through the other before the call returns; with a master user, an
//!   IDLE session held through the other follows its user live instead.
//!
//! Cost: about 25 s (each test: etcd, three Dovecot instances, two
//! directors).

mod support;

use std::time::{Duration, Instant};

use support::cluster::{
    assigned, backends_of, get_json, login, wait_until, Sampler, World, QUICK_HEALTH,
};
use support::LineClient;

/// Users of the test.
const USERS: usize = 24;

/// Three backends, etcd, and `n` directors serving. With `disagree`, the
/// directors weigh the backends differently, so each one alone would
/// place many users elsewhere than the others (the agreement is etcd's).
fn world(n: usize, disagree: bool) -> Option<World> {
    World::start(n, USERS, QUICK_HEALTH, |i, config| {
        if !disagree {
            return config;
        }
        let b = format!("name = \"b{}\"\n", i % 3);
        config.replace(&b, &format!("{b}weight = 20\n"))
    })
}

#[test]
fn users_with_sessions_through_three_directors_are_on_one_backend() {
    let Some(w) = world(3, true) else { return };
    let d = &w.directors;
    let sampler = Sampler::start(&w.dovecot);
    let users: Vec<String> = (1..=USERS).map(support::dovecot::user_name).collect();
    let mut held = Vec::new();
    for (i, user) in users.iter().enumerate() {
        // Each user comes through all three, starting at a different one.
        for k in 0..3 {
            held.push(login(&d[(i + k) % 3], user).expect("login"));
        }
    }
    sampler.wait_samples(3);
    for user in &users {
        let on = backends_of(&w.dovecot, user);
        assert_eq!(on.len(), 1, "{user} on backends {on:?}");
        let a1 = assigned(&d[0], user);
        assert!(a1.is_some(), "{user} has an assignment on d1");
        for other in &d[1..] {
            assert_eq!(assigned(other, user), a1, "{user}: the directors disagree");
        }
        assert_eq!(a1.as_deref(), Some(format!("b{}", on[0]).as_str()));
    }
    // The backends are used, not one for everyone.
    let spread: std::collections::BTreeSet<_> =
        users.iter().filter_map(|u| assigned(&d[0], u)).collect();
    assert!(spread.len() > 1, "every user on {spread:?}");
    drop(held);
    let (samples, splits) = sampler.finish();
    assert!(samples >= 3);
    assert!(splits.is_empty(), "users on two backends: {splits:?}");
}

/// The health `GET /backends` on `d` gives backend `name`.
fn health_of(d: &support::mailpin::Mailpin, name: &str) -> Option<String> {
    get_json(d, "/backends")
        .1
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)
        .and_then(|b| b["health"].as_str().map(str::to_owned))
}

#[test]
fn after_a_failover_and_return_users_keep_their_new_backend_through_any_director() {
    let Some(mut w) = world(2, false) else { return };
    let sampler = Sampler::start(&w.dovecot);
    let users: Vec<String> = (1..=USERS).map(support::dovecot::user_name).collect();
    // Every user holds a session through d1.
    let mut held: Vec<Option<LineClient>> = users
        .iter()
        .map(|u| Some(login(&w.directors[0], u).expect("login through d1")))
        .collect();
    let first: Vec<String> = users
        .iter()
        .map(|u| assigned(&w.directors[0], u).expect("assigned"))
        .collect();
    // The backend with the most users dies.
    let victim = (0..3)
        .max_by_key(|i| first.iter().filter(|b| **b == format!("b{i}")).count())
        .unwrap();
    let victim_name = format!("b{victim}");
    let moved: Vec<usize> = (0..USERS).filter(|i| first[*i] == victim_name).collect();
    assert!(!moved.is_empty());
    w.dovecot.lock().unwrap().instance_mut(victim).kill_hard();
    for d in &w.directors {
        wait_until(
            &[d],
            Duration::from_secs(10),
            "the victim seen down",
            || health_of(d, &victim_name).as_deref() == Some("unhealthy"),
        );
    }
    // The victim's users log in again through d1 and land elsewhere.
    let mut after = first.clone();
    for &i in &moved {
        held[i] = None;
        held[i] = Some(login(&w.directors[0], &users[i]).expect("login after the failover"));
        after[i] = assigned(&w.directors[0], &users[i]).expect("assigned");
        assert_ne!(after[i], victim_name);
    }
    // The victim comes back; both directors see it up.
    w.dovecot.lock().unwrap().instance_mut(victim).restart();
    for d in &w.directors {
        wait_until(&[d], Duration::from_secs(10), "the victim seen up", || {
            health_of(d, &victim_name).as_deref() == Some("healthy")
        });
    }
    // Every user now logs in through d2 too: each lands where its d1
    // session is, never back on the victim for the moved ones.
    for (i, user) in users.iter().enumerate() {
        let _second = login(&w.directors[1], user).expect("login through d2");
        assert_eq!(
            assigned(&w.directors[1], user).as_deref(),
            Some(after[i].as_str()),
            "{user}: d2 routes elsewhere than d1"
        );
        let on = backends_of(&w.dovecot, user);
        assert_eq!(on, vec![after[i][1..].parse::<usize>().unwrap()], "{user}");
    }

    // d1 dies without a word; its clients come back through d2, nothing
    // moves.
    let pid = w.directors[0].pid();
    // SAFETY: plain kill(2) of the director this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    let _ = w.directors[0].wait_exit(Duration::from_secs(5));
    drop(held);
    for (i, user) in users.iter().enumerate() {
        let _again = login(&w.directors[1], user).expect("login through d2 after d1 died");
        assert_eq!(
            assigned(&w.directors[1], user).as_deref(),
            Some(after[i].as_str())
        );
    }
    sampler.wait_samples(3);
    let (samples, splits) = sampler.finish();
    assert!(samples >= 3);
    assert!(splits.is_empty(), "users on two backends: {splits:?}");
}

/// Whether `c`'s connection ends with a BYE within 5 s.
fn ends_with_bye(c: &mut LineClient) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        match c.read_line() {
            Ok(line) if line.starts_with("* BYE") => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn a_move_or_flush_on_one_director_closes_sessions_held_through_another() {
    let Some(w) = world(2, false) else { return };
    let (d1, d2) = (&w.directors[0], &w.directors[1]);
    let sampler = Sampler::start(&w.dovecot);
    let user = support::dovecot::user_name(1);
    let mut through_d1 = login(d1, &user).expect("login through d1");
    let mut through_d2 = login(d2, &user).expect("login through d2");
    let from = assigned(d1, &user).expect("assigned");
    let to = if from == "b0" { "b1" } else { "b0" };

    // Moved on d2: the session held through d1 ends too, before the call
    // returns, and both directors name the new backend.
    let (status, v) = support::cluster::post_json(d2, &format!("/users/{user}/move?to={to}"));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["closed_sessions"], 2, "{v}");
    assert!(ends_with_bye(&mut through_d1), "the d1 session ended");
    assert!(ends_with_bye(&mut through_d2), "the d2 session ended");
    assert_eq!(assigned(d1, &user).as_deref(), Some(to));
    assert_eq!(assigned(d2, &user).as_deref(), Some(to));
    let _again = login(d1, &user).expect("login after the move");
    assert_eq!(
        backends_of(&w.dovecot, &user),
        vec![to[1..].parse::<usize>().unwrap()]
    );
    drop(_again);

    // A flush of that backend on d1 ends the sessions of its users held
    // through d2 and drops their assignments everywhere.
    let mut held = login(d2, &user).expect("login through d2");
    let (status, v) = support::cluster::post_json(d1, &format!("/backends/{to}/flush"));
    assert_eq!(status, 200, "{v}");
    assert!(v["flushed_users"].as_u64().unwrap() >= 1, "{v}");
    assert!(
        ends_with_bye(&mut held),
        "the d2 session ended by d1's flush"
    );
    sampler.wait_samples(3);
    let (_, splits) = sampler.finish();
    assert!(splits.is_empty(), "users on two backends: {splits:?}");
}

#[test]
fn a_move_on_one_director_carries_an_idle_session_held_through_another_live() {
    let dir = support::tempdir::TempDir::new().expect("temp dir");
    let password_file = dir.path().join("master.pass");
    std::fs::write(&password_file, "master-secret\n").expect("master password");
    let extra = format!(
        "{QUICK_HEALTH}\n[backends]\nmaster_user = \"mailpin\"\nmaster_password_file = {password_file:?}\n"
    );
    let options = support::DovecotOptions {
        users: USERS,
        master_user: Some(("mailpin".into(), "master-secret".into())),
        // No "* OK Still here" during the check that no byte arrives.
        extra_config: "imap_idle_notify_interval = 30 mins\n".into(),
        ..support::DovecotOptions::default()
    };
    let Some(w) = World::start_with(2, options, &extra, |_, c| c) else {
        return;
    };
    let (d1, d2) = (&w.directors[0], &w.directors[1]);
    let user = support::dovecot::user_name(3);
    let mut idle = login(d1, &user).expect("login through d1");
    assert!(idle.imap("SELECT INBOX").expect("select").is_ok());
    idle.send_line("i IDLE").expect("idle");
    let cont = idle.read_line().expect("continuation");
    assert!(cont.starts_with("+ "), "{cont}");
    let from = assigned(d1, &user).expect("assigned");
    let to = if from == "b0" { "b1" } else { "b0" };

    // Moved on d2: the session held through d1 follows the user live.
    let (status, v) = support::cluster::post_json(d2, &format!("/users/{user}/move?to={to}"));
    assert_eq!(status, 200, "{v}");
    let to_index: usize = to[1..].parse().unwrap();
    wait_until(
        &[d1, d2],
        Duration::from_secs(10),
        "the session on the new backend",
        || backends_of(&w.dovecot, &user) == vec![to_index],
    );
    assert_eq!(assigned(d1, &user).as_deref(), Some(to));
    // Nothing reached the client meanwhile; DONE gets the one tagged OK.
    idle.send_line("DONE").expect("done");
    let answer = idle.read_line().expect("an answer to DONE");
    assert!(
        answer.starts_with("i OK"),
        "the client saw {answer:?} first"
    );
    assert!(idle.imap("NOOP").expect("noop").is_ok());
    assert_eq!(
        d1.metric("mailpin_live_moves_total{result=\"moved\",reason=\"ok\"}"),
        1
    );
}
