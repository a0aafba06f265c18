//! The synchronous half of a TLS session: rustls' *unbuffered* server
//! connection and the few buffers mailpin owns around it.
//!
//! rustls' buffered `ServerConnection` keeps a 4 KiB record reassembly
//! buffer for as long as the connection lives. The unbuffered connection
//! keeps none: the caller hands it ciphertext and gets plaintext and
//! records back. [`Records`] owns those bytes, and only while there are
//! some:
//! * the **inbox**: ciphertext read from the socket that rustls has not
//!   consumed yet. After every pass it keeps only what is left (normally a
//!   partial record) in an allocation of exactly that size, and none when
//!   nothing is left; the pool buffer the bytes were read into goes back
//!   to [`crate::bufpool`].
//! * the **plaintext carry**: decrypted bytes the reader's buffer had no
//!   room for (or that arrived during the handshake, after the client's
//!   Finished). Freed as soon as it is delivered.
//! * the **outbox**: records rustls produced while reading (handshake
//!   messages, session tickets, alerts) that wait for the write turn.
//!   Freed once written.
//!
//! An idle session therefore holds no buffer at all (see
//! [`Records::held_bytes`]).
//!
//! Everything here runs in synchronous sections: [`super::stream`] does the
//! socket I/O and decides who may write.

use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};

use crate::bufpool;

/// The most plaintext encrypted into one pool buffer per socket write:
/// room is left for record overhead (at most four records, under 64
/// bytes each) and for a few queued handshake records.
pub(super) const SEND_LIMIT: usize = bufpool::CHUNK - 1024;

/// The smallest socket read, even when the reader's buffer has less room.
const MIN_READ: usize = 4096;

/// Largest record overhead rustls adds (header, nonce, tag, padding).
const RECORD_OVERHEAD: usize = 64;

/// Largest plaintext per record (rustls' default fragment size).
const MAX_FRAGMENT: usize = 16 * 1024;

/// Why a pass over the input stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// rustls needs more ciphertext from the socket.
    NeedInput,
    /// The reader's buffer is full; unprocessed records may remain.
    BufferFull,
    /// Both sides sent close_notify; nothing more can be sent or received.
    Closed,
    /// The write callback ran (see [`Records::seal`]).
    Wrote,
}

/// Encrypts with the connection's write keys; gets the records queued
/// before (the outbox), which must reach the wire first.
type WriteCallback<'a> = &'a mut dyn FnMut(
    &mut WriteTraffic<'_, ServerConnectionData>,
    &mut Vec<u8>,
) -> Result<(), rustls::Error>;

/// rustls' unbuffered connection plus the buffers described in the module
/// notes.
pub(super) struct Records {
    conn: UnbufferedServerConnection,
    /// Ciphertext not yet consumed by rustls; see the module notes.
    inbox: Vec<u8>,
    /// How many bytes were ever removed from the front of the inbox. A
    /// reader whose socket read was in flight lines its copy up with it.
    discarded: u64,
    /// The inbox may hold complete records not processed yet (a reader's
    /// buffer filled up first).
    unprocessed: bool,
    /// Decrypted plaintext not delivered yet, from `plain_pos` on.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Records waiting for the write turn, in the order rustls made them.
    outbox: Vec<u8>,
    /// The peer's close_notify arrived.
    peer_closed: bool,
    /// rustls failed; every later pass reports this error again.
    failed: Option<rustls::Error>,
}

impl Records {
    /// Wraps a fresh connection (before its handshake).
    pub(super) fn new(conn: UnbufferedServerConnection) -> Self {
        Records {
            conn,
            inbox: Vec::new(),
            discarded: 0,
            unprocessed: false,
            plain: Vec::new(),
            plain_pos: 0,
            outbox: Vec::new(),
            peer_closed: false,
            failed: None,
        }
    }

    /// The rustls connection (version, cipher suite, handshake kind, ...).
    pub(super) fn conn(&self) -> &UnbufferedServerConnection {
        &self.conn
    }

    /// Whether the handshake is still under way.
    pub(super) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the peer's close_notify arrived.
    pub(super) fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether a read would make progress without the socket: plaintext,
    /// unprocessed records, the peer's close or an error are there.
    pub(super) fn input_pending(&self) -> bool {
        self.plain_pos < self.plain.len()
            || self.unprocessed
            || self.peer_closed
            || self.failed.is_some()
    }

    /// Bytes of buffers this session holds besides rustls' own state; 0
    /// for an idle session without a partial record.
    pub(super) fn held_bytes(&self) -> usize {
        self.inbox.capacity() + self.plain.capacity() + self.outbox.capacity()
    }

    /// Whether records wait for the write turn.
    pub(super) fn has_outgoing(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Takes the records waiting for the write turn (the outbox is left
    /// without an allocation).
    pub(super) fn take_outgoing(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outbox)
    }

    // ---- input ----

    /// The ciphertext a socket read must keep in front of what it reads.
    pub(super) fn inbox(&self) -> &[u8] {
        &self.inbox
    }

    /// The count a socket read passes back to [`Records::append_read`].
    pub(super) fn discarded(&self) -> u64 {
        self.discarded
    }

    /// How many bytes the next socket read should ask for: enough for
    /// `room` bytes of plaintext and for the rest of a pending record.
    pub(super) fn read_size(&self, room: usize) -> usize {
        let rest_of_record = match self.inbox.get(..5) {
            Some(header) => {
                let len = usize::from(u16::from_be_bytes([header[3], header[4]])) + 5;
                len.saturating_sub(self.inbox.len())
            }
            None => 0,
        };
        room.max(MIN_READ).max(rest_of_record)
    }

    /// Makes `cipher` the inbox after a socket read. `cipher` starts with
    /// the inbox as it was when the read began (`discarded` was then
    /// `snapshot`) and continues with the bytes read.
    pub(super) fn append_read(&mut self, mut cipher: Vec<u8>, snapshot: u64) {
        if self.failed.is_some() || self.peer_closed {
            // Nothing after an error or a close_notify counts.
            bufpool::give(cipher);
            return;
        }
        let gone = usize::try_from(self.discarded - snapshot).unwrap_or(usize::MAX);
        cipher.drain(..gone.min(cipher.len()));
        let old = std::mem::replace(&mut self.inbox, cipher);
        bufpool::give(old);
        self.unprocessed = true;
    }

    // ---- passes ----

    /// Processes the inbox during the handshake: records to send go to the
    /// outbox, plaintext after the client's Finished to the carry.
    pub(super) fn handshake_pass(&mut self) -> Result<Stop, rustls::Error> {
        self.pass(None, None)
    }

    /// Moves plaintext into the spare capacity of `buf`: first what the
    /// carry holds, then what the inbox decrypts to, until `buf` is full or
    /// rustls needs more input.
    pub(super) fn read_plaintext(&mut self, buf: &mut Vec<u8>) -> Result<Stop, rustls::Error> {
        let pending = &self.plain[self.plain_pos..];
        let n = pending.len().min(buf.capacity() - buf.len());
        buf.extend_from_slice(&pending[..n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        } else {
            return Ok(Stop::BufferFull);
        }
        self.pass(Some(buf), None)
    }

    /// Appends to `out` the records waiting in the outbox, then (unless
    /// `out` is already full) encrypts the next part of `plaintext` after
    /// `*offset`, or a close_notify when `plaintext` is done and `*close`
    /// is set, advancing `*offset` or clearing `*close`.
    pub(super) fn seal(
        &mut self,
        plaintext: &[u8],
        offset: &mut usize,
        close: &mut bool,
        out: &mut Vec<u8>,
    ) -> Result<(), rustls::Error> {
        let room = SEND_LIMIT.saturating_sub(out.len() + self.outbox.len());
        let end = plaintext.len().min(*offset + room);
        let chunk = &plaintext[*offset..end];
        let wants_close = *close && end == plaintext.len();
        if chunk.is_empty() && !wants_close {
            out.extend_from_slice(&self.take_outgoing());
            return Ok(());
        }
        let mut encrypt = |traffic: &mut WriteTraffic<'_, ServerConnectionData>,
                           queued: &mut Vec<u8>| {
            out.extend_from_slice(&std::mem::take(queued));
            if !chunk.is_empty() {
                write_with(out, chunk.len(), |dst| traffic.encrypt(chunk, dst))?;
            }
            if wants_close {
                write_with(out, RECORD_OVERHEAD, |dst| traffic.queue_close_notify(dst))?;
            }
            Ok(())
        };
        match self.pass(None, Some(&mut encrypt)) {
            Ok(Stop::Wrote) => {
                *offset = end;
                if wants_close {
                    *close = false;
                }
                Ok(())
            }
            Ok(Stop::Closed) if wants_close && chunk.is_empty() => {
                // Our close_notify went out already.
                *close = false;
                out.extend_from_slice(&self.take_outgoing());
                Ok(())
            }
            Ok(Stop::Closed) => {
                out.extend_from_slice(&self.take_outgoing());
                Err(rustls::Error::General("the TLS session is closed".into()))
            }
            Ok(_) => {
                out.extend_from_slice(&self.take_outgoing());
                Err(rustls::Error::HandshakeNotComplete)
            }
            Err(e) => {
                out.extend_from_slice(&self.take_outgoing());
                Err(e)
            }
        }
    }

    /// Runs rustls over the inbox until it needs more input, `dest` is
    /// full, or (with `on_write`) it can encrypt and has.
    fn pass(
        &mut self,
        dest: Option<&mut Vec<u8>>,
        mut on_write: Option<WriteCallback<'_>>,
    ) -> Result<Stop, rustls::Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        // Plaintext must leave in order: while the carry holds some, new
        // plaintext joins it.
        let mut dest = dest.filter(|_| self.plain.is_empty());
        let mut consumed = 0usize;
        let result = loop {
            if dest.as_deref().is_some_and(|d| d.len() == d.capacity()) {
                break Ok(Stop::BufferFull);
            }
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.inbox[consumed..]);
            let step = match state {
                Err(e) => Err(e),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => loop {
                    match traffic.next_record() {
                        None => break Ok(None),
                        Some(Err(e)) => break Err(e),
                        Some(Ok(record)) => {
                            discard += record.discard;
                            deliver(record.payload, dest.as_deref_mut(), &mut self.plain);
                        }
                    }
                },
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(None)
                }
                Ok(ConnectionState::Closed) => {
                    self.peer_closed = true;
                    Ok(Some(Stop::Closed))
                }
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    encode_into(&mut encode, &mut self.outbox).map(|()| None)
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => {
                    // The records stay in the outbox, ahead of anything
                    // encrypted later; the write-turn holder sends them.
                    transmit.done();
                    Ok(None)
                }
                Ok(ConnectionState::BlockedHandshake) => Ok(Some(Stop::NeedInput)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match on_write.take() {
                    Some(write) => {
                        write(&mut traffic, &mut self.outbox).map(|()| Some(Stop::Wrote))
                    }
                    None => Ok(Some(Stop::NeedInput)),
                },
                Ok(ConnectionState::ReadEarlyData(_)) => Err(rustls::Error::General(
                    "early data is not enabled but was offered for reading".into(),
                )),
                Ok(other) => Err(rustls::Error::General(format!(
                    "unexpected TLS connection state {other:?}"
                ))),
            };
            consumed += discard;
            match step {
                Ok(None) => {}
                Ok(Some(stop)) => break Ok(stop),
                Err(e) => break Err(e),
            }
        };
        match &result {
            Err(e) => {
                self.failed = Some(e.clone());
                self.collect_alert(consumed);
                consumed = self.inbox.len();
            }
            Ok(stop) => self.unprocessed = *stop == Stop::BufferFull,
        }
        if self.peer_closed {
            consumed = self.inbox.len();
        }
        self.settle_inbox(consumed);
        result
    }

    /// After an error: moves the alert rustls queued into the outbox.
    ///
    /// rustls is given the inbox from `consumed` on, the bytes it has not
    /// released: a handshake message it is joining from several records
    /// still lives there, and an empty slice would make it index past the
    /// end (a panic found by the `tls_records` fuzz target). It is only
    /// asked while it has records queued, which it hands out before
    /// looking at input: deframing the bad bytes once more would make it
    /// try to send a second fatal alert (a debug assertion in rustls).
    fn collect_alert(&mut self, consumed: usize) {
        // Bounded: rustls queues one alert, after the few handshake
        // records the failing step may have queued.
        for _ in 0..8 {
            if !self.conn.wants_write() {
                return;
            }
            let rest = self.inbox.get_mut(consumed..).unwrap_or_default();
            let status = self.conn.process_tls_records(rest);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut encode, &mut self.outbox).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Drops `consumed` bytes from the front of the inbox and keeps the
    /// rest in an allocation of its own size (none when nothing is left);
    /// a pool buffer goes back to the pool.
    fn settle_inbox(&mut self, consumed: usize) {
        self.discarded += consumed as u64;
        if consumed == 0 && self.inbox.capacity() == self.inbox.len() {
            return;
        }
        let rest = self.inbox.get(consumed..).unwrap_or_default();
        let kept = if rest.is_empty() {
            Vec::new()
        } else {
            rest.to_vec()
        };
        bufpool::give(std::mem::replace(&mut self.inbox, kept));
    }
}

/// Appends `payload` to `dest` as far as it has room, the rest to `carry`.
fn deliver(payload: &[u8], dest: Option<&mut Vec<u8>>, carry: &mut Vec<u8>) {
    let mut rest = payload;
    if let Some(dest) = dest {
        let n = rest.len().min(dest.capacity() - dest.len());
        dest.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    carry.extend_from_slice(rest);
}

/// Encodes a queued handshake record or alert at the end of `out`.
fn encode_into(
    encode: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let required = match encode.encode(&mut []) {
        Ok(_) => return Ok(()),
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            required_size
        }
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    let at = out.len();
    out.resize(at + required, 0);
    match encode.encode(&mut out[at..]) {
        Ok(n) => {
            out.truncate(at + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(at);
            Err(rustls::Error::General(e.to_string()))
        }
    }
}

/// Runs `write` on zeroed space at the end of `out` (first `estimate`
/// bytes plus record overhead, then what rustls says it needs) and keeps
/// what it wrote.
fn write_with(
    out: &mut Vec<u8>,
    estimate: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), rustls::Error> {
    let at = out.len();
    let records = estimate / MAX_FRAGMENT + 1;
    out.resize(at + estimate + records * RECORD_OVERHEAD, 0);
    let result = match write(&mut out[at..]) {
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(at + required_size, 0);
            write(&mut out[at..])
        }
        other => other,
    };
    match result {
        Ok(n) => {
            out.truncate(at + n);
            Ok(())
        }
        Err(EncryptError::EncryptExhausted) => {
            out.truncate(at);
            Err(rustls::Error::EncryptError)
        }
        Err(e) => {
            out.truncate(at);
            Err(rustls::Error::General(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, SupportedProtocolVersion};

    use super::*;
    use crate::tls::{server_config_from_pem, DevCert, TlsSettings};

    /// An in-memory rustls client and a server [`Records`].
    struct Pair {
        client: ClientConnection,
        server: Records,
        /// Plaintext the client received.
        received: Vec<u8>,
    }

    fn pair(version: &'static SupportedProtocolVersion) -> Pair {
        let dev = DevCert::generate().expect("dev cert");
        let server_config = server_config_from_pem(
            dev.cert_pem.as_bytes(),
            dev.key_pem.as_bytes(),
            TlsSettings::default(),
        )
        .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(dev.cert_pem.as_bytes()) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client_config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        Pair {
            client: ClientConnection::new(Arc::new(client_config), name).expect("client"),
            server: Records::new(UnbufferedServerConnection::new(server_config).expect("server")),
            received: Vec::new(),
        }
    }

    /// What a socket read does: the inbox, then the new bytes.
    fn feed(records: &mut Records, bytes: &[u8]) {
        let mut cipher = bufpool::take();
        cipher.extend_from_slice(records.inbox());
        cipher.extend_from_slice(bytes);
        let snapshot = records.discarded();
        records.append_read(cipher, snapshot);
    }

    impl Pair {
        fn client_flight(&mut self) -> Vec<u8> {
            let mut wire = Vec::new();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).expect("client write_tls");
            }
            wire
        }

        fn deliver_to_client(&mut self, wire: &[u8]) {
            let mut rest = wire;
            while !rest.is_empty() {
                self.client.read_tls(&mut rest).expect("client read_tls");
                self.client.process_new_packets().expect("client process");
                match self.client.reader().read_to_end(&mut self.received) {
                    Ok(_) => {}
                    Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
                }
            }
        }

        fn server_outbox_to_client(&mut self) {
            let out = self.server.take_outgoing();
            self.deliver_to_client(&out);
        }

        fn handshake(&mut self) {
            for _ in 0..20 {
                if !self.client.is_handshaking() && !self.server.is_handshaking() {
                    break;
                }
                let flight = self.client_flight();
                feed(&mut self.server, &flight);
                self.server.handshake_pass().expect("server handshake");
                self.server_outbox_to_client();
            }
            assert!(!self.server.is_handshaking(), "handshake finished");
            assert!(!self.client.is_handshaking(), "handshake finished");
        }

        fn client_sends(&mut self, data: &[u8]) -> Vec<u8> {
            let mut wire = Vec::new();
            for part in data.chunks(16 * 1024) {
                self.client.writer().write_all(part).expect("client write");
                wire.extend_from_slice(&self.client_flight());
            }
            wire
        }

        /// Reads everything the server has into buffers of `cap` bytes.
        fn server_reads(&mut self, cap: usize) -> Vec<u8> {
            let mut got = Vec::new();
            for _ in 0..10_000 {
                let mut buf = Vec::with_capacity(cap);
                let stop = self.server.read_plaintext(&mut buf).expect("server read");
                got.extend_from_slice(&buf);
                if stop == Stop::NeedInput && buf.is_empty() {
                    return got;
                }
            }
            panic!("server reads do not finish");
        }

        /// Everything `seal` makes for `data` (and a close_notify).
        fn server_seals(&mut self, data: &[u8], close: bool) -> Vec<u8> {
            let (mut offset, mut close) = (0, close);
            let mut wire = Vec::new();
            for _ in 0..10_000 {
                let mut out = Vec::with_capacity(bufpool::CHUNK);
                self.server
                    .seal(data, &mut offset, &mut close, &mut out)
                    .expect("seal");
                if out.is_empty() {
                    return wire;
                }
                wire.extend_from_slice(&out);
            }
            panic!("seal does not finish");
        }

        fn client_reads(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.received)
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 % 251) as u8).collect()
    }

    #[test]
    fn idle_session_holds_no_buffers() {
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let mut p = pair(version);
            p.handshake();
            let wire = p.client_sends(b"a1 NOOP\r\n");
            feed(&mut p.server, &wire);
            assert_eq!(p.server_reads(1024), b"a1 NOOP\r\n");
            let wire = p.server_seals(b"a1 OK\r\n", false);
            p.deliver_to_client(&wire);
            assert_eq!(p.client_reads(), b"a1 OK\r\n");
            assert_eq!(p.server.held_bytes(), 0, "{version:?}");
            assert!(!p.server.input_pending());
        }
    }

    #[test]
    fn partial_record_is_kept_in_its_own_size() {
        let mut p = pair(&rustls::version::TLS13);
        p.handshake();
        let wire = p.client_sends(&pattern(300));
        feed(&mut p.server, &wire[..10]);
        assert_eq!(p.server_reads(1024), b"");
        assert_eq!(p.server.held_bytes(), 10);
        feed(&mut p.server, &wire[10..]);
        assert_eq!(p.server_reads(1024), pattern(300));
        assert_eq!(p.server.held_bytes(), 0);
    }

    #[test]
    fn small_reader_buffers_get_the_rest_from_the_carry() {
        let mut p = pair(&rustls::version::TLS13);
        p.handshake();
        let data = pattern(70_000);
        let wire = p.client_sends(&data);
        feed(&mut p.server, &wire);
        assert_eq!(p.server_reads(1000), data);
        assert_eq!(p.server.held_bytes(), 0);
    }

    #[test]
    fn pipelined_plaintext_after_finished_waits_in_the_carry() {
        let mut p = pair(&rustls::version::TLS13);
        p.client
            .writer()
            .write_all(b"a1 CAPABILITY\r\n")
            .expect("queue");
        p.handshake();
        // The client sends the command with its Finished flight.
        assert!(p.server.input_pending());
        assert_eq!(p.server_reads(4), b"a1 CAPABILITY\r\n");
        assert_eq!(p.server.held_bytes(), 0);
    }

    #[test]
    fn seal_encrypts_large_writes_and_closes() {
        let mut p = pair(&rustls::version::TLS12);
        p.handshake();
        let data = pattern(200_000);
        let wire = p.server_seals(&data, true);
        p.deliver_to_client(&wire);
        assert_eq!(p.client_reads(), data);
        let mut rest = Vec::new();
        // Ok(0), not an error: the close_notify arrived.
        assert_eq!(
            p.client
                .reader()
                .read_to_end(&mut rest)
                .expect("clean close"),
            0
        );
        assert_eq!(p.server.held_bytes(), 0);
    }

    #[test]
    fn key_update_request_is_answered_before_the_next_reply() {
        let mut p = pair(&rustls::version::TLS13);
        p.handshake();
        p.client.refresh_traffic_keys().expect("key update");
        let wire = p.client_sends(b"a1 NOOP\r\n");
        feed(&mut p.server, &wire);
        assert_eq!(p.server_reads(1024), b"a1 NOOP\r\n");
        let wire = p.server_seals(b"a1 OK\r\n", false);
        p.deliver_to_client(&wire);
        assert_eq!(p.client_reads(), b"a1 OK\r\n");
    }

    #[test]
    fn client_close_notify_ends_reading() {
        let mut p = pair(&rustls::version::TLS13);
        p.handshake();
        p.client.send_close_notify();
        let wire = p.client_flight();
        feed(&mut p.server, &wire);
        let mut buf = Vec::with_capacity(64);
        p.server.read_plaintext(&mut buf).expect("read");
        assert!(buf.is_empty());
        assert!(p.server.peer_closed());
        assert!(p.server.input_pending());
        // Our direction still works after the client's close.
        let wire = p.server_seals(b"* BYE\r\n", true);
        p.deliver_to_client(&wire);
        assert_eq!(p.client_reads(), b"* BYE\r\n");
    }

    #[test]
    fn corrupt_record_fails_for_good_and_queues_an_alert() {
        let mut p = pair(&rustls::version::TLS13);
        p.handshake();
        let mut wire = p.client_sends(b"a1 NOOP\r\n");
        let last = wire.len() - 1;
        wire[last] ^= 0x55;
        feed(&mut p.server, &wire);
        let mut buf = Vec::with_capacity(64);
        assert!(p.server.read_plaintext(&mut buf).is_err());
        assert!(p.server.has_outgoing(), "an alert waits for the write turn");
        assert!(p.server.read_plaintext(&mut buf).is_err(), "errors stick");
        assert!(buf.is_empty());
    }

    /// Found by the `tls_records` fuzz target: a ClientHello fragmented
    /// over two records, then a record rustls cannot deframe. rustls still
    /// holds the first fragment in the inbox when it fails; collecting the
    /// alert with an empty slice made it index past its end and panic.
    #[test]
    fn error_while_joining_a_fragmented_handshake_message_queues_an_alert() {
        let mut p = pair(&rustls::version::TLS13);
        let hello = p.client_flight();
        let (header, body) = hello.split_at(5);
        let mut wire = Vec::new();
        wire.extend_from_slice(&header[..3]);
        wire.extend_from_slice(&40u16.to_be_bytes());
        wire.extend_from_slice(&body[..40]);
        // A record of content type 0: not TLS.
        wire.extend_from_slice(&[0x00, 0x03, 0x03, 0x00, 0x02, 0x01, 0x02]);
        feed(&mut p.server, &wire);
        assert!(p.server.handshake_pass().is_err());
        assert!(p.server.has_outgoing(), "an alert waits for the write turn");
        assert!(p.server.handshake_pass().is_err(), "errors stick");
        assert_eq!(p.server.inbox(), b"", "nothing is kept after an error");
    }
}
