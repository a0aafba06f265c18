//! A scratch directory for one test's Dovecot cluster, unique across the
//! test processes running at once, removed on drop.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Counts the directories this process created, so names never repeat.
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system temp dir, named after this process
/// (`mpdc-PID-N`), world-traversable (mode 0755) so Dovecot's unprivileged
/// processes can reach the mail store inside it. Removed with everything
/// in it when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the directory; skips names left behind by an earlier process
    /// that had the same PID.
    pub fn new() -> io::Result<TempDir> {
        let base = std::env::temp_dir();
        loop {
            let seq = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("mpdc-{}-{seq}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
                    return Ok(TempDir { path });
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
