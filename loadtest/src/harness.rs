//! What every scenario runs against: the simulated backends (the library's
//! dev backends over one store and one live-session registry, in this
//! process), and the director under test — a `mailpin-loadtest director`
//! child process this harness starts, or an external one (`--target`, for
//! the peers).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mailpin::dev::{spawn_backends, DevBackendConfig, DevBackends, Registry, Store};

use crate::client::conn::Endpoint;
use crate::director::DirectorProcess;
use crate::metrics::Counters;
use crate::procstat;
use crate::timeline::Observation;

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Load an external director or proxy at this plaintext IMAP address
    /// instead of starting mailpin (it must forward to the simulated
    /// backends, see --backend-port).
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<SocketAddr>,
    /// The external target's implicit-TLS IMAP address.
    #[arg(long, value_name = "HOST:PORT")]
    pub target_tls: Option<SocketAddr>,
    /// The external target's main process: its memory and CPU (with all
    /// its descendants) are read from /proc.
    #[arg(long, value_name = "PID")]
    pub target_pid: Option<u32>,
    /// A name for the target in reports.
    #[arg(long, default_value = "mailpin")]
    pub target_name: String,
    /// server.cores of the director the harness starts.
    #[arg(long, default_value_t = 1)]
    pub cores: usize,
    /// Start the director with server.splice = true.
    #[arg(long)]
    pub splice: bool,
    /// How many simulated backends.
    #[arg(long, default_value_t = 3)]
    pub backends: usize,
    /// First port of the simulated backends (0: any free ports). Peers are
    /// configured for 127.0.0.1:PORT, PORT+1, ...
    #[arg(long, default_value_t = 0)]
    pub backend_port: u16,
    /// Loopback addresses for the simulated backends, one each, all on
    /// --backend-port (Dovecot director tells backends apart by address):
    /// e.g. 127.0.0.11,127.0.0.12,127.0.0.13. Overrides --backends.
    #[arg(long, value_delimiter = ',', value_name = "IP,IP,...")]
    pub backend_hosts: Vec<std::net::IpAddr>,
    /// Client threads (each its own io_uring runtime, pinned from the
    /// highest core down).
    #[arg(long, default_value_t = 1)]
    pub client_threads: usize,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an SVG timeline to this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// The running setup of one scenario.
pub struct Harness {
    /// The options it was started with.
    pub args: CommonArgs,
    backends: Arc<DevBackends>,
    director: Option<DirectorProcess>,
    counters: Arc<Counters>,
}

impl Harness {
    /// Starts the simulated backends and, unless `--target` is given, a
    /// director in front of them.
    pub fn start(args: &CommonArgs) -> Result<Harness, String> {
        procstat::raise_fd_limit();
        let configs: Vec<DevBackendConfig> = if args.backend_hosts.is_empty() {
            (0..args.backends.max(1))
                .map(|i| {
                    let port = match args.backend_port {
                        0 => 0,
                        p => p + u16::try_from(i).unwrap_or(0),
                    };
                    DevBackendConfig::new(
                        format!("sim{}", i + 1),
                        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                    )
                })
                .collect()
        } else {
            args.backend_hosts
                .iter()
                .enumerate()
                .map(|(i, ip)| {
                    DevBackendConfig::new(
                        format!("sim{}", i + 1),
                        SocketAddr::new(*ip, args.backend_port),
                    )
                })
                .collect()
        };
        let backends = spawn_backends(configs, Store::new(), Registry::new())
            .map_err(|e| format!("simulated backends: {e}"))?;
        let mut harness = Harness {
            args: args.clone(),
            backends: Arc::new(backends),
            director: None,
            counters: Arc::new(Counters::default()),
        };
        if args.target.is_none() && args.target_tls.is_none() {
            harness.restart_director()?;
        }
        Ok(harness)
    }

    /// Starts (again) the director the harness runs, so a measurement
    /// starts from a fresh process. Does nothing for an external target.
    pub fn restart_director(&mut self) -> Result<(), String> {
        if self.is_external() {
            return Ok(());
        }
        self.director = None;
        self.director = Some(DirectorProcess::spawn(
            self.backends.addrs(),
            self.args.cores,
            self.args.splice,
        )?);
        Ok(())
    }

    /// Whether the target is someone else's process.
    pub fn is_external(&self) -> bool {
        self.args.target.is_some() || self.args.target_tls.is_some()
    }

    /// Where clients connect, plain or TLS.
    pub fn endpoint(&self, tls: bool) -> Result<Endpoint, String> {
        let addr = match (&self.director, tls) {
            (Some(d), false) => Some(d.plain),
            (Some(d), true) => Some(d.tls),
            (None, false) => self.args.target,
            (None, true) => self.args.target_tls,
        };
        addr.map(|addr| Endpoint { addr, tls })
            .ok_or_else(|| format!("no {} address for the target", mode_name(tls)))
    }

    /// The target's process, if known.
    pub fn target_pid(&self) -> Option<u32> {
        self.director
            .as_ref()
            .map(|d| d.pid())
            .or(self.args.target_pid)
    }

    /// server.cores of the director the harness runs (None if external).
    pub fn director_cores(&self) -> Option<usize> {
        self.director.as_ref().map(|d| d.cores)
    }

    /// The simulated backends.
    pub fn backends(&self) -> &DevBackends {
        &self.backends
    }

    /// A shared handle to the simulated backends (for events that kill
    /// one while the monitor runs).
    pub fn backends_handle(&self) -> Arc<DevBackends> {
        self.backends.clone()
    }

    /// Their names, in order.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends
            .addrs()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Starts a new phase with zeroed counters and returns them.
    pub fn fresh_counters(&mut self) -> Arc<Counters> {
        self.counters = Arc::new(Counters::default());
        self.counters.clone()
    }

    /// Memory and CPU of the target (with descendants) now.
    pub fn target_sample(&self) -> procstat::ProcSample {
        self.target_pid()
            .map(|pid| procstat::sample(pid, true))
            .unwrap_or_default()
    }

    /// Invariant violations the registry has recorded so far.
    pub fn violations(&self) -> usize {
        self.backends.registry().violation_count()
    }

    /// Everything the monitor samples.
    pub fn observe(&self, start: Instant) -> Observation {
        let (ok, errors, active, bytes) = self.counters.snapshot();
        let registry = self.backends.registry();
        let target = self.target_sample();
        Observation {
            t: start.elapsed().as_secs_f64(),
            ok,
            errors,
            active,
            bytes,
            per_backend: self
                .backends
                .addrs()
                .iter()
                .map(|(n, _)| registry.sessions_on(n))
                .collect(),
            rss_bytes: target.rss_bytes,
            director_cpu_s: target.cpu.as_secs_f64(),
        }
    }
}

/// "plain" or "TLS".
pub fn mode_name(tls: bool) -> &'static str {
    if tls {
        "TLS"
    } else {
        "plain"
    }
}
