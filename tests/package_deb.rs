//! The Debian package on this machine: `dpkg -i` of the .deb that
//! `scripts/package` built, what it installs (binary, conffile, unit, man
//! page, `mailpin` user, a self-signed certificate), the unit's own
//! `ExecStartPre=` check of the shipped reference config, then the unit
//! started — by systemd when it is PID 1, otherwise by running the unit's
//! `ExecStart=` line the way the unit would (its `User=`, `Group=`,
//! `AmbientCapabilities=`, `CapabilityBoundingSet=`, `NoNewPrivileges=`,
//! `LimitNOFILE=`, `MemoryDenyWriteExecute=` and `NOTIFY_SOCKET`) — an
//! IMAPS login through it on port 993 to a real Dovecot, a stop, and
//! `dpkg --purge`.
//!
//! It installs a package system-wide, so it is `#[ignore]`d in the normal
//! run; `scripts/test` runs it (as root) with `MAILPIN_DEB` naming the
//! package.

mod support;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::loopback::LoopbackLease;
use support::tempdir::TempDir;
use support::{require_dovecot, require_tool, run_client, DovecotCluster, DovecotOptions};

const UNIT: &str = "/lib/systemd/system/mailpin.service";
const CONFIG: &str = "/etc/mailpin/mailpin.toml";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Purges the package when the test ends, whatever happened.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "mailpin"]);
    }
}

/// The `Key=value` settings of a unit file (the last one of each key).
fn unit_settings(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `CAP_NET_BIND_SERVICE CAP_X` -> `+net_bind_service,+x` for setpriv.
fn setpriv_caps(unit_caps: &str) -> String {
    unit_caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The unit's service, started the way systemd would start it.
enum Service {
    /// systemd runs it.
    Systemd,
    /// This test runs the unit's `ExecStart=` line itself.
    Emulated(Child),
}

impl Drop for Service {
    fn drop(&mut self) {
        match self {
            Service::Systemd => {
                let _ = run("systemctl", &["stop", "mailpin"]);
            }
            Service::Emulated(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs `exec_line` as the unit would, with `NOTIFY_SOCKET`, logging to
/// `log`.
fn start_like_the_unit(
    unit: &HashMap<String, String>,
    exec_line: &str,
    notify: &Path,
    log: &Path,
) -> Child {
    let user = &unit["User"];
    let group = &unit["Group"];
    let ambient = setpriv_caps(&unit["AmbientCapabilities"]);
    let bounding = setpriv_caps(&unit["CapabilityBoundingSet"]);
    assert_eq!(unit["NoNewPrivileges"], "yes");
    assert_eq!(unit["MemoryDenyWriteExecute"], "yes");
    let wanted: libc::rlim_t = unit["LimitNOFILE"]
        .parse()
        .expect("LimitNOFILE is a number");
    // systemd (PID 1) may raise the hard limit; a root without
    // CAP_SYS_RESOURCE (a container) only up to its own.
    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: own is a valid out pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    let nofile = wanted.min(own.rlim_max);
    if nofile < wanted {
        eprintln!("LimitNOFILE={wanted} lowered to this machine's hard limit {nofile}");
    }
    let mut argv = exec_line.split_whitespace();
    let program = argv.next().expect("ExecStart has a program");
    let log = fs::File::create(log).expect("log file");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", user, "--regid", group, "--init-groups"])
        .args(["--inh-caps", &ambient, "--ambient-caps", &ambient])
        .args(["--bounding-set", &format!("-all,{bounding}")])
        .arg("--no-new-privs")
        .arg(program)
        .args(argv)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("NOTIFY_SOCKET", notify)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // LimitNOFILE= (as far as this machine allows, above).
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // MemoryDenyWriteExecute=: the kernel's own switch for it
            // (PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), kept across exec.
            if libc::prctl(65, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().expect("start the unit's ExecStart line")
}

/// The value of `field` in /proc/PID/status.
fn proc_status(pid: u32, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "installs a package system-wide: scripts/test runs it as root with MAILPIN_DEB"]
fn the_package_installs_runs_its_unit_serves_a_login_and_purges() {
    let deb = std::env::var("MAILPIN_DEB")
        .expect("MAILPIN_DEB names the .deb to install (scripts/package prints its path)");
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "dpkg -i needs root");
    if !require_dovecot() || !require_tool("python3") || !require_tool("setpriv") {
        return;
    }
    let _purge = Purge;
    let _ = run("dpkg", &["--purge", "mailpin"]);
    let installed = run("dpkg", &["-i", &deb]);
    assert_ok("dpkg -i", &installed);
    let notes = String::from_utf8_lossy(&installed.stdout).into_owned();
    assert!(notes.contains("self-signed certificate"), "{notes}");

    // What the package installed.
    for path in ["/usr/bin/mailpin", UNIT, "/usr/share/man/man1/mailpin.1.gz"] {
        assert!(Path::new(path).is_file(), "{path} is installed");
    }
    let shipped = include_str!("../config/mailpin.toml");
    assert_eq!(
        fs::read_to_string(CONFIG).unwrap(),
        shipped,
        "the reference config"
    );
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", "mailpin"]);
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains(CONFIG),
        "{CONFIG} is a conffile"
    );
    let user = run("getent", &["passwd", "mailpin"]);
    assert_ok("getent passwd mailpin", &user);
    let uid: u32 = String::from_utf8_lossy(&user.stdout)
        .split(':')
        .nth(2)
        .and_then(|u| u.parse().ok())
        .expect("mailpin's uid");
    assert!(uid < 1000, "mailpin is a system user (uid {uid})");
    let key = fs::metadata("/etc/mailpin/key.pem").expect("a generated key");
    assert_eq!(key.permissions().mode() & 0o777, 0o640, "key.pem mode");
    assert_eq!(key.uid(), 0, "root owns key.pem");
    assert_eq!(
        fs::metadata("/etc/mailpin").unwrap().permissions().mode() & 0o777,
        0o750
    );

    let unit_text = fs::read_to_string(UNIT).unwrap();
    let unit = unit_settings(&unit_text);
    assert_eq!(unit["Type"], "notify");
    assert_eq!(unit["ExecReload"], "/usr/bin/mailpin ctl reload");
    if support::tools::tool_path("systemd-analyze").is_some() {
        assert_ok(
            "systemd-analyze verify",
            &run("systemd-analyze", &["verify", UNIT]),
        );
    }
    // The unit's ExecStartPre= accepts the reference config as installed
    // (with the generated certificate), as the mailpin user.
    let check_line = &unit["ExecStartPre"];
    let mut check = check_line.split_whitespace();
    let checked = Command::new("setpriv")
        .args(["--reuid", "mailpin", "--regid", "mailpin", "--init-groups"])
        .args(check.by_ref())
        .current_dir("/")
        .output()
        .unwrap();
    assert_ok("the unit's ExecStartPre on the reference config", &checked);

    // The administrator's config: IMAPS on port 993 of an address no other
    // test uses, in front of a real Dovecot; the generated certificate.
    let cluster = DovecotCluster::start(1, DovecotOptions::default());
    let lease = LoopbackLease::acquire();
    let ip = lease.addr();
    let inst = cluster.instance(0);
    fs::write(
        CONFIG,
        format!(
            "[server]\ncores = 1\ndrain_timeout = \"2s\"\n\n\
             [tls]\ncert = \"/etc/mailpin/cert.pem\"\nkey = \"/etc/mailpin/key.pem\"\n\n\
             [[listen]]\nprotocol = \"imap\"\naddr = \"{ip}:993\"\ntls = \"implicit\"\n\n\
             [admin]\nlisten = \"{ip}:9120\"\n\n\
             [[backend]]\nname = \"b0\"\nhost = \"{}\"\nimap = {}\n",
            inst.addr(),
            inst.imap_port()
        ),
    )
    .unwrap();

    let dir = TempDir::new().expect("temp dir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o666)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let log_path = dir.path().join("mailpin.log");
    let receive = |what: &str| {
        let mut buf = [0u8; 1024];
        let n = notify.recv(&mut buf).unwrap_or_else(|e| {
            panic!(
                "no {what} notification ({e}); log:\n{}",
                fs::read_to_string(&log_path).unwrap_or_default()
            )
        });
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };

    let under_systemd = Path::new("/run/systemd/system").is_dir();
    let mut service = if under_systemd {
        assert_ok(
            "systemctl daemon-reload",
            &run("systemctl", &["daemon-reload"]),
        );
        // Type=notify: start returns once mailpin said READY=1.
        assert_ok(
            "systemctl start mailpin",
            &run("systemctl", &["start", "mailpin"]),
        );
        assert_ok(
            "systemctl is-active",
            &run("systemctl", &["is-active", "mailpin"]),
        );
        Service::Systemd
    } else {
        eprintln!("systemd is not PID 1: running the unit's ExecStart line as its User=");
        let child = start_like_the_unit(&unit, &unit["ExecStart"], &notify_path, &log_path);
        let ready = receive("READY");
        assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
        assert!(
            ready.contains(&format!("MAINPID={}", child.id())),
            "{ready}"
        );
        let pid = child.id();
        assert_eq!(
            proc_status(pid, "Uid").split_whitespace().next(),
            Some(uid.to_string().as_str()),
            "runs as mailpin"
        );
        let ambient = u64::from_str_radix(&proc_status(pid, "CapAmb"), 16).unwrap_or(0);
        // CAP_NET_BIND_SERVICE is capability 10.
        assert_eq!(ambient, 1 << 10, "only CAP_NET_BIND_SERVICE");
        Service::Emulated(child)
    };

    let out = run_client(
        "imap_sessions.py",
        &[
            "--host",
            &ip.to_string(),
            "--port",
            "993",
            "--mode",
            "tls",
            "--insecure",
            "--user",
            "user0001",
            "--hold",
            "0",
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.success(),
        "IMAPS login through the packaged director: {out:?}"
    );
    let status = run(
        "/usr/bin/mailpin",
        &["ctl", "--admin", &format!("{ip}:9120"), "status"],
    );
    assert_ok("mailpin ctl status", &status);

    // Stop: SIGTERM drains and exits 0 (systemd: the unit goes inactive).
    match &mut service {
        Service::Systemd => {
            assert_ok("systemctl stop", &run("systemctl", &["stop", "mailpin"]));
        }
        Service::Emulated(child) => {
            support::procs::send_signal(child.id(), libc::SIGTERM);
            let stopping = receive("STOPPING");
            assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
            let deadline = Instant::now() + Duration::from_secs(15);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(Instant::now() < deadline, "mailpin did not stop on SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            };
            assert!(status.success(), "exit status {status}");
        }
    }
    drop(service);

    assert_ok("dpkg --purge", &run("dpkg", &["--purge", "mailpin"]));
    assert!(!Path::new("/usr/bin/mailpin").exists());
    assert!(
        !Path::new("/etc/mailpin").exists(),
        "purge removes /etc/mailpin"
    );
    assert!(
        !run("getent", &["passwd", "mailpin"]).status.success(),
        "purge removes the user"
    );
}
