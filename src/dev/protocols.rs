//! Running the dev POP3, LMTP and ManageSieve servers next to the dev IMAP
//! backends, over the same [`Store`].
//!
//! [`spawn_protocol_servers`] binds, for each named dev backend, one POP3,
//! one LMTP and one ManageSieve listener on loopback (kernel-chosen ports)
//! and serves them all from one thread with its own monoio runtime; each
//! connection is one task. Dropping the handle shuts the listeners down
//! and joins the thread (sessions still open are dropped with it). Unlike
//! the IMAP dev backends these have no kill/restart control.
//! [`spawn_protocol_servers_at`] does the same on given addresses and can
//! report POP3 sessions and LMTP recipients to a [`Registry`], so the load
//! test checks the invariant for them as it does for IMAP.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use super::registry::{LiveSession, Registry};
use super::store::Store;

/// Which protocol a dev listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pop3,
    Lmtp,
    Sieve,
}

/// The addresses of one dev backend's non-IMAP listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolAddrs {
    /// POP3.
    pub pop3: SocketAddr,
    /// LMTP.
    pub lmtp: SocketAddr,
    /// ManageSieve.
    pub sieve: SocketAddr,
}

/// Reports one dev backend's live sessions to a [`Registry`], if any.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    backend: String,
    registry: Option<Registry>,
}

impl Liveness {
    /// Records `user` as live on this backend until the guard is dropped.
    pub(crate) fn login(&self, user: &str) -> Option<LiveSession> {
        self.registry.as_ref().map(|r| r.login(&self.backend, user))
    }
}

/// The running POP3/LMTP/ManageSieve dev servers.
pub struct DevProtocolServers {
    addrs: Vec<(String, ProtocolAddrs)>,
    fds: Vec<RawFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DevProtocolServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevProtocolServers")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl DevProtocolServers {
    /// Each backend's name and listener addresses, in the order given.
    pub fn addrs(&self) -> &[(String, ProtocolAddrs)] {
        &self.addrs
    }

    /// The listener addresses of backend `name`.
    pub fn addr(&self, name: &str) -> Option<ProtocolAddrs> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }
}

impl Drop for DevProtocolServers {
    fn drop(&mut self) {
        for &fd in &self.fds {
            // SAFETY: the listeners are owned by the server thread, which
            // only ends after its accept loops saw this shutdown, so `fd`
            // is still open here.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts POP3, LMTP and ManageSieve dev servers for each of `names` over
/// `store`, accepting `password` for any user. Listeners are bound before
/// this returns.
pub fn spawn_protocol_servers(
    names: &[&str],
    store: Store,
    password: &str,
) -> io::Result<DevProtocolServers> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let backends: Vec<(String, ProtocolAddrs)> = names
        .iter()
        .map(|n| {
            let addrs = ProtocolAddrs {
                pop3: any,
                lmtp: any,
                sieve: any,
            };
            (n.to_string(), addrs)
        })
        .collect();
    spawn_protocol_servers_at(&backends, store, None, password)
}

/// Starts POP3, LMTP and ManageSieve dev servers for each named backend on
/// the given addresses (port 0: any free port) over `store`, accepting
/// `password` for any user. With a `registry`, every logged-in POP3 session
/// and every LMTP recipient (from its `RCPT` to the end of its transaction)
/// counts as live on that backend. Listeners are bound before this returns.
pub fn spawn_protocol_servers_at(
    backends: &[(String, ProtocolAddrs)],
    store: Store,
    registry: Option<Registry>,
    password: &str,
) -> io::Result<DevProtocolServers> {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    let mut fds = Vec::new();
    for (name, wanted) in backends {
        let liveness = Liveness {
            backend: name.clone(),
            registry: registry.clone(),
        };
        let mut bound = [None, None, None];
        for (slot, (kind, addr)) in [
            (Kind::Pop3, wanted.pop3),
            (Kind::Lmtp, wanted.lmtp),
            (Kind::Sieve, wanted.sieve),
        ]
        .into_iter()
        .enumerate()
        {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            bound[slot] = Some(l.local_addr()?);
            fds.push(l.as_raw_fd());
            listeners.push((kind, l, liveness.clone()));
        }
        let [Some(pop3), Some(lmtp), Some(sieve)] = bound else {
            return Err(io::Error::other("dev listener not bound"));
        };
        addrs.push((name.clone(), ProtocolAddrs { pop3, lmtp, sieve }));
    }
    let password = password.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("dev-protocols".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build();
            let mut rt = match rt {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let mut loops = Vec::new();
                for (kind, l, liveness) in listeners {
                    match monoio::net::TcpListener::from_std(l) {
                        Ok(l) => loops.push(monoio::spawn(accept_loop(
                            kind,
                            l,
                            store.clone(),
                            liveness,
                            password.clone(),
                        ))),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                for l in loops {
                    l.await;
                }
            });
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(DevProtocolServers {
            addrs,
            fds,
            thread: Some(thread),
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other("dev protocol thread died while starting"))
        }
    }
}

async fn accept_loop(
    kind: Kind,
    listener: monoio::net::TcpListener,
    store: Store,
    liveness: Liveness,
    password: String,
) {
    // An accept error here is the shutdown from Drop: stop.
    while let Ok((conn, _)) = listener.accept().await {
        let _ = conn.set_nodelay(true);
        let store = store.clone();
        let password = password.clone();
        let liveness = liveness.clone();
        monoio::spawn(async move {
            match kind {
                Kind::Pop3 => super::pop3::serve(conn, store, liveness, password).await,
                Kind::Lmtp => super::lmtp::serve(conn, store, liveness).await,
                Kind::Sieve => super::sieve::serve(conn, password).await,
            }
        });
    }
}
