//! Live IMAP moves (issue 12) with real IDLE clients: Python's imaplib
//! (`tests/clients/imap_idle.py`) and aioimaplib, an independent asyncio
//! client from PyPI (`tests/clients/imap_idle_aio.py`, in the test venv
//! that `scripts/install-test-deps` makes). Each idles in its INBOX
//! through mailpin in front of two real Dovecot backends on one maildir
//! with a master user; its user is moved (`ctl move`, or the admin API),
//! and the client must notice nothing: no byte while the move runs, no
//! BYE, the same connection; a message appended afterwards reaches it as
//! `* n EXISTS`, and `DONE` gets exactly one tagged OK.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::dev_director::{require_cached, test_cache};
use support::dovecot::DEFAULT_PASSWORD;
use support::mailpin::{http, Mailpin};
use support::tempdir::TempDir;
use support::tools::{on_ci, skip_or_fail_on};
use support::wire::LineClient;
use support::{require_dovecot, require_tool, DovecotCluster, DovecotOptions, InteractiveClient};

const MASTER: &str = "mailpin";
const MASTER_PASSWORD: &str = "master-secret";
const STEP: Duration = Duration::from_secs(15);

/// How the user is moved.
#[derive(Clone, Copy)]
enum Mover {
    /// `mailpin ctl move USER BACKEND`.
    Ctl,
    /// `POST /users/USER/move?to=BACKEND`.
    AdminApi,
}

/// Two Dovecot backends with a master user and mailpin in front.
struct World {
    cluster: DovecotCluster,
    mailpin: Mailpin,
    _dir: TempDir,
}

impl World {
    fn start() -> World {
        let cluster = DovecotCluster::start(
            2,
            DovecotOptions {
                master_user: Some((MASTER.into(), MASTER_PASSWORD.into())),
                // Dovecot's "* OK Still here" comes at a time hashed from
                // the user within this interval (default 2 minutes): keep
                // it out of a check that no byte arrives.
                extra_config: "imap_idle_notify_interval = 30 mins\n".into(),
                ..DovecotOptions::default()
            },
        );
        let dir = TempDir::new().unwrap();
        let pass = dir.path().join("master.pass");
        std::fs::write(&pass, format!("{MASTER_PASSWORD}\n")).unwrap();
        let mut config = format!(
            "[server]\ncores = 1\n\n[health]\ninterval = \"60s\"\n\n\
             [backends]\nmaster_user = \"{MASTER}\"\nmaster_password_file = {pass:?}\n\n\
             [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n"
        );
        for (i, inst) in cluster.instances().iter().enumerate() {
            config.push_str(&format!(
                "[[backend]]\nname = \"b{i}\"\nhost = \"{}\"\nimap = {}\n\n",
                inst.addr(),
                inst.imap_port()
            ));
        }
        let mailpin = Mailpin::start(&config, 1);
        World {
            cluster,
            mailpin,
            _dir: dir,
        }
    }

    fn imap(&self) -> SocketAddr {
        self.mailpin.listen[0]
    }

    /// Waits until `user` has an IMAP session on exactly one backend and
    /// returns it.
    fn backend_of(&self, user: &str) -> usize {
        let until = Instant::now() + STEP;
        loop {
            let on: Vec<usize> = (0..2)
                .filter(|i| self.cluster.instance(*i).who_count(user, "imap") > 0)
                .collect();
            if on.len() == 1 {
                return on[0];
            }
            assert!(Instant::now() < until, "{user} is on {on:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn move_user(&self, user: &str, to: usize, how: Mover) {
        let backend = format!("b{to}");
        match how {
            Mover::Ctl => {
                let (code, out, err) = self.mailpin.ctl(&["move", user, &backend]);
                assert_eq!(code, 0, "ctl move: {out}{err}");
            }
            Mover::AdminApi => {
                let (code, body) = http(
                    self.mailpin.admin,
                    &format!("POST /users/{user}/move?to={backend} HTTP/1.1\r\nHost: x\r\n\r\n"),
                );
                assert_eq!(code, 200, "{body}");
            }
        }
    }

    /// `mailpin_live_moves_total` for `result` (all reasons).
    fn live_moves(&self, result: &str) -> u64 {
        let (_, body) = http(
            self.mailpin.admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        let prefix = format!("mailpin_live_moves_total{{result=\"{result}\"");
        body.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until `user` is on backend `to` only and the director
    /// counted one more live move than `moved_before`.
    fn wait_moved(&self, user: &str, to: usize, moved_before: u64) {
        let until = Instant::now() + STEP;
        loop {
            let here = self.cluster.instance(to).who_count(user, "imap");
            let there = self.cluster.instance(1 - to).who_count(user, "imap");
            if here == 1 && there == 0 && self.live_moves("moved") == moved_before + 1 {
                return;
            }
            assert!(
                Instant::now() < until,
                "{user}: {here} on b{to}, {there} on the other, moves {}\n{}",
                self.live_moves("moved"),
                self.mailpin.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Appends a message to `user`'s INBOX through its own short session
    /// (through mailpin: on the user's new backend).
    fn append(&self, user: &str) {
        let mut c = LineClient::connect(self.imap()).expect("connect");
        assert!(c.read_line().unwrap().starts_with("* OK"));
        c.send_line(&format!("l LOGIN {user} {DEFAULT_PASSWORD}"))
            .unwrap();
        expect_tagged(&mut c, "l");
        let msg = "Subject: after the move\r\n\r\nhello\r\n";
        c.send_line(&format!("a APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
            .unwrap();
        expect_tagged(&mut c, "a");
        c.send_line("z LOGOUT").unwrap();
    }
}

fn expect_tagged(c: &mut LineClient, tag: &str) {
    loop {
        let line = c.read_line().expect("a line");
        if let Some(rest) = line.strip_prefix(&format!("{tag} ")) {
            assert!(rest.starts_with("OK"), "{line}");
            return;
        }
    }
}

/// The test venv's python with aioimaplib importable, or None (skipped
/// locally; on CI the test fails).
fn venv_with_aioimaplib() -> Option<PathBuf> {
    let python = require_cached("venv/bin/python")?;
    let ok = Command::new(&python)
        .args(["-c", "import aioimaplib"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    skip_or_fail_on(
        &format!(
            "aioimaplib not installed in {}",
            test_cache().join("venv").display()
        ),
        on_ci(),
    );
    None
}

/// The whole check with one client: idle, move, notice nothing, see the
/// next message, DONE → one tagged OK.
fn idle_client_follows_a_move(python: Option<PathBuf>, script: &str, user: &str, how: Mover) {
    let world = World::start();
    let host = world.imap().ip().to_string();
    let port = world.imap().port().to_string();
    let args = [
        "--host",
        host.as_str(),
        "--port",
        port.as_str(),
        "--user",
        user,
        "--password",
        DEFAULT_PASSWORD,
    ];
    let mut client = match &python {
        Some(p) => InteractiveClient::spawn_with(p, script, &args),
        None => InteractiveClient::spawn(script, &args),
    };
    client
        .wait_for_line("IDLING", STEP)
        .expect("the client idles");
    let from = world.backend_of(user);
    let to = 1 - from;
    let moved = world.live_moves("moved");
    let ended = world.live_moves("ended");
    world.move_user(user, to, how);
    world.wait_moved(user, to, moved);
    assert_eq!(world.live_moves("ended"), ended, "no session was ended");
    client.send_line("QUIET").unwrap();
    let quiet = client.wait_for_line("", STEP).expect("an answer to QUIET");
    assert_eq!(
        quiet, "QUIET",
        "the client received something during the move"
    );
    world.append(user);
    client.send_line("EXISTS").unwrap();
    let exists = client.wait_for_line("", STEP).expect("an answer to EXISTS");
    assert_eq!(exists, "EXISTS 1", "the message appended after the move");
    client.send_line("DONE").unwrap();
    let done = client
        .wait_for_line("DONE", STEP)
        .expect("an answer to DONE");
    assert_eq!(done, "DONE OK extra=0", "exactly one tagged OK for IDLE");
    let out = client.finish(STEP);
    assert!(out.success(), "{out:?}");
    let summary: serde_json::Value =
        serde_json::from_str(out.summary_line().expect("a summary")).expect("JSON");
    assert_eq!(summary["bye"], false, "{summary}");
    assert_eq!(
        summary["closed"],
        false,
        "{summary}\n{}\n{}",
        out.stderr,
        world.mailpin.log()
    );
    assert_eq!(summary["same_connection"], true, "{summary}");
    assert_eq!(world.live_moves("ended"), ended);
}

#[test]
fn imaplib_idle_client_notices_nothing_of_a_ctl_move() {
    if !require_dovecot() || !require_tool("python3") {
        return;
    }
    idle_client_follows_a_move(None, "imap_idle.py", "user0001", Mover::Ctl);
}

#[test]
fn aioimaplib_idle_client_notices_nothing_of_an_admin_api_move() {
    if !require_dovecot() {
        return;
    }
    let Some(python) = venv_with_aioimaplib() else {
        return;
    };
    idle_client_follows_a_move(
        Some(python),
        "imap_idle_aio.py",
        "user0002",
        Mover::AdminApi,
    );
}
