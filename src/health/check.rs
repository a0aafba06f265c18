//! One active health check of one protocol port of a backend.
//!
//! `connect` only opens a TCP connection; `banner` also waits for the
//! protocol's greeting (IMAP `* OK`, POP3 `+OK`, LMTP `220`, ManageSieve
//! `OK` after its capabilities); `login` logs a check user in over IMAP
//! and out again, proving the backend's authentication and storage answer
//! (the other protocols' ports get the `banner` check). A greeting that
//! refuses for load (IMAP `* BYE`, POP3 `-ERR`, LMTP `4xx`, ManageSieve
//! `NO`/`BYE`) passes: the backend is alive, only full. Every check is
//! bounded by `health.timeout` by its caller.

use std::net::SocketAddr;

use monoio::net::TcpStream;

use crate::backend::greeting::{classify, shown, GreetingKind};
use crate::config::{HealthCheck, Protocol};
use crate::io::write_bytes;
use crate::proto::imap::quote::{write_string, LiteralStyle};
use crate::proto::lines::LineReader;

/// Longest greeting or reply line a check reads.
const MAX_LINE: usize = 8192;

/// Greeting lines a check reads at most (ManageSieve lists its
/// capabilities first).
const MAX_GREETING_LINES: usize = 64;

/// What a login check logs in with.
#[derive(Clone)]
pub struct CheckLogin {
    /// The check user.
    pub user: String,
    /// Its password; never logged.
    pub password: String,
}

impl std::fmt::Debug for CheckLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckLogin")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Runs one check against `addr`; `Err` says what failed.
pub async fn run_check(
    kind: HealthCheck,
    protocol: Protocol,
    addr: SocketAddr,
    login: Option<&CheckLogin>,
) -> Result<(), String> {
    let mut stream = TcpStream::connect_addr(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    if kind == HealthCheck::Connect {
        return Ok(());
    }
    let mut lines = LineReader::new();
    let mut greeting = None;
    for _ in 0..MAX_GREETING_LINES {
        let line = lines
            .read_line(&mut stream, MAX_LINE)
            .await
            .map_err(|e| format!("greeting: {e}"))?;
        if let Some(kind) = classify(protocol, &line) {
            greeting = Some((kind, line));
            break;
        }
    }
    match greeting {
        Some((GreetingKind::Ready, _)) => {}
        // Alive but full: a load signal, not a failure.
        Some((GreetingKind::Refused, _)) => return Ok(()),
        Some((GreetingKind::Unexpected, line)) => return Err(format!("greeting {}", shown(&line))),
        None => return Err("greeting: too many lines".into()),
    }
    if kind == HealthCheck::Banner || protocol != Protocol::Imap {
        return Ok(());
    }
    let Some(login) = login else {
        return Err("login check without login_user/login_password".into());
    };
    let mut cmd = b"hc1 LOGIN ".to_vec();
    write_string(&mut cmd, login.user.as_bytes(), LiteralStyle::NonSync);
    cmd.push(b' ');
    write_string(&mut cmd, login.password.as_bytes(), LiteralStyle::NonSync);
    cmd.extend_from_slice(b"\r\nhc2 LOGOUT\r\n");
    write_bytes(&mut stream, &cmd)
        .await
        .map_err(|e| format!("send login: {e}"))?;
    loop {
        let line = lines
            .read_line(&mut stream, MAX_LINE)
            .await
            .map_err(|e| format!("login answer: {e}"))?;
        if let Some(rest) = line.strip_prefix(b"hc1 ") {
            return if rest.starts_with(b"OK") {
                Ok(())
            } else {
                Err(format!(
                    "login refused: {}",
                    String::from_utf8_lossy(&rest[..rest.len().min(80)])
                ))
            };
        }
    }
}
