//! An in-memory driver of the TLS record layer: the server side of a
//! session ([`super::records`]) fed with ciphertext from byte slices
//! instead of a socket, the way [`super::accept`] and [`super::stream`]
//! feed it (a socket read copies the pending partial record in front of the
//! new bytes; a reader takes plaintext into a buffer of bounded room; a
//! writer seals plaintext behind the records waiting in the outbox).
//!
//! For the record-split property test (`records_split`) and the
//! `tls_records` fuzz target; compiled only for tests or with the
//! `fuzzing` feature, never into the director.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::ServerConfig;

use super::records::Records;
use crate::bufpool;

/// Most read passes one [`ServerDriver::process`] makes: each pass either
/// delivers plaintext or stops, so this only guards against a record layer
/// that stops making progress.
const MAX_PASSES: usize = 1 << 20;

/// The server side of one TLS session, driven from memory.
pub struct ServerDriver {
    records: Records,
}

/// A socket read begun but not completed: the ciphertext it will add to
/// comes after the partial record the inbox held when it began. Other
/// passes (a [`ServerDriver::send`]) may run before it completes, as they
/// may while a real read waits for the socket.
pub struct PendingRead {
    cipher: Vec<u8>,
    snapshot: u64,
}

impl ServerDriver {
    /// A session before its handshake, with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Result<ServerDriver, rustls::Error> {
        Ok(ServerDriver {
            records: Records::new(UnbufferedServerConnection::new(config)?),
        })
    }

    /// Begins a socket read: what `read_socket` copies before reading.
    pub fn begin_read(&self) -> PendingRead {
        let mut cipher = bufpool::take();
        cipher.extend_from_slice(self.records.inbox());
        PendingRead {
            cipher,
            snapshot: self.records.discarded(),
        }
    }

    /// Completes a socket read that returned `bytes`.
    pub fn complete_read(&mut self, read: PendingRead, bytes: &[u8]) {
        let PendingRead {
            mut cipher,
            snapshot,
        } = read;
        cipher.extend_from_slice(bytes);
        self.records.append_read(cipher, snapshot);
    }

    /// One socket read that returned `bytes`.
    pub fn receive(&mut self, bytes: &[u8]) {
        let read = self.begin_read();
        self.complete_read(read, bytes);
    }

    /// Processes what was received: during the handshake a handshake pass
    /// (its records go to the outbox); once the handshake is done, reads
    /// plaintext into buffers of `room` bytes (at least 1) until the
    /// records need more ciphertext, as `read_into` does, and returns it.
    ///
    /// An error that follows plaintext in the same call is returned by the
    /// next call (errors stick), as a reader sees it.
    pub fn process(&mut self, room: usize) -> Result<Vec<u8>, rustls::Error> {
        let mut plaintext = Vec::new();
        for _ in 0..MAX_PASSES {
            match self.read(room) {
                Err(e) if plaintext.is_empty() => return Err(e),
                Err(_) => return Ok(plaintext),
                Ok(got) if got.is_empty() => return Ok(plaintext),
                Ok(got) => plaintext.extend_from_slice(&got),
            }
        }
        panic!("the record layer made no progress in {MAX_PASSES} passes");
    }

    /// One pass, as one `read_into` makes before it would touch the
    /// socket: a handshake pass during the handshake, else plaintext into
    /// a buffer of `room` bytes (at least 1). Complete records may remain
    /// unprocessed when the buffer fills. Empty when more ciphertext is
    /// needed (or the peer closed).
    pub fn read(&mut self, room: usize) -> Result<Vec<u8>, rustls::Error> {
        if self.records.is_handshaking() {
            self.records.handshake_pass()?;
            if self.records.is_handshaking() {
                return Ok(Vec::new());
            }
        }
        let mut buf = Vec::with_capacity(room.max(1));
        match self.records.read_plaintext(&mut buf) {
            Err(e) if buf.is_empty() => Err(e),
            _ => Ok(buf),
        }
    }

    /// Takes the records waiting to be sent (handshake messages, tickets,
    /// alerts).
    pub fn take_outgoing(&mut self) -> Vec<u8> {
        self.records.take_outgoing()
    }

    /// Encrypts `plaintext` (then a close_notify when `close`) behind the
    /// records waiting in the outbox and returns all of it, in the pool
    /// buffer sized chunks a socket write would send.
    pub fn send(&mut self, plaintext: &[u8], close: bool) -> Result<Vec<u8>, rustls::Error> {
        let (mut offset, mut close) = (0, close);
        let mut wire = Vec::new();
        // Each round seals at least one pool buffer's worth or finishes.
        for _ in 0..=plaintext.len() / (bufpool::CHUNK / 2) + 4 {
            let mut out = bufpool::take();
            let sealed = self
                .records
                .seal(plaintext, &mut offset, &mut close, &mut out);
            wire.extend_from_slice(&out);
            let done = out.is_empty();
            bufpool::give(out);
            sealed?;
            if done {
                return Ok(wire);
            }
        }
        panic!("seal did not finish {} bytes", plaintext.len());
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.records.is_handshaking()
    }

    /// Whether the peer's close_notify arrived.
    pub fn peer_closed(&self) -> bool {
        self.records.peer_closed()
    }

    /// Bytes of buffers the session holds besides rustls' own state.
    pub fn held_bytes(&self) -> usize {
        self.records.held_bytes()
    }

    /// Ciphertext received and not consumed yet (a partial record).
    pub fn unconsumed(&self) -> usize {
        self.records.inbox().len()
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.records.conn().protocol_version()
    }
}
