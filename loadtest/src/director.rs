//! The director under test when the harness starts one itself.
//!
//! It runs as a separate process — `mailpin-loadtest director`, which
//! builds a [`Config`] in code and calls [`mailpin::launch::launch`] — so
//! its resident memory and CPU time can be read from `/proc` without the
//! load generator's own mixed in. [`DirectorProcess`] starts that
//! subcommand, learns the bound addresses from the one line it prints, and
//! stops it with SIGTERM (then SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use mailpin::config::{Backend, Config, Listen, PemSource, Protocol, TlsConfig, TlsMode};
use mailpin::launch::{launch, run_until_signal};
use mailpin::tls::DevCert;

/// The line prefix by which the subcommand announces its addresses.
const READY_PREFIX: &str = "director-ready";

/// An environment variable holding a command to run the director under,
/// e.g. `heaptrack -o /tmp/director` to see what its memory holds.
pub const WRAPPER_ENV: &str = "MAILPIN_LOADTEST_DIRECTOR_WRAPPER";

/// How many lines a wrapper may print before the director's ready line.
const MAX_LINES_BEFORE_READY: usize = 100;

/// Options of the `director` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct DirectorArgs {
    /// A backend as NAME=HOST:PORT (IMAP); repeat for each.
    #[arg(long = "backend", required = true)]
    pub backends: Vec<String>,
    /// server.cores: worker threads, one pinned core each.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Relay plain sessions with splice(2).
    #[arg(long)]
    pub splice: bool,
}

/// The director configuration the harness runs: a plaintext IMAP listener
/// (LOGIN allowed, as in dev mode) and an implicit-TLS one with a fresh
/// self-signed certificate, both on an ephemeral loopback port.
pub fn config(backends: &[(String, SocketAddr)], cores: usize, splice: bool) -> Config {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let mut plain = Listen::new(Protocol::Imap, loopback);
    plain.plaintext_auth = true;
    let mut implicit = Listen::new(Protocol::Imap, loopback);
    implicit.tls = TlsMode::Implicit;
    let mut config = Config {
        listen: vec![plain, implicit],
        backend: backends
            .iter()
            .map(|(name, addr)| {
                let mut b = Backend::new(name.clone(), addr.ip().to_string());
                b.imap = Some(addr.port());
                b
            })
            .collect(),
        ..Config::default()
    };
    config.server.cores = cores;
    config.server.splice = splice;
    // Several directors may run at once (tests, peers side by side).
    config.admin.listen = loopback;
    config.server.drain_timeout = Duration::from_secs(1);
    config
}

/// Parses `NAME=HOST:PORT`.
fn parse_backend(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("--backend {s:?}: expected NAME=HOST:PORT"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("--backend {s:?}: bad address: {e}"))?;
    Ok((name.to_owned(), addr))
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
    let mut config = config(&backends, args.cores, args.splice);
    config.tls = Some(TlsConfig {
        cert: PemSource::Memory(cert.cert_pem),
        key: PemSource::Memory(cert.key_pem),
        min_version: Default::default(),
    });
    match launch(config) {
        Ok(director) => {
            let addrs = &director.listen_addrs;
            println!(
                "{READY_PREFIX} plain={} tls={}",
                addrs.first().map(|a| a.to_string()).unwrap_or_default(),
                addrs.get(1).map(|a| a.to_string()).unwrap_or_default()
            );
            run_until_signal(director);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailpin-loadtest director: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A director child process started by the harness.
pub struct DirectorProcess {
    child: Child,
    /// The plaintext IMAP listener.
    pub plain: SocketAddr,
    /// The implicit-TLS IMAP listener.
    pub tls: SocketAddr,
    /// server.cores it runs with.
    pub cores: usize,
}

impl DirectorProcess {
    /// Starts `mailpin-loadtest director` in front of `backends` and waits
    /// for its listeners.
    pub fn spawn(
        backends: &[(String, SocketAddr)],
        cores: usize,
        splice: bool,
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
        for (name, addr) in backends {
            cmd.arg("--backend").arg(format!("{name}={addr}"));
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
        let mut process = DirectorProcess {
            child,
            plain: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            cores,
        };
        let (plain, tls) = parsed?;
        process.plain = plain;
        process.tls = tls;
        Ok(process)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    let mut plain = None;
    let mut tls = None;
    for word in rest.split_whitespace() {
        if let Some(a) = word.strip_prefix("plain=") {
            plain = a.parse().ok();
        } else if let Some(a) = word.strip_prefix("tls=") {
            tls = a.parse().ok();
        }
    }
    Some((plain?, tls?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips() {
        let line = format!("{READY_PREFIX} plain=127.0.0.1:1000 tls=127.0.0.1:1001\n");
        let (p, t) = parse_ready(&line).expect("parsed");
        assert_eq!((p.port(), t.port()), (1000, 1001));
        assert!(parse_ready("something else").is_none());
    }

    #[test]
    fn backend_argument_parses() {
        let (name, addr) = parse_backend("b1=127.0.0.1:143").expect("parsed");
        assert_eq!((name.as_str(), addr.port()), ("b1", 143));
        assert!(parse_backend("b1").is_err());
    }
}
