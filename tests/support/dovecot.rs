//! A cluster of real Dovecot 2.3 backends for integration tests: several
//! independent instances on their own loopback addresses, all on the
//! standard ports (IMAP 143, POP3 110, LMTP 24, ManageSieve 4190), sharing
//! one maildir store and one passwd-file of users `user0001`.. with the
//! password `pass`.
//!
//! ```ignore
//! if !support::require_dovecot() { return; }
//! let cluster = DovecotCluster::start(3, DovecotOptions::default());
//! let backend = cluster.instance(0);
//! connect_to(backend.imap_addr());
//! backend.wait_for_who("user0001", "imap", 2, Duration::from_secs(5)).unwrap();
//! backend.kill_hard();  // dies like a crashed machine
//! ```
//!
//! Each instance runs `dovecot -F` (foreground) as a child of the test
//! process, with its own base_dir, state_dir, instance_name, log and
//! config under one temp dir per cluster. Dropping the cluster kills every
//! instance by PID (master and children) and removes the temp dir. The master is started with a
//! parent-death signal (SIGTERM) bound to the *thread* that started it, so
//! a test process killed by a timeout does not leave backends behind:
//! start, restart and drop a cluster on the test's own thread.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::dovecot_conf::{self, ConfigInputs, TlsFiles, MAIL_UID_GID};
use super::loopback::LoopbackLease;
use super::procs;
use super::tempdir::TempDir;
use super::tools;

/// IMAP port of every backend (STARTTLS too when TLS is configured).
pub const IMAP_PORT: u16 = 143;
/// Implicit-TLS IMAP port, open only when [`DovecotOptions::tls`] is set.
pub const IMAPS_PORT: u16 = 993;
/// POP3 port of every backend.
pub const POP3_PORT: u16 = 110;
/// LMTP port of every backend.
pub const LMTP_PORT: u16 = 24;
/// ManageSieve port of every backend.
pub const SIEVE_PORT: u16 = 4190;
/// The password of every generated user.
pub const DEFAULT_PASSWORD: &str = "pass";

/// How often readiness and session polls retry.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a graceful stop may take before the instance is killed.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long the processes a stopped master leaves behind get after
/// their SIGTERM.
const CHILD_STOP_LIMIT: Duration = Duration::from_secs(2);
/// How long killed processes may take to vanish.
const KILL_LIMIT: Duration = Duration::from_secs(5);
/// The PROXY v2 header of a LOCAL connection (health checks, readiness):
/// signature, version 2 + LOCAL, family unspecified, no addresses.
const PROXY_V2_LOCAL: [u8; 16] = [
    0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00, 0x00,
];

/// Instances started by this process, so instance names never repeat.
static NEXT_INSTANCE: AtomicU32 = AtomicU32::new(0);

/// How to start a [`DovecotCluster`].
#[derive(Clone, Debug)]
pub struct DovecotOptions {
    /// Users generated in the shared passwd-file: `user0001` ..
    /// `user{N:04}`, each with password [`DEFAULT_PASSWORD`].
    pub users: usize,
    /// Indices of the instances whose listeners expect a PROXY v1/v2 header
    /// from 127.0.0.0/8 (`haproxy = yes`) before anything else. Empty (the
    /// default): no instance does.
    pub haproxy: Vec<usize>,
    /// Serve TLS too (STARTTLS on 143/110/4190, implicit TLS on 993/995).
    /// `None` (the default): `ssl = no`, as behind a TLS-terminating
    /// director.
    pub tls: Option<TlsFiles>,
    /// Dovecot's `auth_failure_delay`, whole seconds. Default zero so
    /// bad-password tests stay fast (Dovecot's own default is 2 s).
    ///
    /// Dovecot 2.3 also keeps an *auth penalty* per client address (in
    /// anvil, not configurable): after one failed login from an address,
    /// every later authentication from that address on that instance waits
    /// 4 s or more, successful ones included. Tests that log in after a
    /// failure should fail from another client address (ID
    /// `x-originating-ip`, a PROXY header, or a director forwarding one).
    pub auth_failure_delay: Duration,
    /// How long an instance may take to greet after its start.
    pub ready_timeout: Duration,
    /// Token introspection URL: when set, every instance also offers
    /// OAUTHBEARER, XOAUTH2 (an `oauth2` passdb asking this URL) and
    /// SCRAM-SHA-1/-256. `None` (the default): PLAIN and LOGIN only.
    pub oauth2_introspection: Option<String>,
    /// A Dovecot master user (name, password) every instance accepts in a
    /// master passdb listed before the users' (for live moves: SASL PLAIN
    /// with authzid = the user). `None` (the default): no master user.
    pub master_user: Option<(String, String)>,
    /// Settings appended to every instance's `dovecot.conf` (later
    /// settings override earlier ones), e.g. higher process and client
    /// limits for a load test holding thousands of sessions. Empty (the
    /// default): none.
    pub extra_config: String,
}

impl Default for DovecotOptions {
    fn default() -> DovecotOptions {
        DovecotOptions {
            users: 10,
            haproxy: Vec::new(),
            tls: None,
            auth_failure_delay: Duration::ZERO,
            ready_timeout: Duration::from_secs(15),
            oauth2_introspection: None,
            master_user: None,
            extra_config: String::new(),
        }
    }
}

/// One line of `doveadm who`: how many sessions `user` has over `protocol`
/// on one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WhoEntry {
    /// The login name as Dovecot knows it.
    pub user: String,
    /// `imap`, `pop3`, `sieve`, ...
    pub protocol: String,
    /// Open sessions of that user over that protocol.
    pub count: usize,
}

/// Several Dovecot instances sharing one store and one user database.
/// Dropping it stops every instance and removes its files.
pub struct DovecotCluster {
    instances: Vec<DovecotInstance>,
    store_dir: PathBuf,
    passwd_file: PathBuf,
    // Dropped last: instances must be stopped before their files vanish.
    root: TempDir,
}

impl DovecotCluster {
    /// Starts `count` instances and waits until each greets on IMAP.
    /// Panics (with the instance's startup output and log) when one does
    /// not come up within `options.ready_timeout`. Call
    /// [`tools::require_dovecot`] first.
    pub fn start(count: usize, options: DovecotOptions) -> DovecotCluster {
        let root = TempDir::new().expect("create the cluster's temp dir");
        let store_dir = root.path().join("store");
        fs::create_dir(&store_dir).expect("create the mail store");
        chown_to_mail_user(&store_dir);
        let passwd_file = root.path().join("passwd");
        let users: String = (1..=options.users)
            .map(|n| passwd_line(&user_name(n), DEFAULT_PASSWORD))
            .collect();
        fs::write(&passwd_file, users).expect("write the passwd-file");

        let instances: Vec<DovecotInstance> = (0..count)
            .map(|index| {
                DovecotInstance::prepare(root.path(), index, &store_dir, &passwd_file, &options)
            })
            .collect();
        // Owned by the cluster before anything starts, so a panic below
        // still stops whatever did start.
        let mut cluster = DovecotCluster {
            instances,
            store_dir,
            passwd_file,
            root,
        };
        // Start all masters first, then wait: the instances boot in parallel.
        for instance in &mut cluster.instances {
            instance.spawn_master();
        }
        for instance in &mut cluster.instances {
            instance.wait_ready();
        }
        cluster
    }

    /// The instance at `index` (0-based).
    pub fn instance(&self, index: usize) -> &DovecotInstance {
        &self.instances[index]
    }

    /// The instance at `index`, for stopping and restarting it.
    pub fn instance_mut(&mut self, index: usize) -> &mut DovecotInstance {
        &mut self.instances[index]
    }

    /// Every instance, in index order.
    pub fn instances(&self) -> &[DovecotInstance] {
        &self.instances
    }

    /// The generated user number `n` (1-based): `user0001` for 1.
    pub fn user(&self, n: usize) -> String {
        user_name(n)
    }

    /// Adds a user with its own password to the shared passwd-file; every
    /// instance sees it at its next login (Dovecot rereads the file when it
    /// changes). Panics on a name or password the file cannot hold (`:`,
    /// line breaks).
    pub fn add_user(&self, user: &str, password: &str) {
        let forbidden = |text: &str| text.contains([':', '\n', '\r', '\0']);
        assert!(
            !forbidden(user) && !forbidden(password) && !user.is_empty(),
            "a passwd-file user name or password cannot contain ':' or line breaks"
        );
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.passwd_file)
            .expect("open the passwd-file");
        file.write_all(passwd_line(user, password).as_bytes())
            .expect("append to the passwd-file");
    }

    /// The shared store: `STORE/USER` is a user's home.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The maildir of `user` in the shared store.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.store_dir.join(user).join("Maildir")
    }

    /// Puts a message straight into `user`'s INBOX (its maildir's `new/`,
    /// owned by the mail user), as a delivery would; for messages too big
    /// to send through LMTP quickly. Dovecot finds it at the next sync.
    pub fn put_message(&self, user: &str, name: &str, message: &[u8]) {
        let maildir = self.maildir(user);
        let home = self.store_dir.join(user);
        for dir in [
            home.clone(),
            maildir.clone(),
            maildir.join("new"),
            maildir.join("cur"),
            maildir.join("tmp"),
        ] {
            if !dir.exists() {
                fs::create_dir(&dir).expect("create a maildir folder");
                chown_to_mail_user(&dir);
            }
        }
        let path = maildir.join("new").join(name);
        fs::write(&path, message).expect("write the message");
        chown_to_mail_user(&path);
    }

    /// The shared passwd-file.
    pub fn passwd_file(&self) -> &Path {
        &self.passwd_file
    }

    /// The cluster's temp dir (every instance's files live below it).
    pub fn root_dir(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for DovecotCluster {
    /// Kills every instance (as [`DovecotInstance::kill_hard`]: a graceful
    /// Dovecot shutdown takes about a second, and nothing of a test's
    /// backends is needed afterwards), then the temp dir goes.
    fn drop(&mut self) {
        for instance in &mut self.instances {
            instance.kill_quietly();
        }
    }
}

/// One Dovecot backend: its address, files and master process.
pub struct DovecotInstance {
    index: usize,
    name: String,
    lease: LoopbackLease,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    startup_output: PathBuf,
    base_dir: PathBuf,
    haproxy: bool,
    tls: bool,
    ready_timeout: Duration,
    master: Option<Child>,
}

impl DovecotInstance {
    /// Leases an address and writes the instance's directories and config.
    fn prepare(
        root: &Path,
        index: usize,
        store_dir: &Path,
        passwd_file: &Path,
        options: &DovecotOptions,
    ) -> DovecotInstance {
        let lease = LoopbackLease::acquire();
        let serial = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("mpdc-{}-{serial}", std::process::id());
        let dir = root.join(format!("i{index}"));
        let base_dir = dir.join("run");
        let oauth2_conf = dir.join("oauth2.conf.ext");
        let master_passwd = dir.join("master.passwd");
        if let Some((user, password)) = &options.master_user {
            fs::create_dir_all(&dir).expect("create the instance's dir");
            fs::write(&master_passwd, format!("{user}:{{PLAIN}}{password}\n"))
                .expect("write the master passwd-file");
        }
        let state_dir = dir.join("state");
        fs::create_dir_all(&state_dir).expect("create the instance's state_dir");
        let log_path = dir.join("dovecot.log");
        let config_path = dir.join("dovecot.conf");
        let haproxy = options.haproxy.contains(&index);
        let config = dovecot_conf::render(&ConfigInputs {
            instance_name: &name,
            addr: lease.addr(),
            base_dir: &base_dir,
            state_dir: &state_dir,
            log_path: &log_path,
            passwd_file,
            store_dir,
            haproxy,
            tls: options.tls.as_ref(),
            auth_failure_delay: options.auth_failure_delay,
            oauth2_conf: options
                .oauth2_introspection
                .as_ref()
                .map(|_| oauth2_conf.as_path()),
            master_passwd: options
                .master_user
                .as_ref()
                .map(|_| master_passwd.as_path()),
            extra: &options.extra_config,
        });
        fs::write(&config_path, config).expect("write dovecot.conf");
        if let Some(url) = &options.oauth2_introspection {
            fs::write(&oauth2_conf, dovecot_conf::render_oauth2(url))
                .expect("write oauth2.conf.ext");
        }
        DovecotInstance {
            index,
            name,
            lease,
            startup_output: dir.join("master.out"),
            dir,
            config_path,
            log_path,
            base_dir,
            haproxy,
            tls: options.tls.is_some(),
            ready_timeout: options.ready_timeout,
            master: None,
        }
    }

    /// Starts `dovecot -F -c CONF` as a child of this process.
    fn spawn_master(&mut self) {
        let dovecot = tools::tool_path("dovecot").expect("dovecot is installed");
        // A stale pid file (after kill_hard) could name a reused PID.
        let _ = fs::remove_file(self.base_dir.join("master.pid"));
        let output = File::create(&self.startup_output).expect("create master.out");
        let errors = output.try_clone().expect("clone the master.out handle");
        let mut command = Command::new(dovecot);
        // Its own process group, which its children inherit: kill_hard
        // kills them all with one signal.
        command.process_group(0);
        command
            .arg("-F")
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        // SAFETY: the closure only calls prctl, which is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn dovecot");
        self.master = Some(child);
    }

    /// Waits (bounded by the ready timeout) until the instance greets with
    /// `* OK` on its IMAP port; panics with its output and log if it exits
    /// or stays silent.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            if let Some(master) = self.master.as_mut() {
                if let Ok(Some(status)) = master.try_wait() {
                    self.master = None;
                    panic!(
                        "dovecot instance {} ({}) exited during startup ({status}).\n{}",
                        self.index,
                        self.addr(),
                        self.diagnostics()
                    );
                }
            }
            if self.greets() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "dovecot instance {} ({}) did not greet on IMAP within {:?}.\n{}",
                    self.index,
                    self.addr(),
                    self.ready_timeout,
                    self.diagnostics()
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// True if the IMAP port answers `* OK` (after a PROXY v2 LOCAL header
    /// when the listener expects one).
    fn greets(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect_timeout(&self.imap_addr(), Duration::from_secs(1))
        else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        if self.haproxy && stream.write_all(&PROXY_V2_LOCAL).is_err() {
            return false;
        }
        let mut greeting = String::new();
        let _ = BufReader::new(&mut stream).read_line(&mut greeting);
        greeting.starts_with("* OK")
    }

    /// Startup output and the end of the log, for panic messages.
    fn diagnostics(&self) -> String {
        let output = fs::read_to_string(&self.startup_output).unwrap_or_default();
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- dovecot -F output ---\n{output}\n--- last lines of {} ---\n{}\n\
             (Port in use? A system Dovecot on *:143 blocks every test backend: \
             run scripts/install-test-deps.)",
            self.log_path.display(),
            tail.join("\n")
        )
    }

    /// The 0-based position of this instance in its cluster.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Dovecot's `instance_name` of this backend (unique per test process).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The loopback address all of this backend's listeners bind.
    pub fn addr(&self) -> Ipv4Addr {
        self.lease.addr()
    }

    /// IMAP port (143).
    pub fn imap_port(&self) -> u16 {
        IMAP_PORT
    }

    /// Implicit-TLS IMAP port (993; open only with TLS configured).
    pub fn imaps_port(&self) -> u16 {
        IMAPS_PORT
    }

    /// POP3 port (110).
    pub fn pop3_port(&self) -> u16 {
        POP3_PORT
    }

    /// LMTP port (24).
    pub fn lmtp_port(&self) -> u16 {
        LMTP_PORT
    }

    /// ManageSieve port (4190).
    pub fn sieve_port(&self) -> u16 {
        SIEVE_PORT
    }

    /// `addr():143`.
    pub fn imap_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr(), IMAP_PORT))
    }

    /// `addr():110`.
    pub fn pop3_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr(), POP3_PORT))
    }

    /// `addr():24`.
    pub fn lmtp_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr(), LMTP_PORT))
    }

    /// `addr():4190`.
    pub fn sieve_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr(), SIEVE_PORT))
    }

    /// True when the listeners expect a PROXY header first.
    pub fn expects_proxy_header(&self) -> bool {
        self.haproxy
    }

    /// True when this backend serves TLS itself.
    pub fn serves_tls(&self) -> bool {
        self.tls
    }

    /// The generated `dovecot.conf` (pass it to `doveadm -c`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The directory holding this instance's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The whole log file so far (empty if not yet written). Login lines
    /// show the client address as `rip=`. Lines arrive asynchronously: to
    /// assert that one appears, use [`wait_for_log`](Self::wait_for_log).
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Polls the log until it contains `needle`, at most `limit`. Dovecot's
    /// log process writes asynchronously: a login line may land a moment
    /// after the client saw OK, so assert on log lines through this. The
    /// error carries the log's last lines.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "instance {}: no {needle:?} in the log within {limit:?}; last lines:\n{}",
                    self.index,
                    tail.join("\n")
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The master's PID while it runs.
    pub fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(Child::id)
    }

    /// True while the master process runs.
    pub fn is_running(&mut self) -> bool {
        match self.master.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.master = None;
                false
            }
            None => false,
        }
    }

    /// Every process of this instance: the master and all it forked.
    pub fn pids(&self) -> Vec<u32> {
        match self.master_pid() {
            Some(master) => {
                let mut pids = vec![master];
                pids.extend(procs::descendants(master));
                pids
            }
            None => Vec::new(),
        }
    }

    /// Runs `doveadm -c CONF ARGS...` against this instance.
    pub fn doveadm(&self, args: &[&str]) -> std::process::Output {
        let doveadm = tools::tool_path("doveadm").expect("doveadm is installed");
        Command::new(doveadm)
            .arg("-c")
            .arg(&self.config_path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run doveadm")
    }

    /// The users logged in on this instance (`doveadm who`), or the error
    /// doveadm printed (for instance when the instance is down).
    ///
    /// A session shows up only after the login process has handed it to
    /// the mail process and registered it with anvil, a few milliseconds
    /// after the client saw `OK`; and it disappears a moment after logout.
    /// Do not assert on one call: poll with a deadline, as
    /// [`DovecotInstance::wait_for_who`] does.
    pub fn try_who(&self) -> Result<Vec<WhoEntry>, String> {
        let output = self.doveadm(&["-f", "tab", "who"]);
        if !output.status.success() {
            return Err(format!(
                "doveadm who on instance {} failed ({}): {}",
                self.index,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(parse_who(&String::from_utf8_lossy(&output.stdout)))
    }

    /// Like [`DovecotInstance::try_who`], panicking when doveadm fails.
    pub fn who(&self) -> Vec<WhoEntry> {
        self.try_who().unwrap_or_else(|err| panic!("{err}"))
    }

    /// Sessions of `user` over `protocol` on this instance right now.
    pub fn who_count(&self, user: &str, protocol: &str) -> usize {
        sessions_of(&self.who(), user, protocol)
    }

    /// Polls `doveadm who` until `user` has exactly `count` sessions over
    /// `protocol` here, at most `limit`. The error says what was last seen.
    pub fn wait_for_who(
        &self,
        user: &str,
        protocol: &str,
        count: usize,
        limit: Duration,
    ) -> Result<(), String> {
        self.wait_until_who(
            &format!("{count} {protocol} session(s) of {user}"),
            |entries| sessions_of(entries, user, protocol) == count,
            limit,
        )
        .map(|_| ())
    }

    /// Polls `doveadm who` until `condition` holds for its entries, at most
    /// `limit`, and returns those entries. `what` names the condition in
    /// the error, which also shows the last answer seen.
    pub fn wait_until_who(
        &self,
        what: &str,
        condition: impl Fn(&[WhoEntry]) -> bool,
        limit: Duration,
    ) -> Result<Vec<WhoEntry>, String> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.try_who();
            if let Ok(entries) = &seen {
                if condition(entries) {
                    return Ok(entries.clone());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "instance {}: waited {limit:?} for {what}; last doveadm who: {seen:?}",
                    self.index
                ));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills the instance like a crashed machine: one SIGKILL to the
    /// master's process group reaches the master and every process it
    /// forked at once, and this waits until all are gone. Its ports then
    /// refuse connections. A no-op when it is not running.
    ///
    /// Not one process after the other: between those kills the survivors
    /// went on serving, and a login whose auth process was already dead got
    /// Dovecot's own `NO [UNAVAILABLE] Internal error occurred` from an
    /// instance a crash would have silenced (the failover test's flake).
    pub fn kill_hard(&mut self) {
        let left = self.kill_all();
        assert!(
            left.is_empty(),
            "processes of dovecot instance {} survived SIGKILL: {left:?}",
            self.index
        );
    }

    /// The work of [`kill_hard`](Self::kill_hard); returns the PIDs still
    /// alive after the bounded wait.
    fn kill_all(&mut self) -> Vec<u32> {
        let Some(mut master) = self.master.take() else {
            return Vec::new();
        };
        // The master leads its own process group (spawn_master) and its
        // children inherit it; one that left the group is still found by
        // ancestry, before the kill re-parents it.
        let group = master.id();
        let members = procs::group_members(group);
        let strays: Vec<u32> = procs::descendants(group)
            .into_iter()
            .filter(|pid| !members.contains(pid))
            .collect();
        procs::signal_group(group, libc::SIGKILL);
        for &pid in &strays {
            procs::send_signal(pid, libc::SIGKILL);
        }
        let _ = master.wait();
        let mut left = procs::wait_group_gone(group, KILL_LIMIT);
        left.extend(procs::wait_gone(&strays, Duration::ZERO));
        left
    }

    /// Stops the instance gracefully: SIGTERM to the master and a bounded
    /// wait for it to exit (about a second). Dovecot 2.3 leaves mail
    /// processes that still serve clients (and its log and stats
    /// processes) running after the master exits; they get SIGTERM then
    /// (clients see Dovecot's shutdown BYE), and whatever is left after
    /// [`CHILD_STOP_LIMIT`] is killed. A no-op when it is not running.
    pub fn stop(&mut self) {
        let Some(mut master) = self.master.take() else {
            return;
        };
        let master_pid = master.id();
        let children = procs::descendants(master_pid);
        procs::send_signal(master_pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_LIMIT;
        while matches!(master.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(POLL_INTERVAL);
        }
        if matches!(master.try_wait(), Ok(None)) {
            let _ = master.kill();
        }
        let _ = master.wait();
        let orphans = procs::wait_gone(&children, Duration::ZERO);
        for &pid in &orphans {
            procs::send_signal(pid, libc::SIGTERM);
        }
        let left = procs::wait_gone(&orphans, CHILD_STOP_LIMIT);
        for &pid in &left {
            procs::send_signal(pid, libc::SIGKILL);
        }
        procs::wait_gone(&left, KILL_LIMIT);
    }

    /// Starts the instance again (after [`stop`](Self::stop) or
    /// [`kill_hard`](Self::kill_hard); a running instance is stopped first)
    /// on the same address with the same config, and waits until it greets.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_master();
        self.wait_ready();
    }

    /// Kill for Drop: never panics, reports survivors on stderr.
    fn kill_quietly(&mut self) {
        let left = self.kill_all();
        if !left.is_empty() {
            eprintln!(
                "dovecot instance {}: processes {left:?} survived SIGKILL",
                self.index
            );
        }
    }
}

/// Parses `doveadm -f tab who` output: a header line, then
/// `USER<TAB>COUNT<TAB>PROTO<TAB>(PIDS)<TAB>(IPS)` per user and protocol.
/// Lines that do not fit are skipped.
pub fn parse_who(output: &str) -> Vec<WhoEntry> {
    output
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t').map(str::trim);
            let user = fields.next()?;
            let count = fields.next()?.parse().ok()?;
            let protocol = fields.next()?;
            (!user.is_empty() && !protocol.is_empty()).then(|| WhoEntry {
                user: user.to_owned(),
                protocol: protocol.to_owned(),
                count,
            })
        })
        .collect()
}

/// Sessions of `user` over `protocol` in `entries`.
pub fn sessions_of(entries: &[WhoEntry], user: &str, protocol: &str) -> usize {
    entries
        .iter()
        .filter(|entry| entry.user == user && entry.protocol == protocol)
        .map(|entry| entry.count)
        .sum()
}

/// The name of generated user `n`: `user0001` for 1.
pub fn user_name(n: usize) -> String {
    format!("user{n:04}")
}

/// One passwd-file line with a plain-text password.
fn passwd_line(user: &str, password: &str) -> String {
    format!("{user}:{{PLAIN}}{password}::::::\n")
}

/// Hands `path` to the mail user (nobody:nogroup), as the static userdb
/// expects.
fn chown_to_mail_user(path: &Path) {
    std::os::unix::fs::chown(path, Some(MAIL_UID_GID), Some(MAIL_UID_GID))
        .expect("chown the mail store to nobody:nogroup");
}
