//! A TLS server session over a monoio `TcpStream`, with no buffers of its
//! own while idle.
//!
//! [`TlsStream`] drives rustls' *unbuffered* server connection (see
//! [`super::records`], which owns the ciphertext and plaintext buffers)
//! instead of monoio-rustls' stream, which keeps a 16 KiB read and a 16 KiB
//! write buffer per connection, or rustls' buffered connection, which
//! keeps a 4 KiB record reassembly buffer. Ciphertext passes through
//! buffers borrowed from [`crate::bufpool`] for the duration of one read
//! or write, so an idle session holds only rustls' state (the traffic
//! keys) and the socket; a partial record, when the client sent one, is
//! kept in an allocation of its own size.
//!
//! # Reading
//! [`ReadSide::readable`] returns at once when plaintext, unprocessed
//! records, a close or an error are already there, and otherwise waits for
//! socket readiness without a buffer. [`ReadSide::read_into`] reads
//! ciphertext into a pool buffer (after the kept partial record, if any),
//! lets rustls decrypt it and copies the plaintext into the caller's
//! buffer; it loops until it has at least one plaintext byte or the stream
//! ended (a close_notify or a TCP EOF, both `Ok(0)`). Plaintext the
//! caller's buffer has no room for waits in a carry buffer that exists only
//! in that case.
//!
//! # Writing, and the write turn
//! Only one party may write to the socket at a time, because TLS records
//! must reach the wire in the order they were encrypted. That right is the
//! *write turn*, a `Cell<bool>` in the shared session:
//! * The write half takes the turn for every `write_all` and `shutdown`,
//!   waiting (with a stored waker) while the read half has it.
//! * Processing input can make rustls produce records of its own (an
//!   alert, session tickets, a refusal of renegotiation); they wait in the
//!   session's outbox, ahead of anything encrypted later. The read half
//!   then takes the turn if it is free and flushes; if the write half holds
//!   it, the read half does **not** wait: the holder always sends the
//!   outbox before its own new records and checks it again after each
//!   socket write, releasing the turn in the same synchronous step as the
//!   last check, so the read half's records go out with the writer's.
//! * A write that fails, or whose future is dropped mid-way, may leave a
//!   partial record on the wire; the write side is then marked broken and
//!   every later write fails.
//!
//! No `RefCell` borrow is held across an `.await`.
//!
//! # Cancellation
//! Dropping `read_into` while its socket read is in flight may lose the
//! bytes of a read that completed at the same instant, which corrupts the
//! TLS stream. Time out [`ReadSide::readable`] (which holds nothing), not
//! `read_into`, when the session must stay usable.

use std::cell::{Cell, RefCell, UnsafeCell};
use std::future::poll_fn;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;

use super::records::Records;
use crate::bufpool;
use crate::io::{Connection, ReadSide, WriteSide};

/// The least room a socket read gets after the kept partial record.
const MIN_SPARE: usize = 4096;

/// State shared by a [`TlsStream`] or by its two halves.
pub(super) struct Session {
    /// The socket. See [`Session::tcp`] for the aliasing rules.
    tcp: UnsafeCell<TcpStream>,
    /// rustls and the session's buffers; borrowed only in synchronous
    /// sections.
    records: RefCell<Records>,
    /// Somebody is writing to the socket (holds the write turn).
    write_turn: Cell<bool>,
    /// The write half, waiting for the read half to give the turn back.
    turn_waiter: Cell<Option<Waker>>,
    /// A write failed or was cancelled: the stream may hold a partial record.
    write_broken: Cell<bool>,
    /// The socket reported end of stream.
    tcp_eof: Cell<bool>,
}

/// The right to write to the socket; see the module notes.
struct WriteTurn<'a> {
    session: &'a Session,
    finished: bool,
}

impl WriteTurn<'_> {
    /// Gives the turn back after a complete, successful write.
    fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for WriteTurn<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.session.write_broken.set(true);
        }
        self.session.write_turn.set(false);
        if let Some(waker) = self.session.turn_waiter.take() {
            waker.wake();
        }
    }
}

fn broken_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "TLS write side unusable after an earlier write failed or was cancelled",
    )
}

/// A rustls error as the `io::Error` a read or write reports.
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Session {
    fn new(tcp: TcpStream, conn: UnbufferedServerConnection) -> Self {
        Session {
            tcp: UnsafeCell::new(tcp),
            records: RefCell::new(Records::new(conn)),
            write_turn: Cell::new(false),
            turn_waiter: Cell::new(None),
            write_broken: Cell::new(false),
            tcp_eof: Cell::new(false),
        }
    }

    #[allow(clippy::mut_from_ref)]
    fn tcp(&self) -> &mut TcpStream {
        // SAFETY: the session lives on one thread (Rc). Socket reads and
        // readiness polls are issued only by the reading side (one future
        // at a time: `read_into`/`readable` take `&mut self`), socket writes
        // and shutdown only by the holder of the write turn (one at a
        // time). TcpStream's methods touch nothing but the shared fd, so a
        // read and a write in flight together never observe each other's
        // state; this is the pattern of `crate::io::TcpHalf`.
        unsafe { &mut *self.tcp.get() }
    }

    /// Runs `f` on rustls and the session's buffers (synchronously).
    pub(super) fn with_records<R>(&self, f: impl FnOnce(&mut Records) -> R) -> R {
        f(&mut self.records.borrow_mut())
    }

    fn try_write_turn(&self) -> Option<WriteTurn<'_>> {
        if self.write_turn.get() || self.write_broken.get() {
            return None;
        }
        self.write_turn.set(true);
        Some(WriteTurn {
            session: self,
            finished: false,
        })
    }

    async fn write_turn(&self) -> io::Result<WriteTurn<'_>> {
        poll_fn(|cx| {
            if self.write_broken.get() {
                return Poll::Ready(Err(broken_error()));
            }
            match self.try_write_turn() {
                Some(turn) => Poll::Ready(Ok(turn)),
                None => {
                    self.turn_waiter.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Encrypts `plaintext` (then a close_notify if `close`) and writes it,
    /// after every record waiting in the outbox, to the socket. The caller
    /// holds the write turn.
    async fn send(&self, _turn: &WriteTurn<'_>, plaintext: &[u8], close: bool) -> io::Result<()> {
        let mut offset = 0;
        let mut close = close;
        loop {
            let mut out = bufpool::take();
            let sealed =
                self.records
                    .borrow_mut()
                    .seal(plaintext, &mut offset, &mut close, &mut out);
            if out.is_empty() {
                bufpool::give(out);
                return sealed.map_err(tls_error);
            }
            let (res, out) = AsyncWriteRentExt::write_all(self.tcp(), out).await;
            bufpool::give(out);
            res?;
            sealed.map_err(tls_error)?;
        }
    }

    /// Writes the records waiting in the outbox (handshake messages,
    /// tickets, alerts), unless the write turn is taken, in which case its
    /// holder will.
    pub(super) async fn flush_queued(&self) -> io::Result<()> {
        if !self.records.borrow().has_outgoing() {
            return Ok(());
        }
        match self.try_write_turn() {
            Some(turn) => {
                loop {
                    let out = self.records.borrow_mut().take_outgoing();
                    if out.is_empty() {
                        break;
                    }
                    let (res, _) = AsyncWriteRentExt::write_all(self.tcp(), out).await;
                    res?;
                }
                turn.finish();
                Ok(())
            }
            None if self.write_broken.get() => Err(broken_error()),
            None => Ok(()),
        }
    }

    /// Reads one batch of ciphertext from the socket into the inbox, after
    /// the partial record it may hold; `room` is how much plaintext the
    /// reader can take. Returns `Ok(false)` at TCP end of stream.
    pub(super) async fn read_socket(&self, room: usize) -> io::Result<bool> {
        let mut cipher = bufpool::take();
        let (snapshot, want) = {
            let records = self.records.borrow();
            cipher.extend_from_slice(records.inbox());
            (records.discarded(), records.read_size(room))
        };
        let prefix = cipher.len();
        if cipher.capacity() - prefix < MIN_SPARE {
            // Only a pathological partial record gets here; the buffer is
            // then no pool buffer and is freed, not pooled, afterwards.
            cipher.reserve(want);
        }
        let want = want.min(cipher.capacity() - prefix);
        let (res, slice) = self
            .tcp()
            .read(cipher.slice_mut(prefix..prefix + want))
            .await;
        let cipher = slice.into_inner();
        match res {
            Err(e) => {
                bufpool::give(cipher);
                Err(e)
            }
            Ok(0) => {
                bufpool::give(cipher);
                self.tcp_eof.set(true);
                Ok(false)
            }
            Ok(_) => {
                self.records.borrow_mut().append_read(cipher, snapshot);
                Ok(true)
            }
        }
    }

    /// Whether the TCP stream ended.
    pub(super) fn tcp_eof(&self) -> bool {
        self.tcp_eof.get()
    }

    /// Whether a read would return without touching the socket.
    fn input_pending(&self) -> bool {
        self.tcp_eof.get() || self.records.borrow().input_pending()
    }

    async fn readable(&self) -> io::Result<()> {
        if self.input_pending() {
            return Ok(());
        }
        TcpStream::readable(self.tcp(), false).await
    }

    async fn read_into(&self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if buf.len() == buf.capacity() {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                "read_into needs spare capacity",
            );
            return (Err(e), buf);
        }
        let start = buf.len();
        loop {
            let result = self.records.borrow_mut().read_plaintext(&mut buf);
            // Records rustls made while reading (tickets, an alert). A
            // failure marks the write side broken; later writes report it.
            let _ = self.flush_queued().await;
            if buf.len() > start {
                // An error, if any, sticks and is reported by the next read.
                return (Ok(buf.len() - start), buf);
            }
            if let Err(e) = result {
                return (Err(tls_error(e)), buf);
            }
            if self.tcp_eof.get() || self.records.borrow().peer_closed() {
                return (Ok(0), buf);
            }
            let room = buf.capacity() - buf.len();
            if let Err(e) = self.read_socket(room).await {
                return (Err(e), buf);
            }
        }
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let turn = match self.write_turn().await {
            Ok(turn) => turn,
            Err(e) => return (Err(e), buf),
        };
        let res = self.send(&turn, &buf, false).await;
        if res.is_ok() {
            turn.finish();
        }
        (res, buf)
    }

    async fn shutdown(&self) -> io::Result<()> {
        let turn = self.write_turn().await?;
        self.send(&turn, &[], true).await?;
        AsyncWriteRent::shutdown(self.tcp()).await?;
        turn.finish();
        Ok(())
    }
}

/// A TLS server session after its handshake; see the module notes.
pub struct TlsStream {
    session: Rc<Session>,
}

impl TlsStream {
    /// Wraps a socket and a fresh rustls connection (the handshake is still
    /// to be done; see [`crate::tls::accept`]).
    pub(super) fn new(tcp: TcpStream, conn: UnbufferedServerConnection) -> Self {
        TlsStream {
            session: Rc::new(Session::new(tcp, conn)),
        }
    }

    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    /// Runs `f` on the rustls connection, e.g. to read the negotiated
    /// protocol version, cipher suite or whether the session was resumed.
    pub fn with_connection<R>(&self, f: impl FnOnce(&UnbufferedServerConnection) -> R) -> R {
        self.session.with_records(|records| f(records.conn()))
    }

    /// The negotiated protocol version as operators write it
    /// (`"TLSv1.3"`, `"TLSv1.2"`), for the session's closing log line.
    pub fn version_name(&self) -> &'static str {
        self.with_connection(|c| match c.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            Some(_) => "TLS",
            None => "TLS (handshake unfinished)",
        })
    }

    /// Bytes of buffers the session holds besides rustls' own state: 0
    /// while idle, unless the client left a partial record.
    pub fn held_bytes(&self) -> usize {
        self.session.with_records(|records| records.held_bytes())
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.session.tcp().peer_addr()
    }
}

impl ReadSide for TlsStream {
    async fn readable(&mut self) -> io::Result<()> {
        self.session.readable().await
    }

    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.session.read_into(buf).await
    }
}

impl WriteSide for TlsStream {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.session.write_all(buf).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.session.shutdown().await
    }
}

impl Connection for TlsStream {
    type Reader = TlsReadHalf;
    type Writer = TlsWriteHalf;

    fn into_split(self) -> (TlsReadHalf, TlsWriteHalf) {
        (
            TlsReadHalf {
                session: self.session.clone(),
            },
            TlsWriteHalf {
                session: self.session,
            },
        )
    }
}

/// The read half of a split [`TlsStream`].
pub struct TlsReadHalf {
    session: Rc<Session>,
}

impl ReadSide for TlsReadHalf {
    // The session's own future, not one wrapped in another async fn: a
    // relay holds this while a session is idle.
    fn readable(&mut self) -> impl std::future::Future<Output = io::Result<()>> {
        self.session.readable()
    }

    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        self.session.read_into(buf).await
    }
}

/// The write half of a split [`TlsStream`].
pub struct TlsWriteHalf {
    session: Rc<Session>,
}

impl WriteSide for TlsWriteHalf {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.session.write_all(buf).await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.session.shutdown().await
    }
}
