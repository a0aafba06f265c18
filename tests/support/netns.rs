//! A real network partition for the cluster-mode tests: a 3-member etcd
//! inside its own network namespace, reached from the test's namespace
//! over one veth pair that a test can take down (`ip link set … down`)
//! and up again. Connections across a downed link hang, with no reset —
//! what a director cut off from etcd by the network really sees.
//!
//! The members listen on `0.0.0.0` inside the namespace (client ports
//! 2379, 2389, 2399; peers on the namespace's own loopback), so the test
//! can also ask them with `etcdctl` from inside while the link is down.
//! Everything is removed on drop: members killed by PID, the namespace
//! (and with it the veth pair) deleted.

use std::net::SocketAddr;

use mailpin::devcluster::{etcd_healthy, etcd_member_args, EtcdMember};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::tempdir::TempDir;
use super::tools::{on_ci, require_tool};

/// The members' client ports inside the namespace.
pub const CLIENT_PORTS: [u16; 3] = [2379, 2389, 2399];

/// True if namespaces can be made here: root, `ip` and etcd installed
/// (skip locally, fail on CI).
pub fn require_netns() -> bool {
    if !require_tool("ip") || !require_tool("etcd") || !require_tool("etcdctl") {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(!on_ci(), "network namespaces need root and CI=true");
        eprintln!("skipping: network namespaces need root");
        return false;
    }
    true
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// etcd in a namespace behind a veth pair.
pub struct PartitionedEtcd {
    ns: String,
    veth: String,
    ns_ip: String,
    members: Vec<Child>,
    _dir: TempDir,
}

impl PartitionedEtcd {
    /// Creates the namespace and link and starts the members; waits until
    /// they have a leader.
    pub fn start() -> PartitionedEtcd {
        let pid = std::process::id();
        let ns = format!("mp-etcd-{pid}");
        let veth = format!("mpv{}", pid % 100_000);
        let peer = format!("mpn{}", pid % 100_000);
        let (a, b) = (10 + (pid / 64 % 200), (pid % 64) * 4);
        let root_ip = format!("10.{a}.{b}.1");
        let ns_ip = format!("10.{a}.{b}.2");
        ip(&["netns", "add", &ns]);
        let dir = TempDir::new().expect("temp dir");
        let mut this = PartitionedEtcd {
            ns: ns.clone(),
            veth: veth.clone(),
            ns_ip: ns_ip.clone(),
            members: Vec::new(),
            _dir: dir,
        };
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
        ip(&["link", "set", &peer, "netns", &ns]);
        ip(&["addr", "add", &format!("{root_ip}/30"), "dev", &veth]);
        ip(&["link", "set", &veth, "up"]);
        ip(&[
            "netns",
            "exec",
            &ns,
            "ip",
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &peer,
        ]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", &peer, "up"]);
        ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        let initial: Vec<String> = CLIENT_PORTS
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{i}=http://127.0.0.1:{}", p + 1))
            .collect();
        for (i, port) in CLIENT_PORTS.iter().enumerate() {
            let name = format!("m{i}");
            let log =
                std::fs::File::create(this._dir.path().join(format!("{name}.log"))).expect("log");
            let peer_url = format!("http://127.0.0.1:{}", port + 1);
            let child = Command::new("ip")
                .args(["netns", "exec", &ns, "etcd"])
                .args(etcd_member_args(&EtcdMember {
                    name: &name,
                    data_dir: &this._dir.path().join(&name),
                    listen_client: &format!("http://0.0.0.0:{port}"),
                    advertise_client: &format!("http://{ns_ip}:{port}"),
                    peer: &peer_url,
                    initial_cluster: &initial.join(","),
                    token: &ns,
                }))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start etcd in the namespace");
            this.members.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in CLIENT_PORTS {
            let addr: SocketAddr = format!("{ns_ip}:{port}").parse().unwrap();
            while !etcd_healthy(addr) {
                assert!(Instant::now() < deadline, "etcd in {ns} not healthy");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        this
    }

    /// The client URLs as seen from the test's namespace, as TOML.
    pub fn toml_endpoints(&self) -> String {
        let urls: Vec<String> = CLIENT_PORTS
            .iter()
            .map(|p| format!("\"http://{}:{p}\"", self.ns_ip))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Takes the link down: nothing crosses it, nothing is reset.
    pub fn cut(&self) {
        ip(&["link", "set", &self.veth, "down"]);
    }

    /// Brings the link up again.
    pub fn heal(&self) {
        ip(&["link", "set", &self.veth, "up"]);
    }

    /// Runs `etcdctl ARGS` inside the namespace (works while cut).
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "etcdctl"])
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", "127.0.0.1:2379", "--command-timeout=2s"])
            .args(args)
            .output()
            .expect("etcdctl")
    }

    /// Runs `f` on a new thread that has entered the namespace; threads it
    /// starts stay inside (a second director's cluster thread, say).
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).expect("namespace file");
            // SAFETY: a valid namespace descriptor; entering a network
            // namespace changes only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("thread in the namespace")
    }

    /// The client URLs as seen from inside the namespace.
    pub fn inside_urls(&self) -> Vec<String> {
        CLIENT_PORTS
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// Whether `key` exists (asked inside the namespace).
    pub fn has_key(&self, key: &str) -> bool {
        let out = self.etcdctl(&["get", key, "--keys-only"]);
        String::from_utf8_lossy(&out.stdout).contains(key)
    }
}

impl Drop for PartitionedEtcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            let _ = m.kill();
            let _ = m.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .stderr(Stdio::null())
            .status();
    }
}
