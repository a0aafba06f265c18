//! CI smoke: every scenario for a second or two at tiny scale against a
//! director the harness starts, checking the JSON report shows work done
//! and no invariant violation. Figures are never asserted here.

use std::path::PathBuf;
use std::process::Command;

/// A fresh path for a scenario's JSON report.
fn report_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "mailpin-loadtest-smoke-{}-{name}.json",
        std::process::id()
    ))
}

/// Runs `mailpin-loadtest SCENARIO ARGS --json FILE` and returns the report.
fn run(scenario: &str, args: &[&str]) -> serde_json::Value {
    let path = report_path(scenario);
    let output = Command::new(env!("CARGO_BIN_EXE_mailpin-loadtest"))
        .arg(scenario)
        .args(args)
        .arg("--json")
        .arg(&path)
        .output()
        .expect("run mailpin-loadtest");
    assert!(
        output.status.success(),
        "{scenario} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("JSON report written");
    let _ = std::fs::remove_file(&path);
    serde_json::from_str(&text).expect("valid JSON report")
}

/// The checks every report must pass.
fn assert_healthy(report: &serde_json::Value) {
    assert_eq!(report["violations"], 0, "violations in {report}");
    assert!(
        report["work"].as_u64().unwrap_or(0) > 0,
        "no work in {report}"
    );
    assert!(
        !report["timeline"]["samples"]
            .as_array()
            .map(Vec::is_empty)
            .unwrap_or(true),
        "empty timeline"
    );
}

#[test]
fn idle_holds_sessions_plain_and_tls() {
    let r = run("idle", &["--sessions", "40", "--hold", "0.2"]);
    assert_healthy(&r);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["results"]["modes"][1]["sessions"], 40);
}

#[test]
fn logins_complete_at_a_low_rate() {
    let r = run("logins", &["--rate", "50", "--duration", "1"]);
    assert_healthy(&r);
    assert_eq!(r["errors"], 0);
}

#[test]
fn logins_use_starttls_and_resume_tls_sessions() {
    let r = run(
        "logins",
        &[
            "--rate",
            "40",
            "--duration",
            "1",
            "--mode",
            "all",
            "--resume",
        ],
    );
    assert_healthy(&r);
    assert_eq!(r["errors"], 0);
    let modes = r["results"]["modes"].as_array().expect("modes");
    let names: Vec<_> = modes.iter().map(|m| m["mode"].clone()).collect();
    assert_eq!(names, ["plain", "STARTTLS", "TLS"]);
    for m in &modes[1..] {
        let step = &m["step"];
        let handshakes = step["tls_handshakes"].as_u64().unwrap_or(0);
        assert_eq!(handshakes, step["ok"].as_u64().unwrap_or(u64::MAX), "{m}");
        // Only a thread's first handshake (and those racing it) is full.
        assert!(
            step["tls_resumed"].as_u64().unwrap_or(0) * 2 > handshakes,
            "few resumed: {m}"
        );
    }
}

#[test]
fn pop3_logins_complete_plain_stls_and_tls() {
    let r = run(
        "logins",
        &[
            "--protocol",
            "pop3",
            "--rate",
            "40",
            "--duration",
            "1",
            "--mode",
            "all",
        ],
    );
    assert_healthy(&r);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["results"]["protocol"], "pop3");
    assert_eq!(r["results"]["modes"].as_array().map(Vec::len), Some(3));
    for m in r["results"]["modes"].as_array().expect("modes") {
        assert_eq!(m["step"]["tls_resumed"], 0, "no --resume: {m}");
    }
}

#[test]
fn oauthbearer_and_scram_logins_relay_through_the_director() {
    for (protocol, mech) in [
        ("imap", "oauthbearer"),
        ("imap", "scram-sha-256"),
        ("pop3", "scram-sha-256"),
    ] {
        let r = run(
            "logins",
            &[
                "--protocol",
                protocol,
                "--mech",
                mech,
                "--rate",
                "40",
                "--duration",
                "1",
            ],
        );
        assert_healthy(&r);
        assert_eq!(r["errors"], 0, "{protocol} {mech}: {r}");
        for m in r["results"]["modes"].as_array().expect("modes") {
            assert_eq!(m["step"]["mech"], mech, "{m}");
            assert!(m["step"]["ok"].as_u64().unwrap_or(0) > 0, "{m}");
        }
    }
}

#[test]
fn idle_holds_starttls_sessions() {
    let r = run(
        "idle",
        &["--sessions", "20", "--hold", "0.2", "--mode", "starttls"],
    );
    assert_healthy(&r);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["results"]["modes"][0]["mode"], "STARTTLS");
    assert_eq!(r["results"]["modes"][0]["sessions"], 20);
}

#[test]
fn relay_moves_message_bodies() {
    let r = run(
        "relay",
        &["--size", "100000", "--conns", "2", "--duration", "0.5"],
    );
    assert_healthy(&r);
    for path in r["results"]["paths"].as_array().expect("paths") {
        assert!(path["bytes_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{path}");
    }
}

#[test]
fn lmtp_delivers_everything_it_acknowledges() {
    let r = run(
        "lmtp",
        &[
            "--duration",
            "1",
            "--conns",
            "2",
            "--recipients",
            "3",
            "--users",
            "30",
        ],
    );
    assert_healthy(&r);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["results"]["lost"], 0);
    assert_eq!(r["results"]["unacknowledged"], 0);
    let paths = r["results"]["paths"].as_array().expect("paths");
    assert_eq!(paths.len(), 2, "through the director and direct");
    for path in paths {
        assert!(path["deliveries"].as_u64().unwrap_or(0) > 0, "{path}");
        assert_eq!(path["stored"], path["deliveries"], "{path}");
        assert_eq!(path["failed_recipients"], 0, "{path}");
    }
}

#[test]
fn lmtp_open_loop_meets_its_schedule() {
    let r = run(
        "lmtp",
        &[
            "--duration",
            "1",
            "--rate",
            "50",
            "--recipients",
            "2",
            "--no-direct",
        ],
    );
    assert_healthy(&r);
    assert_eq!(r["errors"], 0);
    assert_eq!(r["results"]["lost"], 0);
    assert_eq!(r["results"]["paths"][0]["offered"], 50.0);
}

#[test]
fn mixed_runs_a_short_day() {
    let r = run(
        "mixed",
        &[
            "--users",
            "10",
            "--duration",
            "1.5",
            "--think-ms",
            "100",
            "--pop3-share",
            "0.5",
        ],
    );
    assert_healthy(&r);
    let results = &r["results"];
    assert!(
        results["pop3_sessions"].as_u64().unwrap_or(0) > 0,
        "{results}"
    );
    assert!(
        results["imap_sessions"].as_u64().unwrap_or(0) > 0,
        "{results}"
    );
    let deliveries = &results["deliveries"];
    assert_eq!(deliveries["via_lmtp"], true);
    assert!(
        deliveries["acknowledged"].as_u64().unwrap_or(0) > 0,
        "{deliveries}"
    );
    assert_eq!(deliveries["lost"], 0, "{deliveries}");
    assert_eq!(deliveries["unacknowledged"], 0, "{deliveries}");
}

#[test]
fn failover_kills_a_backend_without_violations() {
    let r = run("failover", &["--rate", "50", "--duration", "2"]);
    assert_healthy(&r);
    assert_eq!(r["results"]["killed"], "sim2");
    assert_eq!(r["timeline"]["marks"][0]["label"], "kill sim2");
}

#[test]
fn size_reports_every_figure_it_sizes_with() {
    let r = run(
        "size",
        &["--sessions", "20", "--step", "0.5", "--rate", "100"],
    );
    for key in [
        "idle_plain_bytes_per_session",
        "idle_TLS_bytes_per_session",
        "logins_plain_per_s",
        "logins_TLS_per_s",
        "relay_direct_bytes_per_s",
        "lmtp_mailpin_deliveries_per_s",
        "lmtp_direct_deliveries_per_s",
    ] {
        assert!(
            r[key].as_f64().unwrap_or(0.0) > 0.0,
            "size report lacks {key}: {r}"
        );
    }
    assert_eq!(r["server_cores"], 1);
}

#[test]
fn hostile_attackers_do_not_hurt_idle_sessions() {
    // Every attack kind. The bound on an answer is 3 s here, not the
    // scenario's 1 s: this is a debug build on a shared CI machine, where
    // whole-machine stalls of over a second have been seen (PERF.md,
    // "Hostile clients", run 1). A closed session fails it at any bound.
    let r = run(
        "hostile",
        &[
            "--hurt-ms",
            "3000",
            "--idle",
            "20",
            "--logins-rate",
            "10",
            "--attackers",
            "10",
            "--baseline",
            "1",
            "--duration",
            "2",
            "--probe-every",
            "0.5",
        ],
    );
    assert_healthy(&r);
    let results = &r["results"];
    assert_eq!(results["established"], 20, "{results}");
    assert_eq!(results["attack"]["sessions_lost"], 0, "{results}");
    assert_eq!(results["sessions_hurt"], 0, "real sessions hurt: {results}");
    assert_eq!(results["baseline"]["sessions_hurt"], 0, "{results}");
    assert_eq!(results["survived"], 20, "{results}");
    assert!(
        results["attack"]["probes"].as_u64().unwrap_or(0) >= 20,
        "{results}"
    );
    for phase in ["baseline", "attack"] {
        assert!(
            results[phase]["logins_ok"].as_u64().unwrap_or(0) > 0,
            "{phase}: {results}"
        );
    }
    for kind in ["garbage", "slowloris", "literal", "tls-on-plain"] {
        let k = &results["attacks"][kind];
        assert!(k["attempted"].as_u64().unwrap_or(0) > 0, "{kind}: {k}");
    }
    assert!(
        results["badlogin"]["refused"].as_u64().unwrap_or(0) > 0,
        "{results}"
    );
    assert!(
        results["director"]["rss_peak_bytes"].as_u64().unwrap_or(0) > 0,
        "{results}"
    );
}

#[test]
fn hostile_runs_the_director_with_the_given_config() {
    let config = std::env::temp_dir().join(format!(
        "mailpin-loadtest-smoke-{}-hostile.toml",
        std::process::id()
    ));
    std::fs::write(&config, "[server]\nprelogin_timeout = \"1s\"\n").expect("config written");
    let r = run(
        "hostile",
        &[
            "--idle",
            "5",
            "--logins-rate",
            "5",
            "--attackers",
            "2",
            "--kinds",
            "slowloris",
            "--baseline",
            "0.5",
            "--duration",
            "3",
            "--director-config",
            config.to_str().expect("UTF-8 path"),
        ],
    );
    let _ = std::fs::remove_file(&config);
    assert_healthy(&r);
    let slowloris = &r["results"]["attacks"]["slowloris"];
    // Only the 1 s pre-login timeout of the file closes a slowloris
    // connection: the default is 60 s.
    assert!(
        slowloris["closed_by_director"].as_u64().unwrap_or(0) > 0,
        "{slowloris}"
    );
    let p50 = slowloris["time_to_close"]["p50_ms"].as_f64().unwrap_or(0.0);
    assert!((900.0..2500.0).contains(&p50), "{slowloris}");
    assert_eq!(r["results"]["sessions_hurt"], 0, "{r}");
}

/// Whether real Dovecot backends can run here (root, dovecot and doveadm
/// installed); on CI (`CI=true`) their absence fails the test.
fn dovecot_available() -> bool {
    let found = |tool: &str| {
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/sbin"]
            .iter()
            .any(|dir| std::path::Path::new(dir).join(tool).exists())
    };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && found("dovecot") && found("doveadm") {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| matches!(v.trim(), "true" | "1" | "yes"));
    assert!(
        !ci,
        "live-move needs root, dovecot and doveadm on CI: run scripts/install-test-deps"
    );
    eprintln!("skipping: live-move needs root, dovecot and doveadm");
    false
}

#[test]
fn live_move_moves_every_idle_session_through_a_rolling_restart() {
    if !dovecot_available() {
        return;
    }
    let r = run("live-move", &["--sessions", "40", "--rolling"]);
    assert_eq!(r["violations"], 0, "violations in {r}");
    assert_eq!(r["errors"], 0, "{r}");
    let results = &r["results"];
    assert_eq!(results["opened"], 40, "{results}");
    assert_eq!(results["ended"], 0, "{results}");
    assert!(results["moved"].as_u64().unwrap_or(0) >= 40, "{results}");
    assert_eq!(results["final"]["done_ok"], 40, "{results}");
    assert_eq!(results["final"]["saw_delivery"], 40, "{results}");
}

/// True when `etcd` is on PATH. Without it the `cluster` smoke test fails
/// on CI (`CI=true`) and is skipped elsewhere.
fn etcd_present_or_skip() -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join("etcd").is_file()))
        .unwrap_or(false);
    let on_ci = std::env::var("CI")
        .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
        .unwrap_or(false);
    if !found && on_ci {
        panic!("etcd is not installed and CI=true: apt-get install etcd-server etcd-client");
    }
    if !found {
        eprintln!("skipped: etcd is not installed");
    }
    found
}

#[test]
fn cluster_measures_members_against_a_lone_director() {
    if !etcd_present_or_skip() {
        return;
    }
    // Own etcd ports per test process, clear of `run --dev --cluster`'s
    // (12379...) and below the kernel's ephemeral range (32768...), where
    // an outgoing connection could hold one.
    let port = (23_000 + (std::process::id() % 360) * 25).to_string();
    let r = run(
        "cluster",
        &[
            "--rate",
            "20",
            "--duration",
            "1",
            "--users",
            "40",
            "--latency-rate",
            "20",
            "--claim-rate",
            "50",
            "--moves",
            "2",
            "--held",
            "4",
            "--etcd-port",
            &port,
        ],
    );
    assert_eq!(r["violations"], 0, "violations in {r}");
    let results = &r["results"];
    for step in ["alone", "cluster_of_2", "cluster_first", "cluster_repeat"] {
        assert!(
            results[step]["ok"].as_u64().unwrap_or(0) > 0,
            "no logins in {step}: {results}"
        );
    }
    // Every login of distinct new users was a claim in etcd.
    let claims = &results["claims"];
    assert!(
        claims["claims"].as_f64().unwrap_or(0.0) >= claims["step"]["ok"].as_f64().unwrap_or(1.0)
            && claims["created"].as_f64().unwrap_or(0.0) > 0.0,
        "the new users were not assigned through etcd: {claims}"
    );
    assert_eq!(results["moves"]["failed"], 0, "{results}");
    assert_eq!(results["moves"]["closed"]["count"], 2, "{results}");
    let death = &results["director_death"];
    assert_eq!(death["failed"], 0, "{death}");
    assert_eq!(death["moved"], 0, "a director's death moved users: {death}");
    assert_eq!(death["back_in"]["count"], 4, "{death}");
    // A backend's death: its users placed elsewhere by the directors'
    // health checks and majority verdict alone, through either director.
    for side in ["same_director", "other_director"] {
        let t = &results["backend_death"][side];
        assert_eq!(t["failed"], 0, "{t}");
        assert_eq!(t["moved"], t["back_in"]["count"], "{t}");
    }
}
