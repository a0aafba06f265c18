//! `mailpin ctl`: the admin API from the command line.
//!
//! Talks HTTP/1.1 to `admin.listen` with a blocking socket (this is a
//! short-lived command, not the data path), prints tables for people or the
//! API's JSON with `--json`, and exits non-zero on any error: 1 for an
//! answer the API refused (404, 400, ...), 2 when the director cannot be
//! reached.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

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
pub fn call(admin: &str, method: &str, path: &str) -> Result<Value, CtlError> {
    let addr = admin
        .to_socket_addrs()
        .map_err(|e| CtlError::Connection(format!("bad admin address {admin:?}: {e}")))?
        .next()
        .ok_or_else(|| CtlError::Connection(format!("admin address {admin:?} has no address")))?;
    let unreachable =
        |e: std::io::Error| CtlError::Connection(format!("cannot reach mailpin at {admin}: {e}"));
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
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
        let message = body["error"].as_str().unwrap_or("error").to_string();
        return Err(CtlError::Refused { status, message });
    }
    Ok(body)
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
        CtlCommand::Status => format!(
            "mailpin {}  uptime {}s  cores {}  sessions {}  state version {}",
            s(&v["version"]),
            s(&v["uptime"]),
            s(&v["cores"]),
            s(&v["sessions"]),
            s(&v["state_version"])
        ),
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
            "{name}: admin {}, health {}, routable {}",
            s(&v["admin"]),
            s(&v["health"]),
            s(&v["routable"])
        ),
        CtlCommand::User(_) => format!(
            "{} (key {}) -> {}, {} sessions, since {}",
            s(&v["user"]),
            s(&v["key"]),
            s(&v["backend"]),
            s(&v["sessions"]),
            s(&v["since"])
        ),
        CtlCommand::Kick(_) => format!("{}: {} sessions closed", s(&v["user"]), s(&v["kicked"])),
        CtlCommand::Move { .. } => format!(
            "{} moved to {} ({} sessions closed)",
            s(&v["user"]),
            s(&v["backend"]),
            s(&v["closed_sessions"])
        ),
    }
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
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
    }
}
