#!/usr/bin/env python3
"""Summarises the JSON reports of run.sh into the markdown tables PERF.md
shows: mailpin and each peer side by side, every peer figure also as a
ratio to mailpin's (the peer's figure divided by mailpin's).

It reads DIR/TARGET-SCENARIO.json as run.sh names them (scenarios
idle-plain, idle-tls, logins, logins-find, relay, pop3, lmtp, failover); a missing
report shows as a dash. Standard library only.

Usage: table.py DIR
"""

import json
import os
import sys

TARGETS = ["mailpin", "haproxy", "nginx", "dovecot-director"]
SCENARIOS = ["idle-plain", "idle-tls", "logins", "logins-find", "relay", "pop3", "lmtp",
             "failover"]
DASH = "—"


def load(directory, target, scenario):
    """The report of one run, or None when it is missing or unreadable."""
    path = os.path.join(directory, f"{target}-{scenario}.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def mode_entry(report, mode):
    """The results entry of one transport ("plain" or "TLS")."""
    if not report:
        return None
    for entry in report.get("results", {}).get("modes", []):
        if entry.get("mode") == mode:
            return entry
    return None


def idle_kib(report, mode):
    """RSS growth per held session, KiB."""
    entry = mode_entry(report, mode)
    return entry["bytes_per_session"] / 1024 if entry else None


def idle_held(report, mode):
    """Sessions held and failed, as text."""
    entry = mode_entry(report, mode)
    if not entry:
        return DASH
    failed = entry.get("failed", 0)
    return f"{entry['sessions']:,}" + (f" ({failed:,} failed)" if failed else "")


def login_step(report, mode):
    """The fixed-rate step of one transport."""
    entry = mode_entry(report, mode)
    return entry.get("step") if entry else None


def login_best(report, mode):
    """The best passing step of --find, if any passed."""
    entry = mode_entry(report, mode)
    return entry.get("best") if entry else None


def relay_gbs(report, mode):
    """Relay throughput through the target, GB/s."""
    if not report:
        return None
    for path in report.get("results", {}).get("paths", []):
        if path.get("path", "").endswith(" " + mode) and path["path"] != "direct":
            return path["bytes_per_s"] / 1e9
    return None


def relay_direct(report):
    """The direct-to-backend relay baseline, GB/s, if the report has it."""
    if not report:
        return None
    for path in report.get("results", {}).get("paths", []):
        if path.get("path") == "direct":
            return path["bytes_per_s"] / 1e9
    return None


def lmtp_path(report):
    """The through-the-target path of an lmtp report (not the direct one)."""
    if not report:
        return None
    for path in report.get("results", {}).get("paths", []):
        if path.get("path") != "direct":
            return path
    return None


def lmtp_direct(report):
    """Deliveries/s straight into a backend, if the report has them."""
    if not report:
        return None
    for path in report.get("results", {}).get("paths", []):
        if path.get("path") == "direct":
            return path["deliveries_per_s"]
    return None


def login_text(step, base_step, is_base):
    """A fixed-rate login step as text: rate, p50 / p99, failures, and the
    p99 as a ratio to mailpin's."""
    if step is None:
        return DASH
    p99 = step["latency"]["p99_ms"]
    text = f"{step['achieved']:.0f}/s, p50 {step['latency']['p50_ms']:.1f} / p99 {p99:.1f} ms"
    if step.get("errors"):
        text += f", {step['errors']:,} failed"
    r99 = times(p99, base_step["latency"]["p99_ms"]) if base_step and not is_base else None
    if r99:
        text += f" (p99 {r99})"
    return text


def times(value, base):
    """value / base as text ("0.42×"), or None when either is unknown or
    base is 0."""
    if value is None or not base:
        return None
    r = value / base
    return f"{r:.0f}×" if r >= 10 else f"{r:.2f}×"


def ratio(value, base):
    """value / base in brackets after a figure, or empty."""
    r = times(value, base)
    return f" ({r})" if r else ""


def cell(value, base, fmt, is_base):
    """A figure, with its ratio to mailpin's unless it is mailpin's."""
    if value is None:
        return DASH
    text = fmt.format(value)
    return text if is_base else text + ratio(value, base)


def failover_cell(report):
    """Recovered or not, when, and what failed."""
    if not report:
        return DASH
    r = report.get("results", {})
    failed = r.get("failed_after_kill", 0)
    users = r.get("affected_users") or {}
    locked = users.get("users", 0) - users.get("recovered", 0)
    placed = users.get("placed")
    if r.get("recovered"):
        head = f"recovered in {r.get('recovery_s') or 0:.2f} s"
    else:
        head = "not recovered"
    text = f"{head}; {failed:,} logins failed"
    if placed is not None:
        text += f"; {locked} of {placed} users of {r.get('killed', '?')} locked out"
        if users.get("recovered"):
            text += f" (others back after ≤ {users.get('max_ms', 0):.0f} ms)"
    return text


def violations(directory, target):
    """Invariant violations over all of the target's runs, and where."""
    total, where = 0, []
    for scenario in SCENARIOS:
        report = load(directory, target, scenario)
        if report and report.get("violations"):
            total += report["violations"]
            where.append(f"{scenario} {report['violations']:,}")
    if not where:
        return "0"
    return f"{total:,} ({', '.join(where)})"


def row(cells):
    """A markdown table row."""
    return "| " + " | ".join(cells) + " |"


def table(header, rows):
    """A markdown table."""
    lines = [row(header), row(["---"] * len(header))]
    lines += [row(r) for r in rows]
    return "\n".join(lines)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: table.py DIR")
    directory = sys.argv[1]
    reports = {
        t: {s: load(directory, t, s) for s in SCENARIOS} for t in TARGETS
    }
    targets = [t for t in TARGETS if any(reports[t].values())]
    if not targets:
        sys.exit(f"no reports in {directory}")
    base = reports["mailpin"]

    def sessions(mode):
        for t in targets:
            entry = mode_entry(reports[t]["idle-" + mode.lower()], mode)
            if entry:
                return entry["sessions"] + entry.get("failed", 0)
        return "?"

    def offered():
        for t in targets:
            step = login_step(reports[t]["logins"], "plain")
            if step:
                return f"{step['offered']:.0f}"
        return "?"

    print("Ratios in brackets: the peer's figure divided by mailpin's.\n")

    rows = []
    for t in targets:
        r, is_base = reports[t], t == "mailpin"
        cells = [t]
        for mode in ("plain", "TLS"):
            rep = r["idle-" + mode.lower()]
            cells.append(cell(idle_kib(rep, mode), idle_kib(base["idle-" + mode.lower()], mode),
                              "{:.1f} KiB", is_base))
        for mode in ("plain", "TLS"):
            cells.append(idle_held(r["idle-" + mode.lower()], mode))
        rows.append(cells)
    print(f"**Idle sessions** ({sessions('plain')} plain / {sessions('TLS')} TLS asked, "
          "4 per user, LOGIN + SELECT + IDLE; RSS growth of the target's process tree "
          "per held session)\n")
    print(table(["target", "RSS/session plain", "RSS/session TLS", "held plain", "held TLS"],
                rows))

    rows = []
    for t in targets:
        r, is_base = reports[t], t == "mailpin"
        cells = [t]
        for mode in ("plain", "TLS"):
            cells.append(login_text(login_step(r["logins"], mode),
                                    login_step(base["logins"], mode), is_base))
        for mode in ("plain", "TLS"):
            if r["logins-find"] is None:
                cells.append(DASH)
                continue
            best, bbest = login_best(r["logins-find"], mode), login_best(base["logins-find"], mode)
            if best is None:
                cells.append("none passed")
                continue
            text = f"{best['achieved']:.0f}/s (p99 {best['latency']['p99_ms']:.1f} ms)"
            if not is_base and bbest:
                text += ratio(best["achieved"], bbest["achieved"])
            cells.append(text)
        rows.append(cells)
    print(f"\n**Logins** (open loop, connect + LOGIN, offered {offered()}/s; "
          "highest rate with p99 ≤ 50 ms and < 0.1 % failures by --find)\n")
    print(table(["target", f"plain at {offered()}/s", f"TLS at {offered()}/s",
                 "max plain, p99 ≤ 50 ms", "max TLS, p99 ≤ 50 ms"], rows))

    rows = []
    for t in targets:
        r, is_base = reports[t], t == "mailpin"
        cells = [t]
        for mode in ("plain", "TLS"):
            cells.append(cell(relay_gbs(r["relay"], mode), relay_gbs(base["relay"], mode),
                              "{:.2f} GB/s", is_base))
        cells.append(failover_cell(r["failover"]))
        cells.append(violations(directory, t))
        rows.append(cells)
    direct = relay_direct(base["relay"])
    note = f"; straight to a backend: {direct:.2f} GB/s" if direct else ""
    print(f"\n**Relay, failover, invariant violations** (relay: 1 MiB FETCH bodies over "
          f"4 connections{note}. Failover: open-loop logins, sim2 killed; recovered = "
          "no failed login in the last second. Violations: one user live on two backends "
          "at once, all runs)\n")
    print(table(["target", "relay plain", "relay TLS", "failover", "violations"], rows))

    rows = []
    for t in targets:
        r, is_base = reports[t], t == "mailpin"
        cells = [t]
        for mode in ("plain", "TLS"):
            cells.append(login_text(login_step(r["pop3"], mode),
                                    login_step(base["pop3"], mode), is_base))
        path, bpath = lmtp_path(r["lmtp"]), lmtp_path(base["lmtp"])
        if path is None:
            cells += [DASH, DASH]
        else:
            cells.append(cell(path["deliveries_per_s"], bpath and bpath["deliveries_per_s"],
                              "{:,.0f}/s", is_base)
                         + f" (p99 {path['latency']['p99_ms']:.1f} ms)")
            cells.append(f"{path['failed_recipients']:,} failed, {path['lost']:,} lost, "
                         f"{path['stored']:,} stored")
        rows.append(cells)
    direct = lmtp_direct(base["lmtp"])
    note = f"; straight into one backend: {direct:,.0f} deliveries/s" if direct else ""
    print(f"\n**POP3 and LMTP** (POP3: open-loop USER/PASS logins at {offered()}/s. "
          f"LMTP: 4 connections, 3 recipients per transaction, 10 KB messages{note}; "
          "a dash: the target has no such listener)\n")
    print(table(["target", "POP3 plain", "POP3 TLS", "LMTP deliveries", "LMTP recipients"],
                rows))


if __name__ == "__main__":
    main()
