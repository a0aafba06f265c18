//! The admin API against its OpenAPI description (issue 10, item 6):
//! schemathesis (from PyPI, installed by `scripts/install-test-deps`)
//! loads `GET /openapi.json` from a running director with a token and
//! sends generated requests, valid and invalid, to every operation; the
//! test fails on any answer that does not match the document (status,
//! content type, headers, body schema), a 5xx, an operation that ignores
//! the token, or a method it should refuse with 405.
//!
//! `POST /upgrade` is left out (`--exclude-path /upgrade`): a valid call
//! really replaces the director under test with a new process that the
//! test did not start (and would leave running); tests/upgrade_dovecot.rs
//! checks that operation's answers instead.

mod support;

use std::process::Command;
use std::time::Instant;

use support::dev_director::{artifacts_dir, require_cached, DevDirector};
use support::tempdir::TempDir;

const TOKEN: &str = "schema-token-0123456789abcdef";

/// Generated cases per operation and mode: enough to cover every
/// parameter's edge cases, few enough to keep the run around a minute.
const MAX_EXAMPLES: &str = "50";

#[test]
fn every_answer_matches_the_openapi_document() {
    let Some(schemathesis) = require_cached("venv/bin/schemathesis") else {
        return;
    };
    let d = DevDirector::start(&format!("token = \"{TOKEN}\"\n"));
    let work = TempDir::new().unwrap();
    let report = artifacts_dir().join("schemathesis-junit.xml");
    let started = Instant::now();
    let out = Command::new(schemathesis)
        .current_dir(work.path())
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .args([
            "run",
            &format!("http://{}/openapi.json", d.mailpin.admin),
            "--header",
            &format!("Authorization: Bearer {TOKEN}"),
            "--checks",
            "all",
            "--exclude-path",
            "/upgrade",
            "--max-examples",
            MAX_EXAMPLES,
            "--workers",
            "1",
            "--request-timeout",
            "15",
            "--report",
            "junit",
            "--report-junit-path",
        ])
        .arg(&report)
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "schemathesis took {:.1}s\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "schemathesis found answers that do not match src/admin/openapi.json \
         (report: {}):\n{stdout}\n{stderr}",
        report.display()
    );
    // It really ran the operations (a schema it could not load also
    // fails, but say so if it ran none).
    assert!(
        stdout.contains("passed") && !stdout.contains("No operations"),
        "{stdout}"
    );
    assert!(
        !d.mailpin.log().contains(TOKEN),
        "the token is never logged"
    );
}
