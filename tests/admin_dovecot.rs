//! The admin API and `mailpin ctl` against a running director in front of
//! real Dovecot: every command, what it does to real sessions, and every
//! kind of bad input.

mod support;

use std::time::Duration;

use support::mailpin::{http, Mailpin};
use support::{require_dovecot, require_tool, DovecotCluster, DovecotOptions, InteractiveClient};

fn start() -> Option<(DovecotCluster, Mailpin)> {
    if !require_dovecot() || !require_tool("python3") {
        return None;
    }
    let cluster = DovecotCluster::start(2, DovecotOptions::default());
    let mut c = String::from(
        "[server]\ncores = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n",
    );
    for (i, inst) in cluster.instances().iter().enumerate() {
        c.push_str(&format!(
            "[[backend]]\nname = \"b{i}\"\nhost = \"{}\"\nimap = {}\n\n",
            inst.addr(),
            inst.imap_port()
        ));
    }
    let mailpin = Mailpin::start(&c, 1);
    Some((cluster, mailpin))
}

/// Holds one logged-in session of `user` until dropped or finished.
fn hold(m: &Mailpin, user: &str) -> InteractiveClient {
    let port = m.listen[0].port().to_string();
    let mut c = InteractiveClient::spawn(
        "imap_sessions.py",
        &["--host", "127.0.0.1", "--port", &port, "--user", user],
    );
    c.wait_for_line("READY 1", Duration::from_secs(30))
        .expect("logged in");
    c
}

#[test]
fn status_backends_and_user_show_the_state() {
    let Some((cluster, m)) = start() else { return };
    let (code, out, _) = m.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("cores 2") && out.contains("sessions 0"),
        "{out}"
    );
    let (code, json, _) = m.ctl(&["--json", "status"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["pid"], m.pid(), "{json}");
    assert!(v["cluster"].is_null(), "{json}");
    for k in [
        "version",
        "uptime",
        "cores",
        "sessions",
        "state_version",
        "cluster",
        "pid",
    ] {
        assert!(v.get(k).is_some(), "status has {k}: {json}");
    }

    let session = hold(&m, "user0001");
    let on = (0..2)
        .find(|&i| {
            cluster
                .instance(i)
                .wait_for_who("user0001", "imap", 1, Duration::from_secs(5))
                .is_ok()
        })
        .expect("user0001 is on a backend");
    let (code, out, _) = m.ctl(&["user", "user0001"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("-> b{on}")) && out.contains("1 sessions"),
        "{out}"
    );
    let (code, json, _) = m.ctl(&["--json", "backends"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[on]["sessions"], 1, "{json}");
    assert_eq!(rows[on]["users"], 1);
    assert_eq!(rows[on]["health"], "healthy");
    assert_eq!(rows[on]["routable"], true);
    let (_, body) = http(m.admin, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        body.contains(&format!(
            "mailpin_sessions{{backend=\"b{on}\",protocol=\"imap\"}} 1"
        )),
        "{body}"
    );
    assert!(
        body.contains("mailpin_logins_total{outcome=\"ok\"} 1"),
        "{body}"
    );
    drop(session);
}

#[test]
fn kick_move_down_drain_and_flush_act_on_real_sessions() {
    let Some((cluster, m)) = start() else { return };
    let session = hold(&m, "user0002");
    let on = (0..2)
        .find(|&i| {
            cluster
                .instance(i)
                .wait_for_who("user0002", "imap", 1, Duration::from_secs(5))
                .is_ok()
        })
        .unwrap();
    let other = 1 - on;

    // kick: the session is closed, the client sees it end.
    let (code, out, _) = m.ctl(&["kick", "user0002"]);
    assert_eq!(code, 0);
    assert!(out.contains("1 sessions closed"), "{out}");
    cluster
        .instance(on)
        .wait_for_who("user0002", "imap", 0, Duration::from_secs(5))
        .unwrap();
    drop(session);

    // move: sessions closed first, then the next login lands on the target.
    let session = hold(&m, "user0002");
    let (code, out, _) = m.ctl(&["move", "user0002", &format!("b{other}")]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("moved to b{other}")) && out.contains("1 sessions closed"),
        "{out}"
    );
    cluster
        .instance(on)
        .wait_for_who("user0002", "imap", 0, Duration::from_secs(5))
        .unwrap();
    drop(session);
    let session = hold(&m, "user0002");
    cluster
        .instance(other)
        .wait_for_who("user0002", "imap", 1, Duration::from_secs(5))
        .unwrap();

    // drain: current users stay (their new logins still go there).
    let (code, out, _) = m.ctl(&["backend", &format!("b{other}"), "drain"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("admin drain") && out.contains("routable false"),
        "{out}"
    );
    let second = hold(&m, "user0002");
    cluster
        .instance(other)
        .wait_for_who("user0002", "imap", 2, Duration::from_secs(5))
        .unwrap();
    drop(second);

    // down: its sessions are closed and its users go elsewhere.
    let (code, _, _) = m.ctl(&["backend", &format!("b{other}"), "down"]);
    assert_eq!(code, 0);
    cluster
        .instance(other)
        .wait_for_who("user0002", "imap", 0, Duration::from_secs(5))
        .unwrap();
    drop(session);
    let session = hold(&m, "user0002");
    cluster
        .instance(on)
        .wait_for_who("user0002", "imap", 1, Duration::from_secs(5))
        .unwrap();
    drop(session);

    // up again, then flush the backend the user is on now.
    assert_eq!(m.ctl(&["backend", &format!("b{other}"), "up"]).0, 0);
    let session = hold(&m, "user0002");
    let (code, out, _) = m.ctl(&["backend", &format!("b{on}"), "flush"]);
    assert_eq!(code, 0);
    assert!(out.contains("flushed 1 users, closed 1 sessions"), "{out}");
    cluster
        .instance(on)
        .wait_for_who("user0002", "imap", 0, Duration::from_secs(5))
        .unwrap();
    drop(session);
    let (code, _, err) = m.ctl(&["user", "user0002"]);
    assert_eq!(
        code, 1,
        "flushed users have no assignment until they log in again"
    );
    assert!(err.contains("no assignment"), "{err}");
}

#[test]
fn bad_input_gets_404_400_405_and_ctl_exits_non_zero() {
    let Some((_cluster, m)) = start() else { return };
    let (code, _, err) = m.ctl(&["backend", "nope", "down"]);
    assert_eq!(code, 1);
    assert!(err.contains("no backend named \"nope\""), "{err}");
    let (code, _, err) = m.ctl(&["user", "nobody@example.com"]);
    assert_eq!(code, 1);
    assert!(err.contains("no assignment"), "{err}");
    let (code, _, err) = m.ctl(&["move", "someone", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no backend"), "{err}");
    let (code, _, _) = m.ctl(&["backend", "b0", "explode"]);
    assert_ne!(code, 0, "clap refuses an unknown action");
    let (code, _, err) = Mailpin::ctl_at("127.0.0.1:1", &["status"]);
    assert_eq!(code, 2, "unreachable director: {err}");

    let a = m.admin;
    let cases = [
        (
            "POST /backends/b0/explode HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "unknown action",
        ),
        (
            "POST /users/u/move HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            "needs ?to=",
        ),
        (
            "POST /users/u/move?to=nope HTTP/1.1\r\nHost: x\r\n\r\n",
            404,
            "no backend",
        ),
        ("GET /users/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "percent"),
        (
            "GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
            404,
            "no such endpoint",
        ),
        (
            "DELETE /status HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
            "not allowed",
        ),
        (
            "GET /backends/b0/down HTTP/1.1\r\nHost: x\r\n\r\n",
            405,
            "use POST",
        ),
        ("garbage\r\n\r\n", 400, "not an HTTP request"),
    ];
    for (req, status, text) in cases {
        let (got, body) = http(a, req);
        assert_eq!(got, status, "{req:?} -> {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{req:?}: {e}: {body}"));
        assert!(
            v["error"].as_str().unwrap_or("").contains(text),
            "{req:?} -> {body}"
        );
    }
    // The director is still fine afterwards.
    assert_eq!(m.ctl(&["status"]).0, 0);
}
