//! `mailpin ctl`: the admin API from the command line.
//!
//! Talks HTTP/1.1 to the admin API with a blocking socket (this is a
//! short-lived command, not the data path), prints tables for people or the
//! API's JSON with `--json`, and exits non-zero on any error: 1 for an
//! answer the API refused (404, 400, 401, ...), 2 when the director cannot
//! be reached or the configuration cannot be read.
//!
//! Where it talks ([`Target::resolve`]): `--admin HOST:PORT` or
//! `--admin unix:PATH` when given; otherwise the config file's
//! `admin.socket` when set (its file permissions are the access control),
//! else its `admin.listen`. Over TCP it sends `Authorization: Bearer` with
//! `MAILPIN_ADMIN_TOKEN` or the config's `admin.token`/`admin.token_file`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::config::{read_token_file, Config, Secret};

/// The environment variable ctl takes the admin token from first.
pub const TOKEN_ENV: &str = "MAILPIN_ADMIN_TOKEN";

/// The admin address when neither `--admin` nor a config file says one.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9120";

/// Where the admin API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAddr {
    /// `HOST:PORT` over TCP.
    Tcp(String),
    /// A Unix socket path (`unix:PATH` on the command line).
    Unix(PathBuf),
}

impl AdminAddr {
    /// `unix:PATH` or `HOST:PORT`.
    pub fn parse(text: &str) -> AdminAddr {
        match text.strip_prefix("unix:") {
            Some(path) => AdminAddr::Unix(PathBuf::from(path)),
            None => AdminAddr::Tcp(text.to_string()),
        }
    }
}

impl std::fmt::Display for AdminAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddr::Tcp(a) => f.write_str(a),
            AdminAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Where ctl talks and with which token.
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin API's address.
    pub addr: AdminAddr,
    /// The bearer token sent over TCP, if any.
    pub token: Option<Secret>,
}

impl Target {
    /// Decides where to talk: `admin` (`--admin`) if given, else the
    /// `config` file's socket or listener (`config` is `-c`, or the
    /// default path when that file exists), else [`DEFAULT_ADMIN`]. The
    /// token is `env_token` if not empty, else the config's.
    pub fn resolve(
        admin: Option<&str>,
        config: Option<&Path>,
        default_config: &Path,
        env_token: Option<String>,
    ) -> Result<Target, CtlError> {
        let config_path = match (admin, config) {
            (_, Some(path)) => Some(path),
            (None, None) if default_config.exists() => Some(default_config),
            _ => None,
        };
        let config = config_path.map(read_config).transpose()?;
        let addr = match (admin, &config) {
            (Some(a), _) => AdminAddr::parse(a),
            (None, Some(c)) if !c.admin.socket.as_os_str().is_empty() => {
                AdminAddr::Unix(c.admin.socket.clone())
            }
            (None, Some(c)) => AdminAddr::Tcp(connectable(c.admin.listen).to_string()),
            (None, None) => AdminAddr::Tcp(DEFAULT_ADMIN.to_string()),
        };
        let token = match env_token.filter(|t| !t.is_empty()) {
            Some(t) => Some(Secret::new(t)),
            None => match (&addr, &config) {
                (AdminAddr::Tcp(_), Some(c)) if !c.admin.token.expose().is_empty() => {
                    Some(c.admin.token.clone())
                }
                (AdminAddr::Tcp(_), Some(c)) if !c.admin.token_file.as_os_str().is_empty() => Some(
                    read_token_file(&c.admin.token_file)
                        .map_err(|e| CtlError::Connection(format!("admin.token_file: {e}")))?,
                ),
                _ => None,
            },
        };
        Ok(Target { addr, token })
    }
}

/// Reads a config file for its `[admin]` section: parsed and validated,
/// relative paths resolved, but not checked against this machine (ctl may
/// run as a user who cannot read the TLS key).
fn read_config(path: &Path) -> Result<Config, CtlError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CtlError::Connection(format!("cannot read {}: {e}", path.display())))?;
    let mut config = Config::from_toml_str(&text)
        .map_err(|e| CtlError::Connection(format!("{}:\n{e}", path.display())))?;
    config.resolve_relative_paths(path.parent().unwrap_or(Path::new("")));
    Ok(config)
}

/// A wildcard listen address is reached on loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// A ctl command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlCommand {
    /// `status`
    Status,
    /// `backends`
    Backends,
    /// `backend NAME up|down|drain|flush`
    Backend {
        /// The backend.
        name: String,
        /// up, down, drain or flush.
        action: String,
    },
    /// `user USER`
    User(String),
    /// `kick USER`
    Kick(String),
    /// `move USER BACKEND`
    Move {
        /// The user.
        user: String,
        /// The target backend.
        backend: String,
    },
    /// `reload`
    Reload,
    /// `upgrade`
    Upgrade,
    /// `cluster`
    Cluster,
}

/// Why a ctl command failed.
#[derive(Debug)]
pub enum CtlError {
    /// The director could not be reached or answered garbage.
    Connection(String),
    /// The API answered with an error status.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's error message.
        message: String,
    },
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Refused { .. } => 1,
            CtlError::Connection(_) => 2,
        }
    }
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Connection(m) => write!(f, "{m}"),
            CtlError::Refused { status, message } => write!(f, "{message} (HTTP {status})"),
        }
    }
}

/// Percent-encodes a path segment (everything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl CtlCommand {
    /// The HTTP method and path of this command.
    pub fn request(&self) -> (&'static str, String) {
        match self {
            CtlCommand::Status => ("GET", "/status".into()),
            CtlCommand::Backends => ("GET", "/backends".into()),
            CtlCommand::Backend { name, action } => (
                "POST",
                format!(
                    "/backends/{}/{}",
                    encode_segment(name),
                    encode_segment(action)
                ),
            ),
            CtlCommand::User(u) => ("GET", format!("/users/{}", encode_segment(u))),
            CtlCommand::Kick(u) => ("POST", format!("/users/{}/kick", encode_segment(u))),
            CtlCommand::Reload => ("POST", "/reload".into()),
            CtlCommand::Upgrade => ("POST", "/upgrade".into()),
            CtlCommand::Cluster => ("GET", "/cluster".into()),
            CtlCommand::Move { user, backend } => (
                "POST",
                format!(
                    "/users/{}/move?to={}",
                    encode_segment(user),
                    encode_segment(backend)
                ),
            ),
        }
    }
}

/// Sends one request to the admin API and returns the parsed JSON body.
pub fn call(target: &Target, method: &str, path: &str) -> Result<Value, CtlError> {
    let admin = target.addr.to_string();
    let unreachable =
        |e: std::io::Error| CtlError::Connection(format!("cannot reach mailpin at {admin}: {e}"));
    let raw = match &target.addr {
        AdminAddr::Tcp(a) => {
            let addr = a
                .to_socket_addrs()
                .map_err(|e| CtlError::Connection(format!("bad admin address {a:?}: {e}")))?
                .next()
                .ok_or_else(|| {
                    CtlError::Connection(format!("admin address {a:?} has no address"))
                })?;
            let stream =
                TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(unreachable)?;
            exchange(stream, &request(method, path, a, target.token.as_ref()))
        }
        AdminAddr::Unix(p) => {
            let stream = UnixStream::connect(p).map_err(unreachable)?;
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(unreachable)?;
            exchange(stream, &request(method, path, "localhost", None))
        }
    };
    let raw = raw.map_err(unreachable)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(&raw) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            return Err(CtlError::Connection(format!(
                "{admin} did not answer with HTTP"
            )))
        }
    };
    let status = resp.code.unwrap_or(0);
    let body: Value = serde_json::from_slice(&raw[head_len..]).map_err(|e| {
        CtlError::Connection(format!("{admin} answered {status} with no JSON body: {e}"))
    })?;
    if !(200..300).contains(&status) {
        let mut message = body["error"].as_str().unwrap_or("error").to_string();
        if status == 401 {
            message.push_str(&format!(
                " (set {TOKEN_ENV}, or give the config file with -c)"
            ));
        }
        return Err(CtlError::Refused { status, message });
    }
    Ok(body)
}

/// The request head (no body).
fn request(method: &str, path: &str, host: &str, token: Option<&Secret>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// Writes the request and reads the whole answer (16 MiB at most).
fn exchange<S: Read + Write>(mut stream: S, request: &str) -> std::io::Result<Vec<u8>> {
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.take(16 << 20).read_to_end(&mut raw)?;
    Ok(raw)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The PROTOCOLS cell of `ctl backends`: `imap=up,pop3=down` over the
/// checked protocols, `-` when the director sent none.
fn protocols_cell(v: &Value) -> String {
    let Some(map) = v.as_object().filter(|m| !m.is_empty()) else {
        return "-".into();
    };
    map.iter()
        .map(|(p, h)| {
            let state = match h.as_str() {
                Some("healthy") => "up",
                Some("unhealthy") => "down",
                _ => "?",
            };
            format!("{p}={state}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Formats rows as aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.clone()));
    }
    out
}

/// The human-readable rendering of a command's answer.
pub fn render(cmd: &CtlCommand, v: &Value) -> String {
    match cmd {
        CtlCommand::Status => {
            let mut out = format!(
                "mailpin {}  uptime {}s  cores {}  sessions {}  state version {}",
                s(&v["version"]),
                s(&v["uptime"]),
                s(&v["cores"]),
                s(&v["sessions"]),
                s(&v["state_version"])
            );
            out.push_str(&cluster_status(v));
            out
        }
        CtlCommand::Backends => {
            let rows: Vec<Vec<String>> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|b| {
                            let mut row: Vec<String> = [
                                "name", "host", "weight", "admin", "health", "routable",
                                "sessions", "users",
                            ]
                            .iter()
                            .map(|k| s(&b[*k]))
                            .collect();
                            row.push(protocols_cell(&b["protocols"]));
                            row
                        })
                        .collect()
                })
                .unwrap_or_default();
            table(
                &[
                    "NAME",
                    "HOST",
                    "WEIGHT",
                    "ADMIN",
                    "HEALTH",
                    "ROUTABLE",
                    "SESSIONS",
                    "USERS",
                    "PROTOCOLS",
                ],
                &rows,
            )
        }
        CtlCommand::Backend { name, action } if action == "flush" => format!(
            "{name}: flushed {} users, closed {} sessions",
            s(&v["flushed_users"]),
            s(&v["closed_sessions"])
        ),
        CtlCommand::Backend { name, .. } => format!(
            "{name}: admin {}, health {}, routable {}{}",
            s(&v["admin"]),
            s(&v["health"]),
            s(&v["routable"]),
            acted_on(v)
        ),
        CtlCommand::User(_) => format!(
            "{} (key {}) -> {}, {} sessions, since {}",
            s(&v["user"]),
            s(&v["key"]),
            s(&v["backend"]),
            s(&v["sessions"]),
            s(&v["since"])
        ),
        CtlCommand::Kick(_) => format!(
            "{}: {} sessions closed{}",
            s(&v["user"]),
            s(&v["kicked"]),
            acted_on(v)
        ),
        CtlCommand::Reload => {
            let changes: Vec<String> = v["changes"]
                .as_array()
                .map(|a| a.iter().map(|c| format!("  {}", s(c))).collect())
                .unwrap_or_default();
            if changes.is_empty() {
                "reloaded: nothing changed".to_string()
            } else {
                format!("reloaded:\n{}", changes.join("\n"))
            }
        }
        CtlCommand::Upgrade => format!(
            "upgraded: the new process {} serves; the old process {} drains and exits",
            s(&v["new_pid"]),
            s(&v["old_pid"])
        ),
        CtlCommand::Move { .. } => format!(
            "{} moved to {} ({} sessions closed)",
            s(&v["user"]),
            s(&v["backend"]),
            s(&v["closed_sessions"])
        ),
        CtlCommand::Cluster => render_cluster(v),
    }
}

// -- cluster-wide admin actions and shared health --
/// `; applied on d1, d2 (gone: d3)` for an answer of a cluster-wide
/// action (`directors`, `gone`), empty for a director on its own.
fn acted_on(v: &Value) -> String {
    let Some(directors) = v["directors"].as_array() else {
        return String::new();
    };
    let names: Vec<String> = directors.iter().map(|d| s(&d["name"])).collect();
    let mut out = format!("; applied on {}", names.join(", "));
    let gone: Vec<String> = v["gone"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    if !gone.is_empty() {
        out.push_str(&format!(" (lease expired: {})", gone.join(", ")));
    }
    out
}

/// `ctl status`'s cluster line: the director's name and the backends it
/// alone sees down, if any.
fn cluster_status(v: &Value) -> String {
    let Some(name) = v["cluster"].as_str() else {
        return String::new();
    };
    let degraded: Vec<String> = v["degraded"]
        .as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default();
    if degraded.is_empty() {
        format!("\ncluster director {name}")
    } else {
        format!(
            "\ncluster director {name}  DEGRADED (only this director sees them down) degraded: {}",
            degraded.join(", ")
        )
    }
}

/// `ctl cluster`'s backends: the stored admin state, the majority verdict
/// with its tally, and this director's own view.
fn render_cluster_backends(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    vec![
                        s(&b["name"]),
                        s(&b["admin"]),
                        s(&b["verdict"]),
                        format!("{}/{}", s(&b["up"]), s(&b["down"])),
                        s(&b["own"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str("\n\n");
        out.push_str(&table(
            &["BACKEND", "ADMIN", "VERDICT", "UP/DOWN", "OWN"],
            &rows,
        ));
    }
    if let Some(d) = v["degraded"].as_array().filter(|d| !d.is_empty()) {
        let names: Vec<String> = d.iter().map(s).collect();
        out.push_str(&format!("\ndegraded: {}", names.join(", ")));
    }
    out
}
// -- end --

/// `ctl cluster`: who this director is, the leader, etcd, the directors.
fn render_cluster(v: &Value) -> String {
    let etcd = &v["etcd"];
    let state = if etcd["fenced"].as_bool() == Some(true) {
        "FENCED (serving nothing)"
    } else if etcd["connected"].as_bool() == Some(true) {
        "connected"
    } else {
        "reconnecting"
    };
    let mut out = format!(
        "director {}  leader {}\netcd {}  via {}  lease {} (ttl {}s)  revision {}",
        s(&v["name"]),
        s(&v["leader"]),
        state,
        s(&etcd["endpoint"]),
        s(&etcd["lease"]),
        s(&etcd["lease_ttl"]),
        s(&etcd["revision"]),
    );
    if let Some(e) = etcd["last_error"].as_str() {
        out.push_str(&format!("\nlast error: {e}"));
    }
    let rows: Vec<Vec<String>> = v["directors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let leader = if d["leader"].as_bool() == Some(true) {
                        "*"
                    } else {
                        ""
                    };
                    vec![
                        s(&d["name"]),
                        leader.to_owned(),
                        s(&d["admin"]),
                        s(&d["since"]),
                        s(&d["version"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push('\n');
    out.push_str(&table(
        &["DIRECTOR", "LEADER", "ADMIN", "SINCE", "VERSION"],
        &rows,
    ));
    out.push_str(&render_cluster_backends(v));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded() {
        let cmd = CtlCommand::Move {
            user: "a b@x/y".into(),
            backend: "mail1".into(),
        };
        assert_eq!(
            cmd.request(),
            ("POST", "/users/a%20b%40x%2Fy/move?to=mail1".to_string())
        );
    }

    #[test]
    fn targets() {
        let none = Path::new("/nonexistent/mailpin.toml");
        let t = Target::resolve(None, None, none, None).unwrap();
        assert_eq!(t.addr, AdminAddr::Tcp(DEFAULT_ADMIN.into()));
        assert!(t.token.is_none());
        let t = Target::resolve(Some("unix:/run/m.sock"), None, none, Some("tok".into())).unwrap();
        assert_eq!(t.addr, AdminAddr::Unix("/run/m.sock".into()));
        assert_eq!(t.token.unwrap().expose(), "tok");
        assert_eq!(AdminAddr::parse("127.0.0.1:1").to_string(), "127.0.0.1:1");
    }

    #[test]
    fn the_token_goes_in_the_request_head() {
        let r = request("GET", "/status", "h:1", Some(&Secret::new("abc")));
        assert!(r.contains("Authorization: Bearer abc\r\n"), "{r}");
        assert!(!request("GET", "/status", "h:1", None).contains("Authorization"));
    }

    #[test]
    fn cluster_answers_say_who_acted_and_what_is_degraded() {
        let kick = serde_json::json!({"user": "u", "kicked": 2,
            "directors": [{"name": "d1", "kicked": 2}, {"name": "d2", "kicked": 0}], "gone": ["d3"]});
        assert_eq!(
            render(&CtlCommand::Kick("u".into()), &kick),
            "u: 2 sessions closed; applied on d1, d2 (lease expired: d3)"
        );
        let alone = serde_json::json!({"user": "u", "kicked": 1});
        assert_eq!(
            render(&CtlCommand::Kick("u".into()), &alone),
            "u: 1 sessions closed"
        );
        let status = serde_json::json!({"cluster": "d3", "degraded": ["b1"]});
        assert!(render(&CtlCommand::Status, &status).contains("degraded: b1"));
        let cluster = serde_json::json!({"name": "d1", "etcd": {}, "directors": [],
            "backends": [{"name": "b1", "admin": "down", "verdict": "up", "up": 2, "down": 1, "own": "down"}],
            "degraded": ["b1"]});
        let out = render(&CtlCommand::Cluster, &cluster);
        assert!(
            out.contains("b1       down   up       2/1      down"),
            "{out}"
        );
        assert!(out.ends_with("degraded: b1"), "{out}");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
