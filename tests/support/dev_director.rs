//! A director in front of the three embedded dev backends (IMAP, POP3,
//! LMTP and ManageSieve each), for the admin API tests that need backends
//! but not real Dovecot: the backends run in this test process on
//! 127.0.0.1:0, the director is the real `mailpin` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use mailpin::dev::{
    spawn_backends, spawn_protocol_servers, DevBackendConfig, DevBackends, DevProtocolServers,
    Registry, Store, DEV_PASSWORD,
};

use super::mailpin::Mailpin;

/// The dev backends' names, in config order.
pub const BACKENDS: [&str; 3] = ["dev1", "dev2", "dev3"];

/// A running director with three dev backends; dropping it stops all.
pub struct DevDirector {
    /// The director (dropped first: it stops before its backends).
    pub mailpin: Mailpin,
    _backends: DevBackends,
    _protocols: DevProtocolServers,
}

impl DevDirector {
    /// Starts the backends and a director with an IMAP and a POP3
    /// listener (plaintext, loopback) and `admin` as the body of its
    /// `[admin]` section (`listen = "127.0.0.1:0"` is added unless given).
    pub fn start(admin: &str) -> DevDirector {
        let any = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let store = Store::default();
        let backends = spawn_backends(
            BACKENDS
                .iter()
                .map(|n| DevBackendConfig::new(*n, any))
                .collect(),
            store.clone(),
            Registry::new(),
        )
        .expect("dev backends start");
        let protocols =
            spawn_protocol_servers(&BACKENDS, store, DEV_PASSWORD).expect("dev protocol servers");
        let listen = if admin.contains("listen") {
            ""
        } else {
            "listen = \"127.0.0.1:0\"\n"
        };
        let mut config = format!("[server]\ncores = 1\n\n[admin]\n{listen}{admin}\n\n");
        for protocol in ["imap", "pop3"] {
            config.push_str(&format!(
                "[[listen]]\nprotocol = \"{protocol}\"\naddr = \"127.0.0.1:0\"\ntls = \"none\"\nplaintext_auth = true\n\n"
            ));
        }
        for name in BACKENDS {
            let imap = backends.addr(name).expect("imap address");
            let p = protocols.addr(name).expect("protocol addresses");
            config.push_str(&format!(
                "[[backend]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nimap = {}\npop3 = {}\nlmtp = {}\nsieve = {}\n\n",
                imap.port(),
                p.pop3.port(),
                p.lmtp.port(),
                p.sieve.port()
            ));
        }
        let mailpin = Mailpin::start(&config, 2);
        DevDirector {
            mailpin,
            _backends: backends,
            _protocols: protocols,
        }
    }

    /// The director's config file.
    pub fn config_path(&self) -> PathBuf {
        self.mailpin.dir().join("mailpin.toml")
    }
}

/// Runs `mailpin ARGS...` with extra environment variables; returns (exit
/// code, stdout, stderr).
pub fn run_mailpin(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailpin"));
    cmd.args(args).env_remove("MAILPIN_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run mailpin");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Where `scripts/install-test-deps` puts the tools from PyPI and npm.
pub fn test_cache() -> PathBuf {
    std::env::var_os("MAILPIN_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mailpin-test"))
}

/// `path` inside [`test_cache`] if it exists; otherwise skips (locally) or
/// fails (CI) like [`super::tools::require_tool`].
pub fn require_cached(path: &str) -> Option<PathBuf> {
    let full = test_cache().join(path);
    if full.exists() {
        return Some(full);
    }
    super::tools::skip_or_fail_on(
        &format!("{} not installed", full.display()),
        super::tools::on_ci(),
    );
    None
}

/// `target/ci-artifacts` of this workspace, created.
pub fn artifacts_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/ci-artifacts");
    dir
}
