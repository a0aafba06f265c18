//! The operator's closing line of a session (`session closed`), against a
//! real Dovecot backend: user, client address, backend, protocol, TLS
//! version, bytes each way, duration and why it ended — after a client's
//! logout, an admin kick and a backend that hung until the health checks
//! marked it down — in the text format and, with `log.format = "json"`, as
//! JSON; never the password.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use support::mailpin::Mailpin;
use support::tempdir::TempDir;
use support::{
    require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions, InteractiveClient,
};

/// A password nothing else in the log could contain by chance.
const PASSWORD: &str = "Zq7-never-logged-9Xw";

/// A director with an implicit-TLS IMAP listener in front of one Dovecot,
/// logging in `format`; the user `name` has [`PASSWORD`].
struct Setup {
    cluster: DovecotCluster,
    mailpin: Mailpin,
    _certs: TempDir,
}

fn start(format: &str, user: &str) -> Option<Setup> {
    if !require_dovecot() || !require_tool("python3") {
        return None;
    }
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    cluster.add_user(user, PASSWORD);
    let certs = TempDir::new().expect("temp dir");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generate a certificate");
    let cert: PathBuf = certs.path().join("cert.pem");
    let key: PathBuf = certs.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    let inst = cluster.instance(0);
    let config = format!(
        "[server]\ncores = 1\n\n[log]\nformat = \"{format}\"\n\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"300ms\"\n\n\
         [tls]\ncert = {cert:?}\nkey = {key:?}\nmin_version = \"1.3\"\n\n\
         [[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\ntls = \"implicit\"\n\n\
         [[backend]]\nname = \"b0\"\nhost = \"{}\"\nimap = {}\n",
        inst.addr(),
        inst.imap_port()
    );
    let mailpin = Mailpin::start(&config, 1);
    Some(Setup {
        cluster,
        mailpin,
        _certs: certs,
    })
}

/// The client arguments for one implicit-TLS session of `user`.
fn client_args(m: &Mailpin, user: &str, hold: &str) -> Vec<String> {
    [
        "--host",
        "127.0.0.1",
        "--port",
        &m.listen[0].port().to_string(),
        "--mode",
        "tls",
        "--insecure",
        "--user",
        user,
        "--password",
        PASSWORD,
        "--hold",
        hold,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A logged-in session of `user`, held until dropped.
fn hold(m: &Mailpin, user: &str) -> InteractiveClient {
    let args = client_args(m, user, "stdin");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = InteractiveClient::spawn("imap_sessions.py", &args);
    c.wait_for_line("READY 1", Duration::from_secs(30))
        .expect("logged in");
    c
}

/// The closing line of `user`'s session.
fn closing_line(m: &Mailpin, user: &str) -> String {
    m.wait_for_log(&["session closed", user], Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no closing line for {user}:\n{}", m.log()))
}

/// The `key=value` fields of a text log line (span and event alike);
/// quoted values are unquoted.
fn text_fields(line: &str) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq].rfind([' ', '{']).map_or(0, |i| i + 1);
        let key = rest[key_start..eq].to_string();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (
                quoted[..end].to_string(),
                &quoted[(end + 1).min(quoted.len())..],
            )
        } else {
            let end = after.find([' ', '}']).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        fields.insert(key, value);
        rest = next;
    }
    fields
}

/// Checks the fields every closing line has, whatever ended it.
fn assert_common(f: &HashMap<String, String>, user: &str, line: &str) {
    let get = |k: &str| {
        f.get(k)
            .unwrap_or_else(|| panic!("no {k} in the closing line: {line}"))
    };
    assert_eq!(get("user"), user, "{line}");
    assert_eq!(get("backend"), "b0", "{line}");
    assert_eq!(get("proto"), "imap", "{line}");
    assert_eq!(get("tls"), "TLSv1.3", "{line}");
    let client: std::net::SocketAddr = get("client").parse().expect("client is IP:PORT");
    assert_eq!(client.ip().to_string(), "127.0.0.1", "{line}");
    assert_ne!(client.port(), 0, "{line}");
    let bytes_in: u64 = get("bytes_in").parse().expect("bytes_in is a number");
    let bytes_out: u64 = get("bytes_out").parse().expect("bytes_out is a number");
    assert!(bytes_in > 0 && bytes_out > 0, "bytes both ways: {line}");
    get("duration_ms")
        .parse::<u64>()
        .expect("duration_ms is a number");
}

fn assert_no_password(m: &Mailpin) {
    assert!(!m.log().contains(PASSWORD), "the password is in the log");
}

#[test]
fn a_logout_is_logged_with_every_field() {
    let user = "logout-user";
    let Some(s) = start("text", user) else { return };
    let args = client_args(&s.mailpin, user, "0");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_client("imap_sessions.py", &args, Duration::from_secs(30));
    assert!(out.success(), "client failed: {out:?}");
    let line = closing_line(&s.mailpin, user);
    let f = text_fields(&line);
    assert_common(&f, user, &line);
    // After LOGOUT the backend answers and closes; the client closes as it
    // reads the answer: either may be first, both are a normal end.
    match (f["end"].as_str(), f["reason"].as_str()) {
        ("backend", "disconnected by backend") | ("client", "disconnected by client") => {}
        other => panic!("a logout ended as {other:?}: {line}"),
    }
    assert_no_password(&s.mailpin);
}

#[test]
fn an_admin_kick_is_logged_as_json() {
    let user = "kicked-user";
    let Some(s) = start("json", user) else { return };
    let session = hold(&s.mailpin, user);
    let (code, _, err) = s.mailpin.ctl(&["kick", user]);
    assert_eq!(code, 0, "{err}");
    let line = closing_line(&s.mailpin, user);
    let v: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("the closing line is not JSON ({e}): {line}"));
    assert_eq!(v["message"], "session closed", "{line}");
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["reason"], "closed by admin", "{line}");
    assert_eq!(v["end"], "stopped", "{line}");
    // Flatten span and event into one map of strings, as the text test does.
    let mut f = HashMap::new();
    for (k, val) in v["span"]
        .as_object()
        .expect("the session's span")
        .iter()
        .chain(v.as_object().unwrap().iter())
    {
        let text = val.as_str().map_or_else(|| val.to_string(), str::to_string);
        f.insert(k.clone(), text);
    }
    assert!(
        v["bytes_in"].is_u64() && v["duration_ms"].is_u64(),
        "{line}"
    );
    assert_common(&f, user, &line);
    // Every line is JSON in this format.
    for l in s.mailpin.log().lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(l)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
    }
    drop(session);
    assert_no_password(&s.mailpin);
}

#[test]
fn a_backend_that_hangs_is_logged_as_marked_down() {
    let user = "hung-user";
    let Some(mut s) = start("text", user) else {
        return;
    };
    let session = hold(&s.mailpin, user);
    // Freeze every Dovecot process: the connection stays open but nothing
    // answers, so only the health checks can tell the backend is gone.
    let pids = s.cluster.instance(0).pids();
    for &pid in &pids {
        support::procs::send_signal(pid, libc::SIGSTOP);
    }
    let line = s
        .mailpin
        .wait_for_log(&["session closed", user], Duration::from_secs(20));
    for &pid in &pids {
        support::procs::send_signal(pid, libc::SIGCONT);
    }
    let line = line.unwrap_or_else(|| panic!("no closing line:\n{}", s.mailpin.log()));
    let f = text_fields(&line);
    assert_common(&f, user, &line);
    assert_eq!(f["reason"], "backend marked down", "{line}");
    assert_eq!(f["end"], "stopped", "{line}");
    drop(session);
    s.cluster.instance_mut(0).stop();
    assert_no_password(&s.mailpin);
}
