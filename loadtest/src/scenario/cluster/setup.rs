//! What the `cluster` scenario runs besides the harness: a local 3-member
//! etcd on the scenario's own ports (`mailpin::devcluster::LocalEtcd`,
//! stopped by PID and its data removed when dropped) and directors in
//! cluster mode, each from a config file with its own `[cluster]` section
//! (distinct name, same prefix) in front of the harness's backends.

use std::path::PathBuf;
use std::time::Duration;

use mailpin::devcluster::{LocalEtcd, LocalEtcdPorts};

use crate::director::DirectorProcess;
use crate::harness::Harness;

/// The etcd prefix every director of a run shares.
const PREFIX: &str = "/mailpin-loadtest";

/// The limits of [`crate::director::default_base`] as config text: the
/// load test's own clients (127.0.0.1) must not meet per-address limits.
const LOAD_TEST_LIMITS: &str = "[limits]\ntrusted = [\"127.0.0.1/32\"]\nprelogin_total = 0\n\
sessions_per_user_ip = 0\nlogins_per_backend = 0\n";

/// The ports of the scenario's etcd from its first client port `first`:
/// member i has client port `first + 10 i` and peer port `first + 10 i + 1`.
pub fn etcd_ports(first: u16) -> Result<LocalEtcdPorts, String> {
    let port = |i: u16, peer: u16| {
        first
            .checked_add(10 * i + peer)
            .ok_or_else(|| format!("--etcd-port {first}: the members need ports up to +21"))
    };
    Ok(LocalEtcdPorts {
        client: [port(0, 0)?, port(1, 0)?, port(2, 0)?],
        peer: [port(0, 1)?, port(1, 1)?, port(2, 1)?],
    })
}

/// Starts the local etcd on `ports`.
pub fn start_etcd(ports: LocalEtcdPorts) -> Result<LocalEtcd, String> {
    LocalEtcd::start_on(ports).map_err(|e| format!("local etcd: {}", e.0))
}

/// A config file of one cluster member, removed when dropped.
pub struct MemberConfig {
    path: PathBuf,
}

impl MemberConfig {
    /// Writes the config of member `name`: the harness's `--director-config`
    /// text if given (else the load test's limits), then `[cluster]` on
    /// `urls` with `lease_ttl`.
    pub fn write(
        harness: &Harness,
        name: &str,
        urls: &[String],
        lease_ttl: Duration,
    ) -> Result<MemberConfig, String> {
        let base = match &harness.args.director_config {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("--director-config {}: {e}", path.display()))?,
            None => LOAD_TEST_LIMITS.to_owned(),
        };
        let etcd: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        let text = format!(
            "{base}\n[cluster]\netcd = [{}]\nprefix = {PREFIX:?}\nname = {name:?}\nlease_ttl = \"{}s\"\n",
            etcd.join(", "),
            lease_ttl.as_secs().max(1)
        );
        let path = std::env::temp_dir().join(format!(
            "mailpin-loadtest-cluster-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(MemberConfig { path })
    }
}

impl Drop for MemberConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Starts directors `d{first}..` (`count` of them) in cluster mode on
/// `urls` in front of the harness's backends.
pub fn start_members(
    harness: &Harness,
    first: usize,
    count: usize,
    urls: &[String],
    lease_ttl: Duration,
) -> Result<Vec<DirectorProcess>, String> {
    (first..first + count)
        .map(|i| {
            let config = MemberConfig::write(harness, &format!("d{i}"), urls, lease_ttl)?;
            harness.spawn_director(&config.path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_ports_are_spread_and_bounded() {
        let p = etcd_ports(22379).expect("ports");
        assert_eq!(p.client, [22379, 22389, 22399]);
        assert_eq!(p.peer, [22380, 22390, 22400]);
        assert!(etcd_ports(65530).is_err());
    }
}
