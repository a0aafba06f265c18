//! Receiving the PROXY protocol header a load balancer sends first, on
//! listeners with `proxy_protocol = true`.
//!
//! The header must be consumed exactly: the bytes right after it (a TLS
//! ClientHello, an IMAP command) belong to the session. So the socket is
//! *peeked*, the pure parser in [`crate::proto::proxy_in`] decides, and only
//! header bytes are then taken off the socket. "Incomplete" from the parser
//! means every byte so far is header, so those are taken too and the next
//! wait blocks until more arrive; no byte past the header is ever read.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::config::Listen;
use crate::proto::proxy_in::{self, ProxyError, ProxyHeader, Status, V1_MAX, V2_MAX_PAYLOAD};

/// Why a connection on a PROXY listener was refused.
#[derive(Debug)]
pub enum ProxyRefusal {
    /// The peer is not in `proxy_trusted`.
    Untrusted,
    /// The header is missing or broken.
    Header(ProxyError),
    /// No whole header in time.
    Timeout,
    /// The connection closed or failed first.
    Io(io::Error),
}

impl std::fmt::Display for ProxyRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyRefusal::Untrusted => f.write_str("peer is not in proxy_trusted"),
            ProxyRefusal::Header(e) => write!(f, "{e}"),
            ProxyRefusal::Timeout => f.write_str("no PROXY header in time"),
            ProxyRefusal::Io(e) => write!(f, "connection failed before the PROXY header: {e}"),
        }
    }
}

/// Checks the peer against `proxy_trusted` and reads its header, within
/// `limit`.
pub async fn receive(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    listen: &Listen,
    limit: Duration,
) -> Result<ProxyHeader, ProxyRefusal> {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer.ip(), Into::into),
        v4 => v4,
    };
    if !listen.proxy_trusted.iter().any(|c| c.contains(ip)) {
        return Err(ProxyRefusal::Untrusted);
    }
    match monoio::time::timeout(limit, read_header(tcp)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyRefusal::Timeout),
    }
}

async fn read_header(tcp: &mut TcpStream) -> Result<ProxyHeader, ProxyRefusal> {
    let max = (16 + V2_MAX_PAYLOAD).max(V1_MAX);
    let mut seen: Vec<u8> = Vec::with_capacity(64);
    let mut peeked = vec![0u8; max];
    loop {
        tcp.readable(false).await.map_err(ProxyRefusal::Io)?;
        let room = max - seen.len();
        let n = match recv(tcp, &mut peeked[..room], libc::MSG_PEEK) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(ProxyRefusal::Io(e)),
        };
        if n == 0 {
            return Err(ProxyRefusal::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        let mut candidate = seen.clone();
        candidate.extend_from_slice(&peeked[..n]);
        match proxy_in::parse(&candidate).map_err(ProxyRefusal::Header)? {
            Status::Complete { header, len } => {
                take(tcp, len - seen.len())?;
                return Ok(header);
            }
            Status::Incomplete => {
                // Every byte seen is header: take them off the socket.
                take(tcp, n)?;
                seen = candidate;
                if seen.len() >= max {
                    return Err(ProxyRefusal::Header(ProxyError::TooLong));
                }
            }
        }
    }
}

/// Takes exactly `n` bytes that a peek has shown to be there.
fn take(tcp: &TcpStream, n: usize) -> Result<(), ProxyRefusal> {
    let mut sink = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = recv(tcp, &mut sink[got..], 0).map_err(ProxyRefusal::Io)?;
        if k == 0 {
            return Err(ProxyRefusal::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        got += k;
    }
    Ok(())
}

/// One non-blocking `recv(2)` on the socket.
fn recv(tcp: &TcpStream, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid writable region of `buf.len()` bytes and
        // the fd belongs to `tcp`, which outlives the call.
        let n = unsafe {
            libc::recv(
                tcp.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
