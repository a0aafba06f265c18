//! A real etcd cluster for the cluster-mode tests: N members of Debian's
//! `etcd` 3.4, each on its own loopback address ([`LoopbackLease`]) with
//! client port 2379 and peer port 2380, data in a temporary directory,
//! `--heartbeat-interval 100 --election-timeout 1000` (etcd's defaults,
//! said out loud). Members are stopped by PID when the cluster is dropped
//! (continued first if a test stopped them).

use std::net::SocketAddr;

use mailpin::devcluster::{etcd_healthy, etcd_member_args, EtcdMember as MemberArgs};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::loopback::LoopbackLease;
use super::procs::send_signal;
use super::tempdir::TempDir;
use super::tools::require_tool;

/// One etcd member.
pub struct EtcdMember {
    child: Child,
    lease: LoopbackLease,
    name: String,
    /// How it was started (a restart runs the same on the same data).
    args: Vec<String>,
    log: std::path::PathBuf,
}

impl EtcdMember {
    /// Its client URL.
    pub fn url(&self) -> String {
        format!("http://{}:2379", self.lease.addr())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its member name (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A running etcd cluster.
pub struct EtcdCluster {
    members: Vec<EtcdMember>,
    _dir: TempDir,
}

/// True if etcd and etcdctl are installed (skip locally, fail on CI).
pub fn require_etcd() -> bool {
    require_tool("etcd") && require_tool("etcdctl")
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = TempDir::new().expect("temp dir");
        let leases: Vec<LoopbackLease> = (0..n).map(|_| LoopbackLease::acquire()).collect();
        let initial: Vec<String> = leases
            .iter()
            .enumerate()
            .map(|(i, l)| format!("m{i}=http://{}:2380", l.addr()))
            .collect();
        let token = format!("mailpin-test-{}-{}", std::process::id(), leases[0].addr());
        let mut members = Vec::new();
        for (i, lease) in leases.into_iter().enumerate() {
            let name = format!("m{i}");
            let addr = lease.addr();
            let data = dir.path().join(&name);
            let log = dir.path().join(format!("{name}.log"));
            let client = format!("http://{addr}:2379");
            let args: Vec<String> = etcd_member_args(&MemberArgs {
                name: &name,
                data_dir: &data,
                listen_client: &client,
                advertise_client: &client,
                peer: &format!("http://{addr}:2380"),
                initial_cluster: &initial.join(","),
                token: &token,
            })
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
            let child = spawn_member(&args, &log);
            members.push(EtcdMember {
                child,
                lease,
                name,
                args,
                log,
            });
        }
        let cluster = EtcdCluster { members, _dir: dir };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Waits until every member reports health (a leader, quorum).
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for m in &self.members {
            let addr: SocketAddr = format!("{}:2379", m.lease.addr()).parse().unwrap();
            loop {
                if etcd_healthy(addr) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} not healthy",
                    m.name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The members.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Every client URL, as a TOML array.
    pub fn toml_endpoints(&self) -> String {
        self.toml_endpoints_from(0)
    }

    /// Every client URL as a TOML array, member `first` first.
    pub fn toml_endpoints_from(&self, first: usize) -> String {
        let n = self.members.len();
        let urls: Vec<String> = (0..n)
            .map(|i| format!("{:?}", self.members[(first + i) % n].url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// The index of the raft leader, asked of the members that answer.
    pub fn leader(&self) -> Option<usize> {
        for m in &self.members {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &m.url(), "--command-timeout=2s"])
                .args(["endpoint", "status", "-w", "json"])
                .output()
                .ok()?;
            let v: serde_json::Value = match serde_json::from_slice(&out.stdout) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let status = &v[0]["Status"];
            let leader = status["leader"].as_u64();
            let me = status["header"]["member_id"].as_u64();
            if let (Some(leader), Some(me)) = (leader, me) {
                if leader == me {
                    return Some(self.index_of(&m.url()));
                }
                // Ask the others which one that is.
                for (i, other) in self.members.iter().enumerate() {
                    let out = Command::new("etcdctl")
                        .env("ETCDCTL_API", "3")
                        .args(["--endpoints", &other.url(), "--command-timeout=2s"])
                        .args(["endpoint", "status", "-w", "json"])
                        .output()
                        .ok()?;
                    let v: serde_json::Value =
                        serde_json::from_slice(&out.stdout).unwrap_or_default();
                    if v[0]["Status"]["header"]["member_id"].as_u64() == Some(leader) {
                        return Some(i);
                    }
                }
            }
        }
        None
    }

    fn index_of(&self, url: &str) -> usize {
        self.members.iter().position(|m| m.url() == url).unwrap()
    }

    /// SIGKILLs member `i` and reaps it.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        let _ = m.child.kill();
        let _ = m.child.wait();
    }

    /// Starts member `i` again on its data (after [`kill`](Self::kill)).
    pub fn restart(&mut self, i: usize) {
        let m = &mut self.members[i];
        m.child = spawn_member(&m.args, &m.log);
    }

    /// SIGSTOPs member `i` (it hangs: connections stay open, nothing answers).
    pub fn pause(&self, i: usize) {
        send_signal(self.members[i].pid(), libc::SIGSTOP);
    }

    /// SIGCONTs member `i`.
    pub fn resume(&self, i: usize) {
        send_signal(self.members[i].pid(), libc::SIGCONT);
    }
}

/// Starts one member with `args`, its stderr appended to `log`.
fn spawn_member(args: &[String], log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new("etcd")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start etcd")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            send_signal(m.pid(), libc::SIGCONT);
            let _ = m.child.kill();
            let _ = m.child.wait();
        }
    }
}
