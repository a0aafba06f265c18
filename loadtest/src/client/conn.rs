//! One client connection, plaintext or TLS, with owned-buffer reads and
//! writes (monoio's rent API).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;
use rustls::pki_types::ServerName;

/// How to reach a listener: address, and whether it speaks implicit TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The listener's address.
    pub addr: SocketAddr,
    /// Implicit TLS (the handshake starts at once).
    pub tls: bool,
}

/// A connected stream.
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (boxed: the TLS state is large and most sessions of
    /// some runs are plain).
    Tls(Box<monoio_rustls::ClientTlsStream<TcpStream>>),
}

impl Conn {
    /// Connects to `endpoint`, doing the TLS handshake if it uses TLS.
    pub async fn connect(endpoint: Endpoint, tls: &Arc<rustls::ClientConfig>) -> io::Result<Conn> {
        let tcp = TcpStream::connect(endpoint.addr).await?;
        tcp.set_nodelay(true)?;
        if !endpoint.tls {
            return Ok(Conn::Plain(tcp));
        }
        let connector = TlsConnector::from(tls.clone());
        let name = ServerName::IpAddress(endpoint.addr.ip().into());
        let stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| io::Error::other(format!("TLS handshake: {e}")))?;
        Ok(Conn::Tls(Box::new(stream)))
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
