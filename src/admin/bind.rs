//! Binding the admin API's sockets at launch, before the cores start:
//! the TCP listener, the Unix socket with its file mode, and the access
//! rules with the token read from `admin.token_file`.

use std::os::unix::net::UnixListener;
use std::path::Path;

use crate::admin::access::Access;
use crate::admin::AdminListeners;
use crate::config::AdminConfig;

/// Binds the admin API's TCP listener and, if configured, its Unix
/// socket, and reads its token (the error says which key failed).
pub fn bind_admin(admin: &AdminConfig) -> Result<AdminListeners, String> {
    let access = Access::from_config(admin)?;
    let tcp = std::net::TcpListener::bind(admin.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("admin.listen {}: {e}", admin.listen))?;
    let unix = if admin.socket.as_os_str().is_empty() {
        None
    } else {
        let listener = bind_admin_socket(&admin.socket, admin.socket_mode)
            .map_err(|e| format!("admin.socket {}: {e}", admin.socket.display()))?;
        Some((listener, admin.socket.clone()))
    };
    Ok(AdminListeners { tcp, unix, access })
}

/// Binds the admin socket at `path` with file mode `mode`. A stale socket
/// file (nothing accepts on it) is replaced; a live one is an error. The
/// socket is created under a umask that gives no one else any access, so
/// it is never open wider than `mode`, even for a moment.
pub fn bind_admin_socket(path: &Path, mode: u32) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    // SAFETY: umask only swaps the process's file creation mask; it is
    // restored at once (the director binds this before starting its cores).
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn socket_gets_its_mode_and_replaces_a_stale_one() {
        let dir = std::env::temp_dir().join(format!("mailpin-bind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.sock");
        let first = bind_admin_socket(&path, 0o660).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind_admin_socket(&path, 0o600).unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::AddrInUse,
            "a live socket stays"
        );
        drop(first);
        let _second = bind_admin_socket(&path, 0o600).expect("a stale socket is replaced");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(dir.join("plain"), "x").unwrap();
        assert!(
            bind_admin_socket(&dir.join("plain"), 0o600).is_err(),
            "not a socket"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
