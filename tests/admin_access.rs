//! Who may use the admin API (issue 10, item 5), against the real binary
//! in front of the embedded dev backends: the bearer token (and where it
//! is not needed), `/metrics` open or closed, foreign `Host` headers and
//! cross-site form posts refused, the Unix socket with its file mode and
//! no token, and `mailpin ctl` over the socket and with a token.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use support::dev_director::{run_mailpin, DevDirector};
use support::mailpin::{http, http_full, http_unix};
use support::tempdir::TempDir;

const TOKEN: &str = "test-token-0123456789abcdef";

fn get(d: &DevDirector, path: &str, extra: &str) -> (u16, String, String) {
    http_full(
        d.mailpin.admin,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn post(d: &DevDirector, path: &str, extra: &str) -> (u16, String) {
    http(
        d.mailpin.admin,
        &format!("POST {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n"),
    )
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn admin_state(d: &DevDirector, backend: &str) -> String {
    let (status, _, body) = get(d, "/backends", &bearer(TOKEN));
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .map(|b| b["admin"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn the_token_is_needed_everywhere_but_metrics_and_the_static_documents() {
    let d = DevDirector::start(&format!("token = \"{TOKEN}\"\n"));
    for path in [
        "/status",
        "/backends",
        "/events",
        "/history",
        "/users/alice",
    ] {
        let (status, head, body) = get(&d, path, "");
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert!(body.contains("\"error\""), "{body}");
        let (status, _, _) = get(&d, path, &bearer("wrong-token-0123456789abcd"));
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _, _) = get(&d, path, &format!("Authorization: Basic {TOKEN}\r\n"));
        assert_eq!(status, 401, "{path} with another scheme");
    }
    let (status, _, body) = get(&d, "/status", &bearer(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"cores\": 1"), "{body}");
    let (status, _, body) = get(&d, "/users/nobody", &bearer(TOKEN));
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(&d, "/backends/dev1/drain", "");
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        admin_state(&d, "dev1"),
        "up",
        "a refused POST changes nothing"
    );
    let (status, body) = post(&d, "/backends/dev1/drain", &bearer(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin_state(&d, "dev1"), "drain");

    let (status, _, body) = get(&d, "/metrics", "");
    assert_eq!(status, 200, "metrics_public defaults to true");
    assert!(body.contains("mailpin_state_version"), "{body}");
    let (status, head, body) = get(&d, "/", "");
    assert_eq!(status, 200);
    assert!(head.contains("text/html") && body.contains("<title>mailpin status</title>"));
    assert!(head.contains("X-Frame-Options: DENY"), "{head}");
    let (status, _, body) = get(&d, "/openapi.json", "");
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{body}");
    assert!(
        !d.mailpin.log().contains(TOKEN),
        "the token is never logged"
    );
}

#[test]
fn metrics_need_the_token_when_not_public() {
    let d = DevDirector::start(&format!("token = \"{TOKEN}\"\nmetrics_public = false\n"));
    let (status, _, _) = get(&d, "/metrics", "");
    assert_eq!(status, 401);
    let (status, _, body) = get(&d, "/metrics", &bearer(TOKEN));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mailpin_sessions"), "{body}");
}

#[test]
fn foreign_hosts_and_cross_site_posts_are_refused() {
    let d = DevDirector::start("names = [\"director.example.net\"]\n");
    let admin = d.mailpin.admin;
    let raw = |request: String| http(admin, &request);
    // DNS rebinding: the page's own name arrives as Host.
    let (status, body) = raw(format!(
        "GET /backends HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n",
        admin.port()
    ));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Host"), "{body}");
    let (status, _) = raw("GET /status HTTP/1.0\r\n\r\n".into());
    assert_eq!(status, 403, "no Host at all");
    for host in [
        format!("localhost:{}", admin.port()),
        "director.example.net".to_string(),
        format!("director.example.net:{}", admin.port()),
    ] {
        let (status, body) = raw(format!("GET /status HTTP/1.1\r\nHost: {host}\r\n\r\n"));
        assert_eq!(status, 200, "{host}: {body}");
    }
    // A form post from another site: refused, and nothing changes.
    for content_type in [
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain",
    ] {
        let (status, body) = post(
            &d,
            "/backends/dev2/down",
            &format!("Content-Type: {content_type}\r\nContent-Length: 3\r\n\r\na=b"),
        );
        assert_eq!(status, 403, "{content_type}: {body}");
    }
    let (status, body) = post(&d, "/backends/dev2/down", "Origin: http://evil.example\r\n");
    assert_eq!(status, 403, "{body}");
    let (status, body) = raw(format!(
        "POST /backends/dev2/down HTTP/1.1\r\nHost: evil.example:{}\r\n\r\n",
        admin.port()
    ));
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        admin_state(&d, "dev2"),
        "up",
        "no refused request changed anything"
    );
    // The same request from this admin API's own page goes through.
    let (status, body) = post(
        &d,
        "/backends/dev2/drain",
        &format!("Origin: http://{admin}\r\nContent-Type: application/json\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(admin_state(&d, "dev2"), "drain");
    // And the event shows in GET /events.
    let (_, _, body) = get(&d, "/events", "");
    let events: serde_json::Value = serde_json::from_str(&body).unwrap();
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "admin", "{body}");
    assert_eq!(last["backend"], "dev2");
    assert_eq!(last["message"], "admin up -> drain");
}

#[test]
fn the_unix_socket_needs_no_token_and_has_its_mode() {
    let sockets = TempDir::new().unwrap();
    let socket = sockets.path().join("admin.sock");
    let mut d = DevDirector::start(&format!(
        "token = \"{TOKEN}\"\nsocket = {:?}\nsocket_mode = 0o660\n",
        socket.display().to_string()
    ));
    d.mailpin
        .wait_for_log(&["admin API socket ready"], Duration::from_secs(10))
        .expect("socket announced");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the file mode is the access control");
    let (status, _, body) = http_unix(
        &socket,
        "GET /status HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "no token over the socket: {body}");
    // ctl over the socket: given explicitly, and taken from the config.
    let unix = format!("unix:{}", socket.display());
    let (code, out, err) = run_mailpin(&["ctl", "--admin", &unix, "backend", "dev3", "drain"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dev3: admin drain"), "{out}");
    let config = d.config_path();
    let config = config.to_str().unwrap();
    let (code, out, err) = run_mailpin(&["ctl", "-c", config, "--json", "backends"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"admin\": \"drain\""), "{out}");
    // Over TCP the token is still needed.
    let (code, _, err) = run_mailpin(
        &["ctl", "--admin", &d.mailpin.admin.to_string(), "status"],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("HTTP 401"), "{err}");
    d.mailpin.stop();
    assert!(!socket.exists(), "the socket file is removed at exit");
}

#[test]
fn ctl_sends_the_token_from_the_config_or_the_environment() {
    let token_dir = TempDir::new().unwrap();
    let token_file = token_dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let d = DevDirector::start(&format!(
        "token_file = {:?}\n",
        token_file.display().to_string()
    ));
    let config = d.config_path();
    let config = config.to_str().unwrap();
    let admin = d.mailpin.admin.to_string();
    // The config's listen port is 0 (the kernel chose), so the address is
    // given; the token still comes from the config.
    let (code, out, err) = run_mailpin(&["ctl", "-c", config, "--admin", &admin, "status"], &[]);
    assert_eq!(code, 0, "the token of admin.token_file: {out}{err}");
    assert!(out.contains("cores 1"), "{out}");
    let (code, _, err) = run_mailpin(&["ctl", "--admin", &admin, "status"], &[]);
    assert_eq!(code, 1, "no token: {err}");
    assert!(
        err.contains("MAILPIN_ADMIN_TOKEN"),
        "the error says how: {err}"
    );
    let (code, out, err) = run_mailpin(
        &["ctl", "--admin", &admin, "status"],
        &[("MAILPIN_ADMIN_TOKEN", TOKEN)],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_mailpin(
        &["ctl", "-c", config, "--admin", &admin, "status"],
        &[("MAILPIN_ADMIN_TOKEN", "wrong-token-0123456789abcd")],
    );
    assert_eq!(code, 1, "the environment wins over the config: {err}");
    // A token file others may read is worth a warning.
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run_mailpin(&["check", "-c", config], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("admin.token_file") && err.contains("0o644"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "the token is never printed: {err}");
}
