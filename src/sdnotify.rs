//! systemd's service notification protocol (sd_notify(3)), for a unit of
//! `Type=notify`.
//!
//! systemd passes a Unix datagram socket in `NOTIFY_SOCKET` — a file system
//! path, or an abstract name written with a leading `@` — and the service
//! sends it newline-separated `KEY=VALUE` assignments in one datagram:
//! `READY=1` once it serves (systemd then reports the unit as started and
//! runs the units ordered after it), `STOPPING=1` when it begins to shut
//! down, `STATUS=` (free text shown by `systemctl status`) and `MAINPID=`
//! (the process systemd should watch from now on; a binary upgrade
//! announces its successor this way).
//!
//! Nothing here needs a crate: one `sendto` on an unbound datagram socket.
//! Without `NOTIFY_SOCKET` (not started by systemd, or by a unit of another
//! type) every call does nothing. The variable is read at each call and
//! left in the environment, so a process mailpin starts for an upgrade can
//! still reach systemd after the old one sends `MAINPID=`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `fields` as one notification to the socket named in
/// `$NOTIFY_SOCKET`. Returns `Ok(false)` when the variable is unset or
/// empty (nobody to tell), `Ok(true)` once the datagram was sent.
pub fn notify(fields: &[(&str, &str)]) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(socket) if !socket.is_empty() => {
            let socket = socket.into_string().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?;
            notify_to(&socket, fields).map(|()| true)
        }
        _ => Ok(false),
    }
}

/// Sends `fields` as one notification to `socket`: a path, or an abstract
/// socket name written `@name`.
pub fn notify_to(socket: &str, fields: &[(&str, &str)]) -> io::Result<()> {
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(socket)?,
    };
    let message = message(fields);
    let sender = UnixDatagram::unbound()?;
    let sent = sender.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram cut short",
        ));
    }
    Ok(())
}

/// The datagram for `fields`: one `KEY=VALUE` line each. A value cannot
/// span lines in the protocol, so line breaks in it become spaces.
pub fn message(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (key, value) in fields {
        out.push_str(key);
        out.push('=');
        out.extend(
            value
                .chars()
                .map(|c| if c == '\n' || c == '\r' { ' ' } else { c }),
        );
        out.push('\n');
    }
    out
}

/// Tells systemd that the director serves: `READY=1`, with `status` as
/// `STATUS=` and this process as `MAINPID=`. Logs (and otherwise ignores)
/// a failure to send: the director serves either way, and systemd's start
/// timeout reports a readiness that never arrived.
pub fn ready(status: &str) {
    let pid = std::process::id().to_string();
    report(&[("READY", "1"), ("STATUS", status), ("MAINPID", &pid)]);
}

/// Tells systemd that the director is stopping (draining): `STOPPING=1`
/// with `status` as `STATUS=`.
pub fn stopping(status: &str) {
    report(&[("STOPPING", "1"), ("STATUS", status)]);
}

fn report(fields: &[(&str, &str)]) {
    match notify(fields) {
        Ok(true) => {
            tracing::debug!(fields = %message(fields).trim_end().replace('\n', " "), "told systemd")
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify systemd ($NOTIFY_SOCKET)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn message_is_one_line_per_field_without_inner_line_breaks() {
        assert_eq!(
            message(&[("READY", "1"), ("STATUS", "two\nlines\r")]),
            "READY=1\nSTATUS=two lines \n"
        );
    }

    #[test]
    fn sends_to_a_socket_path() {
        let dir = std::env::temp_dir().join(format!("mailpin-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), &[("READY", "1"), ("MAINPID", "42")]).unwrap();
        assert_eq!(receive(&systemd), "READY=1\nMAINPID=42\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("mailpin-sdnotify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), &[("STOPPING", "1")]).unwrap();
        assert_eq!(receive(&systemd), "STOPPING=1\n");
    }

    #[test]
    fn a_missing_socket_is_an_error() {
        let err = notify_to("/nonexistent/mailpin/notify.sock", &[("READY", "1")]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
