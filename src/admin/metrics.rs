//! `/metrics`: the Prometheus text exposition format, written by hand.
//!
//! The numbers are per-core `Cell` counters summed at scrape time; the
//! well-known client crates are built around shared atomic metric objects
//! updated in place, which is exactly the contention the cores avoid, so a
//! crate would only add a translation layer. The format itself is small:
//! `# HELP`, `# TYPE`, and `name{label="value"} number` lines, with `\`,
//! `"` and newlines escaped in label values.

use std::fmt::Write;

use crate::config::Protocol;
use crate::control::state::Control;
use crate::limits::Limit;
use crate::plane::stats::{LiveMoveOutcome, LoginOutcome, PreloginLimit, LATENCY_BUCKETS};
use crate::route::backends::{BackendHealth, BackendId, BackendSet, Health};

/// Escapes a label value.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP mailpin_{name} {help}");
    let _ = writeln!(out, "# TYPE mailpin_{name} {kind}");
}

/// Renders every metric.
pub async fn render_metrics(control: &Control) -> String {
    let stats = control.stats().await;
    let set = control.backends();
    let mut out = String::with_capacity(4096);

    header(
        &mut out,
        "sessions",
        "gauge",
        "Logged-in sessions by backend and protocol.",
    );
    for b in set.configured() {
        for p in Protocol::ALL {
            let n: u64 = stats
                .iter()
                .filter_map(|s| s.sessions.get(usize::from(b.id)))
                .map(|per| u64::from(per[p.index()]))
                .sum();
            let _ = writeln!(
                out,
                "mailpin_sessions{{backend=\"{}\",protocol=\"{}\"}} {n}",
                escape_label(&b.name),
                p.as_str()
            );
        }
    }
    header(
        &mut out,
        "assignments",
        "gauge",
        "Users assigned to each backend.",
    );
    for b in set.configured() {
        let n: u64 = stats
            .iter()
            .filter_map(|s| s.users.get(usize::from(b.id)))
            .map(|n| u64::from(*n))
            .sum();
        let _ = writeln!(
            out,
            "mailpin_assignments{{backend=\"{}\"}} {n}",
            escape_label(&b.name)
        );
    }
    header(
        &mut out,
        "backend_routable",
        "gauge",
        "1 if the backend takes new users.",
    );
    for b in set.configured() {
        let _ = writeln!(
            out,
            "mailpin_backend_routable{{backend=\"{}\"}} {}",
            escape_label(&b.name),
            u8::from(b.routable())
        );
    }
    header(
        &mut out,
        "backend_healthy",
        "gauge",
        "1 if every checked protocol port of the backend passes its health checks.",
    );
    for b in set.configured() {
        let up = u8::from(b.health() == BackendHealth::Healthy);
        let _ = writeln!(
            out,
            "mailpin_backend_healthy{{backend=\"{}\"}} {up}",
            escape_label(&b.name)
        );
    }
    protocol_health(&mut out, control, &set);
    header(
        &mut out,
        "connections",
        "gauge",
        "Open client connections per core.",
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "mailpin_connections{{core=\"{}\"}} {}",
            s.core, s.connections
        );
    }
    header(
        &mut out,
        "connections_accepted_total",
        "counter",
        "Client connections accepted per core.",
    );
    for s in &stats {
        let _ = writeln!(
            out,
            "mailpin_connections_accepted_total{{core=\"{}\"}} {}",
            s.core, s.accepted
        );
    }
    header(&mut out, "logins_total", "counter", "Logins by outcome.");
    for (i, o) in LoginOutcome::ALL.iter().enumerate() {
        let n: u64 = stats.iter().map(|s| s.logins[i]).sum();
        let _ = writeln!(
            out,
            "mailpin_logins_total{{outcome=\"{}\"}} {n}",
            o.as_str()
        );
    }
    header(
        &mut out,
        "limit_hits_total",
        "counter",
        "Connections and logins refused or delayed by a [limits] limit.",
    );
    let shared = control.shared();
    let limits = &shared.limits;
    for (limit, n) in Limit::ALL.iter().zip(limits.hits()) {
        let _ = writeln!(
            out,
            "mailpin_limit_hits_total{{limit=\"{}\"}} {n}",
            limit.as_str()
        );
    }
    header(
        &mut out,
        "prelogin_connections",
        "gauge",
        "Connections not logged in yet.",
    );
    let _ = writeln!(
        out,
        "mailpin_prelogin_connections {}",
        limits.prelogin.total()
    );
    header(
        &mut out,
        "login_duration_seconds",
        "histogram",
        "Time from a login command to the backend's answer.",
    );
    let mut cumulative = 0u64;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += stats
            .iter()
            .map(|s| s.latency.get(i).copied().unwrap_or(0))
            .sum::<u64>();
        let _ = writeln!(
            out,
            "mailpin_login_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += stats
        .iter()
        .map(|s| s.latency.get(LATENCY_BUCKETS.len()).copied().unwrap_or(0))
        .sum::<u64>();
    let _ = writeln!(
        out,
        "mailpin_login_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let sum_us: u64 = stats.iter().map(|s| s.latency_sum_us).sum();
    let _ = writeln!(
        out,
        "mailpin_login_duration_seconds_sum {}",
        sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "mailpin_login_duration_seconds_count {cumulative}");
    header(
        &mut out,
        "tls_handshakes_total",
        "counter",
        "TLS handshakes by result.",
    );
    let ok: u64 = stats.iter().map(|s| s.tls_ok).sum();
    let failed: u64 = stats.iter().map(|s| s.tls_failed).sum();
    let _ = writeln!(out, "mailpin_tls_handshakes_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(
        out,
        "mailpin_tls_handshakes_total{{result=\"failed\"}} {failed}"
    );
    header(
        &mut out,
        "prelogin_limit_total",
        "counter",
        "Clients that ran into a pre-login limit (server.max_line, [limits]), by protocol and limit.",
    );
    for p in Protocol::ALL {
        for limit in PreloginLimit::ALL {
            let n: u64 = stats
                .iter()
                .map(|s| s.prelogin_limits[p.index()][limit.index()])
                .sum();
            let _ = writeln!(
                out,
                "mailpin_prelogin_limit_total{{protocol=\"{}\",limit=\"{}\"}} {n}",
                p.as_str(),
                limit.as_str()
            );
        }
    }
    // Live IMAP moves (issue 12).
    header(
        &mut out,
        "live_moves_total",
        "counter",
        "IMAP sessions of moving users: moved live, or ended and why.",
    );
    for outcome in LiveMoveOutcome::ALL {
        let i = LiveMoveOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        let n: u64 = stats.iter().map(|s| s.live_moves[i]).sum();
        let _ = writeln!(
            out,
            "mailpin_live_moves_total{{result=\"{}\",reason=\"{}\"}} {n}",
            outcome.result(),
            outcome.reason()
        );
    }
    header(
        &mut out,
        "kicks_total",
        "counter",
        "Sessions closed by the director (admin kicks, moves, backends going down).",
    );
    let _ = writeln!(
        out,
        "mailpin_kicks_total {}",
        stats.iter().map(|s| s.kicks).sum::<u64>()
    );
    header(
        &mut out,
        "moves_total",
        "counter",
        "Users moved by admin move or flush.",
    );
    let _ = writeln!(out, "mailpin_moves_total {}", control.moves());
    header(
        &mut out,
        "reloads_total",
        "counter",
        "Configuration reloads by result: ok, or failed (the old configuration stayed).",
    );
    let (ok, failed) = control.reload_counts();
    let _ = writeln!(out, "mailpin_reloads_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(out, "mailpin_reloads_total{{result=\"failed\"}} {failed}");

    header(
        &mut out,
        "upgrades_total",
        "counter",
        "Binary upgrades by result: ok (handed over to a new process), or failed (this process serves on).",
    );
    let (ok, failed) = crate::plane::handover::upgrade_counts();
    let _ = writeln!(out, "mailpin_upgrades_total{{result=\"ok\"}} {ok}");
    let _ = writeln!(out, "mailpin_upgrades_total{{result=\"failed\"}} {failed}");
    header(
        &mut out,
        "health_flips_total",
        "counter",
        "Backend health state changes.",
    );
    let _ = writeln!(out, "mailpin_health_flips_total {}", control.health_flips());
    header(
        &mut out,
        "state_version",
        "gauge",
        "Version of the backend state.",
    );
    let _ = writeln!(out, "mailpin_state_version {}", set.version);
    if let Some(link) = control.shared().cluster.as_ref() {
        cluster_metrics(&mut out, link);
    }
    out
}

/// The cluster mode series (only for a director in a cluster).
fn cluster_metrics(out: &mut String, link: &crate::cluster_link::ClusterLink) {
    use crate::cluster_link::ClusterCounters;
    let view = link.view();
    let c = &link.counters;
    let series: [(&str, &str, &str, u64); 10] = [
        (
            "cluster_etcd_connected",
            "gauge",
            "1 if this director holds a lease and its last keepalive was answered.",
            u64::from(view.etcd.connected),
        ),
        (
            "cluster_fenced",
            "gauge",
            "1 while this director is fenced (cut off from etcd: serves nothing).",
            u64::from(link.fence.is_fenced()),
        ),
        (
            "cluster_leader",
            "gauge",
            "1 if this director is the cluster's leader.",
            u64::from(view.is_leader()),
        ),
        (
            "cluster_directors",
            "gauge",
            "Directors registered in etcd, this one included.",
            view.directors.len() as u64,
        ),
        (
            "cluster_lease_expiries_total",
            "counter",
            "Leases of this director lost (expired or unconfirmed for a TTL) and granted anew.",
            ClusterCounters::read(&c.lease_expiries),
        ),
        (
            "cluster_fences_total",
            "counter",
            "Times this director fenced itself.",
            ClusterCounters::read(&c.fences),
        ),
        (
            "cluster_fenced_sessions_total",
            "counter",
            "Sessions closed by fencing.",
            ClusterCounters::read(&c.fenced_sessions),
        ),
        (
            "cluster_watch_restarts_total",
            "counter",
            "Watches re-created (silent, broken or cancelled).",
            ClusterCounters::read(&c.watch_restarts),
        ),
        (
            "cluster_watch_resyncs_total",
            "counter",
            "Full reads after the watch's revision was compacted away.",
            ClusterCounters::read(&c.resyncs),
        ),
        (
            "cluster_degraded_backends",
            "gauge",
            "Backends this director's own checks see down while the cluster's majority verdict says up.",
            view.degraded.len() as u64,
        ),
    ];
    for (name, kind, help, value) in series {
        header(out, name, kind, help);
        let _ = writeln!(out, "mailpin_{name} {value}");
    }
    header(
        out,
        "cluster_claims_total",
        "counter",
        "Users this director asked etcd for, by result: created the assignment, adopted another director's, replaced one to a backend unusable here, refused (temporary failure).",
    );
    for (result, counter) in [
        ("created", &c.claims_created),
        ("adopted", &c.claims_adopted),
        ("replaced", &c.claims_replaced),
        ("refused", &c.claims_refused),
    ] {
        let _ = writeln!(
            out,
            "mailpin_cluster_claims_total{{result=\"{result}\"}} {}",
            ClusterCounters::read(counter)
        );
    }
    header(
        out,
        "cluster_releases_total",
        "counter",
        "Presence records this director released (its assignment of the user dropped).",
    );
    let _ = writeln!(
        out,
        "mailpin_cluster_releases_total {}",
        ClusterCounters::read(&c.releases)
    );
    header(
        out,
        "cluster_moves_total",
        "counter",
        "Moves across the cluster this director made (admin move, flush), by result.",
    );
    for (result, counter) in [
        ("committed", &c.moves_committed),
        ("failed", &c.moves_failed),
    ] {
        let _ = writeln!(
            out,
            "mailpin_cluster_moves_total{{result=\"{result}\"}} {}",
            ClusterCounters::read(counter)
        );
    }
}

/// The per protocol port health gauges and flip counters.
fn protocol_health(out: &mut String, control: &Control, set: &BackendSet) {
    header(
        out,
        "backend_protocol_healthy",
        "gauge",
        "1 if the backend's port of the protocol passes its health checks (checked protocols only).",
    );
    per_checked_port(out, set, "backend_protocol_healthy", |_, _, h| {
        u64::from(h == Health::Healthy)
    });
    header(
        out,
        "backend_health_flips_total",
        "counter",
        "Health state flips of the backend's port of the protocol.",
    );
    per_checked_port(out, set, "backend_health_flips_total", |b, p, _| {
        control.protocol_flips(b, p)
    });
}

/// One `mailpin_{name}{backend,protocol}` series per checked protocol
/// port, valued by `value(backend, protocol, its health)`.
fn per_checked_port(
    out: &mut String,
    set: &BackendSet,
    name: &str,
    value: impl Fn(BackendId, Protocol, Health) -> u64,
) {
    for b in set.configured() {
        for p in Protocol::ALL {
            if let Some(h) = b.protocol_health(p) {
                let _ = writeln!(
                    out,
                    "mailpin_{name}{{backend=\"{}\",protocol=\"{}\"}} {}",
                    escape_label(&b.name),
                    p.as_str(),
                    value(b.id, p, h)
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
