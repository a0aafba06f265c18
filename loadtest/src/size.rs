//! `mailpin-loadtest size`: the sizing run. Runs `idle`, `logins --find`
//! and `relay` against a director on this host (started with the given
//! `server.cores`) and turns them into the figures an operator sizes a
//! director host with: idle sessions per GiB, logins/s per core at a p99
//! bound, relay throughput. Memory per session is measured within the
//! 20000-descriptor cap (two descriptors per proxied session: about 9,900
//! sessions per process) and extrapolated per GiB, as the output says.

use serde_json::{json, Value};

use crate::client::sasl::LoginMech;
use crate::harness::CommonArgs;
use crate::scenario::idle::{self, IdleArgs};
use crate::scenario::lmtp::{self, LmtpArgs};
use crate::scenario::logins::{self, LoadArgs, LoginProtocol, LoginsArgs};
use crate::scenario::relay::{self, RelayArgs};
use crate::scenario::Modes;

/// Options of `size`.
#[derive(Debug, Clone, clap::Args)]
pub struct SizeArgs {
    /// Idle sessions held per transport (at most ~9,900 fit the fd cap).
    #[arg(long, default_value_t = 5000)]
    pub sessions: usize,
    /// The p99 bound for the login rate.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    /// First offered login rate of the search.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds per login step and per relay run.
    #[arg(long, default_value_t = 5.0)]
    pub step: f64,
    #[command(flatten)]
    /// Options every scenario takes.
    pub common: CommonArgs,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Runs the sizing scenarios and prints the sizing lines.
pub fn run(args: &SizeArgs) -> Result<Value, String> {
    let mut common = args.common.clone();
    common.json = None;
    common.plot = None;
    let idle = idle::run(&IdleArgs {
        sessions: args.sessions,
        sessions_per_user: 4,
        mode: Modes::Both,
        concurrency: 64,
        hold: 2.0,
        common: common.clone(),
    })?;
    let logins = logins::run(&LoginsArgs {
        load: LoadArgs {
            protocol: LoginProtocol::Imap,
            rate: args.rate,
            duration: args.step,
            users: 10_000,
            resume: false,
            max_inflight: 4000,
            mech: LoginMech::Plain,
        },
        mode: Modes::Both,
        find: true,
        p99_ms: args.p99_ms,
        common: common.clone(),
    })?;
    let relay = relay::run(&RelayArgs {
        size: 1 << 20,
        conns: 4,
        duration: args.step,
        mode: Modes::Both,
        no_direct: false,
        common: common.clone(),
    })?;
    let lmtp = lmtp::run(&LmtpArgs {
        conns: 4,
        recipients: 3,
        size: 10_000,
        duration: args.step,
        rate: None,
        users: 1000,
        no_direct: false,
        common,
    })?;
    let cores = idle.director_cores;
    println!(
        "\n== sizing: mailpin, server.cores = {}",
        cores.unwrap_or(0)
    );
    let mut out = json!({ "server_cores": cores });
    for m in idle.results["modes"].as_array().into_iter().flatten() {
        let per = f(&m["bytes_per_session"]);
        if per > 0.0 {
            println!(
                "  {:.0} idle {} sessions per GiB ({:.2} KiB each, measured at {} sessions and extrapolated; \
                 the 20000-fd cap allows about 9,900 proxied sessions per process)",
                GIB / per,
                m["mode"].as_str().unwrap_or("?"),
                per / 1024.0,
                m["sessions"]
            );
        }
        out[format!(
            "idle_{}_bytes_per_session",
            m["mode"].as_str().unwrap_or("?")
        )] = json!(per);
    }
    for m in logins.results["modes"].as_array().into_iter().flatten() {
        let best = &m["best"];
        if best.is_null() {
            println!(
                "  {}: no login rate met p99 <= {} ms",
                m["mode"], args.p99_ms
            );
            continue;
        }
        let achieved = f(&best["achieved"]);
        let busy = f(&best["director_cores_busy"]);
        let per_core = if busy > 0.0 { achieved / busy } else { 0.0 };
        println!(
            "  {:.0} {} logins/s at p99 {:.1} ms <= {} ms ({:.2} director cores busy: {:.0} logins/s per core)",
            achieved,
            m["mode"].as_str().unwrap_or("?"),
            f(&best["latency"]["p99_ms"]),
            args.p99_ms,
            busy,
            per_core
        );
        out[format!("logins_{}_per_s", m["mode"].as_str().unwrap_or("?"))] = json!(achieved);
        out[format!("logins_{}_per_core", m["mode"].as_str().unwrap_or("?"))] = json!(per_core);
    }
    for p in relay.results["paths"].as_array().into_iter().flatten() {
        println!(
            "  relay {}: {:.2} GB/s",
            p["path"].as_str().unwrap_or("?"),
            f(&p["bytes_per_s"]) / 1e9
        );
        out[format!("relay_{}_bytes_per_s", p["path"].as_str().unwrap_or("?"))] =
            json!(f(&p["bytes_per_s"]));
    }
    for p in lmtp.results["paths"].as_array().into_iter().flatten() {
        println!(
            "  LMTP {}: {:.0} deliveries/s ({} recipients per transaction, 10 KB messages)",
            p["path"].as_str().unwrap_or("?"),
            f(&p["deliveries_per_s"]),
            3
        );
        out[format!(
            "lmtp_{}_deliveries_per_s",
            p["path"].as_str().unwrap_or("?")
        )] = json!(f(&p["deliveries_per_s"]));
    }
    println!(
        "  invariant violations: idle {}, logins {}, relay {}, lmtp {}; LMTP messages lost: {}",
        idle.violations, logins.violations, relay.violations, lmtp.violations, lmtp.results["lost"]
    );
    if let Some(path) = &args.common.json {
        crate::report::write_json(&out, path)?;
    }
    Ok(out)
}
