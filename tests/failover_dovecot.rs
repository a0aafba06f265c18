//! Failover with real Dovecot: a backend dies and its users log in
//! elsewhere with no admin action, while no user is ever on two backends.
//!
//! 150 users each keep 2 sessions, logging in again and again through
//! mailpin (Python's imaplib). One backend is SIGKILLed with every process
//! it forked. Then: every user of the dead backend logs in successfully on
//! another one, the director closed the sessions that were on it, users of
//! the live backends see no failed login, and `doveadm who` sampled on the
//! live backends never shows a user on two. The backend restarts: moved
//! users stay, new users arrive. A black-holed backend (accepts, never
//! answers) is found by its check timeout.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::mailpin::Mailpin;
use support::{
    require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions, InteractiveClient,
};

fn config(backends: &[(String, String, u16)]) -> String {
    let mut c = String::from(
        "[server]\ncores = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n",
    );
    for (name, host, port) in backends {
        c.push_str(&format!(
            "[[backend]]\nname = \"{name}\"\nhost = \"{host}\"\nimap = {port}\n\n"
        ));
    }
    c
}

fn cluster_backends(cluster: &DovecotCluster) -> Vec<(String, String, u16)> {
    cluster
        .instances()
        .iter()
        .map(|i| (i.name().to_string(), i.addr().to_string(), i.imap_port()))
        .collect()
}

/// user → backends it has IMAP sessions on, over the given instances.
fn placement(cluster: &DovecotCluster, which: &[usize]) -> BTreeMap<String, BTreeSet<usize>> {
    let mut out: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for &i in which {
        if let Ok(entries) = cluster.instance(i).try_who() {
            for e in entries.into_iter().filter(|e| e.protocol == "imap") {
                out.entry(e.user).or_default().insert(i);
            }
        }
    }
    out
}

fn assert_single_backend(p: &BTreeMap<String, BTreeSet<usize>>, when: &str) {
    for (user, on) in p {
        assert!(
            on.len() == 1,
            "{when}: {user} is on backends {on:?} at once"
        );
    }
}

/// What the backends' own logs say about failures: every error, fatal or
/// panic line of every instance, and every line naming one of `users` —
/// Dovecot's side of a login that went wrong.
fn dovecot_failures(cluster: &DovecotCluster, users: &[&str]) -> String {
    let mut out = String::new();
    for instance in cluster.instances() {
        let log = instance.log();
        for line in log.lines().filter(|l| {
            l.contains("Error")
                || l.contains("Fatal")
                || l.contains("Panic")
                || users.iter().any(|u| l.contains(&format!("<{u}>")))
        }) {
            out.push_str(&format!("{}: {line}\n", instance.name()));
        }
    }
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
fn a_killed_backend_moves_its_users_within_the_login() {
    if !require_dovecot() || !require_tool("python3") {
        return;
    }
    let users = 150;
    let mut cluster = DovecotCluster::start(
        3,
        DovecotOptions {
            users: users + 30,
            ..DovecotOptions::default()
        },
    );
    let mailpin = Mailpin::start(&config(&cluster_backends(&cluster)), 1);
    let port = mailpin.listen[0].port().to_string();
    let users_arg = users.to_string();
    let mut churn = InteractiveClient::spawn(
        "imap_churn.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--users",
            &users_arg,
            "--sessions",
            "2",
            "--hold",
            "0.3",
        ],
    );
    let ready = churn
        .wait_for_line("READY", Duration::from_secs(90))
        .expect("churn started");
    assert_eq!(ready, format!("READY {}", users * 2));

    // Who lives on backend 0, the one we will kill?
    let before = placement(&cluster, &[0, 1, 2]);
    assert_single_backend(&before, "before the kill");
    let victims: BTreeSet<String> = before
        .iter()
        .filter(|(_, on)| on.contains(&0))
        .map(|(u, _)| u.clone())
        .collect();
    assert!(
        victims.len() > 10,
        "backend 0 holds users: {}",
        victims.len()
    );

    let killed_at = now();
    cluster.instance_mut(0).kill_hard();
    // Sample the live backends for a while: never a user on two of them.
    let sample_until = Instant::now() + Duration::from_secs(5);
    let mut samples = 0;
    while Instant::now() < sample_until {
        assert_single_backend(&placement(&cluster, &[1, 2]), "after the kill");
        samples += 1;
    }
    assert!(samples >= 5, "sampled doveadm who {samples} times");

    churn.send_line("stop").expect("stop the churn");
    let out = churn.finish(Duration::from_secs(60));
    let summary: Value =
        serde_json::from_str(out.stdout.lines().last().unwrap_or("{}")).expect("JSON summary");

    let ok = &summary["ok"];
    let failed = &summary["failed"];
    for user in &victims {
        let after_kill = ok[user].as_array().map_or(0, |t| {
            t.iter()
                .filter(|x| x.as_f64().unwrap_or(0.0) > killed_at)
                .count()
        });
        if after_kill == 0 {
            // Say everything needed to chase it: the client's view and the
            // director's log lines about this user.
            let log = mailpin.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| l.contains(&format!("user=\"{user}\"")))
                .collect();
            panic!(
                "{user} (on the dead backend) did not log in again after the kill at {killed_at}: \
                 ok {} failed {} closed {}\ndirector:\n{}",
                ok[user],
                failed[user],
                summary["closed"][user],
                lines.join("\n")
            );
        }
    }
    let mut victim_failures = 0;
    for (user, fails) in failed.as_object().into_iter().flatten() {
        let n = fails.as_array().map_or(0, Vec::len);
        if victims.contains(user) {
            victim_failures += n;
        } else {
            panic!(
                "{user}, on a live backend, saw failed logins: {fails}\nbackends:\n{}",
                dovecot_failures(&cluster, &[user])
            );
        }
    }
    if victim_failures > 0 {
        let users: Vec<&str> = failed
            .as_object()
            .into_iter()
            .flatten()
            .map(|(u, _)| u.as_str())
            .collect();
        let log = mailpin.log();
        let director: Vec<&str> = log
            .lines()
            .filter(|l| users.iter().any(|u| l.contains(&format!("user=\"{u}\""))))
            .collect();
        panic!(
            "failover happens inside the login, yet {victim_failures} failed: {failed}\n\
             director:\n{}\nbackends:\n{}",
            director.join("\n"),
            dovecot_failures(&cluster, &users)
        );
    }
    let closed: usize = summary["closed"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(u, _)| victims.contains(*u))
        .map(|(_, t)| t.as_array().map_or(0, Vec::len))
        .sum();
    assert!(closed > 0, "sessions on the dead backend were closed");
    assert!(mailpin
        .wait_for_log(&["backend down"], Duration::from_secs(1))
        .is_some());

    // Restart: moved users stay where they are now, new users arrive.
    let moved_to: BTreeMap<String, BTreeSet<usize>> = placement(&cluster, &[1, 2]);
    cluster.instance_mut(0).restart();
    mailpin
        .wait_for_log(&["backend up"], Duration::from_secs(10))
        .expect("the restarted backend is seen healthy");
    let first_new = (users + 1).to_string();
    let mut held = InteractiveClient::spawn(
        "imap_sessions.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--users",
            "30",
            "--first-user",
            &first_new,
        ],
    );
    held.wait_for_line("READY 30", Duration::from_secs(60))
        .expect("new users log in");
    let victim_list: Vec<&String> = victims.iter().take(20).collect();
    let mut args = vec!["--host", "127.0.0.1", "--port", port.as_str()];
    for v in &victim_list {
        args.extend(["--user", v.as_str()]);
    }
    let mut returning = InteractiveClient::spawn("imap_sessions.py", &args);
    returning
        .wait_for_line("READY", Duration::from_secs(60))
        .expect("moved users log in again");
    let after = placement(&cluster, &[0, 1, 2]);
    assert_single_backend(&after, "after the restart");
    for v in victim_list {
        let on = after.get(v).cloned().unwrap_or_default();
        assert!(
            !on.contains(&0),
            "{v} stays on its new backend {:?}, not back on the restarted one",
            moved_to.get(v)
        );
    }
    let newcomers_on_0 = after
        .iter()
        .filter(|(u, on)| on.contains(&0) && u.as_str() > format!("user{users:04}").as_str())
        .count();
    assert!(
        newcomers_on_0 > 0,
        "new users are assigned to the restarted backend too: {after:?}"
    );
    returning.send_line("done").unwrap();
    held.send_line("done").unwrap();
    assert!(returning.finish(Duration::from_secs(30)).success());
    assert!(held.finish(Duration::from_secs(30)).success());
}

#[test]
fn a_black_holed_backend_is_found_by_timeout() {
    if !require_dovecot() || !require_tool("python3") {
        return;
    }
    let cluster = DovecotCluster::start(2, DovecotOptions::default());
    // Accepts connections in the kernel, never answers a byte.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut backends = cluster_backends(&cluster);
    backends.push((
        "hole".into(),
        "127.0.0.1".into(),
        hole.local_addr().unwrap().port(),
    ));
    let mailpin = Mailpin::start(&config(&backends), 1);
    let down = mailpin
        .wait_for_log(&["backend down", "hole"], Duration::from_secs(10))
        .expect("the black hole is declared down");
    assert!(
        down.contains("no answer within") || down.contains("greeting"),
        "{down}"
    );
    let port = mailpin.listen[0].port().to_string();
    let out = run_client(
        "imap_sessions.py",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--users",
            "10",
            "--hold",
            "0",
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.success(),
        "every login succeeds elsewhere: {}\n{}",
        out.stdout,
        out.stderr
    );
    let (code, table, _) = mailpin.ctl(&["backends"]);
    assert_eq!(code, 0);
    let hole_row = table
        .lines()
        .find(|l| l.starts_with("hole"))
        .expect("hole row");
    assert!(
        hole_row.contains("unhealthy") && hole_row.contains("false"),
        "{hole_row}"
    );
}
