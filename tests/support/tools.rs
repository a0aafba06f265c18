//! Finding the external programs the integration tests drive (dovecot,
//! doveadm, python3, swaks, curl) and deciding what a missing one means:
//! on CI (`CI=true`) the test fails, on a developer machine it is skipped.

use std::env;
use std::path::{Path, PathBuf};

/// Directories searched after `PATH`: Dovecot installs into `/usr/sbin`,
/// which a non-root `PATH` often lacks.
const SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// True when the tests run on CI, where a missing tool is a failure.
pub fn on_ci() -> bool {
    env::var("CI")
        .map(|value| {
            matches!(
                value.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes"
            )
        })
        .unwrap_or(false)
}

/// The full path of the executable `name`, searched in `PATH` and then in
/// the sbin directories; `None` when it is not installed.
pub fn tool_path(name: &str) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).collect())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Reports that a test cannot run for `reason`: panics on CI (so the test
/// fails there), otherwise prints a skip line to stderr. Returns false so
/// callers can write `if !skip_or_fail(..) { return; }`.
fn skip_or_fail(reason: &str) -> bool {
    skip_or_fail_on(reason, on_ci())
}

/// [`skip_or_fail`] with the CI decision made by the caller.
pub fn skip_or_fail_on(reason: &str, ci: bool) -> bool {
    if ci {
        panic!("{reason} and CI=true: run scripts/install-test-deps (as root) before the tests");
    }
    eprintln!("skipping: {reason} (run scripts/install-test-deps)");
    false
}

/// True if the program `name` is installed. When it is missing: with
/// `CI=true` this panics with a clear message (the test must fail on CI);
/// otherwise it prints "skipping: NAME not installed" to stderr and returns
/// false, and the caller returns early.
pub fn require_tool(name: &str) -> bool {
    if tool_path(name).is_some() {
        return true;
    }
    skip_or_fail(&format!("{name} not installed"))
}

/// True if real Dovecot backends can run here: `dovecot` and `doveadm` are
/// installed and the tests run as root (Dovecot binds ports below 1024 and
/// switches to the mail user). Missing pieces skip or fail like
/// [`require_tool`].
pub fn require_dovecot() -> bool {
    if !require_tool("dovecot") || !require_tool("doveadm") {
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return skip_or_fail("real Dovecot backends need root");
    }
    true
}
