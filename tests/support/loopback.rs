//! Loopback addresses for test backends that no other test process uses at
//! the same time.
//!
//! Every backend gets its own 127.a.b.c (all of 127/8 reaches `lo` on
//! Linux with no setup) so it can listen on the standard mail ports. The
//! first candidate comes from this process's PID and a per-process counter;
//! a candidate is taken only after binding a *reservation* socket on it
//! (TCP port [`RESERVATION_PORT`]): the kernel lets one process at a time
//! hold that, even across processes that race, and frees it when the
//! process dies. 127.0.0.x is never used (the director and other helpers
//! live on 127.0.0.1).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The port bound on a leased address to mark it taken. Above the
/// ephemeral range (32768-60999) so no outgoing connection collides.
pub const RESERVATION_PORT: u16 = 65143;

/// Ports that must be free on a leased address (the standard mail ports
/// the backends listen on).
const MAIL_PORTS: [u16; 5] = [143, 110, 24, 4190, 993];

/// How many candidates to try before giving up.
const MAX_CANDIDATES: u32 = 256;

/// Candidates handed out by this process so far.
static NEXT_CANDIDATE: AtomicU32 = AtomicU32::new(0);

/// Number of addresses in 127.1.0.1 ..= 127.254.255.254 that the mapping
/// below produces: second octet 1..=254, third 0..=255, fourth 1..=254.
const SPACE: u64 = 254 * 256 * 254;

/// An address held for one backend; the reservation ends on drop.
pub struct LoopbackLease {
    addr: Ipv4Addr,
    _reservation: TcpListener,
}

impl LoopbackLease {
    /// Reserves a loopback address no other live test process holds and on
    /// which nothing listens on the mail ports. Panics after
    /// `MAX_CANDIDATES` tries (say, a system Dovecot listening on `*:143`).
    pub fn acquire() -> LoopbackLease {
        for _ in 0..MAX_CANDIDATES {
            let seq = NEXT_CANDIDATE.fetch_add(1, Ordering::Relaxed);
            let addr = candidate(std::process::id(), seq);
            let Ok(reservation) = TcpListener::bind(SocketAddr::from((addr, RESERVATION_PORT)))
            else {
                continue;
            };
            if MAIL_PORTS.iter().all(|&port| !is_listening(addr, port)) {
                return LoopbackLease {
                    addr,
                    _reservation: reservation,
                };
            }
        }
        panic!(
            "no free loopback address for a test backend after {MAX_CANDIDATES} tries: is a \
             system Dovecot listening on *:143? (scripts/install-test-deps stops it)"
        );
    }

    /// The reserved address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
}

/// The `seq`-th candidate of process `pid`: spreads (pid, seq) over the
/// space so concurrent processes start far apart. Never 127.0.x.x, and the
/// last octet is never 0 or 255.
pub fn candidate(pid: u32, seq: u32) -> Ipv4Addr {
    let index = (u64::from(pid) * 64 + u64::from(seq)) % SPACE;
    let fourth = 1 + index % 254;
    let third = (index / 254) % 256;
    let second = 1 + index / (254 * 256);
    // Each value is below 256 by construction.
    Ipv4Addr::new(127, second as u8, third as u8, fourth as u8)
}

/// True if something accepts connections on `addr:port`.
fn is_listening(addr: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from((addr, port)), Duration::from_millis(200)).is_ok()
}
