//! The outcome of a scenario: a summary for people on stdout, the same
//! facts as JSON (`--json`), and the timeline as SVG (`--plot`).

use std::path::Path;

use serde::Serialize;

use crate::harness::Harness;
use crate::timeline::Timeline;

/// Everything a scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// What was loaded (mailpin, or the peer's name).
    pub target: String,
    /// server.cores of the director the harness started (null if external).
    pub director_cores: Option<usize>,
    /// Client threads.
    pub client_threads: usize,
    /// Units of work done (sessions established, logins, fetches...).
    pub work: u64,
    /// Units of work that failed.
    pub errors: u64,
    /// Invariant violations the backends' registry recorded during the run
    /// (one user live on two backends at once).
    pub violations: usize,
    /// The summary lines printed for people.
    pub summary: Vec<String>,
    /// Scenario-specific figures.
    pub results: serde_json::Value,
    /// Rates and levels over time.
    pub timeline: Timeline,
}

impl Report {
    /// A report for `harness`'s target with the common fields filled.
    pub fn new(scenario: &str, harness: &Harness) -> Report {
        Report {
            scenario: scenario.to_owned(),
            target: harness.args.target_name.clone(),
            director_cores: harness.director_cores(),
            client_threads: harness.args.client_threads,
            work: 0,
            errors: 0,
            violations: 0,
            summary: Vec::new(),
            results: serde_json::Value::Null,
            timeline: Timeline::default(),
        }
    }

    /// A report for a scenario that runs its own backends and director
    /// (no [`Harness`]): mailpin with `director_cores`.
    pub fn standalone(scenario: &str, director_cores: usize) -> Report {
        Report {
            scenario: scenario.to_owned(),
            target: "mailpin".to_owned(),
            director_cores: Some(director_cores),
            client_threads: 1,
            work: 0,
            errors: 0,
            violations: 0,
            summary: Vec::new(),
            results: serde_json::Value::Null,
            timeline: Timeline::default(),
        }
    }

    /// Adds a summary line.
    pub fn line(&mut self, line: impl Into<String>) {
        self.summary.push(line.into());
    }
}

/// Prints the summary and writes the JSON and SVG the options ask for.
pub fn finish(mut report: Report, harness: &Harness) -> Result<Report, String> {
    report.violations = harness.violations();
    publish(
        report,
        harness.args.json.as_deref(),
        harness.args.plot.as_deref(),
    )
}

/// Prints the summary (with `report.violations` as set) and writes the
/// JSON and SVG asked for.
pub fn publish(report: Report, json: Option<&Path>, plot: Option<&Path>) -> Result<Report, String> {
    let cores = match report.director_cores {
        Some(c) => format!(", server.cores = {c}"),
        None => String::new(),
    };
    println!(
        "== {} against {}{cores}, {} client thread(s)",
        report.scenario, report.target, report.client_threads
    );
    for l in &report.summary {
        println!("  {l}");
    }
    println!(
        "  work {} ok, {} failed; invariant violations: {}",
        report.work, report.errors, report.violations
    );
    if let Some(path) = json {
        write_json(&report, path)?;
    }
    if let Some(path) = plot {
        let title = format!("{} — {}", report.scenario, report.target);
        std::fs::write(path, crate::plot::svg(&report.timeline, &title))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(report)
}

/// Writes any serialisable value as pretty JSON.
pub fn write_json(value: &impl Serialize, path: &Path) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| format!("JSON: {e}"))?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}
