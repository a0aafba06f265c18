//! `[cluster]`: several directors sharing one truth in etcd.
//!
//! The schema (DESIGN.md §4, a contract: `etcd`, `prefix`, `name`,
//! `lease_ttl`), the optional TLS and authentication to etcd, the semantic
//! checks `mailpin check` runs, and the checks against this machine (the
//! files named exist and hold what they should).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::duration;
use super::error::{ConfigError, ConfigErrors};
use super::validate::check_http_url;
use super::values::Secret;

/// The shortest `cluster.lease_ttl` accepted: etcd 3.4 grants no lease
/// shorter than 1.5 × its election timeout (2 s with the defaults).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(2);
/// The longest `cluster.lease_ttl` accepted.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(300);
/// The longest director name accepted (it is part of etcd keys).
pub const MAX_NAME_LEN: usize = 64;

/// `[cluster]`: shared state in etcd for several directors. Absent = one
/// director with its state in memory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// etcd endpoints, `http://` or `https://` URLs (all the same scheme).
    pub etcd: Vec<String>,
    /// Key prefix under which mailpin keeps its state.
    pub prefix: String,
    /// This director's name in the cluster; default: the host name.
    pub name: String,
    /// Cut off from etcd longer than this, a director closes its sessions.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lease_ttl: Duration,
    /// CA certificate (PEM file) that signs the etcd servers' certificates
    /// (`https://` endpoints). Empty = the system's roots.
    pub ca: PathBuf,
    /// Client certificate (PEM file) for etcd's client-certificate
    /// authentication; with `key`. Empty = none.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM file). Empty = none.
    pub key: PathBuf,
    /// etcd user name (etcd's own authentication); empty = none.
    pub user: String,
    /// The password of `user`.
    pub password: Secret,
    /// A file holding the password of `user` (instead of `password`).
    pub password_file: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            etcd: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/mailpin".to_owned(),
            name: host_name(),
            lease_ttl: Duration::from_secs(10),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            user: String::new(),
            password: Secret::new(""),
            password_file: PathBuf::new(),
        }
    }
}

impl ClusterConfig {
    /// The password for `user`: `password`, else the content of
    /// `password_file` without its trailing newline.
    pub fn read_password(&self) -> Result<Secret, String> {
        if self.password_file.as_os_str().is_empty() {
            return Ok(self.password.clone());
        }
        let text = std::fs::read_to_string(&self.password_file)
            .map_err(|e| format!("{} cannot be read: {e}", self.password_file.display()))?;
        Ok(Secret::new(text.trim_end_matches(['\n', '\r'])))
    }

    /// Makes the relative file paths relative to `dir`.
    pub(crate) fn resolve_relative_paths(&mut self, dir: &Path) {
        for file in [
            &mut self.ca,
            &mut self.cert,
            &mut self.key,
            &mut self.password_file,
        ] {
            if file.is_relative() && !file.as_os_str().is_empty() {
                *file = dir.join(&*file);
            }
        }
    }
}

/// This machine's host name (`"mailpin"` if it has none).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "mailpin".to_owned(),
    }
}

/// Whether `name` may name a director: 1–64 of `A-Z a-z 0-9 . _ -`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{name:?} must be 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{name:?} may hold only letters, digits, '.', '_' and '-' (it is part of etcd keys)"
        ));
    }
    Ok(())
}

/// Semantic checks of `[cluster]`.
pub(crate) fn check_cluster(cluster: &ClusterConfig, errors: &mut ConfigErrors) {
    let mut error = |path: String, message: String| errors.push(ConfigError::new(path, message));
    if cluster.etcd.is_empty() {
        error(
            "cluster.etcd".into(),
            "must list at least one endpoint (e.g. [\"http://127.0.0.1:2379\"]; remove [cluster] for a single director)".into(),
        );
    }
    for (index, endpoint) in cluster.etcd.iter().enumerate() {
        if let Err(message) = check_http_url(endpoint) {
            error(format!("cluster.etcd[{index}]"), message);
        }
    }
    let https = cluster
        .etcd
        .iter()
        .filter(|e| e.starts_with("https://"))
        .count();
    if https != 0 && https != cluster.etcd.len() {
        error(
            "cluster.etcd".into(),
            "mixes http:// and https:// endpoints: use one scheme for all".into(),
        );
    }
    if https == 0 {
        for (key, path) in [
            ("ca", &cluster.ca),
            ("cert", &cluster.cert),
            ("key", &cluster.key),
        ] {
            if !path.as_os_str().is_empty() {
                error(
                    format!("cluster.{key}"),
                    "is set but the endpoints are http://: use https:// endpoints for TLS to etcd"
                        .into(),
                );
            }
        }
    }
    if cluster.cert.as_os_str().is_empty() != cluster.key.as_os_str().is_empty() {
        error(
            "cluster.cert".into(),
            "cluster.cert and cluster.key go together: set both or neither".into(),
        );
    }
    if !cluster.prefix.starts_with('/') {
        error(
            "cluster.prefix".into(),
            format!(
                "{:?} must start with \"/\" (e.g. \"/mailpin\")",
                cluster.prefix
            ),
        );
    } else if cluster.prefix.len() > 1 && cluster.prefix.ends_with('/') {
        error(
            "cluster.prefix".into(),
            format!("{:?} must not end with \"/\"", cluster.prefix),
        );
    }
    if let Err(message) = check_name(&cluster.name) {
        error("cluster.name".into(), message);
    }
    if cluster.lease_ttl < MIN_LEASE_TTL || cluster.lease_ttl > MAX_LEASE_TTL {
        error(
            "cluster.lease_ttl".into(),
            format!(
                "{} is out of range: 2s to 5m (etcd grants no lease under 2 s; see the README on sizing it)",
                duration::format_duration(cluster.lease_ttl)
            ),
        );
    }
    if cluster.lease_ttl.subsec_nanos() != 0 {
        error(
            "cluster.lease_ttl".into(),
            "must be whole seconds (etcd leases count in seconds)".into(),
        );
    }
    let has_password =
        !cluster.password.expose().is_empty() || !cluster.password_file.as_os_str().is_empty();
    if !cluster.password.expose().is_empty() && !cluster.password_file.as_os_str().is_empty() {
        error(
            "cluster.password_file".into(),
            "is set as well as cluster.password: set only one of them".into(),
        );
    }
    if cluster.user.is_empty() && has_password {
        error(
            "cluster.user".into(),
            "is required with cluster.password or cluster.password_file".into(),
        );
    }
    if !cluster.user.is_empty() && !has_password {
        error(
            "cluster.password".into(),
            "is required with cluster.user (or set cluster.password_file)".into(),
        );
    }
}

/// Checks of `[cluster]` on this machine: the files it names can be read
/// and hold PEM of the right kind.
pub(crate) fn check_cluster_environment(cluster: &ClusterConfig, errors: &mut ConfigErrors) {
    let pem = |key: &str, path: &PathBuf, marker: &str, errors: &mut ConfigErrors| {
        if path.as_os_str().is_empty() {
            return;
        }
        match std::fs::read_to_string(path) {
            Ok(text) if text.contains(marker) => {}
            Ok(_) => errors.push(ConfigError::new(
                format!("cluster.{key}"),
                format!("{} holds no PEM {marker}", path.display()),
            )),
            Err(e) => errors.push(ConfigError::new(
                format!("cluster.{key}"),
                format!("{} cannot be read: {e}", path.display()),
            )),
        }
    };
    pem("ca", &cluster.ca, "CERTIFICATE", errors);
    pem("cert", &cluster.cert, "CERTIFICATE", errors);
    pem("key", &cluster.key, "PRIVATE KEY", errors);
    if !cluster.password_file.as_os_str().is_empty() {
        if let Err(message) = cluster.read_password() {
            errors.push(ConfigError::new("cluster.password_file", message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(cluster: &ClusterConfig) -> Vec<String> {
        let mut errors = ConfigErrors::new();
        check_cluster(cluster, &mut errors);
        errors.errors().iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn the_defaults_pass_and_name_the_host() {
        let c = ClusterConfig::default();
        assert!(errors_of(&c).is_empty(), "{:?}", errors_of(&c));
        assert_eq!(c.name, host_name());
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
    }

    #[test]
    fn lease_ttl_names_and_credentials_are_checked() {
        let c = ClusterConfig {
            lease_ttl: Duration::from_millis(1500),
            name: "d 1".into(),
            password: Secret::new("pw"),
            ..ClusterConfig::default()
        };
        let e = errors_of(&c).join("\n");
        assert!(
            e.contains("cluster.lease_ttl: 1500ms is out of range"),
            "{e}"
        );
        assert!(
            e.contains("cluster.lease_ttl: must be whole seconds"),
            "{e}"
        );
        assert!(e.contains("cluster.name: \"d 1\" may hold only"), "{e}");
        assert!(
            e.contains("cluster.user: is required with cluster.password"),
            "{e}"
        );
    }

    const MINIMAL: &str = "[[listen]]\nprotocol = \"imap\"\naddr = \"127.0.0.1:10143\"\n\
        plaintext_auth = true\n\n[[backend]]\nname = \"mail1\"\nhost = \"10.0.0.11\"\n\n";

    #[test]
    fn every_key_parses_from_toml_and_errors_are_located() {
        let text = format!(
            "{MINIMAL}[cluster]\netcd = [\"https://10.0.0.1:2379\"]\nprefix = \"/m\"\nname = \"d7\"\n\
             lease_ttl = \"6s\"\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             user = \"mailpin\"\npassword_file = \"etcd-pw\"\n"
        );
        let config = crate::config::Config::from_toml_str(&text).expect("valid");
        let c = config.cluster.expect("[cluster]");
        assert_eq!(c.name, "d7");
        assert_eq!(c.lease_ttl, Duration::from_secs(6));
        assert_eq!(c.ca, PathBuf::from("ca.pem"));
        assert_eq!(c.user, "mailpin");
        let bad = format!("{MINIMAL}[cluster]\nlease_ttl = \"1s\"\nttl = 3\n");
        let e = crate::config::Config::from_toml_str(&bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ttl"), "{e}");
    }

    #[test]
    fn tls_settings_need_https_and_go_together() {
        let c = ClusterConfig {
            cert: "c.pem".into(),
            ..ClusterConfig::default()
        };
        let e = errors_of(&c).join("\n");
        assert!(
            e.contains("cluster.cert: is set but the endpoints are http://"),
            "{e}"
        );
        assert!(
            e.contains("cluster.cert and cluster.key go together"),
            "{e}"
        );
        let c = ClusterConfig {
            etcd: vec![
                "https://10.0.0.1:2379".into(),
                "http://10.0.0.2:2379".into(),
            ],
            ..ClusterConfig::default()
        };
        let e = errors_of(&c).join("\n");
        assert!(e.contains("mixes http:// and https://"), "{e}");
    }
}
