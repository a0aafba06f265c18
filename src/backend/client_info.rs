//! What the director knows about a client connection: the part a backend
//! is told (address, session id, TLS) and the origin the per-user session
//! limits count.

use std::net::SocketAddr;

use crate::config::Protocol;
use crate::route::shard::SessionOrigin;

/// What the director knows about a client connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address (from a PROXY header when one was accepted).
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The session id, also sent to the backend (`x-session-id`).
    pub session_id: String,
    /// Whether the client connection is under TLS now.
    pub tls: bool,
}

impl ClientInfo {
    /// Where a `protocol` session of this client comes from, for the
    /// per-user session limits.
    pub fn origin(&self, protocol: Protocol) -> SessionOrigin {
        SessionOrigin {
            ip: self.peer.ip(),
            protocol,
        }
    }
}
