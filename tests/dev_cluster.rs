//! `mailpin run --dev --cluster`: the local 3-member etcd and two
//! directors come up, register and agree on a leader, both serve dev
//! logins, and on SIGTERM everything it started — the etcd members
//! included — is gone. Without etcd on PATH it refuses with a clear
//! error. Uses dev mode's fixed ports (10143…, 11143…, 9120/9121,
//! 12379…), which no other test takes.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::dev_director::run_mailpin;
use support::etcd::require_etcd;
use support::procs::{send_signal, wait_gone};
use support::LineClient;

#[test]
fn dev_cluster_runs_two_directors_on_a_local_etcd_and_stops_it_all() {
    if !require_etcd() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_mailpin"))
        .args(["run", "--dev", "--cluster"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mailpin");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The banner names the etcd members' PIDs and data directory.
    let deadline = Instant::now() + Duration::from_secs(40);
    let banner = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("the cluster banner");
        if line.contains("cluster mode: etcd members") {
            break line;
        }
    };
    let pids: Vec<u32> = banner
        .split("PIDs [")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .map(|list| list.split(", ").filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    assert_eq!(pids.len(), 3, "{banner}");
    let data_dir = banner
        .split("data in ")
        .nth(1)
        .map(|r| r.trim_end_matches(')').to_owned())
        .expect("data dir");

    let t = Instant::now();
    let view = loop {
        let (code, out, _) = run_mailpin(
            &["ctl", "--admin", "127.0.0.1:9121", "--json", "cluster"],
            &[],
        );
        if code == 0 {
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            if v["directors"].as_array().map(Vec::len) == Some(2) && v["leader"].is_string() {
                break v;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no cluster of two");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(view["name"], "d2");
    for port in [10143, 11143] {
        let mut c = LineClient::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
        c.read_line().unwrap();
        let r = c.imap("LOGIN alice dev").unwrap();
        assert!(r.is_ok(), "port {port}: {}", r.status);
    }

    send_signal(child.id(), libc::SIGTERM);
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "mailpin did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        wait_gone(&pids, Duration::from_secs(5)).is_empty(),
        "etcd left running"
    );
    assert!(
        !std::path::Path::new(&data_dir).exists(),
        "{data_dir} left behind"
    );
}

#[test]
fn dev_cluster_without_etcd_says_what_is_missing() {
    let (code, _, err) = run_mailpin(&["run", "--dev", "--cluster"], &[("PATH", "/nonexistent")]);
    assert_eq!(code, 1);
    assert!(err.contains("needs etcd on PATH"), "{err}");
}
