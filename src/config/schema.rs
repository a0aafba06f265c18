//! The sections of the configuration file (DESIGN.md §4, a contract): their
//! keys, types and defaults. Every key has a default except the few that are
//! inherently required (a listener's protocol and address, a backend's name
//! and host, the certificate and key of a `[tls]` section).
//!
//! Every struct denies unknown keys, so a misspelt key is an error rather
//! than a silently ignored line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{Deserialize, Deserializer};

use super::cidr::Cidr;
use super::duration;
use super::values::{self, Secret, TlsVersion};

/// `[server]`: the director process itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Worker threads, one per pinned core; 0 = all online cores.
    pub cores: usize,
    /// How a login name becomes a user key: `%u` login name, `%n` local
    /// part, `%d` domain; `%L…` lower-cases. Parsed by the routing code.
    pub user_key: String,
    /// An assignment outlives its user's last session this long.
    #[serde(deserialize_with = "duration::deserialize")]
    pub user_expire: Duration,
    /// A client that has not logged in by then is closed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub prelogin_timeout: Duration,
    /// On SIGTERM, established sessions get this long to finish.
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain_timeout: Duration,
    /// Bound on a TLS handshake (implicit TLS or after STARTTLS).
    #[serde(deserialize_with = "duration::deserialize")]
    pub handshake_timeout: Duration,
    /// Longest pre-login command line, in bytes, before the client is refused.
    pub max_line: usize,
    /// Pre-login commands that fail or are unknown before the client is closed.
    pub max_bad_commands: u32,
    /// Relay plaintext-to-plaintext sessions with splice(2) (zero copy).
    pub splice: bool,
    /// Which I/O driver the cores run.
    pub driver: Driver,
    /// A logged-in session whose client (or backend) has not taken any of
    /// the bytes waiting for it for this long is closed, backend first.
    #[serde(deserialize_with = "duration::deserialize")]
    pub stall_timeout: Duration,
    /// TCP keepalive on client and backend connections: idle time before
    /// the first probe; "0s" turns keepalive off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub keepalive_idle: Duration,
    /// TCP keepalive: time between probes.
    #[serde(deserialize_with = "duration::deserialize")]
    pub keepalive_interval: Duration,
    /// TCP keepalive: unanswered probes before the connection is dropped.
    pub keepalive_probes: u32,

    // SASL mechanisms (issue 13).
    /// The SASL mechanisms offered before login, in this order, in IMAP
    /// CAPABILITY, POP3 CAPA and ManageSieve's SASL capability. Only
    /// mechanisms mailpin can route: PLAIN, LOGIN (decoded and replayed),
    /// OAUTHBEARER, XOAUTH2, SCRAM-SHA-1, SCRAM-SHA-256 (relayed).
    pub sasl_mechanisms: Vec<String>,

    // Live IMAP moves (issue 12).
    /// Move idle IMAP sessions to the new backend live when their user
    /// moves (needs `backends.master_user`; without it, sessions end).
    pub live_move: bool,
}

impl ServerConfig {
    /// The mechanisms of `sasl_mechanisms` that mailpin knows, in order
    /// and without repeats (validation refuses the others).
    pub fn sasl_mechanisms(&self) -> Vec<crate::proto::sasl_passthrough::Mechanism> {
        let mut out = Vec::new();
        for m in &self.sasl_mechanisms {
            if let Some(m) = crate::proto::sasl_passthrough::Mechanism::parse(m.as_bytes()) {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        out
    }

    /// The keepalive settings of client and backend connections.
    pub fn keepalive(&self) -> crate::sockopt::Keepalive {
        crate::sockopt::Keepalive {
            idle: self.keepalive_idle,
            interval: self.keepalive_interval,
            probes: self.keepalive_probes,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            cores: 0,
            user_key: "%Lu".to_owned(),
            user_expire: Duration::from_secs(15 * 60),
            prelogin_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_line: 8192,
            max_bad_commands: 10,
            splice: false,
            driver: Driver::IoUring,
            stall_timeout: Duration::from_secs(60),
            keepalive_idle: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_probes: 6,
            sasl_mechanisms: crate::proto::sasl_passthrough::Mechanism::ALL
                .iter()
                .map(|m| m.name().to_owned())
                .collect(),
            live_move: true,
        }
    }
}

/// `[limits]`: bounds on what one client connection may do.
///
/// The pre-login input bounds below hold for every protocol until a login
/// succeeds (LMTP, which has no login: for the envelope around each
/// message; the message itself is streamed, never held). The command line
/// is bounded by `server.max_line`. A client that passes a bound hears the
/// protocol's goodbye and is closed.
///
/// The connection and login limits (see `crate::limits`) bound how many
/// connections and sessions a client address, a user and a backend may
/// have, and slow down failed logins.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    // Pre-login input bounds.
    /// Largest literal (IMAP `{N}`, ManageSieve `{N+}`) before login, bytes.
    pub literal_max: usize,
    /// Largest SASL response (an AUTHENTICATE/AUTH answer, base64 as sent),
    /// bytes. An initial response on the command line is bounded by
    /// `server.max_line` as well.
    pub sasl_max: usize,
    /// Every byte a client may send before login, bytes (LMTP: between two
    /// transactions that reached their recipients, message data not counted).
    pub prelogin_bytes: usize,
    /// Commands a client may send before login (LMTP: between two
    /// transactions that reached their recipients, RCPT and BDAT not counted).
    pub prelogin_commands: u32,
    // Connection and login limits; a count of 0 turns one off.
    /// Connections not yet logged in from one client address.
    pub prelogin_per_ip: u32,
    /// Connections not yet logged in, in the whole process.
    pub prelogin_total: u32,
    /// Logged-in sessions of one user key (all protocols together).
    pub sessions_per_user: u32,
    /// Logged-in sessions of one user key from one client address, counted
    /// per protocol (Dovecot's `mail_max_userip_connections`).
    pub sessions_per_user_ip: u32,
    /// Backend logins in flight at once per backend.
    pub logins_per_backend: u32,
    /// How long a login waits for one of its backend's login slots before
    /// it gets a temporary failure.
    #[serde(deserialize_with = "duration::deserialize")]
    pub login_queue_timeout: Duration,
    /// A failed login's answer comes no sooner than this after the login
    /// command (Dovecot's `auth_failure_delay`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub auth_failure_delay: Duration,
    /// The longest penalty before a login from an address with recent
    /// failures (Dovecot's anvil penalty; it doubles per failure).
    #[serde(deserialize_with = "duration::deserialize")]
    pub auth_penalty_max: Duration,
    /// An address's failures are forgotten this long after its last one.
    #[serde(deserialize_with = "duration::deserialize")]
    pub auth_penalty_forget: Duration,
    /// A limit hit is logged at most once per client address and limit
    /// within this interval (every hit is counted in the metrics).
    #[serde(deserialize_with = "duration::deserialize")]
    pub log_interval: Duration,
    /// Client networks exempt from the per-address limits and the failure
    /// delay (Dovecot's `login_trusted_networks`).
    pub trusted: Vec<Cidr>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            literal_max: 16 * 1024,
            sasl_max: 32 * 1024,
            prelogin_bytes: 256 * 1024,
            prelogin_commands: 50,
            prelogin_per_ip: 100,
            prelogin_total: 10_000,
            sessions_per_user: 0,
            sessions_per_user_ip: 10,
            logins_per_backend: 100,
            login_queue_timeout: Duration::from_secs(5),
            auth_failure_delay: Duration::from_secs(2),
            auth_penalty_max: Duration::from_secs(15),
            auth_penalty_forget: Duration::from_secs(10 * 60),
            log_interval: Duration::from_secs(10),
            trusted: Vec::new(),
        }
    }
}

impl LimitsConfig {
    /// Whether `ip` is in one of the [`LimitsConfig::trusted`] networks.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }
}

/// `server.driver`: the per-core I/O driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
pub enum Driver {
    /// io_uring only; startup fails where io_uring is unavailable (`"io_uring"`).
    #[default]
    #[serde(rename = "io_uring")]
    IoUring,
    /// io_uring when available, otherwise epoll (`"auto"`).
    #[serde(rename = "auto")]
    Auto,
}

/// Where a PEM certificate chain or private key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file path: what a configuration file always gives.
    File(PathBuf),
    /// PEM text held in memory: for configs built in code (the dev mode's
    /// fresh self-signed certificate). Never read from a file.
    Memory(String),
}

impl fmt::Debug for PemSource {
    /// Shows the path, or only the length of in-memory PEM (it may be a key).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Memory(pem) => write!(f, "Memory({} bytes)", pem.len()),
        }
    }
}

impl<'de> Deserialize<'de> for PemSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        PathBuf::deserialize(deserializer).map(PemSource::File)
    }
}

/// `[tls]`: the certificate every TLS listener presents.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM, leaf first. Required.
    pub cert: PemSource,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1). Required.
    pub key: PemSource,
    /// The lowest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// A protocol mailpin speaks, on a listener and to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// IMAP4rev1/rev2.
    Imap,
    /// POP3.
    Pop3,
    /// LMTP (mail delivery).
    Lmtp,
    /// ManageSieve.
    Sieve,
}

impl Protocol {
    /// Every protocol, in config order.
    pub const ALL: [Protocol; 4] = [Self::Imap, Self::Pop3, Self::Lmtp, Self::Sieve];

    /// How many protocols there are.
    pub const COUNT: usize = Self::ALL.len();

    /// This protocol's position in [`Protocol::ALL`], for per-protocol arrays.
    pub fn index(self) -> usize {
        match self {
            Self::Imap => 0,
            Self::Pop3 => 1,
            Self::Lmtp => 2,
            Self::Sieve => 3,
        }
    }

    /// The config spelling: `imap`, `pop3`, `lmtp`, `sieve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Imap => "imap",
            Self::Pop3 => "pop3",
            Self::Lmtp => "lmtp",
            Self::Sieve => "sieve",
        }
    }

    /// Whether clients log in with a password on this protocol (LMTP does not).
    pub fn has_login(self) -> bool {
        !matches!(self, Self::Lmtp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `listen.tls`: how a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext only.
    #[default]
    None,
    /// Plaintext first, upgraded by STARTTLS/STLS.
    Starttls,
    /// TLS from the first byte (IMAPS, POP3S).
    Implicit,
}

impl TlsMode {
    /// The config spelling: `none`, `starttls`, `implicit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Starttls => "starttls",
            Self::Implicit => "implicit",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[listen]]`: one listening socket (bound on every core with SO_REUSEPORT).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// The protocol spoken here. Required.
    pub protocol: Protocol,
    /// The address to bind, `IP:PORT`. Required.
    #[serde(deserialize_with = "values::deserialize_listen_addr")]
    pub addr: SocketAddr,
    /// How TLS is used.
    #[serde(default)]
    pub tls: TlsMode,
    /// Expect a PROXY v1/v2 header from a load balancer before anything else.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Networks allowed to send that header; others are refused.
    #[serde(default)]
    pub proxy_trusted: Vec<Cidr>,
    /// Allow passwords before TLS (loopback tests, trusted networks).
    #[serde(default)]
    pub plaintext_auth: bool,
}

impl Listen {
    /// A plaintext listener for `protocol` on `addr` with every other key at
    /// its default.
    pub fn new(protocol: Protocol, addr: SocketAddr) -> Self {
        Self {
            protocol,
            addr,
            tls: TlsMode::None,
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
            plaintext_auth: false,
        }
    }
}

/// `forward`: how the client's address reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    /// Not at all.
    None,
    /// Dovecot's ID extension (`x-originating-ip` and friends).
    #[default]
    Id,
    /// A PROXY v2 header at the start of the backend connection.
    Proxy,
}

impl Forward {
    /// The config spelling: `none`, `id`, `proxy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Id => "id",
            Self::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[backends]`: defaults for every `[[backend]]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendDefaults {
    /// IMAP port.
    #[serde(deserialize_with = "values::deserialize_port")]
    pub imap: u16,
    /// POP3 port.
    #[serde(deserialize_with = "values::deserialize_port")]
    pub pop3: u16,
    /// LMTP port.
    #[serde(deserialize_with = "values::deserialize_port")]
    pub lmtp: u16,
    /// ManageSieve port.
    #[serde(deserialize_with = "values::deserialize_port")]
    pub sieve: u16,
    /// How the client's address reaches the backend.
    pub forward: Forward,
    /// Bound on connecting to a backend.
    #[serde(deserialize_with = "duration::deserialize")]
    pub connect_timeout: Duration,

    // Live IMAP moves (issue 12).
    /// Dovecot master user a live move logs in with (SASL PLAIN authcid,
    /// the user as authzid); empty = none, sessions end when users move.
    pub master_user: String,
    /// The file holding the master user's password (relative to the
    /// config file); read at start and on every reload.
    pub master_password_file: PathBuf,
    /// The master password read from `master_password_file` by
    /// [`crate::config::Config::load`]; empty until then. Never logged.
    #[serde(skip)]
    pub master_password: Secret,
}

impl BackendDefaults {
    /// Whether live moves can log in: a master user with its password read.
    pub fn has_master_user(&self) -> bool {
        !self.master_user.is_empty() && !self.master_password.expose().is_empty()
    }
}

impl Default for BackendDefaults {
    fn default() -> Self {
        Self {
            imap: 143,
            pop3: 110,
            lmtp: 24,
            sieve: 4190,
            forward: Forward::Id,
            connect_timeout: Duration::from_secs(2),
            master_user: String::new(),
            master_password_file: PathBuf::new(),
            master_password: Secret::default(),
        }
    }
}

/// The default backend weight.
pub const DEFAULT_WEIGHT: u32 = 100;

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

/// `[[backend]]`: one backend server. Any key of `[backends]` may be
/// overridden here; `None` means "use the `[backends]` value". Use
/// `Config::resolved_backends` for the concrete values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Unique name, used in the admin API and metrics. Required.
    pub name: String,
    /// IP address or host name, without a port. Required.
    pub host: String,
    /// Relative share of new users in the weighted rendezvous ranking.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// IMAP port override.
    #[serde(default, deserialize_with = "values::deserialize_port_option")]
    pub imap: Option<u16>,
    /// POP3 port override.
    #[serde(default, deserialize_with = "values::deserialize_port_option")]
    pub pop3: Option<u16>,
    /// LMTP port override.
    #[serde(default, deserialize_with = "values::deserialize_port_option")]
    pub lmtp: Option<u16>,
    /// ManageSieve port override.
    #[serde(default, deserialize_with = "values::deserialize_port_option")]
    pub sieve: Option<u16>,
    /// Address forwarding override.
    #[serde(default)]
    pub forward: Option<Forward>,
    /// Connect timeout override.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub connect_timeout: Option<Duration>,
}

impl Backend {
    /// A backend with weight 100 and no overrides.
    pub fn new(name: impl Into<String>, host: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            host: host.into(),
            weight: DEFAULT_WEIGHT,
            imap: None,
            pop3: None,
            lmtp: None,
            sieve: None,
            forward: None,
            connect_timeout: None,
        }
    }
}

/// `health.check`: what an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheck {
    /// A TCP connect succeeds.
    Connect,
    /// The backend sends its greeting (IMAP `* OK`).
    #[default]
    Banner,
    /// A test user logs in (needs `login_user` and `login_password`).
    Login,
}

impl HealthCheck {
    /// The config spelling: `connect`, `banner`, `login`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Banner => "banner",
            Self::Login => "login",
        }
    }
}

/// `[health]`: active health checks of every backend.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two checks of one protocol port of a backend.
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// A check that has not succeeded by then failed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// Consecutive failures that mark a protocol port down (every checked
    /// port down: the backend is down).
    pub fall: u32,
    /// Consecutive successes, at the interval, that mark it up again.
    pub rise: u32,
    /// What a check does.
    pub check: HealthCheck,
    /// User name for `check = "login"`.
    pub login_user: Option<String>,
    /// Password for `check = "login"`; never logged.
    pub login_password: Option<Secret>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
            fall: 2,
            rise: 2,
            check: HealthCheck::Banner,
            login_user: None,
            login_password: None,
        }
    }
}

/// `[admin]`: the admin HTTP API (JSON, `/metrics`, the status page) and
/// who may use it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens, `IP:PORT`.
    #[serde(deserialize_with = "values::deserialize_admin_addr")]
    pub listen: SocketAddr,
    /// When not empty, every request over TCP but `GET /metrics` (see
    /// `metrics_public`) and the two static documents (`/`, `/openapi.json`)
    /// needs `Authorization: Bearer TOKEN`. Never logged.
    pub token: Secret,
    /// A file holding the token instead (relative to the config file;
    /// empty = none). Exclusive with `token`.
    pub token_file: PathBuf,
    /// A Unix socket path the admin API also listens on (relative to the
    /// config file; empty = none). Its file permissions are its access
    /// control: requests over it need no token.
    pub socket: PathBuf,
    /// The socket file's mode: `0o600` (the director's user) or `0o660`
    /// (and its group).
    pub socket_mode: u32,
    /// Host names (with or without `:port`) that requests over TCP may name
    /// in `Host`, besides the listener's own address and `localhost`.
    pub names: Vec<String>,
    /// `GET /metrics` needs no token (for Prometheus).
    pub metrics_public: bool,
}

impl AdminConfig {
    /// True when the admin API asks for a bearer token over TCP.
    pub fn has_token(&self) -> bool {
        !self.token.expose().is_empty() || !self.token_file.as_os_str().is_empty()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9120),
            token: Secret::new(""),
            token_file: PathBuf::new(),
            socket: PathBuf::new(),
            socket_mode: 0o600,
            names: Vec::new(),
            metrics_public: true,
        }
    }
}

/// `[log]`: how the director writes its log (to standard error, which
/// systemd's journal collects under the unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The line format.
    pub format: LogFormat,
}

/// `log.format`: one line per event, as text or as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum LogFormat {
    /// `TIME LEVEL span{key=value ...}: message key=value ...` (`"text"`).
    #[default]
    #[serde(rename = "text")]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `message`, the
    /// event's fields, and the session's fields under `span` (`"json"`).
    #[serde(rename = "json")]
    Json,
}
