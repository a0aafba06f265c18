//! One client connection, plaintext or TLS, with owned-buffer reads and
//! writes (monoio's rent API).
//!
//! The TLS handshake is driven here rather than by monoio-rustls's
//! connector, so the connection can tell whether the handshake resumed an
//! earlier session (`rustls::HandshakeKind`); the finished rustls
//! connection is then wrapped in monoio-rustls's stream for the session's
//! reads and writes. STARTTLS upgrades a plain connection the same way.
//! A connection may come from a chosen loopback source address
//! ([`tcp_connect`]), so one run can play clients of many addresses.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, HandshakeKind};

/// How a client secures its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plaintext throughout.
    Plain,
    /// Plaintext, upgraded by the protocol's STARTTLS (IMAP) or STLS
    /// (POP3) before logging in.
    Starttls,
    /// TLS from the first byte (IMAPS, POP3S).
    Tls,
}

impl Transport {
    /// `plain`, `STARTTLS` or `TLS`, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Starttls => "STARTTLS",
            Transport::Tls => "TLS",
        }
    }
}

/// How to reach a listener: address, and how the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The listener's address.
    pub addr: SocketAddr,
    /// Plain, STARTTLS or implicit TLS.
    pub transport: Transport,
}

/// A connected stream.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large and most sessions of
    /// some runs are plain).
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

/// A connection and how its TLS handshake went.
pub struct Connected {
    /// The connection.
    pub conn: Conn,
    /// `Some(true)` if the TLS handshake resumed an earlier session,
    /// `Some(false)` if it was a full one, `None` without TLS.
    pub resumed: Option<bool>,
}

fn handshake_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS handshake: {e}"))
}

/// Writes whatever rustls has to send.
async fn send_tls(tcp: &mut TcpStream, session: &mut ClientConnection) -> io::Result<()> {
    while session.wants_write() {
        let mut out = Vec::new();
        session.write_tls(&mut out)?;
        let (res, _) = tcp.write_all(out).await;
        res?;
    }
    Ok(())
}

/// Runs a client handshake over `tcp`; returns the stream and whether it
/// resumed. Every byte read is handed to rustls, so nothing is left in a
/// buffer outside the session.
async fn handshake(
    mut tcp: TcpStream,
    tls: &Arc<rustls::ClientConfig>,
) -> io::Result<(monoio_rustls::ClientTlsStream<TcpStream>, bool)> {
    let addr = tcp.peer_addr()?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut session = ClientConnection::new(tls.clone(), name).map_err(handshake_error)?;
    let mut buf = Vec::with_capacity(16 * 1024);
    while session.is_handshaking() {
        send_tls(&mut tcp, &mut session).await?;
        if !session.is_handshaking() {
            break;
        }
        buf.clear();
        let (res, b) = tcp.read(buf).await;
        buf = b;
        if res? == 0 {
            return Err(handshake_error("the server closed the connection"));
        }
        let mut pending = &buf[..];
        while !pending.is_empty() {
            session.read_tls(&mut pending)?;
            session.process_new_packets().map_err(handshake_error)?;
        }
    }
    send_tls(&mut tcp, &mut session).await?;
    let resumed = session.handshake_kind() == Some(HandshakeKind::Resumed);
    Ok((monoio_rustls::ClientTlsStream::new(tcp, session), resumed))
}

/// Lets the kernel choose the source port at connect time, by the whole
/// 4-tuple, rather than at bind time: a flood from one address then does
/// not run out of ports while its closed connections sit in TIME_WAIT.
/// Best effort (the option exists since Linux 4.2).
fn bind_address_no_port(socket: &socket2::Socket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads an int we own, on a socket we own.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Opens a TCP connection to `addr` from `source` (any port), or from the
/// kernel's choice of address when `source` is None.
pub async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect_addr(addr).await;
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    bind_address_no_port(&socket);
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // A second handle on the socket reads the connect's outcome.
    let probe = socket.try_clone()?;
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    stream.writable(false).await?;
    match probe.take_error()? {
        Some(e) => Err(e),
        None => Ok(stream),
    }
}

impl Conn {
    /// Connects to `endpoint` from the loopback address `source` (None:
    /// the kernel's choice), doing the TLS handshake at once if it uses
    /// implicit TLS (a STARTTLS endpoint starts plain: see
    /// [`Conn::start_tls`]).
    pub async fn connect_from(
        endpoint: Endpoint,
        tls: &Arc<rustls::ClientConfig>,
        source: Option<IpAddr>,
    ) -> io::Result<Connected> {
        let tcp = tcp_connect(endpoint.addr, source).await?;
        tcp.set_nodelay(true)?;
        if endpoint.transport != Transport::Tls {
            return Ok(Connected {
                conn: Conn::Plain(tcp),
                resumed: None,
            });
        }
        let (stream, resumed) = handshake(tcp, tls).await?;
        Ok(Connected {
            conn: Conn::Tls(Box::new(stream)),
            resumed: Some(resumed),
        })
    }

    /// Upgrades a plain connection to TLS (after the server agreed to
    /// STARTTLS/STLS); returns the TLS connection and whether the
    /// handshake resumed.
    pub async fn start_tls(self, tls: &Arc<rustls::ClientConfig>) -> io::Result<(Conn, bool)> {
        match self {
            Conn::Plain(tcp) => {
                let (stream, resumed) = handshake(tcp, tls).await?;
                Ok((Conn::Tls(Box::new(stream)), resumed))
            }
            Conn::Tls(_) => Err(io::Error::other("STARTTLS on a TLS connection")),
        }
    }

    /// Reads into the spare capacity of `buf`, appending; returns the
    /// number of bytes read (0 at end of stream) and the buffer.
    pub async fn read_append(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let cap = buf.capacity();
        let slice = buf.slice_mut(len..cap);
        let (res, slice) = match self {
            Conn::Plain(s) => s.read(slice).await,
            Conn::Tls(s) => s.read(slice).await,
        };
        (res, slice.into_inner())
    }

    /// Writes all of `data`.
    pub async fn write_all<T: IoBuf + 'static>(&mut self, data: T) -> io::Result<()> {
        let (res, _) = match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                let r = s.write_all(data).await;
                if r.0.is_ok() {
                    s.flush().await?;
                }
                r
            }
        };
        res.map(|_| ())
    }

    /// Closes the write side (TLS: close_notify first).
    pub async fn shutdown(&mut self) {
        let _ = match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        };
    }
}
