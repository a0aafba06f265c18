//! The relay: bytes both ways between a logged-in client and its backend.
//!
//! Each direction waits for readiness holding no buffer, borrows a 64 KiB
//! buffer from the core's pool only while bytes move, and gives it back, so
//! an idle session (IMAP IDLE, most of a mail client's life) owns none. When
//! one side closes its direction the other side is told (half-close), and
//! the remaining direction gets [`FIN_TIMEOUT`] to finish. A session can be
//! ended from outside (an admin kick, a backend going down) through a
//! future passed in; the relay then stops both directions and returns.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use crate::bufpool;
use monoio::net::TcpStream;

use crate::io::{Connection, ReadSide, WriteSide};

/// How long the second direction may go on after the first one closed.
pub const FIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client closed first (or both closed cleanly).
    Client,
    /// The backend closed first.
    Backend,
    /// A read or write failed.
    Error,
    /// Ended from outside by the `stop` future.
    Stopped,
}

/// Bytes moved by a relay.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RelayStats {
    /// Client to backend.
    pub up: u64,
    /// Backend to client.
    pub down: u64,
}

/// Moves bytes from `r` to `w` until `r` ends, then half-closes `w`;
/// with `splice` and plain TCP on both sides, through a pipe in the kernel.
///
/// While it waits it holds only the readiness future: the read and the
/// write (several hundred bytes of future state, plus the buffer) live in
/// a [`transfer`] boxed for as long as bytes move, so an idle session
/// carries none of them.
async fn pump<R: ReadSide, W: WriteSide>(
    r: &mut R,
    w: &mut W,
    moved: &Cell<u64>,
    splice: bool,
) -> io::Result<()> {
    if splice {
        if let (Some(from), Some(to)) = (r.as_plain_tcp(), w.as_plain_tcp()) {
            // Boxed: the copy loop's sessions should not carry its state.
            return Box::pin(splice_pump(from, to, moved)).await;
        }
    }
    loop {
        r.readable().await?;
        if Box::pin(transfer(r, w, moved)).await? == Flow::Ended {
            return Ok(());
        }
    }
}

/// Whether a direction goes on after a [`transfer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Bytes were passed on; wait for more.
    More,
    /// The reading side ended and the writing side was half-closed.
    Ended,
}

/// Passes on what a readiness wake-up announced, through one pool buffer:
/// a side that can read without waiting ([`ReadSide::try_read_into`], a
/// plain socket) is drained until it has nothing more; any other side
/// gets one read per wake-up.
async fn transfer<R: ReadSide, W: WriteSide>(
    r: &mut R,
    w: &mut W,
    moved: &Cell<u64>,
) -> io::Result<Flow> {
    let mut buf = bufpool::take();
    let result = loop {
        let nonblocking = r.try_read_into(&mut buf);
        let waited = nonblocking.is_none();
        let res = match nonblocking {
            Some(res) => res,
            None => {
                let (res, b) = r.read_into(buf).await;
                buf = b;
                res
            }
        };
        let n = match res {
            Ok(0) => {
                let _ = w.shutdown().await;
                break Ok(Flow::Ended);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flow::More),
            Err(e) => break Err(e),
        };
        let (res, b) = write_out(w, buf).await;
        buf = b;
        if let Err(e) = res {
            break Err(e);
        }
        moved.set(moved.get() + n as u64);
        buf.clear();
        if waited {
            break Ok(Flow::More);
        }
    };
    bufpool::give(buf);
    result
}

/// Writes all of `buf`: straight away as far as the other side takes it,
/// the rest (if any) through the runtime.
async fn write_out<W: WriteSide>(w: &mut W, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
    match w.try_write(&buf) {
        Some(Ok(n)) if n == buf.len() => (Ok(()), buf),
        Some(Ok(n)) => {
            buf.drain(..n);
            w.write_all(buf).await
        }
        Some(Err(e)) => (Err(e), buf),
        None => w.write_all(buf).await,
    }
}

/// The splice variant of [`pump`]: socket → pipe → socket, never through
/// user space. The pipe (two descriptors) is made when the first bytes
/// arrive, so an idle session costs no extra descriptors.
async fn splice_pump(r: &mut TcpStream, w: &mut TcpStream, moved: &Cell<u64>) -> io::Result<()> {
    use monoio::io::splice::{SpliceDestination, SpliceSource};
    let mut pipe = None;
    loop {
        TcpStream::readable(r, false).await?;
        let (pipe_r, pipe_w) = match &mut pipe {
            Some(p) => p,
            None => pipe.insert(monoio::net::unix::new_pipe()?),
        };
        let n = r.splice_to_pipe(pipe_w, bufpool::CHUNK as u32).await?;
        if n == 0 {
            let _ = monoio::io::AsyncWriteRent::shutdown(w).await;
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            let m = w.splice_from_pipe(pipe_r, left).await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        moved.set(moved.get() + u64::from(n));
    }
}

/// Relays between `client` and `backend` until both directions end, one
/// fails, or `stop` completes with the goodbye for the client.
/// `to_backend` and `to_client` are bytes read ahead during login, written
/// first. `splice` moves plaintext-to-plaintext bytes with splice(2)
/// (`server.splice`); TLS sessions always copy.
///
/// The connections are split here, before the future is made, so the
/// future holds only their halves: a value an async fn takes stays in its
/// state for the whole session even after it is moved on.
pub fn relay<C, B, F>(
    client: C,
    backend: B,
    to_backend: Vec<u8>,
    to_client: Vec<u8>,
    stop: F,
    splice: bool,
) -> impl Future<Output = (RelayEnd, RelayStats)>
where
    C: Connection,
    B: Connection,
    F: Future<Output = Vec<u8>>,
{
    relay_split(
        Split::new(client, backend),
        to_backend,
        to_client,
        stop,
        splice,
    )
}

/// Both connections of a session, split into their halves: what a relay
/// keeps of them (a few pointers, not the connections' full size).
pub struct Split<C: Connection, B: Connection> {
    cr: C::Reader,
    cw: C::Writer,
    br: B::Reader,
    bw: B::Writer,
}

impl<C: Connection, B: Connection> Split<C, B> {
    /// Splits the client and the backend connection.
    pub fn new(client: C, backend: B) -> Self {
        let (cr, cw) = client.into_split();
        let (br, bw) = backend.into_split();
        Split { cr, cw, br, bw }
    }
}

/// [`relay`] over connections already split, for callers that build the
/// session's future themselves and want to keep only the halves in it.
pub fn relay_split<C, B, F>(
    split: Split<C, B>,
    to_backend: Vec<u8>,
    to_client: Vec<u8>,
    stop: F,
    splice: bool,
) -> impl Future<Output = (RelayEnd, RelayStats)>
where
    C: Connection,
    B: Connection,
    F: Future<Output = Vec<u8>>,
{
    let Split { cr, cw, br, bw } = split;
    relay_halves(
        cr,
        cw,
        br,
        bw,
        ReadAhead {
            to_backend,
            to_client,
        },
        stop,
        splice,
    )
}

/// Bytes read ahead during login, to be written before relaying.
struct ReadAhead {
    to_backend: Vec<u8>,
    to_client: Vec<u8>,
}

/// Writes the read-ahead bytes (frees the buffers either way: they may have
/// kilobytes of spare capacity) and counts them; false if a write failed.
async fn write_read_ahead<CW: WriteSide, BW: WriteSide>(
    cw: &mut CW,
    bw: &mut BW,
    ahead: ReadAhead,
    up: &Cell<u64>,
    down: &Cell<u64>,
) -> bool {
    if !ahead.to_backend.is_empty() {
        let n = ahead.to_backend.len() as u64;
        if bw.write_all(ahead.to_backend).await.0.is_err() {
            return false;
        }
        up.set(n);
    }
    if !ahead.to_client.is_empty() {
        let n = ahead.to_client.len() as u64;
        if cw.write_all(ahead.to_client).await.0.is_err() {
            return false;
        }
        down.set(n);
    }
    true
}

/// The body of [`relay`], over split halves.
async fn relay_halves<CR, CW, BR, BW, F>(
    mut cr: CR,
    mut cw: CW,
    mut br: BR,
    mut bw: BW,
    ahead: ReadAhead,
    stop: F,
    splice: bool,
) -> (RelayEnd, RelayStats)
where
    CR: ReadSide,
    CW: WriteSide,
    BR: ReadSide,
    BW: WriteSide,
    F: Future<Output = Vec<u8>>,
{
    let up = Cell::new(0u64);
    let down = Cell::new(0u64);
    let stats = |up: &Cell<u64>, down: &Cell<u64>| RelayStats {
        up: up.get(),
        down: down.get(),
    };
    if ahead.to_backend.is_empty() && ahead.to_client.is_empty() {
        // Empty, but maybe with kilobytes of spare capacity: freed before
        // the relay starts to wait.
        drop(ahead);
    } else if !Box::pin(write_read_ahead(&mut cw, &mut bw, ahead, &up, &down)).await {
        // (Boxed: its write futures are needed only once.)
        return (RelayEnd::Error, stats(&up, &down));
    }

    let outcome = {
        let mut upward = std::pin::pin!(pump(&mut cr, &mut bw, &up, splice));
        let mut downward = std::pin::pin!(pump(&mut br, &mut cw, &down, splice));
        let mut stop = std::pin::pin!(stop);
        monoio::select! {
            r = &mut upward => Ok(match r {
                Ok(()) => Box::pin(finish(downward, RelayEnd::Client)).await,
                Err(_) => RelayEnd::Error,
            }),
            r = &mut downward => Ok(match r {
                Ok(()) => Box::pin(finish(upward, RelayEnd::Backend)).await,
                Err(_) => RelayEnd::Error,
            }),
            goodbye = &mut stop => Err(goodbye),
        }
    };
    let end = match outcome {
        Ok(end) => end,
        Err(goodbye) => {
            // Bounded: a client that reads nothing must not hold a kick up.
            // Boxed, like `finish`, for the size of its timers.
            Box::pin(async {
                if !goodbye.is_empty() {
                    let _ = monoio::time::timeout(FIN_TIMEOUT, cw.write_all(goodbye)).await;
                }
                let _ = monoio::time::timeout(FIN_TIMEOUT, cw.shutdown()).await;
            })
            .await;
            RelayEnd::Stopped
        }
    };
    (end, stats(&up, &down))
}

/// Lets the remaining direction run out, bounded by [`FIN_TIMEOUT`].
/// Its timer is most of its size (~750 bytes), so callers box it: every
/// idle session would otherwise carry room for it.
async fn finish<F: Future<Output = io::Result<()>>>(rest: F, first: RelayEnd) -> RelayEnd {
    match monoio::time::timeout(FIN_TIMEOUT, rest).await {
        Ok(Ok(())) => first,
        Ok(Err(_)) | Err(_) => first,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::io::AsyncReadRent;
    use monoio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = monoio::join!(TcpStream::connect_addr(addr), l.accept());
        (a.unwrap(), b.unwrap().0)
    }

    async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let (res, buf) = s.read(vec![0u8; 65536]).await;
            let n = res.unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[monoio::test(driver = "uring", timer_enabled = true)]
    async fn relays_both_ways_with_read_ahead_and_half_close() {
        relay_both_ways(false).await;
    }

    #[monoio::test(driver = "uring", timer_enabled = true)]
    async fn splice_relays_both_ways_with_read_ahead_and_half_close() {
        relay_both_ways(true).await;
    }

    async fn relay_both_ways(splice: bool) {
        let (mut client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let expected = payload.clone();
        let relay_task = monoio::spawn(relay(
            client_side,
            backend_side,
            b"ahead-up ".to_vec(),
            b"ahead-down ".to_vec(),
            std::future::pending::<Vec<u8>>(),
            splice,
        ));
        let client_task = monoio::spawn(async move {
            let (r, _) = client.write_all(payload).await;
            r.unwrap();
            client.shutdown().await.unwrap();
            read_to_end(&mut client).await
        });
        let got_up = read_to_end(&mut backend).await;
        assert_eq!(&got_up[..9], b"ahead-up ");
        assert_eq!(&got_up[9..], &expected[..]);
        backend.write_all(b"bye".to_vec()).await.0.unwrap();
        drop(backend);
        let got_down = client_task.await;
        assert_eq!(got_down, b"ahead-down bye");
        let (end, stats) = relay_task.await;
        assert_eq!(end, RelayEnd::Client);
        assert_eq!(stats.up, 9 + 3_000_000);
        assert_eq!(stats.down, 11 + 3);
    }

    #[monoio::test(driver = "uring", timer_enabled = true)]
    async fn stop_future_ends_an_idle_relay_with_a_goodbye() {
        let (mut client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let (tx, rx) = local_sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
            b"* BYE [UNAVAILABLE] bye\r\n".to_vec()
        };
        let relay_task = monoio::spawn(relay(
            client_side,
            backend_side,
            vec![],
            vec![],
            stop,
            false,
        ));
        tx.send(()).unwrap();
        let (end, stats) = relay_task.await;
        assert_eq!(end, RelayEnd::Stopped);
        assert_eq!(stats, RelayStats::default());
        assert_eq!(
            read_to_end(&mut client).await,
            b"* BYE [UNAVAILABLE] bye\r\n"
        );
        assert_eq!(
            read_to_end(&mut backend).await,
            b"",
            "the backend connection is closed"
        );
    }
}
