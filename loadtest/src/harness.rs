//! What every scenario runs against: the simulated backends (the library's
//! dev backends over one store and one live-session registry, in this
//! process: IMAP, and POP3/LMTP/ManageSieve on the same hosts), and the
//! director under test — a `mailpin-loadtest director` child process this
//! harness starts, or an external one (`--target` and friends, for the
//! peers).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mailpin::config::Protocol;
use mailpin::dev::{
    spawn_backends, spawn_protocol_servers_at, DevBackendConfig, DevBackends, DevProtocolServers,
    ProtocolAddrs, Registry, Store, DEV_PASSWORD,
};

use crate::client::conn::{Endpoint, Transport};
use crate::director::{BackendSpec, DirectorProcess};
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
    /// The external target's IMAP address offering STARTTLS (default:
    /// --target).
    #[arg(long, value_name = "HOST:PORT")]
    pub target_starttls: Option<SocketAddr>,
    /// The external target's plaintext POP3 address.
    #[arg(long, value_name = "HOST:PORT")]
    pub target_pop3: Option<SocketAddr>,
    /// The external target's implicit-TLS POP3 address.
    #[arg(long, value_name = "HOST:PORT")]
    pub target_pop3_tls: Option<SocketAddr>,
    /// The external target's POP3 address offering STLS (default:
    /// --target-pop3).
    #[arg(long, value_name = "HOST:PORT")]
    pub target_pop3_starttls: Option<SocketAddr>,
    /// The external target's LMTP address.
    #[arg(long, value_name = "HOST:PORT")]
    pub target_lmtp: Option<SocketAddr>,
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
    /// A mailpin config file for the director the harness starts: its
    /// sections apply (e.g. `[server]` bounds, `[limits]`), except the
    /// listeners, backends, `[tls]`, admin address, cores and drain
    /// timeout, which the harness sets. Checked like `mailpin check` does.
    #[arg(long, value_name = "FILE")]
    pub director_config: Option<PathBuf>,
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
    /// First POP3 port of the simulated backends, numbered like
    /// --backend-port (0: any free ports).
    #[arg(long, default_value_t = 0)]
    pub backend_pop3_port: u16,
    /// First LMTP port of the simulated backends, numbered like
    /// --backend-port (0: any free ports).
    #[arg(long, default_value_t = 0)]
    pub backend_lmtp_port: u16,
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
    protocols: DevProtocolServers,
    director: Option<DirectorProcess>,
    /// Directors that take the load instead of `director` while set (the
    /// `cluster` scenario's members): logins go round them in turn.
    cluster: Vec<DirectorProcess>,
    counters: Arc<Counters>,
    /// The director is told of the backends' IMAP ports only (see
    /// [`Harness::start_imap_only`]).
    imap_only: bool,
}

impl Harness {
    /// Starts the simulated backends and, unless `--target` is given, a
    /// director in front of them.
    pub fn start(args: &CommonArgs) -> Result<Harness, String> {
        Harness::start_with(args, false)
    }

    /// As [`Harness::start`], but the director is told the backends' IMAP
    /// ports only. A simulated backend's kill closes its IMAP listener only
    /// (the POP3, LMTP and ManageSieve servers have no kill switch), and a
    /// director takes a backend down only when every port it checks fails
    /// — a port failing alone keeps the users there. Told IMAP only, the
    /// director checks the other protocols on their default ports, where
    /// nothing listens here (so it shows every backend degraded from the
    /// start), and the IMAP kill is then the whole backend's crash, as a
    /// real crash is. Only for IMAP scenarios.
    pub fn start_imap_only(args: &CommonArgs) -> Result<Harness, String> {
        Harness::start_with(args, true)
    }

    fn start_with(args: &CommonArgs, imap_only: bool) -> Result<Harness, String> {
        procstat::raise_fd_limit();
        let hosts: Vec<IpAddr> = if args.backend_hosts.is_empty() {
            vec![IpAddr::from(Ipv4Addr::LOCALHOST); args.backends.max(1)]
        } else {
            args.backend_hosts.clone()
        };
        // Distinct hosts share each port; backends on one host count up.
        let shared_ports = !args.backend_hosts.is_empty();
        let port = |first: u16, i: usize| match (first, shared_ports) {
            (0, _) => 0,
            (p, true) => p,
            (p, false) => p.saturating_add(u16::try_from(i).unwrap_or(0)),
        };
        let configs: Vec<DevBackendConfig> = hosts
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                DevBackendConfig::new(
                    format!("sim{}", i + 1),
                    SocketAddr::new(*ip, port(args.backend_port, i)),
                )
            })
            .collect();
        let store = Store::new();
        let registry = Registry::new();
        let protocol_addrs: Vec<(String, ProtocolAddrs)> = configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let ip = c.addr.ip();
                let addrs = ProtocolAddrs {
                    pop3: SocketAddr::new(ip, port(args.backend_pop3_port, i)),
                    lmtp: SocketAddr::new(ip, port(args.backend_lmtp_port, i)),
                    sieve: SocketAddr::new(ip, 0),
                };
                (c.name.clone(), addrs)
            })
            .collect();
        let backends = spawn_backends(configs, store.clone(), registry.clone())
            .map_err(|e| format!("simulated backends: {e}"))?;
        let protocols =
            spawn_protocol_servers_at(&protocol_addrs, store, Some(registry), DEV_PASSWORD)
                .map_err(|e| format!("simulated POP3/LMTP backends: {e}"))?;
        let mut harness = Harness {
            args: args.clone(),
            backends: Arc::new(backends),
            protocols,
            director: None,
            cluster: Vec::new(),
            counters: Arc::new(Counters::default()),
            imap_only,
        };
        if !harness.is_external() {
            harness.restart_director()?;
        }
        Ok(harness)
    }

    /// What the director must know of each simulated backend.
    fn backend_specs(&self) -> Vec<BackendSpec> {
        self.backends
            .addrs()
            .iter()
            .map(|(name, imap)| {
                let more = self.protocols.addr(name).filter(|_| !self.imap_only);
                BackendSpec {
                    name: name.clone(),
                    imap: *imap,
                    pop3: more.map(|a| a.pop3.port()),
                    lmtp: more.map(|a| a.lmtp.port()),
                    sieve: more.map(|a| a.sieve.port()),
                }
            })
            .collect()
    }

    /// Starts (again) the director the harness runs, so a measurement
    /// starts from a fresh process. Does nothing for an external target.
    pub fn restart_director(&mut self) -> Result<(), String> {
        if self.is_external() {
            return Ok(());
        }
        self.director = None;
        self.director = Some(DirectorProcess::spawn(
            &self.backend_specs(),
            self.args.cores,
            self.args.splice,
            self.args.director_config.as_deref(),
        )?);
        Ok(())
    }

    /// Starts one more director in front of the simulated backends from
    /// the mailpin config file `config` (e.g. with a `[cluster]` section),
    /// with the harness's cores and splice setting.
    pub fn spawn_director(&self, config: &std::path::Path) -> Result<DirectorProcess, String> {
        DirectorProcess::spawn(
            &self.backend_specs(),
            self.args.cores,
            self.args.splice,
            Some(config),
        )
    }

    /// Makes `directors` the target of the load (logins go round them in
    /// turn, their CPU and memory are summed) until [`Harness::take_cluster`];
    /// an empty list makes the harness's own director the target again.
    pub fn set_cluster(&mut self, directors: Vec<DirectorProcess>) {
        self.cluster = directors;
    }

    /// The directors [`Harness::set_cluster`] set (empty when the
    /// harness's own director is the target).
    pub fn cluster(&self) -> &[DirectorProcess] {
        &self.cluster
    }

    /// Gives back the directors [`Harness::set_cluster`] set, leaving the
    /// harness's own director the target.
    pub fn take_cluster(&mut self) -> Vec<DirectorProcess> {
        std::mem::take(&mut self.cluster)
    }

    /// Where clients of `protocol` connect over `transport`: every
    /// director set by [`Harness::set_cluster`], or the one target.
    pub fn endpoints(
        &self,
        protocol: Protocol,
        transport: Transport,
    ) -> Result<Vec<Endpoint>, String> {
        if self.cluster.is_empty() {
            return Ok(vec![self.endpoint(protocol, transport)?]);
        }
        self.cluster
            .iter()
            .map(|d| {
                d.addrs
                    .get(protocol, transport)
                    .map(|addr| Endpoint { addr, transport })
                    .ok_or_else(|| format!("no {} {} address", protocol.as_str(), transport.name()))
            })
            .collect()
    }

    /// Whether the target is someone else's process (any --target*
    /// address given).
    pub fn is_external(&self) -> bool {
        let a = &self.args;
        [
            a.target,
            a.target_tls,
            a.target_starttls,
            a.target_pop3,
            a.target_pop3_tls,
            a.target_pop3_starttls,
            a.target_lmtp,
        ]
        .iter()
        .any(Option::is_some)
    }

    /// The external target's address for `protocol` over `transport`.
    fn external_addr(&self, protocol: Protocol, transport: Transport) -> Option<SocketAddr> {
        let a = &self.args;
        match (protocol, transport) {
            (Protocol::Imap, Transport::Plain) => a.target,
            (Protocol::Imap, Transport::Tls) => a.target_tls,
            (Protocol::Imap, Transport::Starttls) => a.target_starttls.or(a.target),
            (Protocol::Pop3, Transport::Plain) => a.target_pop3,
            (Protocol::Pop3, Transport::Tls) => a.target_pop3_tls,
            (Protocol::Pop3, Transport::Starttls) => a.target_pop3_starttls.or(a.target_pop3),
            (Protocol::Lmtp, Transport::Plain) => a.target_lmtp,
            _ => None,
        }
    }

    /// Where clients of `protocol` connect over `transport`.
    pub fn endpoint(&self, protocol: Protocol, transport: Transport) -> Result<Endpoint, String> {
        let addr = match &self.director {
            Some(d) => d.addrs.get(protocol, transport),
            None => self.external_addr(protocol, transport),
        };
        addr.map(|addr| Endpoint { addr, transport })
            .ok_or_else(|| {
                format!(
                    "no {} {} address for the target",
                    protocol.as_str(),
                    transport.name()
                )
            })
    }

    /// The first simulated backend's own `protocol` listener (plain), for
    /// baselines that bypass the director.
    pub fn direct_endpoint(&self, protocol: Protocol) -> Result<Endpoint, String> {
        let (name, imap) = self.backends.addrs().first().ok_or("no backend")?;
        let more = self.protocols.addr(name);
        let addr = match protocol {
            Protocol::Imap => Some(*imap),
            Protocol::Pop3 => more.map(|a| a.pop3),
            Protocol::Lmtp => more.map(|a| a.lmtp),
            Protocol::Sieve => more.map(|a| a.sieve),
        };
        addr.map(|addr| Endpoint {
            addr,
            transport: Transport::Plain,
        })
        .ok_or_else(|| format!("no simulated {} backend", protocol.as_str()))
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

    /// Memory and CPU of the target (with descendants) now; summed over
    /// the directors of [`Harness::set_cluster`] while they are the target.
    pub fn target_sample(&self) -> procstat::ProcSample {
        if !self.cluster.is_empty() {
            return self
                .cluster
                .iter()
                .fold(procstat::ProcSample::default(), |sum, d| {
                    let s = procstat::sample(d.pid(), true);
                    procstat::ProcSample {
                        rss_bytes: sum.rss_bytes + s.rss_bytes,
                        cpu: sum.cpu + s.cpu,
                    }
                });
        }
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
