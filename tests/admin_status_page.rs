//! The status page (issue 10, item 7) in a real browser: headless Debian
//! Chromium driven by playwright-core (`tests/browser/status_page.mjs`)
//! against a director with a token and three dev backends. The page must
//! ask for the token, show the three backends, drain one with its button
//! after a confirmation, and show that; the API must then report the
//! backend drained, and markup in an event (a user name) must show as
//! text. The screenshot is kept as a CI artifact in
//! `target/ci-artifacts/status-page.png`.

mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::dev_director::{artifacts_dir, require_cached, DevDirector, BACKENDS};
use support::mailpin::http;
use support::require_tool;
use support::tempdir::TempDir;
use support::wire::LineClient;

const TOKEN: &str = "page-token-0123456789abcdef";

/// The browser script's bound: it waits 20 s at most for each step.
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);

fn api(d: &DevDirector, path: &str) -> serde_json::Value {
    let (status, body) = http(
        d.mailpin.admin,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
    );
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Logs `user` in over IMAP and keeps the session.
fn login(d: &DevDirector, user: &str) -> LineClient {
    let mut c = LineClient::connect(d.mailpin.listen[0]).expect("connect");
    c.read_line().expect("greeting");
    let reply = c.imap(&format!("LOGIN {user} dev")).expect("login");
    assert!(reply.is_ok(), "{user}: {reply:?}");
    c
}

#[test]
fn the_page_shows_the_backends_and_drains_one_with_its_button() {
    if !require_tool("node") || !require_tool("chromium") {
        return;
    }
    let Some(node_modules) = require_cached("node/node_modules") else {
        return;
    };
    if !node_modules.join("playwright-core").exists()
        && !support::tools::skip_or_fail_on(
            "playwright-core not installed",
            support::tools::on_ci(),
        )
    {
        return;
    }
    let d = DevDirector::start(&format!("token = \"{TOKEN}\"\n"));
    // Some sessions, and two load samples (one every 5 s) for the chart.
    let sessions: Vec<LineClient> = (0..5).map(|i| login(&d, &format!("user{i}"))).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while api(&d, "/history")["samples"].as_array().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "no load samples");
        std::thread::sleep(Duration::from_millis(250));
    }

    // An event whose user is markup: the page must show it as text.
    let (status, body) = http(
        d.mailpin.admin,
        &format!(
            "POST /users/%3Cimg%20src%3Dx%20onerror%3Dwindow.pwned%3D1%3E/kick HTTP/1.1\r\n\
             Host: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{body}");

    let profile = TempDir::new().unwrap();
    let screenshot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/status_page.mjs");
    let started = Instant::now();
    let mut child = Command::new(support::tools::tool_path("node").unwrap())
        .arg(&script)
        .env("MAILPIN_URL", format!("http://{}/", d.mailpin.admin))
        .env("MAILPIN_TOKEN", TOKEN)
        .env("MAILPIN_BACKEND", "dev2")
        .env("MAILPIN_EXPECT_ROWS", BACKENDS.len().to_string())
        .env("MAILPIN_SCREENSHOT", &screenshot)
        .env("MAILPIN_PROFILE", profile.path())
        .env("MAILPIN_NODE_MODULES", &node_modules)
        .env(
            "MAILPIN_CHROMIUM",
            support::tools::tool_path("chromium").unwrap(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > SCRIPT_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser script did not finish within {SCRIPT_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    eprintln!(
        "browser script took {:.1}s: {out}{err}",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "the browser script failed:\n{out}\n{err}");

    let seen: serde_json::Value =
        serde_json::from_str(out.lines().last().unwrap_or("")).expect("the script's JSON line");
    assert!(
        seen["noticeWithoutToken"]
            .as_str()
            .unwrap()
            .contains("needs its token"),
        "{seen}"
    );
    let names: Vec<&str> = seen["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BACKENDS, "{seen}");
    assert!(
        seen["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["admin"] == "up"),
        "{seen}"
    );
    assert_eq!(seen["dialog"]["type"], "confirm", "{seen}");
    assert!(
        seen["dialog"]["message"]
            .as_str()
            .unwrap()
            .contains("Drain backend dev2"),
        "{seen}"
    );
    assert_eq!(seen["consoleErrors"], serde_json::json!([]), "{seen}");
    assert!(seen["chartLines"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(
        seen["markup"],
        serde_json::json!({"elements": 0, "ran": false, "shownAsText": true}),
        "strings from the API go into the page as text"
    );

    let backends = api(&d, "/backends");
    let admin: Vec<&str> = backends
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["admin"].as_str().unwrap())
        .collect();
    assert_eq!(admin, ["up", "drain", "up"], "the API reports dev2 drained");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);
    drop(sessions);
}
