//! The old process's side of a binary upgrade: start the new process,
//! hand it the sockets and the routing state, supervise it until it is
//! ready (or kill it and roll back), then follow it while draining: report
//! each session that ends, carry out the admin actions it forwards.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, UNIX_EPOCH};

use tracing::{info, warn};

use crate::launch::Director;
use crate::mailbox::MailboxSender;
use crate::plane::handover::{
    count_upgrade, predecessor_draining, PeerAnswer, PeerRequest, UpgradeDone, UpgradeRefused,
};
use crate::plane::ControlMsg;
use crate::runtime::handover::CoreSocket;
use crate::sdnotify;
use crate::upgrade::fds::send_fds;
use crate::upgrade::wire::{read_frame, write_frame, Frame, RouteEntry, SocketInfo, SocketKind};
use crate::upgrade::{binary, READY_LIMIT, UPGRADE_FD_ENV};

/// How long a forwarded admin action may take here (a kick or backend
/// down waits at most `CLOSE_LIMIT` for the sessions' backend sides).
const PEER_ANSWER_LIMIT: Duration = Duration::from_secs(15);

/// How long the old process waits, at its end, for its last reports to
/// be written to the new process.
const FINISH_LIMIT: Duration = Duration::from_secs(5);

/// A completed hand-over: the old process drains and follows the new one.
pub struct HandedOver {
    done: UpgradeDone,
    writer_done: flume::Receiver<()>,
    _reader: JoinHandle<()>,
}

impl HandedOver {
    /// The two processes.
    pub fn done(&self) -> UpgradeDone {
        self.done
    }

    /// Once the cores have drained and stopped: waits (bounded) until the
    /// last session reports and the goodbye are written to the new process.
    pub fn finish(self) {
        let _ = self.writer_done.recv_timeout(FINISH_LIMIT);
    }
}

/// Hands over to a new process of the configured binary, or explains why
/// not (this process then serves on as before).
pub fn hand_over(director: &mut Director, config: &Path) -> Result<HandedOver, UpgradeRefused> {
    let refused = |status: u16, message: String| UpgradeRefused { status, message };
    if predecessor_draining() {
        return Err(refused(
            409,
            "the previous process still drains; upgrade again once it has exited \
             (at most server.drain_timeout)"
                .into(),
        ));
    }
    if director.in_cluster() {
        // Both processes would hold the director's name in etcd: the new
        // one could not register, and would refuse logins, until the old
        // one exited. Not built yet; restart directors one at a time.
        return Err(refused(
            409,
            "no binary upgrade in cluster mode yet: restart the directors one at a time".into(),
        ));
    }
    let Some(binary) = binary() else {
        return Err(refused(
            409,
            "the path of the running binary is unknown".into(),
        ));
    };
    let started = Instant::now();
    let deadline = started + READY_LIMIT;
    let (mut link, theirs) = UnixStream::pair()
        .map_err(|e| refused(500, format!("cannot create the upgrade socketpair: {e}")))?;
    let child = spawn(&binary, config, theirs.as_raw_fd());
    drop(theirs);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            count_upgrade(false);
            return Err(refused(
                500,
                format!("cannot start {}: {e}", binary.display()),
            ));
        }
    };
    let new_pid = child.id();
    info!(binary = %binary.display(), new_pid, "binary upgrade: new process started");
    let result = supervise(director, &mut link, &mut child, deadline);
    match result {
        Ok(state) => {
            let done = UpgradeDone {
                old_pid: std::process::id(),
                new_pid,
            };
            let handed = complete(director, link, state, done);
            count_upgrade(true);
            info!(
                new_pid,
                took_ms = started.elapsed().as_millis() as u64,
                "binary upgrade: the new process serves"
            );
            Ok(handed)
        }
        Err(e) => {
            count_upgrade(false);
            // By PID: the process this upgrade started, nothing else.
            let _ = child.kill();
            let _ = child.wait();
            Err(refused(
                500,
                format!("the new process (pid {new_pid}) failed: {e}"),
            ))
        }
    }
}

/// Starts `binary run -c config` with `link` as its one inherited
/// descriptor.
fn spawn(binary: &Path, config: &Path, link: RawFd) -> std::io::Result<Child> {
    let mut cmd = Command::new(binary);
    cmd.arg("run")
        .arg("-c")
        .arg(config)
        .env(UPGRADE_FD_ENV, link.to_string())
        .stdin(Stdio::null());
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || crate::upgrade::fds::inherit_across_exec(link));
    }
    cmd.spawn()
}

/// What the old process keeps once the new one is ready.
struct Handed {
    sockets: Vec<CoreSocket>,
    releases: flume::Receiver<(Box<str>, Box<str>)>,
}

/// Waits for Hello, stops accepting, sends sockets and routes, waits for
/// Ready; on any failure after the accepts stopped, they resume here.
fn supervise(
    director: &mut Director,
    link: &mut UnixStream,
    child: &mut Child,
    deadline: Instant,
) -> Result<Handed, String> {
    match next_frame(link, child, deadline)? {
        Frame::Hello { .. } => {}
        Frame::Failed { error } => return Err(error),
        other => return Err(format!("unexpected {other:?} instead of Hello")),
    }
    let sockets = director.running_cores().hand_over_listeners();
    let (releases_tx, releases) = flume::unbounded();
    let routes = director.running_cores().hand_over_routes(releases_tx);
    let sent = send_state(director, link, &sockets, routes)
        .map_err(|e| format!("cannot send the sockets and routes: {e}"))
        .and_then(|()| match next_frame(link, child, deadline)? {
            Frame::Ready { .. } => Ok(()),
            Frame::Failed { error } => Err(error),
            other => Err(format!("unexpected {other:?} instead of Ready")),
        });
    match sent {
        Ok(()) => Ok(Handed { sockets, releases }),
        Err(e) => {
            warn!(error = %e, "binary upgrade failed: accepting again");
            director
                .running_cores()
                .resume_after_failed_hand_over(sockets);
            Err(e)
        }
    }
}

/// The next frame from the new process, before `deadline`; an error if it
/// exits or says nothing in time.
fn next_frame(
    link: &mut UnixStream,
    child: &mut Child,
    deadline: Instant,
) -> Result<Frame, String> {
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status}) before it was ready"));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("not ready within {READY_LIMIT:?}"));
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        let mut poll = libc::pollfd {
            fd: link.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, wait.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        let _ = link.set_read_timeout(Some(
            (deadline - Instant::now()).max(Duration::from_millis(10)),
        ));
        return read_frame(link).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "it closed the upgrade link".to_string(),
            _ => format!("upgrade link: {e}"),
        });
    }
}

/// Sends the listening sockets (every core's, then the admin API's) and
/// the routing state.
fn send_state(
    director: &Director,
    link: &mut UnixStream,
    sockets: &[CoreSocket],
    routes: Vec<crate::route::router::HandedOverAssignment>,
) -> std::io::Result<()> {
    let admin = director.admin_sockets();
    let mut infos = Vec::new();
    let mut fds = Vec::new();
    for (core, listen, fd) in sockets {
        infos.push(SocketInfo {
            kind: SocketKind::Listen {
                index: director.listen_addrs.iter().position(|a| *a == listen.addr),
                core: *core,
                protocol: listen.protocol.as_str().to_string(),
            },
            bound: listen.addr.to_string(),
        });
        fds.push(fd.as_raw_fd());
    }
    if let Some(tcp) = &admin.tcp {
        infos.push(SocketInfo {
            kind: SocketKind::AdminTcp,
            bound: tcp.local_addr()?.to_string(),
        });
        fds.push(tcp.as_raw_fd());
    }
    if let Some((unix, path)) = &admin.unix {
        infos.push(SocketInfo {
            kind: SocketKind::AdminUnix {
                path: path.to_string_lossy().into_owned(),
            },
            bound: String::new(),
        });
        fds.push(unix.as_raw_fd());
    }
    write_frame(link, &Frame::Sockets { sockets: infos })?;
    send_fds(link, &fds)?;
    let assignments = routes
        .into_iter()
        .map(|(key, backend, since, sessions)| RouteEntry {
            key: key.into(),
            backend: backend.into(),
            since_ms: since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            sessions,
        })
        .collect();
    write_frame(link, &Frame::Routes { assignments })
}

/// The new process is ready: hand it the service, stop the admin API
/// here, close this process's copies of the sockets, and start following.
fn complete(
    director: &mut Director,
    link: UnixStream,
    state: Handed,
    done: UpgradeDone,
) -> HandedOver {
    match sdnotify::notify(&[("MAINPID", &done.new_pid.to_string())]) {
        Ok(true) => info!(new_pid = done.new_pid, "systemd: MAINPID handed over"),
        Ok(false) => {}
        Err(e) => warn!(error = %e, "systemd: cannot hand MAINPID over"),
    }
    let mut control_tx = None;
    if let Some(control) = director.control() {
        let (tx, rx) = flume::bounded(1);
        control.send(ControlMsg::StopAdmin(tx));
        let _ = rx.recv_timeout(Duration::from_secs(2));
        control_tx = Some(control.sender());
    }
    // The socket file is the new process's now.
    director.keep_admin_socket();
    drop(state.sockets);
    follow(link, state.releases, control_tx, done)
}

/// Starts the threads that follow the new process: one writes (session
/// reports, answers, the final Bye), one reads its forwarded requests.
fn follow(
    link: UnixStream,
    releases: flume::Receiver<(Box<str>, Box<str>)>,
    control: Option<MailboxSender<ControlMsg>>,
    done: UpgradeDone,
) -> HandedOver {
    let (out_tx, out_rx) = flume::unbounded::<Frame>();
    let (writer_done_tx, writer_done) = flume::bounded(1);
    let mut write_half = link.try_clone().ok();
    let mut read_half = link;
    let _ = read_half.set_read_timeout(None);
    std::thread::Builder::new()
        .name("upgrade-out".into())
        .spawn(move || {
            for frame in out_rx.iter() {
                let bye = frame == Frame::Bye;
                let written = write_half.as_mut().map(|w| write_frame(w, &frame));
                if bye || !matches!(written, Some(Ok(()))) {
                    break;
                }
            }
            let _ = writer_done_tx.send(());
        })
        .expect("start the upgrade writer thread");
    let reports = out_tx.clone();
    std::thread::Builder::new()
        .name("upgrade-reports".into())
        .spawn(move || {
            // Ends when every core has stopped (each held a sender).
            for (key, backend) in releases.iter() {
                let _ = reports.send(Frame::Released {
                    key: key.into(),
                    backend: backend.into(),
                });
            }
            let _ = reports.send(Frame::Bye);
        })
        .expect("start the upgrade report thread");
    let reader = std::thread::Builder::new()
        .name("upgrade-in".into())
        .spawn(move || {
            while let Ok(frame) = read_frame(&mut read_half) {
                let Frame::Request { id, request } = frame else {
                    continue;
                };
                let Some(control) = control.clone() else {
                    continue;
                };
                let out = out_tx.clone();
                info!(?request, "admin action forwarded by the new process");
                let unanswered = match request {
                    PeerRequest::Kick(_) => PeerAnswer::Kicked(0),
                    PeerRequest::SetAdmin(..) => PeerAnswer::AdminSet(false),
                };
                std::thread::spawn(move || {
                    let (reply, answer) = flume::bounded(1);
                    let _ = control.send(ControlMsg::Peer { request, reply });
                    let answer = answer.recv_timeout(PEER_ANSWER_LIMIT).unwrap_or(unanswered);
                    let _ = out.send(Frame::Answer { id, answer });
                });
            }
        })
        .expect("start the upgrade reader thread");
    HandedOver {
        done,
        writer_done,
        _reader: reader,
    }
}
