//! Running the real `mailpin` binary in a test.
//!
//! [`Mailpin::start`] writes a configuration into a fresh temp dir, starts
//! `mailpin run -c FILE` and waits — on the director's own log lines, not on
//! a timer — until every listener is bound, learning the ports the kernel
//! chose for `:0` addresses. The log is collected so a test can assert on
//! it (and await a line). Drop sends SIGTERM and waits, bounded, then
//! SIGKILLs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::procs::send_signal;
use super::tempdir::TempDir;

/// The log collected from a running director, with a condition to wait on.
#[derive(Default)]
struct SharedLog {
    text: Mutex<String>,
    grew: Condvar,
}

/// A running director process.
pub struct Mailpin {
    child: Child,
    log: Arc<SharedLog>,
    /// The bound listener addresses, in `[[listen]]` order.
    pub listen: Vec<SocketAddr>,
    /// Where the admin API listens.
    pub admin: SocketAddr,
    dir: TempDir,
}

impl Mailpin {
    /// Starts a director with `config` (TOML) and waits until it listens on
    /// `listeners` addresses.
    pub fn start(config: &str, listeners: usize) -> Mailpin {
        Self::start_with(config, listeners, &[])
    }

    /// As [`Mailpin::start`], with extra environment variables.
    pub fn start_with(config: &str, listeners: usize, env: &[(&str, &str)]) -> Mailpin {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().join("mailpin.toml");
        // Tests run side by side: unless told otherwise, the admin API
        // takes a port the kernel chooses (its address is read from the log).
        let config = if config.contains("[admin]") {
            config.to_string()
        } else {
            format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n{config}")
        };
        // Every test client connects from loopback: unless the test sets
        // its own [limits], loopback is trusted, so the per-address limits
        // and the failed-login delay stay out of tests about other things.
        let config = if config.contains("[limits]") {
            config
        } else {
            format!("[limits]\ntrusted = [\"127.0.0.0/8\"]\n\n{config}")
        };
        std::fs::write(&path, config).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailpin"));
        cmd.arg("run")
            .arg("-c")
            .arg(&path)
            .env("MAILPIN_LOG", "info,mailpin=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mailpin");
        let log = Arc::new(SharedLog::default());
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut text = log.text.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                    log.grew.notify_all();
                }
            });
        }
        let mut m = Mailpin {
            child,
            log,
            listen: Vec::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        m.listen = m.wait_for_listeners(listeners, Duration::from_secs(30));
        let admin = m
            .wait_for_log(&["admin API ready"], Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no admin API:\n{}", m.log()));
        m.admin = addr_in(&admin)
            .and_then(|a| a.parse().ok())
            .expect("admin address in the log");
        m
    }

    fn wait_for_listeners(&mut self, n: usize, limit: Duration) -> Vec<SocketAddr> {
        let deadline = Instant::now() + limit;
        let mut text = self.log.text.lock().unwrap();
        loop {
            let addrs: Vec<SocketAddr> = text
                .lines()
                .filter(|l| l.contains("listening"))
                .filter_map(addr_in)
                .filter_map(|a| a.parse().ok())
                .collect();
            if addrs.len() >= n {
                return addrs;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("mailpin exited ({status}) before listening:\n{text}");
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("mailpin did not listen within {limit:?}:\n{text}");
            }
            // Wake on every new log line; re-check the child at least every 100 ms.
            let wait = (deadline - now).min(Duration::from_millis(100));
            text = self.log.grew.wait_timeout(text, wait).unwrap().0;
        }
    }

    /// Everything the director logged so far.
    pub fn log(&self) -> String {
        self.log.text.lock().unwrap().clone()
    }

    /// Waits until a log line contains every one of `needles`; returns it.
    pub fn wait_for_log(&self, needles: &[&str], limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        let mut text = self.log.text.lock().unwrap();
        loop {
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return Some(line.to_string());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            text = self.log.grew.wait_timeout(text, deadline - now).unwrap().0;
        }
    }

    /// The temp dir holding the config.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Runs `mailpin ctl --admin ADDR ARGS...`; returns (exit code, stdout,
    /// stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        Self::ctl_at(&self.admin.to_string(), args)
    }

    /// Runs `mailpin ctl --admin ADMIN ARGS...` against any address.
    pub fn ctl_at(admin: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_mailpin"))
            .arg("ctl")
            .arg("--admin")
            .arg(admin)
            .args(args)
            .output()
            .expect("run mailpin ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The director's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the director: SIGTERM, then SIGKILL if it has not exited
    /// within 10 s.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the director to exit by itself; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

// -- admin API helpers for cluster tests --
impl Mailpin {
    /// `GET path` on the admin API, its JSON body (`Null` if not JSON).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (_, body) = http(
            self.admin,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// The value of the unlabelled metric `name` (panics if absent).
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = http(
            self.admin,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

/// Polls `check` every 50 ms until it holds or `limit` passes; returns
/// how long it took. On a timeout prints the logs of `logs` and panics
/// naming `what`.
pub fn wait_until(
    logs: &[&Mailpin],
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    while !check() {
        if start.elapsed() >= limit {
            for m in logs {
                eprintln!("--- director log:\n{}", m.log());
            }
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}
// -- end --

impl Drop for Mailpin {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `addr` field of a log line, in the text (`addr=IP:PORT`) or the
/// JSON (`"addr":"IP:PORT"`) format of `log.format`.
fn addr_in(line: &str) -> Option<&str> {
    if let Some(a) = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
    {
        return Some(a);
    }
    let (_, rest) = line.split_once("\"addr\":\"")?;
    rest.split('"').next()
}

/// A raw HTTP/1.1 request to an admin API (the server closes after
/// answering); returns (status, body). A `Host: x` header stands for the
/// admin address itself (the API refuses a Host that does not name it).
pub fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let (status, _, body) = http_full(addr, request);
    (status, body)
}

/// As [`http`], also returning the response head.
pub fn http_full(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let request = request.replacen("\r\nHost: x\r\n", &format!("\r\nHost: {addr}\r\n"), 1);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    read_answer(s)
}

/// A raw HTTP request over a Unix socket; returns (status, head, body).
pub fn http_unix(path: &std::path::Path, request: &str) -> (u16, String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    read_answer(s)
}

fn read_answer(mut s: impl Read) -> (u16, String, String) {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_string(), body.to_string())
}
