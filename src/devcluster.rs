//! `mailpin run --dev --cluster`: dev mode with a local 3-member etcd and
//! two directors sharing it, so one can watch directors register, elect a
//! leader and fence.
//!
//! The etcd members (Debian's `etcd`, found on `PATH`) run on 127.0.0.1:
//! client ports [`ETCD_CLIENT_PORTS`], peer ports [`ETCD_PEER_PORTS`],
//! their data and logs in a fresh directory under the system's temporary
//! directory, removed on exit. Director d1 has dev mode's documented ports
//! (IMAP 10143, IMAPS 10993, POP3 10110, LMTP 10024, ManageSieve 14190,
//! admin 9120); d2 the same plus 1000 (11143, 11993, 11110, 11024, 15190)
//! and admin 9121. Both sit in front of the same three embedded dev
//! backends. On exit the directors stop, then the etcd members, by PID.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{ClusterConfig, Config};
use crate::prepare::LaunchError;

/// The etcd members' client ports on 127.0.0.1.
pub const ETCD_CLIENT_PORTS: [u16; 3] = [12379, 12479, 12579];
/// The etcd members' peer ports on 127.0.0.1.
pub const ETCD_PEER_PORTS: [u16; 3] = [12380, 12480, 12580];
/// How far d2's mail ports are from d1's.
pub const SECOND_DIRECTOR_OFFSET: u16 = 1000;
/// How long the members get to elect a leader.
const ETCD_START_LIMIT: Duration = Duration::from_secs(20);

/// The ports of a local 3-member etcd on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalEtcdPorts {
    /// The members' client ports.
    pub client: [u16; 3],
    /// The members' peer ports.
    pub peer: [u16; 3],
}

impl LocalEtcdPorts {
    /// The ports of `run --dev --cluster`: [`ETCD_CLIENT_PORTS`] and
    /// [`ETCD_PEER_PORTS`].
    pub const DEV: LocalEtcdPorts = LocalEtcdPorts {
        client: ETCD_CLIENT_PORTS,
        peer: ETCD_PEER_PORTS,
    };

    /// The client URLs.
    pub fn urls(&self) -> Vec<String> {
        self.client
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }
}

/// The local etcd cluster; dropping it stops the members and removes
/// their data.
pub struct LocalEtcd {
    members: Vec<Child>,
    dir: PathBuf,
}

impl LocalEtcd {
    /// The client URLs of `run --dev --cluster`'s etcd.
    pub fn urls() -> Vec<String> {
        LocalEtcdPorts::DEV.urls()
    }

    /// Starts the three members of `run --dev --cluster` on their fixed
    /// ports and waits until they have a leader.
    pub fn start() -> Result<LocalEtcd, LaunchError> {
        LocalEtcd::start_on(LocalEtcdPorts::DEV)
    }

    /// Starts three members on `ports` (e.g. a load test's, so it does
    /// not collide with a dev cluster) and waits until they have a leader.
    pub fn start_on(ports: LocalEtcdPorts) -> Result<LocalEtcd, LaunchError> {
        let etcd = find_on_path("etcd").ok_or_else(|| {
            LaunchError(
                "run --dev --cluster needs etcd on PATH (Debian: apt-get install etcd-server)"
                    .into(),
            )
        })?;
        for port in ports.client.iter().chain(&ports.peer) {
            if TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], *port)),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return Err(LaunchError(format!(
                    "127.0.0.1:{port} is in use: is another local etcd (`run --dev --cluster`, a load test) running?"
                )));
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "mailpin-dev-etcd-{}-{}",
            std::process::id(),
            ports.client[0]
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LaunchError(format!("{}: {e}", dir.display())))?;
        let initial: Vec<String> = ports
            .peer
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}=http://127.0.0.1:{p}", i + 1))
            .collect();
        let mut local = LocalEtcd {
            members: Vec::new(),
            dir,
        };
        for (i, (client, peer)) in ports.client.iter().zip(ports.peer).enumerate() {
            let name = format!("m{}", i + 1);
            let log = std::fs::File::create(local.dir.join(format!("{name}.log")))
                .map_err(|e| LaunchError(format!("etcd log: {e}")))?;
            let client_url = format!("http://127.0.0.1:{client}");
            let child = Command::new(&etcd)
                .args(etcd_member_args(&EtcdMember {
                    name: &name,
                    data_dir: &local.dir.join(&name),
                    listen_client: &client_url,
                    advertise_client: &client_url,
                    peer: &format!("http://127.0.0.1:{peer}"),
                    initial_cluster: &initial.join(","),
                    token: "mailpin-dev",
                }))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| LaunchError(format!("cannot start {}: {e}", etcd.display())))?;
            local.members.push(child);
        }
        let deadline = Instant::now() + ETCD_START_LIMIT;
        for port in ports.client {
            while !healthy(port) {
                if Instant::now() >= deadline {
                    return Err(LaunchError(format!(
                        "the local etcd did not elect a leader within {} s (logs in {})",
                        ETCD_START_LIMIT.as_secs(),
                        local.dir.display()
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(local)
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }

    /// Where the members keep their data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One member of a static etcd cluster, for [`etcd_member_args`].
pub struct EtcdMember<'a> {
    /// Its name in `initial_cluster`.
    pub name: &'a str,
    /// Its data directory.
    pub data_dir: &'a Path,
    /// The client URL it listens on.
    pub listen_client: &'a str,
    /// The client URL it advertises.
    pub advertise_client: &'a str,
    /// Its peer URL (listened on and advertised).
    pub peer: &'a str,
    /// Every member as `name=peer-url`, comma-separated.
    pub initial_cluster: &'a str,
    /// The cluster token (distinct per cluster).
    pub token: &'a str,
}

/// The command-line arguments of one member of a new static cluster, with
/// etcd's default timing said out loud (heartbeat 100 ms, election 1 s);
/// also used by the tests.
pub fn etcd_member_args(m: &EtcdMember) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut pair = |k: &str, v: &std::ffi::OsStr| {
        args.push(k.into());
        args.push(v.to_owned());
    };
    pair("--name", m.name.as_ref());
    pair("--data-dir", m.data_dir.as_os_str());
    pair("--listen-client-urls", m.listen_client.as_ref());
    pair("--advertise-client-urls", m.advertise_client.as_ref());
    pair("--listen-peer-urls", m.peer.as_ref());
    pair("--initial-advertise-peer-urls", m.peer.as_ref());
    pair("--initial-cluster", m.initial_cluster.as_ref());
    pair("--initial-cluster-state", "new".as_ref());
    pair("--initial-cluster-token", m.token.as_ref());
    pair("--heartbeat-interval", "100".as_ref());
    pair("--election-timeout", "1000".as_ref());
    args
}

/// Whether the member on 127.0.0.1:`port` answers `/health` with a leader.
fn healthy(port: u16) -> bool {
    etcd_healthy(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Whether the etcd member at `addr` answers `/health` with a leader
/// (bounded: a hung member answers false; also used by the tests).
pub fn etcd_healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.1 200") && reply.contains("\"health\":\"true\"")
}

/// `name` in a directory of `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

/// The two directors' configurations from dev mode's one: `[cluster]`
/// on the local etcd (lease 5 s, so fencing shows quickly), d2 on the
/// offset ports and admin 9121.
pub fn director_configs(base: &Config) -> [Config; 2] {
    let cluster = |name: &str| ClusterConfig {
        etcd: LocalEtcd::urls(),
        prefix: "/mailpin-dev".into(),
        name: name.into(),
        lease_ttl: Duration::from_secs(5),
        ..ClusterConfig::default()
    };
    let mut d1 = base.clone();
    d1.cluster = Some(cluster("d1"));
    let mut d2 = base.clone();
    d2.cluster = Some(cluster("d2"));
    for l in &mut d2.listen {
        l.addr.set_port(l.addr.port() + SECOND_DIRECTOR_OFFSET);
    }
    d2.admin.listen.set_port(d2.admin.listen.port() + 1);
    [d1, d2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_director_is_offset_and_both_share_the_local_etcd() {
        let mut base = Config::default();
        base.listen.push(crate::config::Listen::new(
            crate::config::Protocol::Imap,
            "127.0.0.1:10143".parse().unwrap(),
        ));
        let [d1, d2] = director_configs(&base);
        assert_eq!(d1.listen[0].addr.port(), 10143);
        assert_eq!(d2.listen[0].addr.port(), 11143);
        assert_eq!(d1.admin.listen.port(), 9120);
        assert_eq!(d2.admin.listen.port(), 9121);
        let (c1, c2) = (d1.cluster.unwrap(), d2.cluster.unwrap());
        assert_eq!((c1.name.as_str(), c2.name.as_str()), ("d1", "d2"));
        assert_eq!(c1.etcd, c2.etcd);
        assert_eq!(c1.etcd.len(), 3);
    }
}
