//! What `live-move` runs against: real Dovecot backends on one shared
//! maildir with a master user (the tests' `DovecotCluster`, its process
//! and client limits raised for thousands of sessions), a mailpin director
//! in front of them with live moves on, and the director's admin API
//! (drain, flush, up, `/metrics`, `/backends`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mailpin::config::Protocol;

use crate::client::conn::Transport;
use crate::director::{BackendSpec, DirectorProcess};
use crate::real_backends::dovecot::{parse_who, DovecotCluster, DovecotOptions};
use crate::real_backends::tools;

/// The master user every backend accepts (SASL PLAIN, authzid = the user).
const MASTER_USER: &str = "mailpin";
/// Its password (written to the director's `master_password_file`).
const MASTER_PASSWORD: &str = "loadtest-master-secret";
/// Bound on one admin API request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on the largest admin API answer read.
const ADMIN_MAX_BODY: u64 = 4 << 20;

/// How the Dovecot backends are sized.
#[derive(Debug, Clone, Copy)]
pub struct BackendLimits {
    /// Sessions the whole run holds (any one backend may hold them all).
    pub sessions: usize,
    /// IMAP clients one Dovecot `imap` process serves (`client_limit`).
    pub clients_per_process: usize,
}

impl BackendLimits {
    /// The settings appended to every backend's `dovecot.conf`: enough
    /// `imap` processes for every session on one backend, and client
    /// limits of the services every process talks to (log, anvil, stats,
    /// config) above the process count. `mail_max_userip_connections` is
    /// already unlimited in the harness's configuration.
    pub fn dovecot_settings(&self) -> String {
        let per = self.clients_per_process.max(1);
        let processes = self.sessions.div_ceil(per) + 100;
        let clients = (processes * 2 + 1000).max(1000);
        format!(
            "\n# mailpin-loadtest live-move: {sessions} sessions\n\
             default_client_limit = {clients}\n\
             service imap {{\n  client_limit = {per}\n  process_limit = {processes}\n}}\n",
            sessions = self.sessions
        )
    }
}

/// Live-move counts from the director's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveCounts {
    /// `mailpin_live_moves_total{result="moved"}`, all reasons.
    pub moved: u64,
    /// `mailpin_live_moves_total{result="ended"}` by reason.
    pub ended: BTreeMap<String, u64>,
}

impl MoveCounts {
    /// Parses the Prometheus text of `/metrics`.
    pub fn parse(text: &str) -> MoveCounts {
        let mut counts = MoveCounts::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("mailpin_live_moves_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
                })
            };
            match (label("result").as_deref(), label("reason")) {
                (Some("moved"), _) => counts.moved += value as u64,
                (Some("ended"), Some(reason)) => {
                    *counts.ended.entry(reason).or_default() += value as u64;
                }
                _ => {}
            }
        }
        counts
    }

    /// Ended sessions, all reasons.
    pub fn ended_total(&self) -> u64 {
        self.ended.values().sum()
    }

    /// What happened since `before`.
    pub fn since(&self, before: &MoveCounts) -> MoveCounts {
        MoveCounts {
            moved: self.moved.saturating_sub(before.moved),
            ended: self
                .ended
                .iter()
                .map(|(r, n)| {
                    let was = before.ended.get(r).copied().unwrap_or(0);
                    (r.clone(), n.saturating_sub(was))
                })
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// The running backends and director.
pub struct World {
    /// The Dovecot backends (restarted by the scenario).
    pub cluster: DovecotCluster,
    // Dropped before the cluster: the director goes first.
    director: DirectorProcess,
    /// The director's plaintext IMAP listener.
    pub imap: SocketAddr,
    /// The director's LMTP listener.
    pub lmtp: SocketAddr,
    /// The director's admin API.
    pub admin: SocketAddr,
}

impl World {
    /// Starts `backends` Dovecot instances with a master user and
    /// `users` users (`user0001`..), and a director with `cores` cores in
    /// front of them, master user configured and `server.live_move` on.
    pub fn start(
        backends: usize,
        users: usize,
        limits: BackendLimits,
        cores: usize,
    ) -> Result<World, String> {
        if !tools::require_dovecot() {
            return Err("live-move needs dovecot and doveadm installed, and root".into());
        }
        let cluster = DovecotCluster::start(
            backends.max(2),
            DovecotOptions {
                users,
                master_user: Some((MASTER_USER.into(), MASTER_PASSWORD.into())),
                extra_config: limits.dovecot_settings(),
                ready_timeout: Duration::from_secs(60),
                ..DovecotOptions::default()
            },
        );
        let config = write_director_config(&cluster)?;
        let specs: Vec<BackendSpec> = cluster
            .instances()
            .iter()
            .enumerate()
            .map(|(i, inst)| BackendSpec {
                name: backend_name(i),
                imap: inst.imap_addr(),
                pop3: Some(inst.pop3_port()),
                lmtp: Some(inst.lmtp_port()),
                sieve: Some(inst.sieve_port()),
            })
            .collect();
        let director = DirectorProcess::spawn(&specs, cores, false, Some(&config))?;
        let addr = |p, t| {
            director
                .addrs
                .get(p, t)
                .ok_or_else(|| "the director has no such listener".to_owned())
        };
        let imap = addr(Protocol::Imap, Transport::Plain)?;
        let lmtp = addr(Protocol::Lmtp, Transport::Plain)?;
        let admin = director
            .addrs
            .admin
            .ok_or("the director did not say where its admin API is")?;
        Ok(World {
            cluster,
            director,
            imap,
            lmtp,
            admin,
        })
    }

    /// The director's process id.
    pub fn director_pid(&self) -> u32 {
        self.director.pid()
    }

    /// `POST path` on the admin API: its status and body.
    pub fn post(&self, path: &str) -> Result<(u16, String), String> {
        admin_request(self.admin, "POST", path)
    }

    /// `POST path`, which must answer 200.
    pub fn post_ok(&self, path: &str) -> Result<(), String> {
        match self.post(path)? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("POST {path}: {code} {body}")),
        }
    }

    /// The live-move counters now.
    pub fn moves(&self) -> Result<MoveCounts, String> {
        match admin_request(self.admin, "GET", "/metrics")? {
            (200, body) => Ok(MoveCounts::parse(&body)),
            (code, body) => Err(format!("GET /metrics: {code} {body}")),
        }
    }

    /// Whether the director sees backend `i` healthy and routable.
    pub fn routable(&self, i: usize) -> Result<bool, String> {
        let (code, body) = admin_request(self.admin, "GET", "/backends")?;
        if code != 200 {
            return Err(format!("GET /backends: {code} {body}"));
        }
        let list: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("GET /backends: {e}"))?;
        let name = backend_name(i);
        Ok(list.as_array().into_iter().flatten().any(|b| {
            b["name"] == name.as_str() && b["routable"] == true && b["health"] == "healthy"
        }))
    }

    /// Waits (bounded) until the director routes to backend `i` again.
    pub fn wait_routable(&self, i: usize, limit: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        while !self.routable(i)? {
            if start.elapsed() > limit {
                return Err(format!("{} not routable after {limit:?}", backend_name(i)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(start.elapsed())
    }

    /// A `doveadm who` reader for every backend (usable from any thread).
    pub fn who_readers(&self) -> Vec<WhoReader> {
        self.cluster
            .instances()
            .iter()
            .map(|inst| WhoReader {
                config: inst.config_path().to_owned(),
            })
            .collect()
    }
}

/// The name of backend `i` in the director's config.
pub fn backend_name(i: usize) -> String {
    format!("dc{}", i + 1)
}

/// Reads one backend's logged-in IMAP users with `doveadm who`.
#[derive(Debug, Clone)]
pub struct WhoReader {
    config: PathBuf,
}

impl WhoReader {
    /// The users with IMAP sessions there and how many each has; `None`
    /// when doveadm fails (the backend is down).
    pub fn imap_users(&self) -> Option<BTreeMap<String, usize>> {
        let doveadm = tools::tool_path("doveadm")?;
        let out = Command::new(doveadm)
            .arg("-c")
            .arg(&self.config)
            .args(["-f", "tab", "who"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        Some(
            parse_who(&String::from_utf8_lossy(&out.stdout))
                .into_iter()
                .filter(|e| e.protocol == "imap" && e.count > 0)
                .map(|e| (e.user, e.count))
                .collect(),
        )
    }

    /// IMAP sessions there (0 when doveadm fails).
    pub fn imap_sessions(&self) -> usize {
        self.imap_users()
            .map(|u| u.values().sum())
            .unwrap_or_default()
    }
}

/// Writes the director's config file (and its master password file) into
/// the cluster's directory: live moves on, the master user, and loopback
/// trusted with the per-address and per-backend login limits off (the
/// load comes from 127.0.0.1, thousands of logins at once).
fn write_director_config(cluster: &DovecotCluster) -> Result<PathBuf, String> {
    let dir = cluster.root_dir();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map(|()| path.clone())
            .map_err(|e| format!("writing {}: {e}", path.display()))
    };
    write("master.pass", format!("{MASTER_PASSWORD}\n"))?;
    write(
        "mailpin.toml",
        format!(
            "[server]\nlive_move = true\n\n\
             [backends]\nmaster_user = \"{MASTER_USER}\"\nmaster_password_file = \"master.pass\"\n\n\
             [limits]\ntrusted = [\"127.0.0.0/8\"]\nprelogin_total = 0\n\
             sessions_per_user_ip = 0\nlogins_per_backend = 0\n"
        ),
    )
}

/// One HTTP/1.1 request to the admin API (`Connection: close`): the status
/// and the body.
fn admin_request(admin: SocketAddr, method: &str, path: &str) -> Result<(u16, String), String> {
    let what = |e: std::io::Error| format!("{method} {path}: {e}");
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).map_err(what)?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT)).map_err(what)?;
    stream
        .set_write_timeout(Some(ADMIN_TIMEOUT))
        .map_err(what)?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(what)?;
    let mut answer = Vec::new();
    stream
        .take(ADMIN_MAX_BODY)
        .read_to_end(&mut answer)
        .map_err(what)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{method} {path}: no HTTP status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn move_counts_come_from_the_metric_lines() {
        let text = "# TYPE mailpin_live_moves_total counter\n\
            mailpin_live_moves_total{result=\"moved\",reason=\"ok\"} 12\n\
            mailpin_live_moves_total{result=\"ended\",reason=\"not_movable\"} 3\n\
            mailpin_live_moves_total{result=\"ended\",reason=\"mailbox_changed\"} 1\n\
            mailpin_sessions 7\n";
        let before = MoveCounts::parse(
            "mailpin_live_moves_total{result=\"moved\",reason=\"ok\"} 2\n\
             mailpin_live_moves_total{result=\"ended\",reason=\"not_movable\"} 3\n",
        );
        let now = MoveCounts::parse(text);
        assert_eq!(now.moved, 12);
        assert_eq!(now.ended_total(), 4);
        let step = now.since(&before);
        assert_eq!(step.moved, 10);
        assert_eq!(step.ended_total(), 1);
        assert_eq!(step.ended.get("mailbox_changed"), Some(&1));
    }

    #[test]
    fn dovecot_limits_cover_every_session_on_one_backend() {
        let s = BackendLimits {
            sessions: 2000,
            clients_per_process: 1,
        }
        .dovecot_settings();
        assert!(s.contains("process_limit = 2100"), "{s}");
        assert!(s.contains("client_limit = 1\n"), "{s}");
        assert!(s.contains("default_client_limit = 5200"), "{s}");
    }
}
