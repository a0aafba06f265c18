//! Starting the director's threads and sockets: the listening sockets
//! (one SO_REUSEPORT copy per core), the monoio runtime every thread runs
//! (io_uring, or epoll where allowed), and what either can fail with.
//!
//! Both the cores (`runtime/`) and the control plane (`control/`, which
//! binds the listeners a reload adds) start through here.

use std::net::SocketAddr;
use std::sync::mpsc;

use socket2::{Domain, Socket, Type};
use tracing::warn;

use crate::config::Driver;

/// Entries of each core's io_uring submission queue.
const URING_ENTRIES: u32 = 1024;

/// Listen backlog of every socket.
const BACKLOG: i32 = 4096;

/// Why the director could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// How many cores `server.cores` asks for (0 = every online core).
pub fn core_count(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds `addr` once per core (SO_REUSEPORT); the first bind fixes the
/// port when it is 0. Returns the bound address and the sockets, in core
/// order.
pub fn bind_all(
    addr: SocketAddr,
    cores: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let fail = |e: std::io::Error| StartError(format!("cannot listen on {addr}: {e}"));
    let first = bind_one(addr).map_err(fail)?;
    let bound = first.local_addr().map_err(fail)?;
    let mut all = vec![first];
    for _ in 1..cores {
        all.push(bind_one(bound).map_err(fail)?);
    }
    Ok((bound, all))
}

/// Builds a runtime on the configured driver for the thread called `name`,
/// reports on `ready` whether that worked, and runs `main` on it.
pub fn run_runtime<F: std::future::Future<Output = ()>>(
    driver: Driver,
    name: &str,
    ready: mpsc::Sender<Result<(), String>>,
    main: F,
) {
    let uring = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build();
    match uring {
        Ok(mut rt) => {
            let _ = ready.send(Ok(()));
            rt.block_on(main);
        }
        Err(e) if driver == Driver::Auto => {
            warn!(thread = name, error = %e, "io_uring unavailable, falling back to epoll (server.driver = \"auto\")");
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(mut rt) => {
                    let _ = ready.send(Ok(()));
                    rt.block_on(main);
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("{name}: cannot start an epoll runtime: {e}")));
                }
            }
        }
        Err(e) => {
            let _ = ready.send(Err(format!(
                "{name}: io_uring is unavailable ({e}); it may be disabled \
                 (sysctl kernel.io_uring_disabled) or blocked by a seccomp profile. \
                 Set server.driver = \"auto\" to allow an epoll fallback."
            )));
        }
    }
}
