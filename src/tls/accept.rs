//! The server side of the TLS handshake, bounded by a timeout.
//!
//! Used for implicit TLS right after `accept()` and for STARTTLS after the
//! director answered the command. `accept` starts from a clean socket: for
//! STARTTLS the caller must drop whatever the client pipelined in
//! plaintext after the command (STARTTLS injection, CVE-2011-0411). Bytes
//! the client sends *after* its Finished message, even in the same packet,
//! are decrypted into the session's plaintext carry and are the first bytes
//! read from the returned stream.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;

use super::stream::TlsStream;

/// Why a handshake failed. It is carried inside the `io::Error` that
/// [`accept`] returns; get it back with [`HandshakeError::of`].
#[derive(Debug)]
pub enum HandshakeError {
    /// The handshake did not finish within the timeout.
    TimedOut(Duration),
    /// The client broke the TLS protocol or offered nothing we accept (an
    /// alert was sent to it when possible).
    Tls(rustls::Error),
    /// The client closed the connection before the handshake finished.
    PeerClosed,
    /// The socket failed.
    Io(io::Error),
}

impl HandshakeError {
    /// The handshake error inside an `io::Error` returned by [`accept`].
    pub fn of(err: &io::Error) -> Option<&HandshakeError> {
        err.get_ref()?.downcast_ref()
    }

    fn into_io(self) -> io::Error {
        let kind = match &self {
            HandshakeError::TimedOut(_) => io::ErrorKind::TimedOut,
            HandshakeError::Tls(_) => io::ErrorKind::InvalidData,
            HandshakeError::PeerClosed => io::ErrorKind::UnexpectedEof,
            HandshakeError::Io(e) => e.kind(),
        };
        io::Error::new(kind, self)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::TimedOut(t) => write!(f, "TLS handshake timed out after {t:?}"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HandshakeError::PeerClosed => {
                write!(f, "TLS handshake failed: the client closed the connection")
            }
            HandshakeError::Io(e) => write!(f, "TLS handshake failed: socket error: {e}"),
        }
    }
}

impl std::error::Error for HandshakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HandshakeError::Tls(e) => Some(e),
            HandshakeError::Io(e) => Some(e),
            HandshakeError::TimedOut(_) | HandshakeError::PeerClosed => None,
        }
    }
}

/// Runs the server side of a TLS handshake on `tcp` and returns the
/// established session. Fails with a [`HandshakeError`] inside the
/// `io::Error` (kind `TimedOut`, `InvalidData`, `UnexpectedEof` or the
/// socket's) if the handshake fails or takes longer than `timeout`.
/// The runtime needs its timer enabled.
pub async fn accept(
    tcp: TcpStream,
    config: &Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config.clone())
        .map_err(|e| HandshakeError::Tls(e).into_io())?;
    let stream = TlsStream::new(tcp, conn);
    match monoio::time::timeout(timeout, handshake(&stream)).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(e.into_io()),
        Err(_) => Err(HandshakeError::TimedOut(timeout).into_io()),
    }
}

async fn handshake(stream: &TlsStream) -> Result<(), HandshakeError> {
    let session = stream.session();
    loop {
        let pass = session.with_records(|records| records.handshake_pass());
        if let Err(e) = pass {
            // Best effort: tell the client why (the alert rustls queued).
            let _ = session.flush_queued().await;
            return Err(HandshakeError::Tls(e));
        }
        session.flush_queued().await.map_err(HandshakeError::Io)?;
        let (handshaking, peer_closed) =
            session.with_records(|records| (records.is_handshaking(), records.peer_closed()));
        if !handshaking {
            return Ok(());
        }
        if peer_closed || session.tcp_eof() {
            return Err(HandshakeError::PeerClosed);
        }
        match session.read_socket(0).await {
            Ok(true) => {}
            Ok(false) => return Err(HandshakeError::PeerClosed),
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    }
}
