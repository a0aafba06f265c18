//! The director under test when the harness starts one itself.
//!
//! It runs as a separate process — `mailpin-loadtest director`, which
//! builds a [`Config`] in code and calls [`mailpin::launch::launch`] — so
//! its resident memory and CPU time can be read from `/proc` without the
//! load generator's own mixed in. [`DirectorProcess`] starts that
//! subcommand, learns the bound addresses from the one line it prints, and
//! stops it with SIGTERM (then SIGKILL) when dropped. It listens for IMAP
//! (plain, implicit TLS, STARTTLS), POP3 (plain, implicit TLS, STLS), LMTP
//! and ManageSieve (plain).
//!
//! `--config FILE` (the harness's `--director-config`) starts it from a
//! mailpin config file instead of the defaults: every section of that file
//! applies (`[server]`, `[limits]`, `[health]`...) except what the harness
//! owns — the listeners, the backends, `[tls]`, the admin address,
//! `server.cores` and `server.drain_timeout`.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use mailpin::config::{
    read_master_password, Backend, Cidr, Config, Listen, PemSource, Protocol, TlsConfig, TlsMode,
};
use mailpin::launch::launch;
use mailpin::supervise::run_until_signal;
use mailpin::tls::DevCert;

use crate::client::conn::Transport;

/// The line prefix by which the subcommand announces its addresses.
const READY_PREFIX: &str = "director-ready";

/// The key of the admin API's address in the ready line.
const ADMIN_KEY: &str = "admin";

/// An environment variable holding a command to run the director under,
/// e.g. `heaptrack -o /tmp/director` to see what its memory holds.
pub const WRAPPER_ENV: &str = "MAILPIN_LOADTEST_DIRECTOR_WRAPPER";

/// How many lines a wrapper may print before the director's ready line.
const MAX_LINES_BEFORE_READY: usize = 100;

/// One listener of the director the harness runs.
struct ListenerSpec {
    /// Its key in the ready line.
    key: &'static str,
    protocol: Protocol,
    transport: Transport,
}

/// The director's listeners, in config order. The plain IMAP and POP3
/// listeners allow passwords without TLS (as in dev mode); the STARTTLS
/// ones do not, so their clients must upgrade first.
const LISTENERS: [ListenerSpec; 8] = [
    ListenerSpec {
        key: "plain",
        protocol: Protocol::Imap,
        transport: Transport::Plain,
    },
    ListenerSpec {
        key: "tls",
        protocol: Protocol::Imap,
        transport: Transport::Tls,
    },
    ListenerSpec {
        key: "starttls",
        protocol: Protocol::Imap,
        transport: Transport::Starttls,
    },
    ListenerSpec {
        key: "pop3",
        protocol: Protocol::Pop3,
        transport: Transport::Plain,
    },
    ListenerSpec {
        key: "pop3-tls",
        protocol: Protocol::Pop3,
        transport: Transport::Tls,
    },
    ListenerSpec {
        key: "pop3-starttls",
        protocol: Protocol::Pop3,
        transport: Transport::Starttls,
    },
    ListenerSpec {
        key: "lmtp",
        protocol: Protocol::Lmtp,
        transport: Transport::Plain,
    },
    ListenerSpec {
        key: "sieve",
        protocol: Protocol::Sieve,
        transport: Transport::Plain,
    },
];

/// Options of the `director` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct DirectorArgs {
    /// A backend as NAME=HOST:IMAP_PORT[,pop3=PORT][,lmtp=PORT]; repeat
    /// for each.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
    /// server.cores: worker threads, one pinned core each.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Relay plain sessions with splice(2).
    #[arg(long)]
    pub splice: bool,
    /// A mailpin config file whose sections apply (all but the listeners,
    /// backends, [tls], admin address, cores and drain timeout).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Where one simulated backend listens, as the director must know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Its name.
    pub name: String,
    /// Its IMAP address (the host of every protocol).
    pub imap: SocketAddr,
    /// Its POP3 port, if it serves POP3.
    pub pop3: Option<u16>,
    /// Its LMTP port, if it serves LMTP.
    pub lmtp: Option<u16>,
    /// Its ManageSieve port, if it serves ManageSieve.
    pub sieve: Option<u16>,
}

impl BackendSpec {
    /// The `--backend` argument that stands for it.
    fn argument(&self) -> String {
        let mut arg = format!("{}={}", self.name, self.imap);
        if let Some(p) = self.pop3 {
            arg.push_str(&format!(",pop3={p}"));
        }
        if let Some(p) = self.lmtp {
            arg.push_str(&format!(",lmtp={p}"));
        }
        if let Some(p) = self.sieve {
            arg.push_str(&format!(",sieve={p}"));
        }
        arg
    }
}

/// The director configuration the harness runs: `base` (the defaults, or
/// a `--config` file) with the [`LISTENERS`], each on an ephemeral
/// loopback port, in front of `backends`.
pub fn config(base: Config, backends: &[BackendSpec], cores: usize, splice: bool) -> Config {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let listen = LISTENERS
        .iter()
        .map(|spec| {
            let mut l = Listen::new(spec.protocol, loopback);
            l.tls = match spec.transport {
                Transport::Plain => TlsMode::None,
                Transport::Starttls => TlsMode::Starttls,
                Transport::Tls => TlsMode::Implicit,
            };
            l.plaintext_auth = spec.transport == Transport::Plain;
            l
        })
        .collect();
    let mut config = Config {
        listen,
        backend: backends
            .iter()
            .map(|spec| {
                let mut b = Backend::new(spec.name.clone(), spec.imap.ip().to_string());
                b.imap = Some(spec.imap.port());
                b.pop3 = spec.pop3;
                b.lmtp = spec.lmtp;
                b.sieve = spec.sieve;
                b
            })
            .collect(),
        tls: None,
        ..base
    };
    config.server.cores = cores;
    config.server.splice |= splice;
    // Several directors may run at once (tests, peers side by side).
    config.admin.listen = loopback;
    config.server.drain_timeout = Duration::from_secs(1);
    config
}

/// The base configuration without a `--config` file: mailpin's defaults,
/// except the connection and login limits that would count the load test
/// itself rather than the director's capacity: the real clients connect
/// from 127.0.0.1 (trusted: no per-address limits, no failed-login delay),
/// thousands a second, with many sessions per user. Attackers of the
/// `hostile` scenario connect from other loopback addresses and meet the
/// per-address limits as any client would.
pub fn default_base() -> Config {
    let mut config = Config::default();
    config.limits.trusted = Cidr::new(Ipv4Addr::LOCALHOST.into(), 32)
        .into_iter()
        .collect();
    config.limits.prelogin_total = 0;
    config.limits.sessions_per_user_ip = 0;
    config.limits.logins_per_backend = 0;
    config
}

/// A placeholder listener and backend appended to a `--config` file so it
/// validates on its own; the harness replaces both.
const CONFIG_PLACEHOLDERS: &str = "\n[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:0\"\n\n[[backend]]\nname = \"placeholder\"\nhost = \"127.0.0.1\"\n";

/// Reads a `--config` file: a mailpin config, validated by mailpin's own
/// checks, that may leave out the listeners and backends.
pub fn base_config(path: &Path) -> Result<Config, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let has = |section: &str| text.lines().any(|l| l.trim_start().starts_with(section));
    if has("[[listen]]") || has("[[backend]]") || has("[tls]") {
        return Err(format!(
            "--config {}: the harness owns [[listen]], [[backend]] and [tls]; leave them out",
            path.display()
        ));
    }
    let mut config = Config::from_toml_str(&format!("{text}\n{CONFIG_PLACEHOLDERS}"))
        .map_err(|e| format!("--config {}: {e}", path.display()))?;
    // Live IMAP moves (issue 12): the master password, from its file
    // (relative to the config file), as `Config::load` reads it.
    let file = &config.backends.master_password_file;
    if !file.as_os_str().is_empty() {
        let file = path.parent().unwrap_or(Path::new("")).join(file);
        config.backends.master_password =
            read_master_password(&file).map_err(|e| format!("--config {}: {e}", path.display()))?;
    }
    Ok(config)
}

/// Parses `NAME=HOST:PORT[,pop3=PORT][,lmtp=PORT][,sieve=PORT]`.
fn parse_backend(s: &str) -> Result<BackendSpec, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("--backend {s:?}: expected NAME=HOST:PORT"))?;
    let mut parts = rest.split(',');
    let imap = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("--backend {s:?}: bad address: {e}"))?;
    let mut spec = BackendSpec {
        name: name.to_owned(),
        imap,
        pop3: None,
        lmtp: None,
        sieve: None,
    };
    for part in parts {
        let (key, port) = part
            .split_once('=')
            .ok_or_else(|| format!("--backend {s:?}: expected KEY=PORT after a comma"))?;
        let port: u16 = port
            .parse()
            .map_err(|e| format!("--backend {s:?}: bad port: {e}"))?;
        match key {
            "pop3" => spec.pop3 = Some(port),
            "lmtp" => spec.lmtp = Some(port),
            "sieve" => spec.sieve = Some(port),
            _ => return Err(format!("--backend {s:?}: unknown key {key:?}")),
        }
    }
    Ok(spec)
}

/// Runs the `director` subcommand: serves until SIGTERM.
pub fn run_subcommand(args: &DirectorArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILPIN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    crate::procstat::raise_fd_limit();
    mailpin::signals::block();
    let backends: Result<Vec<_>, _> = args.backends.iter().map(|b| parse_backend(b)).collect();
    let backends = match backends {
        Ok(b) => b,
        Err(e) => {
            eprintln!("mailpin-loadtest director: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cert = match DevCert::generate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mailpin-loadtest director: certificate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base = match args.config.as_deref().map(base_config).transpose() {
        Ok(base) => base.unwrap_or_else(default_base),
        Err(e) => {
            eprintln!("mailpin-loadtest director: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = config(base, &backends, args.cores, args.splice);
    config.tls = Some(TlsConfig {
        cert: PemSource::Memory(cert.cert_pem),
        key: PemSource::Memory(cert.key_pem),
        min_version: Default::default(),
    });
    if let Err(e) = config.validate() {
        eprintln!("mailpin-loadtest director: {e}");
        return ExitCode::FAILURE;
    }
    match launch(config) {
        Ok(director) => {
            let mut line = READY_PREFIX.to_owned();
            for (spec, addr) in LISTENERS.iter().zip(&director.listen_addrs) {
                line.push_str(&format!(" {}={addr}", spec.key));
            }
            if let Some(admin) = director.admin_addr {
                line.push_str(&format!(" {ADMIN_KEY}={admin}"));
            }
            println!("{line}");
            run_until_signal(director);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailpin-loadtest director: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The addresses of the director's listeners (and of its admin API).
#[derive(Debug, Clone, Default)]
pub struct DirectorAddrs {
    listeners: Vec<(Protocol, Transport, SocketAddr)>,
    /// Where its admin API listens (drain, flush, /metrics).
    pub admin: Option<SocketAddr>,
}

impl DirectorAddrs {
    /// Where its admin API (HTTP) listens, if it announced it.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The listener for `protocol` over `transport`, if there is one.
    pub fn get(&self, protocol: Protocol, transport: Transport) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(p, t, _)| *p == protocol && *t == transport)
            .map(|(_, _, a)| *a)
    }
}

/// A director child process started by the harness.
pub struct DirectorProcess {
    child: Child,
    /// Its listeners.
    pub addrs: DirectorAddrs,
    /// server.cores it runs with.
    pub cores: usize,
}

impl DirectorProcess {
    /// Starts `mailpin-loadtest director` in front of `backends` and waits
    /// for its listeners.
    pub fn spawn(
        backends: &[BackendSpec],
        cores: usize,
        splice: bool,
        config: Option<&Path>,
    ) -> Result<DirectorProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let wrapper = std::env::var(WRAPPER_ENV).unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.arg("director").arg("--cores").arg(cores.to_string());
        if splice {
            cmd.arg("--splice");
        }
        if let Some(path) = config {
            cmd.arg("--config").arg(path);
        }
        for b in backends {
            cmd.arg("--backend").arg(b.argument());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the director: {e}"))?;
        let stdout = child.stdout.take().ok_or("no director stdout")?;
        // A wrapper (a profiler) may print lines of its own first.
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let mut parsed = None;
        for _ in 0..MAX_LINES_BEFORE_READY {
            line.clear();
            match stdout.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            parsed = parse_ready(&line);
            if parsed.is_some() {
                break;
            }
        }
        let parsed =
            parsed.ok_or_else(|| format!("the director did not start (last said {line:?})"));
        // Built before the check so a failed start still stops the child.
        let mut process = DirectorProcess {
            child,
            addrs: DirectorAddrs::default(),
            cores,
        };
        process.addrs = parsed?;
        Ok(process)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child with SIGKILL (a crash: no drain, no lease revoke)
    /// and reaps it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by its pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DirectorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the ready line: every listener of [`LISTENERS`] with its
/// address, and the admin API's address if given.
fn parse_ready(line: &str) -> Option<DirectorAddrs> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    let mut addrs = DirectorAddrs::default();
    for word in rest.split_whitespace() {
        let (key, addr) = word.split_once('=')?;
        if key == ADMIN_KEY {
            addrs.admin = Some(addr.parse().ok()?);
            continue;
        }
        let spec = LISTENERS.iter().find(|s| s.key == key)?;
        addrs
            .listeners
            .push((spec.protocol, spec.transport, addr.parse().ok()?));
    }
    (addrs.listeners.len() == LISTENERS.len()).then_some(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let mut line = READY_PREFIX.to_owned();
        for (i, spec) in LISTENERS.iter().enumerate() {
            line.push_str(&format!(" {}=127.0.0.1:{}", spec.key, 1000 + i));
        }
        let addrs = parse_ready(&format!("{line}\n")).expect("parsed");
        let port = |p, t| addrs.get(p, t).map(|a| a.port());
        assert_eq!(port(Protocol::Imap, Transport::Plain), Some(1000));
        assert_eq!(port(Protocol::Imap, Transport::Tls), Some(1001));
        assert_eq!(port(Protocol::Lmtp, Transport::Plain), Some(1006));
        assert_eq!(port(Protocol::Lmtp, Transport::Tls), None);
        assert_eq!(addrs.admin, None);
        let with_admin = parse_ready(&format!("{line} {ADMIN_KEY}=127.0.0.1:9\n")).expect("parsed");
        assert_eq!(with_admin.admin().map(|a| a.port()), Some(9));
        assert!(parse_ready("something else").is_none());
        assert!(parse_ready(&format!("{READY_PREFIX} plain=127.0.0.1:1")).is_none());
        let with_admin =
            parse_ready(&format!("{line} {ADMIN_KEY}=127.0.0.1:9120")).expect("parsed");
        assert_eq!(with_admin.admin.map(|a| a.port()), Some(9120));
    }

    #[test]
    fn backend_argument_round_trips() {
        let spec = BackendSpec {
            name: "b1".into(),
            imap: "127.0.0.1:143".parse().expect("address"),
            pop3: Some(110),
            lmtp: Some(24),
            sieve: Some(4190),
        };
        assert_eq!(parse_backend(&spec.argument()), Ok(spec.clone()));
        let imap_only = parse_backend("b1=127.0.0.1:143").expect("parsed");
        assert_eq!((imap_only.imap.port(), imap_only.lmtp), (143, None));
        assert!(parse_backend("b1").is_err());
        assert!(parse_backend("b1=127.0.0.1:143,smtp=25").is_err());
    }

    #[test]
    fn a_config_file_sets_all_but_what_the_harness_owns() {
        let dir = std::env::temp_dir();
        let path = dir.join(format!("mailpin-loadtest-base-{}.toml", std::process::id()));
        std::fs::write(&path, "[server]\nmax_line = 4096\ncores = 7\n").expect("written");
        let base = base_config(&path).expect("valid");
        let spec = parse_backend("b1=127.0.0.1:143").expect("parsed");
        let c = config(base, &[spec], 1, false);
        assert_eq!((c.server.max_line, c.server.cores), (4096, 1));
        assert_eq!(c.listen.len(), LISTENERS.len());
        assert_eq!(c.backend.len(), 1);
        assert_eq!(c.backend[0].name, "b1");
        std::fs::write(&path, "[server]\nno_such_key = 1\n").expect("written");
        assert!(base_config(&path).is_err(), "unknown keys are errors");
        std::fs::write(
            &path,
            "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:1\"\n",
        )
        .expect("written");
        let owned = base_config(&path).expect_err("listeners are the harness's");
        assert!(owned.contains("harness owns"), "{owned}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn config_has_every_listener_and_backend_port() {
        let spec = parse_backend("b1=127.0.0.1:143,pop3=110,lmtp=24").expect("parsed");
        let c = config(Config::default(), &[spec], 1, false);
        assert_eq!(c.listen.len(), LISTENERS.len());
        assert!(c.listen.iter().any(|l| l.protocol == Protocol::Lmtp));
        assert_eq!(
            (c.backend[0].pop3, c.backend[0].lmtp),
            (Some(110), Some(24))
        );
    }
}
