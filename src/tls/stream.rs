//! A TLS server session over a monoio `TcpStream`, with no buffers of its
//! own while idle.
//!
//! [`TlsStream`] drives a `rustls::ServerConnection` directly instead of
//! using monoio-rustls' stream, which keeps a 16 KiB read and a 16 KiB write
//! buffer per connection. Here ciphertext passes through buffers borrowed
//! from [`crate::bufpool`] for the duration of one read or write, so an idle
//! session holds only rustls' own state (its 4 KiB record reassembly buffer,
//! the traffic keys) and the socket.
//!
//! # Reading
//! [`ReadSide::readable`] returns at once when rustls already holds
//! plaintext or a close, and otherwise waits for socket readiness without a
//! buffer. [`ReadSide::read_into`] reads ciphertext into a pool buffer,
//! hands it to rustls and copies the plaintext into the caller's buffer; it
//! loops until it has at least one plaintext byte or the stream ended (a
//! close_notify or a TCP EOF, both `Ok(0)`). Ciphertext rustls cannot take
//! yet (its plaintext buffer is full and so is the caller's) is kept in a
//! carry buffer that exists only in that case.
//!
//! # Writing, and the write turn
//! Only one party may write to the socket at a time, because TLS records
//! must reach the wire in the order they were encrypted. That right is the
//! *write turn*, a `Cell<bool>` in the shared session:
//! * The write half takes the turn for every `write_all` and `shutdown`,
//!   waiting (with a stored waker) while the read half has it.
//! * Processing input can make rustls queue records of its own (an alert, a
//!   KeyUpdate answer). The read half then takes the turn if it is free and
//!   flushes; if the write half holds it, the read half does **not** wait:
//!   the holder always drains everything rustls has queued before it gives
//!   the turn back (it checks `wants_write` after each socket write, and
//!   releases the turn in the same synchronous step as the last check), so
//!   the read half's records go out with the writer's.
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
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::task::{Poll, Waker};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::ServerConnection;

use crate::bufpool;
use crate::io::{Connection, ReadSide, WriteSide};

/// The most plaintext rustls encrypts ahead of the socket: one pool buffer
/// minus room for record overhead (at most four records, under 32 bytes
/// each), so one `write_all` round fills one pool buffer.
const SEND_LIMIT: usize = bufpool::CHUNK - 1024;

/// The smallest socket read, even when the caller's buffer has less room.
const MIN_READ: usize = 4096;

/// State shared by a [`TlsStream`] or by its two halves.
pub(super) struct Session {
    /// The socket. See [`Session::tcp`] for the aliasing rules.
    tcp: UnsafeCell<TcpStream>,
    /// The rustls state machine; borrowed only in synchronous sections.
    tls: RefCell<ServerConnection>,
    /// Ciphertext read from the socket that rustls could not take yet.
    /// Empty, without an allocation, unless a reader's buffer filled up.
    carry: RefCell<Vec<u8>>,
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

/// What feeding ciphertext to rustls found.
pub(super) enum Ingested {
    /// All bytes were taken (some may wait in the carry buffer).
    Taken,
    /// rustls rejected the input; an alert may be queued for the peer.
    Failed(rustls::Error),
}

/// Writes into the spare capacity of a `Vec` and never grows it.
struct SpareWriter<'a>(&'a mut Vec<u8>);

impl Write for SpareWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.0.capacity() - self.0.len();
        let n = room.min(data.len());
        self.0.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that has nothing yet; makes rustls resize its buffer.
struct NothingYet;

impl io::Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// Moves plaintext held by rustls into the spare capacity of `buf`.
/// Returns the bytes copied, and whether the peer ended the stream (only
/// reported once no plaintext is left).
fn drain_plaintext(tls: &mut ServerConnection, buf: &mut Vec<u8>) -> (usize, bool) {
    let mut copied = 0;
    let mut reader = tls.reader();
    while buf.len() < buf.capacity() {
        match reader.fill_buf() {
            Ok([]) => return (copied, true),
            Ok(chunk) => {
                let n = chunk.len().min(buf.capacity() - buf.len());
                buf.extend_from_slice(&chunk[..n]);
                reader.consume(n);
                copied += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return (copied, true),
        }
    }
    (copied, false)
}

fn broken_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "TLS write side unusable after an earlier write failed or was cancelled",
    )
}

impl Session {
    fn new(tcp: TcpStream, tls: ServerConnection) -> Self {
        Session {
            tcp: UnsafeCell::new(tcp),
            tls: RefCell::new(tls),
            carry: RefCell::new(Vec::new()),
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

    /// Runs `f` on the rustls connection.
    pub(super) fn with_tls<R>(&self, f: impl FnOnce(&mut ServerConnection) -> R) -> R {
        f(&mut self.tls.borrow_mut())
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

    /// Encrypts `plaintext` and writes it, together with every record rustls
    /// has queued, to the socket. The caller holds the write turn.
    async fn send(&self, _turn: &WriteTurn<'_>, plaintext: &[u8]) -> io::Result<()> {
        let mut offset = 0;
        let mut out = bufpool::take();
        loop {
            {
                let mut tls = self.tls.borrow_mut();
                if offset < plaintext.len() {
                    match tls.writer().write(&plaintext[offset..]) {
                        Ok(n) => offset += n,
                        Err(e) => {
                            bufpool::give(out);
                            return Err(e);
                        }
                    }
                }
                out.clear();
                while tls.wants_write() && out.len() < out.capacity() {
                    if let Err(e) = tls.write_tls(&mut SpareWriter(&mut out)) {
                        bufpool::give(out);
                        return Err(e);
                    }
                }
            }
            if out.is_empty() {
                if offset == plaintext.len() {
                    bufpool::give(out);
                    return Ok(());
                }
                bufpool::give(out);
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "rustls accepted no plaintext and had nothing to send",
                ));
            }
            let (res, written) = AsyncWriteRentExt::write_all(self.tcp(), out).await;
            out = written;
            if let Err(e) = res {
                bufpool::give(out);
                return Err(e);
            }
        }
    }

    /// Writes what rustls has queued (handshake messages, alerts, tickets),
    /// unless the write turn is taken, in which case its holder will.
    pub(super) async fn flush_queued(&self) -> io::Result<()> {
        if !self.tls.borrow().wants_write() {
            return Ok(());
        }
        match self.try_write_turn() {
            Some(turn) => {
                self.send(&turn, &[]).await?;
                turn.finish();
                Ok(())
            }
            None if self.write_broken.get() => Err(broken_error()),
            None => Ok(()),
        }
    }

    /// Feeds ciphertext to rustls, moving plaintext into `out` when given.
    /// What rustls cannot take (its plaintext buffer is full and `out` is
    /// full or absent) goes to the carry buffer.
    fn ingest(&self, mut cipher: &[u8], mut out: Option<&mut Vec<u8>>) -> Ingested {
        let mut tls = self.tls.borrow_mut();
        while !cipher.is_empty() {
            match tls.read_tls(&mut cipher) {
                // A close_notify was received: nothing after it counts.
                Ok(0) => break,
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        return Ingested::Failed(e);
                    }
                    if let Some(buf) = out.as_deref_mut() {
                        drain_plaintext(&mut tls, buf);
                    }
                }
                // rustls' plaintext buffer is full.
                Err(_) => {
                    let drained = match out.as_deref_mut() {
                        Some(buf) => drain_plaintext(&mut tls, buf).0,
                        None => 0,
                    };
                    if drained == 0 {
                        self.carry.borrow_mut().extend_from_slice(cipher);
                        break;
                    }
                }
            }
        }
        Ingested::Taken
    }

    /// Feeds the carry buffer (if any) to rustls again.
    fn ingest_carry(&self, out: Option<&mut Vec<u8>>) -> Ingested {
        let carried = std::mem::take(&mut *self.carry.borrow_mut());
        if carried.is_empty() {
            return Ingested::Taken;
        }
        self.ingest(&carried, out)
    }

    /// Reads one batch of ciphertext from the socket and feeds it to rustls.
    /// Returns `Ok(false)` at TCP end of stream.
    pub(super) async fn read_socket(
        &self,
        want: usize,
        out: Option<&mut Vec<u8>>,
    ) -> io::Result<Result<bool, rustls::Error>> {
        let cipher = bufpool::take();
        let want = want.clamp(MIN_READ, cipher.capacity());
        let (res, slice) = self.tcp().read(cipher.slice_mut(0..want)).await;
        let cipher = slice.into_inner();
        let outcome = match res {
            Err(e) => Err(e),
            Ok(0) => {
                self.tcp_eof.set(true);
                Ok(Ok(false))
            }
            Ok(n) => match self.ingest(&cipher[..n], out) {
                Ingested::Taken => Ok(Ok(true)),
                Ingested::Failed(e) => Ok(Err(e)),
            },
        };
        bufpool::give(cipher);
        outcome
    }

    /// After the handshake: bound what rustls buffers for sending and let go
    /// of the handshake-sized record buffer.
    pub(super) fn settle(&self) {
        let mut tls = self.tls.borrow_mut();
        tls.set_buffer_limit(Some(SEND_LIMIT));
        Self::shrink(&mut tls);
    }

    /// Makes rustls shrink its record reassembly buffer to 4 KiB when it
    /// holds no partial record (it does so at the start of each `read_tls`).
    fn shrink(tls: &mut ServerConnection) {
        let _ = tls.read_tls(&mut NothingYet);
    }

    /// Whether a read would return without touching the socket.
    fn input_pending(&self) -> bool {
        if self.tcp_eof.get() || !self.carry.borrow().is_empty() {
            return true;
        }
        match self.tls.borrow_mut().process_new_packets() {
            Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed(),
            Err(_) => true,
        }
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
            let failed = match self.ingest_carry(Some(&mut buf)) {
                Ingested::Failed(e) => Some(e),
                Ingested::Taken => None,
            };
            let (failed, ended) = {
                let mut tls = self.tls.borrow_mut();
                // Also reports an error rustls met earlier: errors stick.
                let failed = failed.or_else(|| tls.process_new_packets().err());
                let drained = drain_plaintext(&mut tls, &mut buf);
                if buf.len() > start || failed.is_some() || drained.1 {
                    Self::shrink(&mut tls);
                }
                (failed, drained.1)
            };
            if let Some(e) = failed {
                return (Err(self.fail(e).await), buf);
            }
            // Records rustls queued while reading (e.g. a KeyUpdate answer).
            // A failure marks the write side broken; later writes report it.
            let _ = self.flush_queued().await;
            if buf.len() > start {
                return (Ok(buf.len() - start), buf);
            }
            if ended || self.tcp_eof.get() {
                return (Ok(0), buf);
            }
            let room = buf.capacity() - buf.len();
            match self.read_socket(room, Some(&mut buf)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return (Err(self.fail(e).await), buf),
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Sends the alert rustls queued for a protocol error (best effort) and
    /// turns the error into an `io::Error`.
    pub(super) async fn fail(&self, e: rustls::Error) -> io::Error {
        let _ = self.flush_queued().await;
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    async fn write_all(&self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let turn = match self.write_turn().await {
            Ok(turn) => turn,
            Err(e) => return (Err(e), buf),
        };
        let res = self.send(&turn, &buf).await;
        if res.is_ok() {
            turn.finish();
        }
        (res, buf)
    }

    async fn shutdown(&self) -> io::Result<()> {
        let turn = self.write_turn().await?;
        self.tls.borrow_mut().send_close_notify();
        self.send(&turn, &[]).await?;
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
    pub(super) fn new(tcp: TcpStream, tls: ServerConnection) -> Self {
        TlsStream {
            session: Rc::new(Session::new(tcp, tls)),
        }
    }

    pub(super) fn session(&self) -> &Session {
        &self.session
    }

    /// Runs `f` on the rustls connection, e.g. to read the negotiated
    /// protocol version, the SNI name or whether the session was resumed.
    pub fn with_connection<R>(&self, f: impl FnOnce(&ServerConnection) -> R) -> R {
        self.session.with_tls(|tls| f(tls))
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
    async fn readable(&mut self) -> io::Result<()> {
        self.session.readable().await
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
