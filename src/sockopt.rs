//! Socket options the director sets on its connections: TCP keepalive, so
//! a peer that vanished without a FIN or RST (a phone that lost its
//! network, a crashed host behind a NAT) is noticed and its session ends
//! instead of holding a backend session forever.

use std::os::fd::AsRawFd;
use std::time::Duration;

/// TCP keepalive settings (`server.keepalive_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe; zero turns keepalive off.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes after which the connection is dropped.
    pub probes: u32,
}

impl Keepalive {
    /// Turns keepalive on for `socket` with these settings (nothing when
    /// `idle` is zero). Errors are ignored: a socket that refuses the
    /// option is still served, only without the probe.
    pub fn apply(&self, socket: &impl AsRawFd) {
        if self.idle.is_zero() {
            return;
        }
        let fd = socket.as_raw_fd();
        set(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
        set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(self.idle));
        set(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            secs(self.interval),
        );
        set(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            i32::try_from(self.probes).unwrap_or(i32::MAX),
        );
    }
}

/// Whole seconds, at least 1 (the kernel's unit and minimum).
fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn set(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: `fd` is a live socket owned by the caller; the value is a
    // correctly sized int.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: i32, level: i32, name: i32) -> i32 {
        let mut value: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: a live socket and a correctly sized out value.
        let rc =
            unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
        assert_eq!(rc, 0);
        value
    }

    #[test]
    fn keepalive_settings_reach_the_socket() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(socket.local_addr().unwrap()).unwrap();
        Keepalive {
            idle: Duration::from_secs(45),
            interval: Duration::from_secs(7),
            probes: 3,
        }
        .apply(&stream);
        let fd = stream.as_raw_fd();
        assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 45);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 7);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
    }

    #[test]
    fn zero_idle_leaves_keepalive_off() {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(socket.local_addr().unwrap()).unwrap();
        Keepalive {
            idle: Duration::ZERO,
            interval: Duration::from_secs(7),
            probes: 3,
        }
        .apply(&stream);
        assert_eq!(
            get(stream.as_raw_fd(), libc::SOL_SOCKET, libc::SO_KEEPALIVE),
            0
        );
    }
}
