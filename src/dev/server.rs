//! Running dev backends: one thread with its own monoio io_uring runtime
//! serves any number of them, each on its own listener.
//!
//! [`spawn_backends`] binds every listener before it returns (port 0 gets a
//! real port, reported by [`DevBackends::addr`]), so a caller may connect
//! at once. The returned [`DevBackends`] handle controls the thread:
//! [`DevBackends::kill`] closes one backend's listener and cuts all its
//! connections, as a crash would; [`DevBackends::restart`] brings it back
//! on the same address; dropping the handle (or [`DevBackends::shutdown`])
//! stops everything and joins the thread.
//!
//! Each connection is one monoio task. Kills reach tasks through a closed
//! semaphore, so nothing polls, and a kill returns only once every task of
//! that backend is gone (so its registry entries are gone too).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use local_sync::semaphore::Semaphore;

use super::registry::{LiveSession, Registry};
use super::sessions::{SessionInfo, SessionTable};
use super::store::Store;

/// The password every dev backend accepts unless configured otherwise.
pub const DEV_PASSWORD: &str = "dev";

/// How to run one dev backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevBackendConfig {
    /// Its name: in the greeting, the registry and the session table.
    pub name: String,
    /// Where it listens; port 0 picks a free port.
    pub addr: SocketAddr,
    /// The password every user must give (any user name is accepted).
    pub password: String,
    /// The largest literal a client may send (APPEND of big messages).
    pub max_literal: usize,
}

impl DevBackendConfig {
    /// A backend called `name` on `addr` with password [`DEV_PASSWORD`]
    /// and literals up to 64 MiB.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            addr,
            password: DEV_PASSWORD.to_string(),
            max_literal: 64 << 20,
        }
    }
}

/// What every connection of one backend shares.
#[derive(Debug)]
pub(crate) struct BackendContext {
    /// The backend's configuration.
    pub config: DevBackendConfig,
    /// The mail store all backends share.
    pub store: Store,
    /// The live-session registry all backends share.
    pub registry: Registry,
    /// The connection table all backends share.
    pub sessions: SessionTable,
}

/// A request from the handle to the runtime thread.
enum Control {
    Kill(String, std::sync::mpsc::Sender<io::Result<()>>),
    Restart(String, std::sync::mpsc::Sender<io::Result<()>>),
    Shutdown,
}

/// Wakes the runtime thread's control task from another thread (monoio's
/// `sync` feature makes that an eventfd write: nothing polls).
#[derive(Default)]
struct ControlWaker {
    waker: Mutex<Option<Waker>>,
}

impl ControlWaker {
    fn wake(&self) {
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    async fn recv(&self, rx: &Receiver<Control>) -> Option<Control> {
        poll_fn(|cx| {
            match rx.try_recv() {
                Ok(c) => return Poll::Ready(Some(c)),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Empty) => {}
            }
            *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            match rx.try_recv() {
                Ok(c) => Poll::Ready(Some(c)),
                Err(TryRecvError::Disconnected) => Poll::Ready(None),
                Err(TryRecvError::Empty) => Poll::Pending,
            }
        })
        .await
    }
}

/// Handle to running dev backends; dropping it stops them.
pub struct DevBackends {
    addrs: Vec<(String, SocketAddr)>,
    control: Sender<Control>,
    waker: Arc<ControlWaker>,
    thread: Option<JoinHandle<()>>,
    sessions: SessionTable,
    store: Store,
    registry: Registry,
}

impl std::fmt::Debug for DevBackends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevBackends")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Starts the given backends on one new thread with its own io_uring
/// runtime, all over `store` and reporting to `registry`. Every listener is
/// bound before this returns; an error binding one, or building the
/// runtime (no io_uring), is returned here.
pub fn spawn_backends(
    configs: Vec<DevBackendConfig>,
    store: Store,
    registry: Registry,
) -> io::Result<DevBackends> {
    let sessions = SessionTable::default();
    let mut listeners = Vec::with_capacity(configs.len());
    let mut addrs = Vec::with_capacity(configs.len());
    for config in configs {
        let listener = bind(config.addr)?;
        let addr = listener.local_addr()?;
        addrs.push((config.name.clone(), addr));
        let context = BackendContext {
            config: DevBackendConfig { addr, ..config },
            store: store.clone(),
            registry: registry.clone(),
            sessions: sessions.clone(),
        };
        listeners.push((context, listener));
    }
    let (control, rx) = crossbeam_channel::unbounded();
    let waker = Arc::new(ControlWaker::default());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread_waker = waker.clone();
    let thread = std::thread::Builder::new()
        .name("dev-backends".into())
        .spawn(move || run_thread(listeners, rx, thread_waker, ready_tx))?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = thread.join();
            return Err(e);
        }
        Err(_) => {
            let _ = thread.join();
            return Err(io::Error::other("dev backend thread died while starting"));
        }
    }
    Ok(DevBackends {
        addrs,
        control,
        waker,
        thread: Some(thread),
        sessions,
        store,
        registry,
    })
}

impl DevBackends {
    /// The backends' names and the addresses they listen on, in the order
    /// they were configured.
    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// The address backend `name` listens on.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// The mail store the backends share.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The live-session registry the backends report to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Open connections and the most recent closed ones, with the ID fields
    /// their clients sent.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.snapshot()
    }

    fn request(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<io::Result<()>>) -> Control,
    ) -> io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(make(tx))
            .map_err(|_| io::Error::other("dev backend thread is gone"))?;
        self.waker.wake();
        rx.recv()
            .map_err(|_| io::Error::other("dev backend thread is gone"))?
    }

    /// Kills backend `name` abruptly: closes its listener (new connections
    /// are refused) and every connection it holds, without a word to the
    /// clients. Returns once all of them are gone. Killing a dead backend
    /// does nothing.
    pub fn kill(&self, name: &str) -> io::Result<()> {
        self.request(|tx| Control::Kill(name.to_string(), tx))
    }

    /// Starts backend `name` again on the same address (killing it first
    /// if it runs).
    pub fn restart(&self, name: &str) -> io::Result<()> {
        self.request(|tx| Control::Restart(name.to_string(), tx))
    }

    /// Stops all backends and joins their thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.control.send(Control::Shutdown);
            self.waker.wake();
            let _ = thread.join();
        }
    }
}

impl Drop for DevBackends {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds a listening socket (std sets SO_REUSEADDR, so a restart may
/// rebind while old connections sit in TIME_WAIT).
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Counts a backend's live tasks and lets the control task wait for none.
#[derive(Default)]
struct TaskCount {
    live: Cell<usize>,
    waiter: RefCell<Option<Waker>>,
}

/// Held by each task of a backend for as long as it runs.
struct TaskGuard(Rc<TaskCount>);

impl TaskCount {
    fn enter(self: &Rc<Self>) -> TaskGuard {
        self.live.set(self.live.get() + 1);
        TaskGuard(self.clone())
    }

    async fn drained(&self) {
        poll_fn(|cx| {
            if self.live.get() == 0 {
                Poll::Ready(())
            } else {
                *self.waiter.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let live = self.0.live.get() - 1;
        self.0.live.set(live);
        if live == 0 {
            if let Some(w) = self.0.waiter.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

/// One running backend: closing `kill` ends all of its tasks.
struct Running {
    kill: Rc<Semaphore>,
    tasks: Rc<TaskCount>,
}

impl Running {
    async fn stop(self) {
        self.kill.close();
        self.tasks.drained().await;
    }
}

/// Starts a backend's accept loop on the current runtime.
fn start(context: Rc<BackendContext>, listener: std::net::TcpListener) -> io::Result<Running> {
    let listener = monoio::net::TcpListener::from_std(listener)?;
    let kill = Rc::new(Semaphore::new(0));
    let tasks = Rc::new(TaskCount::default());
    let guard = tasks.enter();
    monoio::spawn(accept_loop(
        listener,
        context,
        kill.clone(),
        tasks.clone(),
        guard,
    ));
    Ok(Running { kill, tasks })
}

async fn accept_loop(
    listener: monoio::net::TcpListener,
    context: Rc<BackendContext>,
    kill: Rc<Semaphore>,
    tasks: Rc<TaskCount>,
    _guard: TaskGuard,
) {
    let listener_fd = listener.as_raw_fd();
    loop {
        let accepted = monoio::select! {
            _ = killed(&kill, listener_fd) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, peer)) => {
                // Responses go out in several writes (untagged lines, then
                // the tagged one); without TCP_NODELAY, Nagle holds the
                // last one back until the peer's delayed ACK, ~40 ms.
                let _ = conn.set_nodelay(true);
                let guard = tasks.enter();
                let kill = kill.clone();
                let context = context.clone();
                let conn_fd = conn.as_raw_fd();
                let live = LiveSlot::default();
                monoio::spawn(async move {
                    let _guard = guard;
                    monoio::select! {
                        _ = async {
                            let _ = kill.acquire().await;
                            // Leave the registry before the client can see
                            // the connection end.
                            live.take();
                            shut_down(conn_fd);
                        } => {},
                        _ = super::imap::serve(conn, peer, context, live.clone()) => {},
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: back off briefly rather
                // than spin on an error that will repeat at once.
                tracing::warn!(backend = %context.config.name, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Waits for the backend's kill, then shuts the listener down.
async fn killed(kill: &Semaphore, fd: RawFd) {
    let _ = kill.acquire().await;
    shut_down(fd);
}

/// Shuts the socket `fd` down at once.
///
/// monoio closes descriptors with an asynchronous io_uring op, and an
/// in-flight accept keeps a listener alive until its cancellation
/// completes, so dropping alone would leave the listener accepting (and
/// sessions open) for a moment after [`DevBackends::kill`] returned.
/// `shutdown(2)` takes effect immediately: a listener stops accepting
/// (new connections are refused) and clients of a session read end of
/// stream. Callers run it while the socket's owner is still alive, so `fd`
/// cannot have been closed and reused.
fn shut_down(fd: RawFd) {
    // SAFETY: shutdown on a descriptor the caller owns; no memory involved.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Where a session keeps its registry entry, reachable from outside the
/// session so a kill can end the entry before it cuts the connection.
#[derive(Clone, Default)]
pub(crate) struct LiveSlot(Rc<RefCell<Option<LiveSession>>>);

impl LiveSlot {
    /// Stores the entry of a session that just logged in.
    pub fn set(&self, live: LiveSession) {
        *self.0.borrow_mut() = Some(live);
    }

    /// Ends the session's entry, if any.
    pub fn take(&self) {
        let live = self.0.borrow_mut().take();
        drop(live);
    }
}

fn run_thread(
    listeners: Vec<(BackendContext, std::net::TcpListener)>,
    rx: Receiver<Control>,
    waker: Arc<ControlWaker>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let mut runtime = match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    runtime.block_on(async move {
        let mut backends: Vec<(Rc<BackendContext>, Option<Running>)> = Vec::new();
        for (context, listener) in listeners {
            let context = Rc::new(context);
            match start(context.clone(), listener) {
                Ok(running) => backends.push((context, Some(running))),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    for (_, running) in backends.iter_mut() {
                        if let Some(r) = running.take() {
                            r.stop().await;
                        }
                    }
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        while let Some(control) = waker.recv(&rx).await {
            match control {
                Control::Kill(name, reply) => {
                    let result = match backends.iter_mut().find(|(c, _)| c.config.name == name) {
                        Some((_, running)) => {
                            if let Some(r) = running.take() {
                                r.stop().await;
                            }
                            Ok(())
                        }
                        None => Err(unknown_backend(&name)),
                    };
                    let _ = reply.send(result);
                }
                Control::Restart(name, reply) => {
                    let result = match backends.iter_mut().find(|(c, _)| c.config.name == name) {
                        Some((context, running)) => {
                            if let Some(r) = running.take() {
                                r.stop().await;
                            }
                            bind(context.config.addr)
                                .and_then(|l| start(context.clone(), l))
                                .map(|r| *running = Some(r))
                        }
                        None => Err(unknown_backend(&name)),
                    };
                    let _ = reply.send(result);
                }
                Control::Shutdown => break,
            }
        }
        for (_, running) in backends.iter_mut() {
            if let Some(r) = running.take() {
                r.stop().await;
            }
        }
    });
}

fn unknown_backend(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("no dev backend called {name:?}"),
    )
}
