//! One active health check of one backend.
//!
//! `connect` only opens a TCP connection; `banner` also waits for the
//! protocol's greeting (IMAP `* OK`, POP3 `+OK`, LMTP `220`, ManageSieve
//! `OK`); `login` logs a check user in over IMAP and out again, proving the
//! backend's authentication and storage answer. Every check is bounded by
//! `health.timeout` by its caller.

use std::net::SocketAddr;

use monoio::net::TcpStream;

use crate::config::{HealthCheck, Protocol};
use crate::io::write_bytes;
use crate::proto::imap::quote::{write_string, LiteralStyle};
use crate::proto::lines::LineReader;

/// Longest greeting or reply line a check reads.
const MAX_LINE: usize = 8192;

/// The greeting prefix that means "ready" for a protocol.
pub fn ready_prefix(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Imap => b"* OK",
        Protocol::Pop3 => b"+OK",
        Protocol::Lmtp => b"220",
        Protocol::Sieve => b"OK",
    }
}

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
    let greeting = lines
        .read_line(&mut stream, MAX_LINE)
        .await
        .map_err(|e| format!("greeting: {e}"))?;
    if !greeting.starts_with(ready_prefix(protocol)) {
        return Err(format!(
            "greeting {:?}",
            String::from_utf8_lossy(&greeting[..greeting.len().min(60)])
        ));
    }
    if kind == HealthCheck::Banner {
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
