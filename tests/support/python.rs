//! Running the Python mail clients in `tests/clients/` from tests: once
//! with a timeout ([`run_client`]), or interactively ([`InteractiveClient`])
//! so a test can wait for a line such as `READY 4`, inspect the servers
//! while the client holds its sessions, then tell it to finish.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::procs;
use super::tools;

/// What a finished client printed and how it ended.
#[derive(Debug)]
pub struct ClientOutput {
    /// The exit code; `None` when it was killed (by a signal or the timeout).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// True when it did not finish in time and was killed.
    pub timed_out: bool,
}

impl ClientOutput {
    /// True when it exited by itself with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// The last stdout line that parses as a JSON object, as raw text (the
    /// clients end with a JSON summary); `None` if there is none.
    pub fn summary_line(&self) -> Option<&str> {
        self.stdout
            .lines()
            .rev()
            .map(str::trim)
            .find(|line| line.starts_with('{') && line.ends_with('}'))
    }
}

/// The interpreter: `$MAILPIN_TEST_PYTHON` when set (say, `/usr/bin/python3`
/// to skip a slow pyenv shim), else `python3` from `PATH`.
pub fn python_interpreter() -> PathBuf {
    std::env::var_os("MAILPIN_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| tools::tool_path("python3"))
        .expect("python3 is installed (check with require_tool(\"python3\") first)")
}

/// The path of the client script `name` in `tests/clients/`.
pub fn client_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients")
        .join(name)
}

/// Runs `python3 tests/clients/SCRIPT ARGS...` with stdin closed and waits
/// at most `limit`; a client still running then is killed and reported
/// with `timed_out`.
pub fn run_client(script: &str, args: &[&str], limit: Duration) -> ClientOutput {
    let mut client = RunningClient::spawn(&python_interpreter(), script, args, false);
    client.finish(limit)
}

/// A client that runs while the test talks to it: await its stdout lines,
/// write lines to its stdin. Killed on drop if still running.
pub struct InteractiveClient {
    running: RunningClient,
}

impl InteractiveClient {
    /// Starts `python3 tests/clients/SCRIPT ARGS...` with a stdin pipe.
    pub fn spawn(script: &str, args: &[&str]) -> InteractiveClient {
        InteractiveClient::spawn_with(&python_interpreter(), script, args)
    }

    /// Like [`InteractiveClient::spawn`] with the interpreter `python`
    /// (say, the test venv's, for a client that needs a library from
    /// PyPI).
    pub fn spawn_with(python: &std::path::Path, script: &str, args: &[&str]) -> InteractiveClient {
        InteractiveClient {
            running: RunningClient::spawn(python, script, args, true),
        }
    }

    /// Waits at most `limit` for the next stdout line starting with
    /// `prefix` (earlier lines are skipped, still kept in the final
    /// output) and returns it. The error says why: timeout, or the client
    /// ended first (with what it printed on stderr so far).
    pub fn wait_for_line(&mut self, prefix: &str, limit: Duration) -> Result<String, String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.running.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no line starting with {prefix:?} within {limit:?}; stderr so far: {}",
                        self.running.stderr_so_far()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "client ended before printing {prefix:?}; stderr: {}",
                        self.running.stderr_so_far()
                    ))
                }
            }
        }
    }

    /// Writes `line` and a newline to the client's stdin.
    pub fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .running
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::other("stdin already closed"))?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()
    }

    /// The client's PID.
    pub fn pid(&self) -> u32 {
        self.running.pid
    }

    /// Closes stdin and waits at most `limit` for the client to end (killed
    /// after that); returns everything it printed.
    pub fn finish(mut self, limit: Duration) -> ClientOutput {
        self.running.finish(limit)
    }
}

/// A spawned client and the threads that collect its output.
struct RunningClient {
    pid: u32,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    exit: Receiver<std::io::Result<ExitStatus>>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    finished: bool,
}

impl RunningClient {
    fn spawn(
        python: &std::path::Path,
        script: &str,
        args: &[&str],
        interactive: bool,
    ) -> RunningClient {
        let mut child = Command::new(python)
            .arg("-u")
            .arg(client_path(script))
            .args(args)
            .stdin(if interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("start python3 {script}: {err}"));
        let pid = child.id();
        let stdin = child.stdin.take();
        let child_stdout = child.stdout.take().expect("piped stdout");
        let child_stderr = child.stderr.take().expect("piped stderr");
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (line_sender, lines) = mpsc::channel();
        let stdout_copy = Arc::clone(&stdout);
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(child_stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut all) = stdout_copy.lock() {
                    all.push_str(&line);
                    all.push('\n');
                }
                let _ = line_sender.send(line);
            }
        });
        let stderr_copy = Arc::clone(&stderr);
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            let mut reader = BufReader::new(child_stderr);
            let mut chunk = [0u8; 4096];
            while let Ok(read) = reader.read(&mut chunk) {
                if read == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&chunk[..read]));
                if let Ok(mut all) = stderr_copy.lock() {
                    all.clone_from(&text);
                }
            }
        });
        let (exit_sender, exit) = mpsc::channel();
        thread::spawn(move || {
            let _ = exit_sender.send(child.wait());
        });
        RunningClient {
            pid,
            stdin,
            lines,
            exit,
            stdout,
            stderr,
            readers: vec![stdout_reader, stderr_reader],
            finished: false,
        }
    }

    fn stderr_so_far(&self) -> String {
        self.stderr
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    fn finish(&mut self, limit: Duration) -> ClientOutput {
        self.stdin = None;
        let mut timed_out = false;
        let status = match self.exit.recv_timeout(limit) {
            Ok(status) => status.ok(),
            Err(_) => {
                timed_out = true;
                // Kill only while the waiter has not reaped it (the PID is
                // still ours until then).
                if let Ok(status) = self.exit.try_recv() {
                    return self.collect(status.ok(), false);
                }
                procs::send_signal(self.pid, libc::SIGKILL);
                self.exit
                    .recv_timeout(Duration::from_secs(5))
                    .ok()
                    .and_then(Result::ok)
            }
        };
        self.collect(status, timed_out)
    }

    /// Joins the output readers and builds the result.
    fn collect(&mut self, status: Option<ExitStatus>, timed_out: bool) -> ClientOutput {
        self.finished = true;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        let stdout = self.stdout.lock().map(|t| t.clone()).unwrap_or_default();
        ClientOutput {
            code: status.and_then(|status| status.code()),
            stdout,
            stderr: self.stderr_so_far(),
            timed_out,
        }
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(Duration::ZERO);
        }
    }
}
