//! Admin actions and backend state shared by every director of a cluster,
//! against a real 3-member etcd and real Dovecot backends:
//! - a `kick` issued on d2 closes the user's session held through d1
//!   (its backend connection first) before the call returns;
//! - a kick counts a hung director as done once its lease has expired
//!   (not before, and the wait is bounded);
//! - `backend B down` issued on d1: d2 reports B down and has closed its
//!   session there before the call returns; a director started later
//!   applies the stored state; `up` on d2 brings it back everywhere;
//! - health verdicts by majority: of three directors, the one whose
//!   checks alone cannot reach a backend reports itself degraded
//!   (`/status`, `GET /cluster`, the metric) and the verdict stays up;
//!   when the backend dies for all, the verdict is down and nobody is
//!   degraded.
//!
//! Each test starts its own etcd members and Dovecot instances and stops
//! them (and its directors) by PID at the end.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::director::{config, ListenSpec};
use support::etcd::{require_etcd, EtcdCluster};
use support::mailpin::{http, wait_until, Mailpin};
use support::{require_dovecot, DovecotCluster, DovecotOptions, LineClient};

/// A director in cluster mode (`name`, lease TTL 4 s) in front of every
/// instance of `dovecot`, with one IMAP listener.
fn director_config(dovecot: &DovecotCluster, etcd: &EtcdCluster, name: &str) -> String {
    let base = config(dovecot, None, "", &[ListenSpec::plain("imap")], "");
    format!(
        "{base}[cluster]\netcd = {}\nprefix = \"/admin-test\"\nname = \"{name}\"\nlease_ttl = \"4s\"\n\n\
         [health]\ninterval = \"300ms\"\n",
        etcd.toml_endpoints()
    )
}

/// Waits until every director in `all` sees all of them registered.
fn wait_joined(all: &[&Mailpin]) {
    wait_until(
        all,
        Duration::from_secs(20),
        "every director registered",
        || {
            all.iter().all(|m| {
                let v = m.get_json("/cluster");
                v["etcd"]["fenced"] == false
                    && v["directors"].as_array().map_or(0, Vec::len) == all.len()
            })
        },
    );
}

/// An IMAP session of `user` logged in through `m`.
fn logged_in(m: &Mailpin, user: &str) -> LineClient {
    let mut c = LineClient::connect(m.listen[0]).expect("connect");
    c.read_line().expect("greeting");
    let r = c.imap(&format!("LOGIN {user} pass")).expect("login answer");
    assert!(r.is_ok(), "login of {user}: {}\n{}", r.status, m.log());
    c
}

/// The backend `m` has `user` on.
fn backend_of(m: &Mailpin, user: &str) -> String {
    m.get_json(&format!("/users/{user}"))["backend"]
        .as_str()
        .unwrap_or_else(|| panic!("{user} has no backend on the director"))
        .to_owned()
}

/// The row of `backend` in `GET /backends`.
fn backend_row(m: &Mailpin, backend: &str) -> Value {
    m.get_json("/backends")
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == backend).cloned())
        .unwrap_or(Value::Null)
}

/// The entry of `backend` in `GET /cluster`'s `backends`.
fn cluster_backend(m: &Mailpin, backend: &str) -> Value {
    m.get_json("/cluster")["backends"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == backend).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_kick_on_one_director_closes_the_session_held_through_another_before_it_returns() {
    if !require_etcd() || !require_dovecot() {
        return;
    }
    let dovecot = DovecotCluster::start(1, DovecotOptions::default());
    let etcd = EtcdCluster::start(3);
    let d1 = Mailpin::start(&director_config(&dovecot, &etcd, "d1"), 1);
    let d2 = Mailpin::start(&director_config(&dovecot, &etcd, "d2"), 1);
    wait_joined(&[&d1, &d2]);
    let user = dovecot.user(3);
    let mut held = logged_in(&d1, &user);
    dovecot
        .instance(0)
        .wait_for_who(&user, "imap", 1, Duration::from_secs(5))
        .expect("the session on the backend");

    let t = Instant::now();
    let (code, out, err) = d2.ctl(&["kick", &user]);
    let took = t.elapsed();
    // The moment the call returns, d1 serves no session: it has closed
    // the backend connection (then the client's). Dovecot's own count
    // (`doveadm who`, registered through its anvil process) follows.
    let on_d1 = d1.get_json("/status")["sessions"].clone();
    eprintln!("kick on d2 returned after {took:?}: {out}{err}");
    assert_eq!(code, 0, "{out}{err}\n{}", d2.log());
    assert_eq!(on_d1, 0, "the session through d1 outlived the kick on d2");
    dovecot
        .instance(0)
        .wait_for_who(&user, "imap", 0, Duration::from_secs(1))
        .expect("the backend session closed");
    assert!(out.contains("1 sessions closed"), "{out}");
    assert!(out.contains("d1") && out.contains("d2"), "{out}");
    // The client through d1 was told and closed.
    let mut rest = String::new();
    while let Ok(line) = held.read_line() {
        if line.is_empty() {
            break;
        }
        rest.push_str(&line);
    }
    assert!(rest.contains("BYE"), "{rest:?}");
    // The API says who acted.
    let (status, body) = http(
        d2.admin,
        &format!(
            "POST /users/{user}/kick HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            d2.admin
        ),
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(v["kicked"], 0);
    let acted: Vec<&str> = v["directors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(acted, ["d1", "d2"], "{body}");
}

#[test]
fn backend_down_on_one_director_closes_sessions_on_the_other_and_a_later_director_applies_it() {
    if !require_etcd() || !require_dovecot() {
        return;
    }
    let dovecot = DovecotCluster::start(2, DovecotOptions::default());
    let etcd = EtcdCluster::start(3);
    let d1 = Mailpin::start(&director_config(&dovecot, &etcd, "d1"), 1);
    let d2 = Mailpin::start(&director_config(&dovecot, &etcd, "d2"), 1);
    wait_joined(&[&d1, &d2]);
    let user = dovecot.user(5);
    let _held = logged_in(&d2, &user);
    let backend = backend_of(&d2, &user);
    let index = dovecot
        .instances()
        .iter()
        .position(|i| i.name() == backend)
        .unwrap();
    let inst = dovecot.instance(index);
    inst.wait_for_who(&user, "imap", 1, Duration::from_secs(5))
        .expect("the session on the backend");

    let (code, out, err) = d1.ctl(&["backend", &backend, "down"]);
    // The moment the call returns: d2 has closed its session there
    // (backend connection first) and reports the backend down.
    let sessions_on_d2 = d2.get_json("/status")["sessions"].clone();
    let on_d2 = backend_row(&d2, &backend);
    eprintln!("backend down on d1: {out}{err}");
    assert_eq!(code, 0, "{out}{err}\n{}", d1.log());
    assert_eq!(
        sessions_on_d2, 0,
        "d2's session on {backend} outlived the down on d1"
    );
    inst.wait_for_who(&user, "imap", 0, Duration::from_secs(1))
        .expect("the backend session closed");
    assert_eq!(on_d2["admin"], "down", "{on_d2}");
    assert_eq!(on_d2["routable"], false, "{on_d2}");
    assert!(
        out.contains("admin down") && out.contains("d1, d2"),
        "{out}"
    );
    assert_eq!(cluster_backend(&d2, &backend)["admin"], "down");

    // A director that starts now applies the state stored in etcd.
    let d3 = Mailpin::start(&director_config(&dovecot, &etcd, "d3"), 1);
    wait_until(
        &[&d3],
        Duration::from_secs(20),
        "d3 applies the stored admin state",
        || backend_row(&d3, &backend)["admin"] == "down",
    );
    // Up on d2: every director, d3 included, before the call returns.
    let (code, out, err) = d2.ctl(&["backend", &backend, "up"]);
    assert_eq!(code, 0, "{out}{err}");
    for m in [&d1, &d2, &d3] {
        assert_eq!(backend_row(m, &backend)["admin"], "up", "{}", m.log());
    }
}

#[test]
fn one_director_alone_seeing_a_backend_down_is_degraded_refuses_its_users_and_the_verdict_stays_up()
{
    if !require_etcd() || !require_dovecot() {
        return;
    }
    let mut dovecot = DovecotCluster::start(2, DovecotOptions::default());
    let etcd = EtcdCluster::start(3);
    let sick = dovecot.instance(0).name().to_owned();
    let d1 = Mailpin::start(&director_config(&dovecot, &etcd, "d1"), 1);
    let d2 = Mailpin::start(&director_config(&dovecot, &etcd, "d2"), 1);
    // d3 checks (and would connect to) a port of that backend where
    // nothing listens: it alone cannot reach it.
    let port = dovecot.instance(0).imap_port();
    let d3_config = director_config(&dovecot, &etcd, "d3").replacen(
        &format!("imap = {port}\n"),
        "imap = 1\n",
        1,
    );
    let d3 = Mailpin::start(&d3_config, 1);
    wait_joined(&[&d1, &d2, &d3]);
    wait_until(
        &[&d3],
        Duration::from_secs(15),
        "d3 reports itself degraded on the backend",
        || d3.get_json("/status")["degraded"] == serde_json::json!([sick]),
    );
    let seen = cluster_backend(&d3, &sick);
    eprintln!("d3's view of {sick}: {seen}");
    assert_eq!(seen["verdict"], "up", "{seen}");
    assert_eq!(seen["own"], "down", "{seen}");
    assert_eq!(
        (seen["up"].as_u64(), seen["down"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        d3.get_json("/cluster")["degraded"],
        serde_json::json!([sick])
    );
    assert_eq!(d3.metric("mailpin_cluster_degraded_backends"), 1);
    for m in [&d1, &d2] {
        assert_eq!(m.get_json("/status")["degraded"], serde_json::json!([]));
        assert_eq!(m.metric("mailpin_cluster_degraded_backends"), 0);
        assert_eq!(cluster_backend(m, &sick)["verdict"], "up");
    }
    let (code, out, _) = d3.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("degraded: {sick}")), "{out}");

    // A user on that backend (placed through d1) comes through d3: d3
    // refuses it at once with the temporary failure and never moves it.
    let on_sick = (1..=10)
        .map(|n| dovecot.user(n))
        .find(|user| {
            let mut c = LineClient::connect(d1.listen[0]).expect("connect");
            c.read_line().expect("greeting");
            assert!(c.imap(&format!("LOGIN {user} pass")).unwrap().is_ok());
            d1.get_json(&format!("/users/{user}"))["backend"] == sick.as_str()
        })
        .expect("one of ten users lands on the sick backend");
    let mut c = LineClient::connect(d3.listen[0]).expect("connect");
    c.read_line().expect("greeting");
    let t = Instant::now();
    let r = c.imap(&format!("LOGIN {on_sick} pass")).unwrap();
    assert!(r.status.starts_with("NO [UNAVAILABLE]"), "{}", r.status);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for m in [&d1, &d2, &d3] {
        assert_eq!(
            m.get_json(&format!("/users/{on_sick}"))["backend"],
            sick.as_str(),
            "the user stays on its backend"
        );
    }

    // The backend dies for everyone: a majority sees it down, and d3 is
    // no longer the odd one out.
    dovecot.instance_mut(0).kill_hard();
    wait_until(
        &[&d1, &d3],
        Duration::from_secs(15),
        "the verdict is down on every director",
        || {
            [&d1, &d2, &d3]
                .iter()
                .all(|m| cluster_backend(m, &sick)["verdict"] == "down")
        },
    );
    assert_eq!(d3.get_json("/status")["degraded"], serde_json::json!([]));
    assert_eq!(d3.metric("mailpin_cluster_degraded_backends"), 0);
}

#[test]
fn a_kick_counts_a_director_whose_lease_expired_as_done() {
    if !require_etcd() || !require_dovecot() {
        return;
    }
    let dovecot = DovecotCluster::start(1, DovecotOptions::default());
    let etcd = EtcdCluster::start(3);
    let d1 = Mailpin::start(&director_config(&dovecot, &etcd, "d1"), 1);
    let d2 = Mailpin::start(&director_config(&dovecot, &etcd, "d2"), 1);
    wait_joined(&[&d1, &d2]);
    // d1 hangs: it cannot act on the kick, and etcd lets its lease (4 s)
    // expire. The kick on d2 waits for that, not for ever, and succeeds.
    support::procs::send_signal(d1.pid(), libc::SIGSTOP);
    let t = Instant::now();
    let (code, out, err) = d2.ctl(&["--json", "kick", &dovecot.user(7)]);
    let took = t.elapsed();
    support::procs::send_signal(d1.pid(), libc::SIGCONT);
    eprintln!("kick with d1 hung returned after {took:?}: {out}{err}");
    assert_eq!(code, 0, "{out}{err}\n{}", d2.log());
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["gone"], serde_json::json!(["d1"]), "{out}");
    assert_eq!(v["directors"][0]["name"], "d2", "{out}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(12),
        "{took:?}: d1's lease could not have expired sooner, and the wait is bounded"
    );
}
