//! The byte-stream seam between protocol code and sockets.
//!
//! Everything the director reads or writes — a plain client socket, a TLS
//! session, a backend connection — implements [`Connection`]. Protocol code
//! and the relay are generic over it, so one implementation of each serves
//! plaintext and TLS alike.
//!
//! Two rules shape the trait, both for memory per idle session:
//! * [`ReadSide::readable`] waits for input *without* holding a buffer, so a
//!   session that waits (IMAP IDLE, most of a mail client's life) owns none;
//!   only once bytes are there does the caller borrow one from
//!   [`crate::bufpool`] and call [`ReadSide::read_into`].
//! * Buffers are owned and handed back (io_uring needs them to stay put while
//!   the kernel uses them).

use std::cell::UnsafeCell;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut, SliceMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// The read side of a connection.
#[allow(async_fn_in_trait)]
pub trait ReadSide {
    /// Waits until a read would make progress (bytes, end of stream or an
    /// error) while holding no buffer.
    async fn readable(&mut self) -> io::Result<()>;

    /// Reads into the spare capacity of `buf`, after `buf.len()`, and returns
    /// how many bytes were appended; `Ok(0)` means the peer closed its side.
    /// The caller makes sure `buf` has spare capacity.
    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>);

    /// Reads what has already arrived into the spare capacity of `buf`
    /// without waiting: `Some(Ok(n))` as [`ReadSide::read_into`],
    /// `Some(Err(WouldBlock))` when nothing is there. `None` when this side
    /// cannot read without waiting (then use `readable` and `read_into`).
    ///
    /// A plain socket drains what a readiness wake-up announced with direct
    /// non-blocking reads: one io_uring round trip per burst, not two per
    /// buffer.
    fn try_read_into(&mut self, _buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        None
    }

    /// Reads what has already arrived ([`ReadSide::try_read_into`]), or
    /// else waits for bytes ([`ReadSide::read_into`]); the third value
    /// says whether it waited. The relays' one read step.
    async fn read_now_or_wait(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>, bool) {
        match self.try_read_into(&mut buf) {
            Some(res) => (res, buf, false),
            None => {
                let (res, buf) = self.read_into(buf).await;
                (res, buf, true)
            }
        }
    }

    /// The plain TCP socket underneath, if bytes read here are the bytes on
    /// the wire (so the relay may splice them); `None` for TLS.
    fn as_plain_tcp(&mut self) -> Option<&mut TcpStream> {
        None
    }
}

/// The write side of a connection.
#[allow(async_fn_in_trait)]
pub trait WriteSide {
    /// Writes all of `buf` and hands the buffer back.
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>);

    /// Writes as much of `bytes` as the socket takes now, without waiting:
    /// `Some(Ok(n))` for `n` bytes written (maybe 0), `None` when this side
    /// cannot write without waiting (then use `write_all`).
    fn try_write(&mut self, _bytes: &[u8]) -> Option<io::Result<usize>> {
        None
    }

    /// Ends our direction of the stream (a half-close: TCP FIN, or a TLS
    /// close_notify followed by FIN). Reading may go on.
    async fn shutdown(&mut self) -> io::Result<()>;

    /// The plain TCP socket underneath, if bytes written here go to the
    /// wire unchanged (so the relay may splice into it); `None` for TLS.
    fn as_plain_tcp(&mut self) -> Option<&mut TcpStream> {
        None
    }
}

/// A whole connection: both sides, and a way to split them so the two
/// directions of a relay can run at once.
pub trait Connection: ReadSide + WriteSide {
    /// The read half after [`Connection::into_split`].
    type Reader: ReadSide;
    /// The write half after [`Connection::into_split`].
    type Writer: WriteSide;

    /// Splits the connection into halves that may be used concurrently from
    /// two futures of the same task (or two tasks of the same core).
    fn into_split(self) -> (Self::Reader, Self::Writer);
}

/// Writes a whole byte slice by copying it into an owned buffer; for the
/// small replies of protocol code, not for the relay.
pub async fn write_bytes<W: WriteSide + ?Sized>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(bytes.to_vec()).await.0
}

/// A non-blocking `recv` into the spare capacity of `buf`.
fn tcp_try_read_into(s: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv writes at most `spare.len()` bytes into the vector's
    // spare capacity; the length is raised only by what it wrote.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialised `n` bytes after `len`.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// A non-blocking `send` of as much of `bytes` as the socket takes;
/// 0 when its buffer is full.
fn tcp_try_write(s: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads at most `bytes.len()` bytes from `bytes`.
    let n = unsafe {
        libc::send(
            s.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as usize)
}

async fn tcp_read_into(s: &mut TcpStream, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    let len = buf.len();
    let slice: SliceMut<Vec<u8>> = buf.slice_mut(len..);
    let (res, slice) = s.read(slice).await;
    (res, slice.into_inner())
}

async fn tcp_write_all(s: &mut TcpStream, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    if buf.bytes_init() == 0 {
        return (Ok(()), buf);
    }
    let (res, buf) = AsyncWriteRentExt::write_all(s, buf).await;
    (res.map(|_| ()), buf)
}

impl ReadSide for TcpStream {
    // monoio's own future, not one wrapped in another async fn: a relay
    // holds this while a session is idle.
    fn readable(&mut self) -> impl std::future::Future<Output = io::Result<()>> {
        TcpStream::readable(self, false)
    }

    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        tcp_read_into(self, buf).await
    }

    fn try_read_into(&mut self, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        Some(tcp_try_read_into(self, buf))
    }
}

impl WriteSide for TcpStream {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        tcp_write_all(self, buf).await
    }

    fn try_write(&mut self, bytes: &[u8]) -> Option<io::Result<usize>> {
        Some(tcp_try_write(self, bytes))
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        AsyncWriteRent::shutdown(self).await
    }
}

// The admin API's Unix socket: plain reads and writes, nothing spliced.
impl ReadSide for monoio::net::UnixStream {
    async fn readable(&mut self) -> io::Result<()> {
        monoio::net::UnixStream::readable(self, false).await
    }

    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        let len = buf.len();
        let (res, slice) = AsyncReadRent::read(self, buf.slice_mut(len..)).await;
        (res, slice.into_inner())
    }
}

impl WriteSide for monoio::net::UnixStream {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let (res, buf) = AsyncWriteRentExt::write_all(self, buf).await;
        (res.map(|_| ()), buf)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        AsyncWriteRent::shutdown(self).await
    }
}

/// One half of a split [`TcpStream`].
///
/// Both halves share the socket. io_uring reads and writes on one socket may
/// be in flight at the same time; the halves only ever read (reader) or only
/// ever write (writer), the same pattern monoio's own `Split` uses.
pub struct TcpHalf {
    stream: Rc<UnsafeCell<TcpStream>>,
}

impl TcpHalf {
    fn stream(&mut self) -> &mut TcpStream {
        // SAFETY: the stream lives on one thread (Rc), the reader half only
        // issues reads and readiness polls and the writer half only writes;
        // TcpStream's methods touch nothing but the shared fd, so the two
        // never observe each other's state.
        unsafe { &mut *self.stream.get() }
    }
}

impl ReadSide for TcpHalf {
    // monoio's own future, not one wrapped in another async fn: a relay
    // holds this while a session is idle.
    fn readable(&mut self) -> impl std::future::Future<Output = io::Result<()>> {
        TcpStream::readable(self.stream(), false)
    }

    async fn read_into(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        tcp_read_into(self.stream(), buf).await
    }

    fn try_read_into(&mut self, buf: &mut Vec<u8>) -> Option<io::Result<usize>> {
        Some(tcp_try_read_into(self.stream(), buf))
    }

    fn as_plain_tcp(&mut self) -> Option<&mut TcpStream> {
        Some(self.stream())
    }
}

impl WriteSide for TcpHalf {
    async fn write_all(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        tcp_write_all(self.stream(), buf).await
    }

    fn try_write(&mut self, bytes: &[u8]) -> Option<io::Result<usize>> {
        Some(tcp_try_write(self.stream(), bytes))
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        AsyncWriteRent::shutdown(self.stream()).await
    }

    fn as_plain_tcp(&mut self) -> Option<&mut TcpStream> {
        Some(self.stream())
    }
}

impl Connection for TcpStream {
    type Reader = TcpHalf;
    type Writer = TcpHalf;

    fn into_split(self) -> (TcpHalf, TcpHalf) {
        let stream = Rc::new(UnsafeCell::new(self));
        (
            TcpHalf {
                stream: stream.clone(),
            },
            TcpHalf { stream },
        )
    }
}

/// Helpers for unit tests of code written against these traits.
#[cfg(test)]
pub(crate) mod testing {
    use super::ReadSide;
    use std::io;

    /// A reader that hands out a script of chunks, then end of stream.
    pub(crate) struct Script(pub(crate) Vec<&'static [u8]>);

    impl ReadSide for Script {
        async fn readable(&mut self) -> io::Result<()> {
            Ok(())
        }

        async fn read_into(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
            if self.0.is_empty() {
                return (Ok(0), buf);
            }
            let chunk = self.0.remove(0);
            buf.extend_from_slice(chunk);
            (Ok(chunk.len()), buf)
        }
    }

    /// Runs `f` to completion on a fresh single-threaded runtime with timers.
    pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("test runtime")
            .block_on(f)
    }
}
