//! The new process's side of a binary upgrade: take the listening
//! sockets and the routing state from the old process, start serving,
//! report ready, then follow the old process until it exits — release
//! each of its sessions as it reports them ended, forward admin actions
//! to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tracing::{info, warn};

use crate::admin::access::Access;
use crate::admin::bind::bind_admin_socket;
use crate::admin::AdminListeners;
use crate::config::Config;
use crate::launch::Director;
use crate::launch::{launch_from, LaunchError, SocketSource};
use crate::mailbox::MailboxSender;
use crate::plane::handover::{set_predecessor_draining, PeerCall, PredecessorLink};
use crate::plane::ControlMsg;
use crate::plane::CoreMsg;
use crate::route::backends::{BackendId, BackendSet};
use crate::route::router::{owner_of, RouterMsg};
use crate::runtime::PerCoreListeners;
use crate::startup::{bind_all, core_count};
use crate::upgrade::fds::{check_listener, close_on_exec, recv_fds};
use crate::upgrade::wire::{read_frame, write_frame, Frame, RouteEntry, SocketInfo, SocketKind};
use crate::upgrade::{READY_LIMIT, UPGRADE_FD_ENV};

/// The inherited link, if this process was started by an upgrade (the
/// variable is removed, so a later upgrade's child does not see it).
pub fn inherited_link() -> Option<UnixStream> {
    let fd: RawFd = std::env::var(UPGRADE_FD_ENV).ok()?.parse().ok()?;
    std::env::remove_var(UPGRADE_FD_ENV);
    if fd < 3 {
        return None;
    }
    let _ = close_on_exec(fd);
    // SAFETY: the old process passed this descriptor for this purpose; it
    // is owned from here on.
    Some(unsafe { UnixStream::from_raw_fd(fd) })
}

/// Tells the old process this one cannot go on (it kills this process
/// and serves on).
pub fn report_failure(link: &mut UnixStream, error: &str) {
    let _ = write_frame(
        link,
        &Frame::Failed {
            error: error.to_string(),
        },
    );
}

/// One `[[listen]]` socket received from the old process.
struct ListenSocket {
    index: Option<usize>,
    core: usize,
    protocol: String,
    bound: SocketAddr,
    socket: std::net::TcpListener,
}

/// Everything received from the old process.
struct Received {
    listen: Vec<ListenSocket>,
    admin_tcp: Option<(SocketAddr, std::net::TcpListener)>,
    admin_unix: Option<(PathBuf, std::os::unix::net::UnixListener)>,
    routes: Vec<RouteEntry>,
}

/// Starts this director from the old process's sockets and state and
/// reports ready; the old process then drains. On an error the old
/// process is told (and serves on) and the error returned.
pub fn take_over(
    config: Config,
    path: &Path,
    mut link: UnixStream,
) -> Result<Director, LaunchError> {
    let _ = link.set_read_timeout(Some(READY_LIMIT));
    let result = start(config, path, &mut link);
    match result {
        Ok((director, following)) => {
            let _ = link.set_read_timeout(None);
            if let Err(e) = write_frame(
                &mut link,
                &Frame::Ready {
                    pid: std::process::id(),
                },
            ) {
                return Err(LaunchError(format!(
                    "cannot report ready to the old process: {e}"
                )));
            }
            info!("binary upgrade: ready; the old process drains");
            follow(link, following, &director);
            Ok(director)
        }
        Err(e) => {
            report_failure(&mut link, &e.0);
            Err(e)
        }
    }
}

/// What the new process follows of the old one's sessions.
struct Following {
    calls: flume::Receiver<PeerCall>,
    /// Sessions still open in the old process, per user key.
    open: HashMap<String, (BackendId, u32)>,
    set: Arc<BackendSet>,
}

fn start(
    config: Config,
    path: &Path,
    link: &mut UnixStream,
) -> Result<(Director, Following), LaunchError> {
    config
        .validate()
        .map_err(|e| LaunchError(format!("invalid configuration:\n{e}")))?;
    let fail = |what: &str, e: std::io::Error| LaunchError(format!("upgrade link, {what}: {e}"));
    write_frame(
        link,
        &Frame::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
    )
    .map_err(|e| fail("hello", e))?;
    let received = receive(link)?;
    let cores = core_count(config.server.cores);
    let (per_core, listen_addrs) = place_listeners(&config, cores, received.listen)?;
    let admin = admin_listeners(&config, received.admin_tcp, received.admin_unix)?;
    let (calls_tx, calls) = flume::unbounded();
    let source = SocketSource::Inherited {
        listen_addrs,
        admin,
        predecessor: PredecessorLink::new(calls_tx),
    };
    let (director, set) = launch_from(config, Some(path.to_path_buf()), source)?;
    let mut open = HashMap::new();
    let mut assignments = Vec::with_capacity(received.routes.len());
    for r in received.routes {
        let Some(b) = set.by_name(&r.backend) else {
            if r.sessions > 0 {
                return Err(LaunchError(format!(
                    "user {:?} has {} sessions on backend {:?}, which the new configuration \
                     lacks; remove a backend by reload (it drains), not by upgrade",
                    r.key, r.sessions, r.backend
                )));
            }
            continue;
        };
        if r.sessions > 0 {
            open.insert(r.key.clone(), (b.id, r.sessions));
        }
        let since = UNIX_EPOCH + Duration::from_millis(r.since_ms);
        assignments.push((r.key.into_boxed_str(), b.id, since, r.sessions));
    }
    info!(
        users = assignments.len(),
        following = open.len(),
        "binary upgrade: routing state taken over"
    );
    director.running_cores().take_over(assignments);
    director.running_cores().give_listeners(per_core);
    set_predecessor_draining(true);
    Ok((director, Following { calls, open, set }))
}

/// Receives the sockets (checked) and the routing state.
fn receive(link: &mut UnixStream) -> Result<Received, LaunchError> {
    let fail = |what: &str, e: std::io::Error| LaunchError(format!("upgrade link, {what}: {e}"));
    let infos: Vec<SocketInfo> = match read_frame(link).map_err(|e| fail("sockets", e))? {
        Frame::Sockets { sockets } => sockets,
        other => return Err(LaunchError(format!("upgrade link: unexpected {other:?}"))),
    };
    let fds = recv_fds(link, infos.len()).map_err(|e| fail("descriptors", e))?;
    let mut received = Received {
        listen: Vec::new(),
        admin_tcp: None,
        admin_unix: None,
        routes: Vec::new(),
    };
    for (info, fd) in infos.into_iter().zip(fds) {
        let bound = check_listener(&fd).map_err(|e| fail("a received socket", e))?;
        match info.kind {
            SocketKind::Listen {
                index,
                core,
                protocol,
            } => {
                let bound = bound
                    .filter(|b| b.to_string() == info.bound)
                    .ok_or_else(|| {
                        LaunchError(format!("received socket is not bound to {}", info.bound))
                    })?;
                received.listen.push(ListenSocket {
                    index,
                    core,
                    protocol,
                    bound,
                    socket: std::net::TcpListener::from(fd),
                });
            }
            SocketKind::AdminTcp => {
                if let Some(b) = bound {
                    received.admin_tcp = Some((b, std::net::TcpListener::from(fd)));
                }
            }
            SocketKind::AdminUnix { path } => {
                received.admin_unix = Some((
                    PathBuf::from(path),
                    std::os::unix::net::UnixListener::from(fd),
                ));
            }
        }
    }
    received.routes = match read_frame(link).map_err(|e| fail("routes", e))? {
        Frame::Routes { assignments } => assignments,
        other => return Err(LaunchError(format!("upgrade link: unexpected {other:?}"))),
    };
    Ok(received)
}

/// Gives each `[[listen]]` its received sockets (one per core; surplus
/// ones are accepted on too, since closing one would reset its queue;
/// missing ones are bound), binds listeners new in the configuration, and
/// closes received ones it no longer has.
fn place_listeners(
    config: &Config,
    cores: usize,
    received: Vec<ListenSocket>,
) -> Result<(PerCoreListeners, Vec<SocketAddr>), LaunchError> {
    let mut pool: Vec<Option<ListenSocket>> = received.into_iter().map(Some).collect();
    let mut per_core: PerCoreListeners = (0..cores).map(|_| Vec::new()).collect();
    let mut addrs = Vec::with_capacity(config.listen.len());
    for (i, listen) in config.listen.iter().enumerate() {
        let matches = |s: &ListenSocket| {
            s.protocol == listen.protocol.as_str()
                && if listen.addr.port() != 0 {
                    s.bound == listen.addr
                } else {
                    s.index == Some(i) && s.bound.ip() == listen.addr.ip()
                }
        };
        let mut mine: Vec<ListenSocket> = pool
            .iter_mut()
            .filter(|s| s.as_ref().is_some_and(matches))
            .filter_map(Option::take)
            .collect();
        mine.sort_by_key(|s| s.core);
        let bound = match mine.first() {
            Some(s) => s.bound,
            None => {
                bind_all(listen.addr, 1)
                    .map_err(|e| LaunchError(e.to_string()))?
                    .0
            }
        };
        let inherited = mine.len();
        let mut sockets: Vec<std::net::TcpListener> = mine.into_iter().map(|s| s.socket).collect();
        while sockets.len() < cores {
            let (_, mut more) = bind_all(bound, 1).map_err(|e| LaunchError(e.to_string()))?;
            sockets.append(&mut more);
        }
        info!(
            protocol = listen.protocol.as_str(),
            tls = listen.tls.as_str(),
            addr = %bound,
            inherited,
            "listening"
        );
        let mut l = listen.clone();
        l.addr = bound;
        for (k, socket) in sockets.into_iter().enumerate() {
            per_core[k % cores].push((l.clone(), socket));
        }
        addrs.push(bound);
    }
    for s in pool.into_iter().flatten() {
        info!(addr = %s.bound, "listener not in the configuration any more: closed");
    }
    Ok((per_core, addrs))
}

/// The admin API's sockets: the received ones where the configuration
/// still names them, new ones where it changed.
fn admin_listeners(
    config: &Config,
    tcp: Option<(SocketAddr, std::net::TcpListener)>,
    unix: Option<(PathBuf, std::os::unix::net::UnixListener)>,
) -> Result<AdminListeners, LaunchError> {
    let admin = &config.admin;
    let access = Access::from_config(admin).map_err(LaunchError)?;
    let same = |b: &SocketAddr| {
        *b == admin.listen || (admin.listen.port() == 0 && b.ip() == admin.listen.ip())
    };
    let tcp = match tcp.filter(|(b, _)| same(b)) {
        Some((_, l)) => l,
        None => std::net::TcpListener::bind(admin.listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| LaunchError(format!("admin.listen {}: {e}", admin.listen)))?,
    };
    let unix = if admin.socket.as_os_str().is_empty() {
        None
    } else {
        match unix.filter(|(p, _)| *p == admin.socket) {
            Some((p, l)) => Some((l, p)),
            None => Some((
                bind_admin_socket(&admin.socket, admin.socket_mode).map_err(|e| {
                    LaunchError(format!("admin.socket {}: {e}", admin.socket.display()))
                })?,
                admin.socket.clone(),
            )),
        }
    };
    Ok(AdminListeners { tcp, unix, access })
}

/// Follows the old process until it exits: its reports release the
/// sessions it still had; this process's forwarded requests go to it.
fn follow(link: UnixStream, following: Following, director: &Director) {
    let Following { calls, open, set } = following;
    let pending: Arc<Mutex<HashMap<u64, flume::Sender<crate::plane::handover::PeerAnswer>>>> =
        Arc::default();
    let mut write_half = match link.try_clone() {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "upgrade link unusable; the old process's sessions are not followed");
            if let Some(control) = director.control_sender() {
                let _ = control.send(ControlMsg::Predecessor(None));
            }
            set_predecessor_draining(false);
            return;
        }
    };
    let waiting = pending.clone();
    std::thread::Builder::new()
        .name("upgrade-out".into())
        .spawn(move || {
            let mut next = 0u64;
            for (request, reply) in calls.iter() {
                next += 1;
                if let Ok(mut w) = waiting.lock() {
                    w.insert(next, reply);
                }
                if write_frame(&mut write_half, &Frame::Request { id: next, request }).is_err() {
                    break;
                }
            }
        })
        .expect("start the upgrade writer thread");
    let cores = director.running_cores().core_mailboxes();
    let control = director.control_sender();
    let mut read_half = link;
    std::thread::Builder::new()
        .name("upgrade-in".into())
        .spawn(move || {
            let mut open = open;
            loop {
                match read_frame(&mut read_half) {
                    Ok(Frame::Released { key, backend }) => {
                        let Some(b) = set.by_name(&backend).map(|b| b.id) else {
                            continue;
                        };
                        if let Some((_, n)) = open.get_mut(&key).filter(|(ob, _)| *ob == b) {
                            *n -= 1;
                            if *n == 0 {
                                open.remove(&key);
                            }
                            release(&cores, &key, b);
                        }
                    }
                    Ok(Frame::Answer { id, answer }) => {
                        let reply = pending.lock().ok().and_then(|mut p| p.remove(&id));
                        if let Some(reply) = reply {
                            let _ = reply.send(answer);
                        }
                    }
                    Ok(Frame::Bye) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            // Gone: whatever it did not report is closed now.
            let left: u32 = open.values().map(|(_, n)| n).sum();
            for (key, (b, n)) in open {
                for _ in 0..n {
                    release(&cores, &key, b);
                }
            }
            if let Some(control) = control {
                let _ = control.send(ControlMsg::Predecessor(None));
            }
            set_predecessor_draining(false);
            info!(
                unreported = left,
                "binary upgrade: the old process has finished"
            );
        })
        .expect("start the upgrade reader thread");
}

/// Releases one old-process session of `key` on `backend` at its owner core.
fn release(cores: &[MailboxSender<CoreMsg>], key: &str, backend: BackendId) {
    let owner = owner_of(key, cores.len());
    if let Some(core) = cores.get(owner) {
        let _ = core.send(CoreMsg::Route(RouterMsg::Release {
            key: key.into(),
            backend,
            origin: None,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with IMAP listeners on `addrs` (in order).
    fn config_with(addrs: &[SocketAddr]) -> Config {
        let mut text = String::new();
        for a in addrs {
            text.push_str(&format!(
                "[[listen]]\nprotocol = \"imap\"\naddr = \"{a}\"\ntls = \"none\"\nplaintext_auth = true\n\n"
            ));
        }
        text.push_str("[[backend]]\nname = \"b\"\nhost = \"127.0.0.1\"\n");
        Config::from_toml_str(&text).expect("config")
    }

    /// `cores` SO_REUSEPORT sockets on one new port, as an old process
    /// with that many cores passes them.
    fn old_sockets(cores: usize, index: usize) -> (SocketAddr, Vec<ListenSocket>) {
        let (bound, sockets) = bind_all("127.0.0.1:0".parse().unwrap(), cores).unwrap();
        let received = sockets
            .into_iter()
            .enumerate()
            .map(|(core, socket)| ListenSocket {
                index: Some(index),
                core,
                protocol: "imap".into(),
                bound,
                socket,
            })
            .collect();
        (bound, received)
    }

    fn sockets_per_core(per_core: &PerCoreListeners) -> Vec<usize> {
        per_core.iter().map(Vec::len).collect()
    }

    #[test]
    fn fewer_cores_keep_every_socket_more_cores_bind_the_rest() {
        let (kept, from_two) = old_sockets(2, 0);
        let config = config_with(&[kept]);
        let (per_core, addrs) = place_listeners(&config, 1, from_two).unwrap();
        assert_eq!(addrs, vec![kept]);
        assert_eq!(
            sockets_per_core(&per_core),
            vec![2],
            "the surplus one is accepted on too"
        );

        let (kept, from_one) = old_sockets(1, 0);
        let config = config_with(&[kept]);
        let (per_core, _) = place_listeners(&config, 3, from_one).unwrap();
        assert_eq!(sockets_per_core(&per_core), vec![1, 1, 1]);
        for (listen, socket) in per_core.iter().flatten() {
            assert_eq!(listen.addr, kept);
            assert_eq!(socket.local_addr().unwrap(), kept);
        }
    }

    #[test]
    fn listeners_new_in_the_config_are_bound_and_removed_ones_closed() {
        let (kept, mut received) = old_sockets(2, 0);
        let (removed, gone) = old_sockets(2, 5);
        received.extend(gone);
        let config = config_with(&[kept, "127.0.0.1:0".parse().unwrap()]);
        let (per_core, addrs) = place_listeners(&config, 2, received).unwrap();
        assert_eq!(addrs[0], kept);
        assert_ne!(addrs[1], removed, "a new listener is bound anew");
        assert_eq!(sockets_per_core(&per_core), vec![2, 2]);
        assert!(
            std::net::TcpStream::connect(removed).is_err(),
            "a listener the config no longer has is closed"
        );
        assert!(std::net::TcpStream::connect(kept).is_ok());
    }
}
