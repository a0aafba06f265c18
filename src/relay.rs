//! The relay: bytes both ways between a logged-in client and its backend.
//!
//! Each direction waits for readiness holding no buffer, borrows a 64 KiB
//! buffer from the core's pool only while bytes move, and gives it back, so
//! an idle session (IMAP IDLE, most of a mail client's life) owns none. When
//! one side closes its direction the other side is told (half-close), and
//! the remaining direction gets [`FIN_TIMEOUT`] to finish. A session can be
//! ended from outside (an admin kick, a backend going down) through a
//! future passed in.
//!
//! Ending a session closes the **backend side first** ([`close_backend`]):
//! what corrupts a mail store is two backend sessions of one user, so the
//! backend connection is half-closed at once and the relay waits, bounded,
//! for the backend's own end of stream — the proof that the backend ended
//! its session — before anything else happens. Only then is the caller
//! told (its `backend_closed` callback: a move waits for that event) and the
//! client gets its goodbye, with a short bounded write that can never keep
//! a backend connection open. A write that cannot make progress for
//! `stall_timeout` (a client that stopped reading, a backend that stopped
//! reading) ends the session the same way.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use crate::bufpool;
use monoio::net::TcpStream;

use crate::io::{Connection, ReadSide, WriteSide};

/// How long the second direction may go on after the first one closed.
pub const FIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an ended session waits for the backend's end of stream after
/// its own FIN before it resets the connection. Dovecot answers a FIN by
/// ending the session at once (well under a millisecond on a LAN); only a
/// hung or black-holed backend takes this long.
pub const BACKEND_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a kicked client gets to take its goodbye (`* BYE ...`). Best
/// effort: the backend connection is already closed by then.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// How a relay runs: the knobs of `[server]` it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOptions {
    /// Move plaintext-to-plaintext bytes with splice(2) (`server.splice`).
    pub splice: bool,
    /// A write to either side that makes no progress for this long ends
    /// the session (`server.stall_timeout`).
    pub stall_timeout: Duration,
}

impl Default for RelayOptions {
    /// Copying through user space, stalls ended after 60 s.
    fn default() -> Self {
        RelayOptions {
            splice: false,
            stall_timeout: Duration::from_secs(60),
        }
    }
}

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
    /// A side stopped reading: a write made no progress for `stall_timeout`.
    Stalled,
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
/// carries none of them. Not an `async fn`: one keeps a second copy of
/// every argument for its whole life (see [`relay_split`]); this block
/// uses the references it captured in place.
#[allow(clippy::manual_async_fn)] // An async fn would double the arguments.
fn pump<'a, R: ReadSide, W: WriteSide>(
    r: &'a mut R,
    w: &'a mut W,
    moved: &'a Cell<u64>,
    options: &'a RelayOptions,
) -> impl Future<Output = io::Result<()>> + 'a {
    async move {
        if options.splice {
            if let (Some(from), Some(to)) = (r.as_plain_tcp(), w.as_plain_tcp()) {
                // Boxed: the copy loop's sessions should not carry its state.
                return Box::pin(splice_pump(from, to, moved, options.stall_timeout)).await;
            }
        }
        loop {
            r.readable().await?;
            if Box::pin(transfer(r, w, moved, options.stall_timeout)).await? == Flow::Ended {
                return Ok(());
            }
        }
    }
}

/// The error a write that made no progress for `stall_timeout` ends with.
fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the other side stopped reading")
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
    stall_timeout: Duration,
) -> io::Result<Flow> {
    let mut buf = bufpool::take();
    let result = loop {
        let (res, b, waited) = r.read_now_or_wait(buf).await;
        buf = b;
        let n = match res {
            Ok(0) => {
                let _ = w.shutdown().await;
                break Ok(Flow::Ended);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flow::More),
            Err(e) => break Err(e),
        };
        let (res, b) = write_out(w, buf, stall_timeout).await;
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
/// the rest (if any) through the runtime, which must finish within
/// `stall_timeout` (else the buffer is lost with the session: the error
/// ends the relay).
async fn write_out<W: WriteSide>(
    w: &mut W,
    mut buf: Vec<u8>,
    stall_timeout: Duration,
) -> (io::Result<()>, Vec<u8>) {
    match w.try_write(&buf) {
        Some(Ok(n)) if n == buf.len() => return (Ok(()), buf),
        Some(Ok(n)) => {
            buf.drain(..n);
        }
        Some(Err(e)) => return (Err(e), buf),
        None => {}
    }
    match monoio::time::timeout(stall_timeout, w.write_all(buf)).await {
        Ok(done) => done,
        Err(_) => (Err(stalled()), Vec::new()),
    }
}

/// The splice variant of [`pump`]: socket → pipe → socket, never through
/// user space. The pipe (two descriptors) is made when the first bytes
/// arrive, so an idle session costs no extra descriptors.
async fn splice_pump(
    r: &mut TcpStream,
    w: &mut TcpStream,
    moved: &Cell<u64>,
    stall_timeout: Duration,
) -> io::Result<()> {
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
            let m = monoio::time::timeout(stall_timeout, w.splice_from_pipe(pipe_r, left))
                .await
                .map_err(|_| stalled())??;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        moved.set(moved.get() + u64::from(n));
    }
}

/// Relays between `client` and `backend` until both directions end, one
/// fails or stalls, or `stop` completes with the goodbye for the client.
/// `to_backend` and `to_client` are bytes read ahead during login, written
/// first. See [`RelayOptions`]; TLS sessions always copy.
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
    options: RelayOptions,
) -> impl Future<Output = (RelayEnd, RelayStats)>
where
    C: Connection,
    B: Connection,
    F: Future<Output = Vec<u8>>,
{
    relay_split(
        Split::new(client, backend),
        ReadAhead::new(to_backend, to_client),
        stop,
        options,
        || {},
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
/// `ahead` holds the bytes read ahead during login, written first.
/// `backend_closed` runs once the backend connection is closed, before
/// anything more is written to the client (a kicked session's goodbye):
/// the moment the session no longer exists for the backend.
///
/// Its future lives as long as the session, so its size is an idle
/// session's memory: it is an `async move` block over the values given
/// here, used in place. An `async fn` would copy each argument into a
/// local of its own and keep both for the whole session (and so would a
/// `let` that takes the halves apart).
pub fn relay_split<C, B, F, D>(
    split: Split<C, B>,
    ahead: ReadAhead,
    stop: F,
    options: RelayOptions,
    backend_closed: D,
) -> impl Future<Output = (RelayEnd, RelayStats)>
where
    C: Connection,
    B: Connection,
    F: Future<Output = Vec<u8>>,
    D: FnOnce(),
{
    let mut split = split;
    async move {
        let up = Cell::new(0u64);
        let down = Cell::new(0u64);
        let stats = |up: &Cell<u64>, down: &Cell<u64>| RelayStats {
            up: up.get(),
            down: down.get(),
        };
        let written = match ahead.0 {
            None => true,
            // (Boxed: its write futures are needed only once.)
            Some(ahead) => {
                Box::pin(write_read_ahead(
                    &mut split.cw,
                    &mut split.bw,
                    *ahead,
                    &up,
                    &down,
                ))
                .await
            }
        };
        if !written {
            Box::pin(close_backend(split.br, split.bw)).await;
            backend_closed();
            return (RelayEnd::Error, stats(&up, &down));
        }

        let outcome = {
            let mut upward = std::pin::pin!(pump(&mut split.cr, &mut split.bw, &up, &options));
            let mut downward = std::pin::pin!(pump(&mut split.br, &mut split.cw, &down, &options));
            let mut stop = std::pin::pin!(stop);
            monoio::select! {
                r = &mut upward => match r {
                    Ok(()) => Ok(Box::pin(finish(downward, RelayEnd::Client)).await),
                    Err(e) => Err((failed(&e), Vec::new())),
                },
                r = &mut downward => match r {
                    Ok(()) => Ok(Box::pin(finish(upward, RelayEnd::Backend)).await),
                    Err(e) => Err((failed(&e), Vec::new())),
                },
                goodbye = &mut stop => Err((RelayEnd::Stopped, goodbye)),
            }
        };
        let end = match outcome {
            Ok(end) => {
                // Both directions ran out: the backend has ended its side
                // (or had FIN_TIMEOUT to); closing our socket is all that
                // is left.
                drop((split.br, split.bw));
                backend_closed();
                end
            }
            Err((end, goodbye)) => {
                // Ended by a kick, a stall or an error while the backend
                // session may still be live: close it first, then (best
                // effort, bounded) tell the client. Boxed, like `finish`,
                // for the size of its timers.
                let mut cw = split.cw;
                Box::pin(async move {
                    close_backend(split.br, split.bw).await;
                    backend_closed();
                    if !goodbye.is_empty() {
                        let _ = monoio::time::timeout(GOODBYE_TIMEOUT, cw.write_all(goodbye)).await;
                    }
                    let _ = monoio::time::timeout(GOODBYE_TIMEOUT, cw.shutdown()).await;
                })
                .await;
                end
            }
        };
        (end, stats(&up, &down))
    }
}

/// Bytes read ahead during login, to be written before relaying: boxed,
/// and only when there are any (a client rarely sends more after its
/// login before the answer), so a session's future carries one pointer
/// for them instead of two vectors it no longer needs once they are sent.
pub struct ReadAhead(Option<Box<Ahead>>);

impl ReadAhead {
    /// `to_backend` goes to the backend, `to_client` to the client. Empty
    /// vectors (which may still have kilobytes of spare capacity) are
    /// freed here.
    pub fn new(to_backend: Vec<u8>, to_client: Vec<u8>) -> ReadAhead {
        if to_backend.is_empty() && to_client.is_empty() {
            ReadAhead(None)
        } else {
            ReadAhead(Some(Box::new(Ahead {
                to_backend,
                to_client,
            })))
        }
    }
}

/// The bytes of a non-empty [`ReadAhead`].
struct Ahead {
    to_backend: Vec<u8>,
    to_client: Vec<u8>,
}

/// Writes the read-ahead bytes (frees the buffers either way: they may have
/// kilobytes of spare capacity) and counts them; false if a write failed.
async fn write_read_ahead<CW: WriteSide, BW: WriteSide>(
    cw: &mut CW,
    bw: &mut BW,
    ahead: Ahead,
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

/// How a direction's error ends the relay.
fn failed(e: &io::Error) -> RelayEnd {
    if e.kind() == io::ErrorKind::TimedOut {
        RelayEnd::Stalled
    } else {
        RelayEnd::Error
    }
}

/// Closes a backend connection whose session may still be live, and
/// returns once the backend has ended it: our FIN first, then whatever the
/// backend still sends is discarded until its own end of stream (Dovecot
/// closes the connection when it ends the session). A backend that does
/// not close within [`BACKEND_CLOSE_TIMEOUT`] gets a reset instead (the
/// socket is closed with a zero linger), so the connection is gone either
/// way when this returns.
pub async fn close_backend<BR: ReadSide, BW: WriteSide>(mut br: BR, mut bw: BW) {
    let acknowledged = monoio::time::timeout(BACKEND_CLOSE_TIMEOUT, async {
        // A failed shutdown means the connection is already broken.
        if bw.shutdown().await.is_err() {
            return true;
        }
        let mut buf = bufpool::take();
        let eof = loop {
            if br.readable().await.is_err() {
                break true;
            }
            let (res, b) = match br.try_read_into(&mut buf) {
                Some(res) => (res, std::mem::take(&mut buf)),
                None => br.read_into(std::mem::take(&mut buf)).await,
            };
            buf = b;
            buf.clear();
            match res {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => break true,
            }
        };
        bufpool::give(buf);
        eof
    })
    .await
    .unwrap_or(false);
    if !acknowledged {
        if let Some(tcp) = bw.as_plain_tcp() {
            reset_on_close(tcp);
        }
    }
}

/// Makes the socket's close send a reset (SO_LINGER on, 0 s) instead of a
/// FIN, dropping whatever is still queued.
fn reset_on_close(tcp: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
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
            RelayOptions {
                splice,
                ..RelayOptions::default()
            },
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
            RelayOptions::default(),
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

    #[monoio::test(driver = "uring", timer_enabled = true)]
    async fn a_stopped_relay_closes_the_backend_before_the_client_hears_of_it() {
        let (mut client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let (tx, rx) = local_sync::oneshot::channel::<()>();
        let stop = async move {
            let _ = rx.await;
            b"* BYE bye\r\n".to_vec()
        };
        let backend_closed = std::rc::Rc::new(Cell::new(None));
        let flag = backend_closed.clone();
        let relay_task = monoio::spawn(relay_split(
            Split::new(client_side, backend_side),
            ReadAhead::new(vec![], vec![]),
            stop,
            RelayOptions::default(),
            move || flag.set(Some(std::time::Instant::now())),
        ));
        tx.send(()).unwrap();
        // The backend gets our FIN first, and holds its own for a while.
        let (res, _) = backend.read(vec![0u8; 64]).await;
        assert_eq!(res.unwrap(), 0, "the backend sees end of stream first");
        let fin_seen = std::time::Instant::now();
        monoio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            backend_closed.get().is_none(),
            "not closed before the backend's FIN"
        );
        drop(backend);
        // Only now does the client hear: its goodbye comes after the close.
        let got = read_to_end(&mut client).await;
        let heard = std::time::Instant::now();
        assert_eq!(got, b"* BYE bye\r\n");
        assert!(heard.duration_since(fin_seen) >= Duration::from_millis(300));
        let closed_at = backend_closed.get().expect("the callback ran");
        assert!(closed_at <= heard);
        let (end, _) = relay_task.await;
        assert_eq!(end, RelayEnd::Stopped);
    }

    #[monoio::test(driver = "uring", timer_enabled = true)]
    async fn a_backend_that_never_closes_is_reset_after_the_close_timeout() {
        let (_client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let started = std::time::Instant::now();
        let relay_task = monoio::spawn(relay(
            client_side,
            backend_side,
            vec![],
            vec![],
            async { b"* BYE\r\n".to_vec() },
            RelayOptions::default(),
        ));
        let (res, _) = backend.read(vec![0u8; 64]).await;
        assert_eq!(res.unwrap(), 0);
        // The backend keeps its side open: the relay resets it.
        let (end, _) = relay_task.await;
        assert_eq!(end, RelayEnd::Stopped);
        let took = started.elapsed();
        assert!(took >= BACKEND_CLOSE_TIMEOUT, "{took:?}");
        assert!(
            took < BACKEND_CLOSE_TIMEOUT + GOODBYE_TIMEOUT * 2,
            "{took:?}"
        );
        let (res, _) = monoio::io::AsyncWriteRent::write(&mut backend, b"late".to_vec()).await;
        let second = if res.is_ok() {
            monoio::io::AsyncWriteRent::write(&mut backend, b"late".to_vec())
                .await
                .0
        } else {
            res
        };
        assert!(second.is_err(), "the connection was reset");
    }

    #[monoio::test(driver = "uring", timer_enabled = true)]
    async fn a_client_that_reads_nothing_ends_the_relay_after_the_stall_timeout() {
        let (_client, client_side) = pair().await;
        let (backend_side, mut backend) = pair().await;
        let options = RelayOptions {
            splice: false,
            stall_timeout: Duration::from_millis(300),
        };
        let relay_task = monoio::spawn(relay(
            client_side,
            backend_side,
            vec![],
            vec![],
            std::future::pending::<Vec<u8>>(),
            options,
        ));
        // The backend sends far more than the socket buffers hold.
        let writer = monoio::spawn(async move {
            let chunk = vec![b'x'; 1 << 20];
            for _ in 0..64 {
                let (res, _) = backend.write_all(chunk.clone()).await;
                if res.is_err() {
                    break;
                }
            }
            backend
        });
        let (end, stats) = relay_task.await;
        assert_eq!(end, RelayEnd::Stalled);
        assert!(stats.down > 0 && stats.down < 64 << 20, "{stats:?}");
        drop(writer.await);
    }
}
