//! The configuration of mailpin: the TOML schema of DESIGN.md §4 (a
//! contract), its defaults, and validation that reports every problem at
//! once with its key path and a hint.
//!
//! Three levels of checking, from cheapest to most host-specific:
//! - [`Config::from_toml_str`]: syntax, types, unknown keys, then
//!   [`Config::validate`]'s semantic checks; each problem is located in the text.
//! - [`Config::validate`]: semantic checks only, for a config built in code.
//! - [`Config::check_environment`]: certificate/key files and CPU count on
//!   this machine. [`Config::load`] runs all three, as `mailpin check` does.
//!
//! [`Config::warnings`] lists valid settings that are probably mistakes.
//! See `config/mailpin.toml` for every key with its default and meaning.

#![warn(missing_docs)]

mod admin;
mod cidr;
mod cluster;
mod duration;
mod environment;
mod error;
mod live_move;
mod parse;
mod schema;
mod validate;
mod values;

use std::path::Path;
use std::time::Duration;

pub use admin::{check_bearer_token, read_token_file};
pub use cidr::{Cidr, CidrError};
pub use cluster::{host_name, ClusterConfig, MIN_LEASE_TTL};
pub use duration::{format_duration, parse_duration, DurationError};
pub use environment::usable_cpus;
pub use error::{ConfigError, ConfigErrors, ConfigWarning, Location};
pub use live_move::read_master_password;
pub use schema::{
    AdminConfig, Backend, BackendDefaults, Driver, Forward, HealthCheck, HealthConfig,
    LimitsConfig, Listen, PemSource, Protocol, ServerConfig, TlsConfig, TlsMode, DEFAULT_WEIGHT,
};
pub use schema::{LogConfig, LogFormat};
pub use validate::{check_backend_name, check_host, check_http_url, check_user_key};
pub use values::{Secret, TlsVersion};

/// A whole mailpin configuration. `Config::default()` has every default and
/// no listeners or backends (so it does not validate until some are added).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[tls]`: required when a listener uses TLS.
    pub tls: Option<TlsConfig>,
    /// `[[listen]]`
    pub listen: Vec<Listen>,
    /// `[backends]`: defaults for every backend.
    pub backends: BackendDefaults,
    /// `[[backend]]`
    pub backend: Vec<Backend>,
    /// `[health]`
    pub health: HealthConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[cluster]`: absent for a single director.
    pub cluster: Option<ClusterConfig>,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[log]`
    pub log: LogConfig,
}

impl Config {
    /// Parses and validates configuration text (no file or CPU checks).
    /// Every problem found is returned, each with its key path and its line
    /// and column in `text`.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        Self::check_text(text, None)
    }

    /// Reads, parses and validates the file at `path`, and checks it against
    /// this machine ([`Config::check_environment`]): what `mailpin check`
    /// runs. Relative `[tls]` paths are taken relative to the directory of
    /// `path` (and made absolute that way in the result). Problems are
    /// displayed prefixed with `FILE:LINE:COLUMN: `.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigErrors> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigErrors::from(ConfigError::new(
                "",
                format!("cannot read {}: {error}", path.display()),
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Self::check_text(&text, Some(base)).map_err(|errors| errors.with_source(path))
    }
    /// Parses `text`, then runs the semantic checks and, for a file in
    /// directory `file_dir`, resolves relative paths against it and runs the
    /// machine checks; each problem is located in `text` by its key path.
    fn check_text(text: &str, file_dir: Option<&Path>) -> Result<Config, ConfigErrors> {
        let (mut config, document) = parse::parse_config(text)?;
        let mut found = validate::validate(&config);
        if let Some(dir) = file_dir {
            config.resolve_relative_paths(dir);
            found.extend(environment::check_environment(&config));
            live_move::load_master_password(&mut config, &mut found);
        }
        if found.is_empty() {
            return Ok(config);
        }
        let mut located = ConfigErrors::new();
        for mut error in found {
            error.set_location_if_unknown(document.locate_path(error.path()));
            located.push(error);
        }
        Err(located)
    }

    /// Semantic checks of a config however it was built: ranges, unique
    /// names and addresses, required companions (`[tls]` for TLS listeners,
    /// login credentials for `check = "login"`), formats.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        validate::validate(self).into_result()
    }

    /// Checks that depend on this machine: `[tls]` cert/key files exist, are
    /// readable and hold a certificate chain and a private key (in-memory
    /// PEM is skipped), and `server.cores` is at most the usable CPUs.
    pub fn check_environment(&self) -> Result<(), ConfigErrors> {
        environment::check_environment(self).into_result()
    }

    /// Valid settings that are probably not what was meant (a listener where
    /// no one can log in, an admin API on a public address…). Print them, but
    /// do not refuse to start.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        validate::warnings(self)
    }

    /// Makes relative `[tls]` file paths, `admin.token_file` and
    /// `admin.socket` relative to `dir` instead of the working directory.
    /// Empty paths are left alone (validation reports them, or they mean
    /// "none").
    pub fn resolve_relative_paths(&mut self, dir: &Path) {
        for file in [
            &mut self.admin.token_file,
            &mut self.admin.socket,
            &mut self.backends.master_password_file,
        ] {
            if file.is_relative() && !file.as_os_str().is_empty() {
                *file = dir.join(&*file);
            }
        }
        if let Some(cluster) = &mut self.cluster {
            cluster.resolve_relative_paths(dir);
        }
        if let Some(tls) = &mut self.tls {
            for source in [&mut tls.cert, &mut tls.key] {
                if let PemSource::File(file) = source {
                    if file.is_relative() && !file.as_os_str().is_empty() {
                        *file = dir.join(&*file);
                    }
                }
            }
        }
    }

    /// Every backend with its `[backends]` defaults filled in, in config order.
    pub fn resolved_backends(&self) -> Vec<ResolvedBackend> {
        self.backend
            .iter()
            .map(|backend| ResolvedBackend::resolve(backend, &self.backends))
            .collect()
    }

    /// The number of worker cores to run: `server.cores`, or every usable
    /// CPU when it is 0 (at least 1).
    pub fn effective_cores(&self) -> usize {
        match self.server.cores {
            0 => usable_cpus().max(1),
            cores => cores,
        }
    }
}

/// A backend with every key concrete: its overrides, else `[backends]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBackend {
    /// Unique name.
    pub name: String,
    /// IP address or host name.
    pub host: String,
    /// Weight in the rendezvous ranking.
    pub weight: u32,
    /// IMAP port.
    pub imap: u16,
    /// POP3 port.
    pub pop3: u16,
    /// LMTP port.
    pub lmtp: u16,
    /// ManageSieve port.
    pub sieve: u16,
    /// How the client's address reaches this backend.
    pub forward: Forward,
    /// Bound on connecting to this backend.
    pub connect_timeout: Duration,
}

impl ResolvedBackend {
    /// Fills `backend`'s unset keys from `defaults`.
    pub fn resolve(backend: &Backend, defaults: &BackendDefaults) -> Self {
        Self {
            name: backend.name.clone(),
            host: backend.host.clone(),
            weight: backend.weight,
            imap: backend.imap.unwrap_or(defaults.imap),
            pop3: backend.pop3.unwrap_or(defaults.pop3),
            lmtp: backend.lmtp.unwrap_or(defaults.lmtp),
            sieve: backend.sieve.unwrap_or(defaults.sieve),
            forward: backend.forward.unwrap_or(defaults.forward),
            connect_timeout: backend.connect_timeout.unwrap_or(defaults.connect_timeout),
        }
    }

    /// The port this backend serves `protocol` on.
    pub fn port(&self, protocol: Protocol) -> u16 {
        match protocol {
            Protocol::Imap => self.imap,
            Protocol::Pop3 => self.pop3,
            Protocol::Lmtp => self.lmtp,
            Protocol::Sieve => self.sieve,
        }
    }
}

#[cfg(test)]
mod tests;
