//! Binary upgrade without a refused connection and without a split
//! (`kill -USR2`, `mailpin ctl upgrade`, `POST /upgrade`).
//!
//! The old process starts the binary it was started from (the path is
//! resolved at start, so a package that replaced the file is what runs)
//! as `mailpin run -c SAME_FILE`, handing it one end of a Unix socketpair,
//! its only descriptor without close-on-exec, named by
//! [`UPGRADE_FD_ENV`]. Over it ([`wire`]):
//!
//! 1. The new process loads and checks the configuration and says Hello.
//! 2. The old one stops accepting (pending accepts cancelled, connections
//!    that raced in served, no `shutdown()` of the shared sockets), stops
//!    opening sessions, and sends every listening socket ([`fds`]:
//!    SCM_RIGHTS) and its routing state: every assignment with the
//!    sessions still open there. Connections that arrive meanwhile wait in
//!    the sockets' backlog: nobody refuses or resets them.
//! 3. The new process takes the state over (a user with sessions in the
//!    old process keeps that backend: they count as its sessions until
//!    the old process reports each ended), binds only listeners new in
//!    its configuration, starts accepting and reports Ready.
//! 4. The old process hands systemd the service (`MAINPID=`), stops its
//!    admin API, says goodbye to its clients before login, drains the
//!    logged-in ones until `server.drain_timeout` and exits 0. Meanwhile it
//!    reports every session that ends and carries out the admin actions
//!    the new process forwards (kick, move, flush, backend states), so no
//!    user is on two backends at any moment.
//!
//! If the new process fails or is not ready within [`READY_LIMIT`], the
//! old one kills it and serves on as before. A further upgrade is refused
//! (409) while a predecessor still drains: the new process upgrades once
//! the old one has exited, so there is never a chain of three.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

pub mod fds;
pub mod predecessor;
pub mod successor;
pub mod wire;

/// The environment variable naming the inherited link's descriptor.
pub const UPGRADE_FD_ENV: &str = "MAILPIN_UPGRADE_FD";

/// How long the new process has, from its start, to report ready.
pub const READY_LIMIT: Duration = Duration::from_secs(10);

static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Notes the path of the running binary (call at start, before anything
/// can replace the file).
pub fn remember_binary() {
    BINARY.get_or_init(|| std::env::current_exe().ok());
}

/// The binary an upgrade starts.
pub fn binary() -> Option<PathBuf> {
    BINARY.get().cloned().flatten()
}
