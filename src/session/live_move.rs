//! The relay of an IMAP session that can follow its user to another
//! backend live (issue 12), and the handover itself.
//!
//! With `server.live_move` on and a `backends.master_user`, a logged-in
//! IMAP session is relayed here instead of by [`crate::relay`]: bytes
//! still pass unchanged, one pool buffer at a time, but both directions go
//! through an [`ImapTracker`] (so never with splice) and the relay waits
//! only on readiness, so a kick finds it between two whole transfers.
//!
//! A kick for [`KickReason::Move`] (admin move, flush) of a session the
//! tracker calls movable hands it over, sequentially, so the user is never
//! open on two backends: the old backend's session is snapshotted and
//! closed ([`close_old`]), the session counts as closed there (the move's
//! wait for the user's sessions sees it gone), then it routes its user
//! again exactly like a held login — waiting for the move to assign the new
//! backend — and resumes on the new backend with the master user
//! ([`resume`]), telling the client what changed in between (expunges,
//! appends, flags: stage 2). The client's input meanwhile is held (bounded) and
//! replayed once the new backend idles under the client's tag. Any failure
//! closes whichever backend connection is open, backend first, and ends
//! the session with `BYE`, as any other kick does. Every other kick, and a
//! session that is not movable, ends as in the ordinary relay.

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;
use tracing::info;

use crate::backend::connect;
use crate::backend::imap_resume::{close_old, resume, MasterLogin, ResumeError};
use crate::bufpool;
use crate::config::Protocol;
use crate::io::{Connection, ReadSide, TcpHalf, WriteSide};
use crate::plane::stats::LiveMoveOutcome;
use crate::plane::KickReason;
use crate::proto::imap::tracker::ImapTracker;
use crate::relay::{close_backend, RelayEnd, RelayStats, FIN_TIMEOUT, GOODBYE_TIMEOUT};
use crate::route::backends::BackendId;
use crate::route::shard::SessionOrigin;
use crate::runtime::core::Core;
use crate::runtime::sessions::{KickSignal, Registration};
use crate::session::outcome::{LiveLogin, LoggedIn};

/// How long the old backend's snapshot and close may take.
pub const OLD_SIDE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the new backend's login, replay and checks may take (Dovecot
/// answers a wrong master password only after about 2 s).
pub const NEW_SIDE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a session waits for its core's turn to resume on the new
/// backend (see [`crate::runtime::core::LIVE_RESUMES_PER_CORE`]); the
/// client sees a longer pause, never an error, unless this passes.
pub const RESUME_QUEUE_LIMIT: Duration = Duration::from_secs(30);

/// Client bytes held during a handover at most; past it the client is not
/// read until the handover is over.
pub const HELD_MAX: usize = 64 * 1024;

/// Whether IMAP sessions can move live with the settings in force.
pub fn enabled(core: &Core) -> bool {
    let config = &core.shared().config;
    config.server.live_move && config.backends.has_master_user()
}

/// How a live-capable session ended.
#[derive(Debug, Clone, Copy)]
pub struct LiveEnd {
    /// How the relay ended.
    pub end: RelayEnd,
    /// The kick that ended it, if one did.
    pub kicked: Option<KickReason>,
    /// Bytes each way, over all its backends.
    pub stats: RelayStats,
    /// Live moves it went through.
    pub moves: u32,
    /// Why a move ended it instead of moving it, if one did.
    pub not_moved: Option<&'static str>,
}

/// One backend connection of the session, split.
type Leg = (TcpHalf, TcpHalf);

/// What one readiness wake-up brought.
enum Flow {
    /// Bytes were passed on.
    Moved(usize),
    /// Nothing to read after all.
    Nothing,
    /// The reading side ended.
    Eof,
}

/// At most this many buffers are passed per readiness wake-up, so a kick
/// is looked at between bursts of a fast sender.
const BURST: usize = 16;

/// Passes what `r` has to `w` through one pool buffer, showing each chunk
/// to `track` first: a side that can read without waiting (a plain
/// socket) is drained, up to [`BURST`] buffers, as the ordinary relay
/// does; a write that makes no progress for `stall` fails.
async fn pass<R: ReadSide, W: WriteSide>(
    r: &mut R,
    w: &mut W,
    stall: Duration,
    mut track: impl FnMut(&[u8]),
) -> io::Result<Flow> {
    let mut buf = bufpool::take();
    let mut moved = 0;
    let mut result = Ok(Flow::Nothing);
    for _ in 0..BURST {
        let (res, b, waited) = r.read_now_or_wait(buf).await;
        buf = b;
        let n = match res {
            Ok(0) if moved == 0 => {
                result = Ok(Flow::Eof);
                break;
            }
            // The end of stream is seen at the next wake-up.
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        };
        track(&buf[..n]);
        let written = match monoio::time::timeout(stall, w.write_all(buf)).await {
            Ok(done) => done,
            Err(_) => (
                Err(io::Error::new(io::ErrorKind::TimedOut, "stalled")),
                Vec::new(),
            ),
        };
        buf = written.1;
        if let Err(e) = written.0 {
            result = Err(e);
            break;
        }
        buf.clear();
        moved += n;
        result = Ok(Flow::Moved(moved));
        if waited {
            break;
        }
    }
    bufpool::give(buf);
    result
}

/// What ended one backend leg of the relay.
enum LegEnd {
    ClientEof,
    BackendEof,
    Failed(RelayEnd),
    Kicked(KickReason),
}

/// Relays a logged-in IMAP session that may move live, until it ends;
/// registers it, releases its user's count when its backend connection
/// closes, as [`crate::session::serve`] does for the ordinary relay.
///
/// Not an async fn: the login is taken apart and the connections split
/// here, so the session's task holds each part once, not also the whole
/// `LoggedIn` and client connection as arguments (an idle session's task
/// is most of what it costs).
pub fn relay<C: Connection>(
    core: Rc<Core>,
    client: C,
    l: LoggedIn,
) -> impl Future<Output = LiveEnd> {
    let LoggedIn {
        backend,
        backend_id,
        key,
        origin,
        to_backend,
        to_client,
        live,
    } = l;
    core.shared().config.server.keepalive().apply(&backend);
    let (mut cr, mut cw) = client.into_split();
    let mut leg = backend.into_split();
    async move {
        let (mut registration, kick) = core.sessions.register(&key, backend_id, Protocol::Imap);
        if !core
            .router
            .backends()
            .get(backend_id)
            .is_some_and(|b| b.keeps_users())
        {
            registration.kick(KickReason::BackendDown);
        }
        let mut session = Session {
            core: &core,
            key: &key,
            origin,
            backend_id,
            tracker: ImapTracker::new(),
            stats: RelayStats::default(),
            moves: 0,
            stall: core.shared().config.server.stall_timeout,
        };
        let mut kick = kick;
        // Bytes read ahead during login.
        let mut ok = true;
        // Empty or not, both buffers are freed before the relay waits: they
        // may hold kilobytes of spare capacity for the session's whole life.
        if to_backend.is_empty() {
            drop(to_backend);
        } else {
            session.tracker.client_bytes(&to_backend);
            session.stats.up += to_backend.len() as u64;
            ok &= Box::pin(leg.1.write_all(to_backend)).await.0.is_ok();
        }
        if !ok || to_client.is_empty() {
            drop(to_client);
        } else {
            session.tracker.backend_bytes(&to_client);
            session.stats.down += to_client.len() as u64;
            ok &= Box::pin(cw.write_all(to_client)).await.0.is_ok();
        }
        let mut pending_client_eof = false;
        let mut end = if ok {
            None
        } else {
            Some(LegEnd::Failed(RelayEnd::Error))
        };
        loop {
            let ending = match end.take() {
                Some(e) => e,
                None if pending_client_eof => LegEnd::ClientEof,
                None => session.run_leg(&mut cr, &mut cw, &mut leg, &kick).await,
            };
            let reason = match ending {
                LegEnd::Kicked(reason) => reason,
                LegEnd::ClientEof => {
                    let _ = Box::pin(leg.1.shutdown()).await;
                    Box::pin(session.drain_backend(&mut leg, &mut cw)).await;
                    drop(leg);
                    session.backend_closed(&registration);
                    return session.ended(RelayEnd::Client, None, None);
                }
                LegEnd::BackendEof => {
                    drop(leg);
                    session.backend_closed(&registration);
                    let _ = Box::pin(monoio::time::timeout(GOODBYE_TIMEOUT, cw.shutdown())).await;
                    return session.ended(RelayEnd::Backend, None, None);
                }
                LegEnd::Failed(how) => {
                    Box::pin(close_backend(leg.0, leg.1)).await;
                    session.backend_closed(&registration);
                    let _ = Box::pin(monoio::time::timeout(GOODBYE_TIMEOUT, cw.shutdown())).await;
                    return session.ended(how, None, None);
                }
            };
            let why_not = if reason != KickReason::Move {
                None
            } else if !enabled(&core) || live.is_none() {
                Some((
                    LiveMoveOutcome::Disabled,
                    "live moves are off or no master user is set",
                ))
            } else {
                session
                    .tracker
                    .movable()
                    .err()
                    .map(|why| (LiveMoveOutcome::NotMovable, why))
            };
            let login = live
                .as_deref()
                .filter(|_| reason == KickReason::Move && why_not.is_none());
            let Some(login) = login else {
                if let Some((outcome, why)) = why_not {
                    core.counters.live_move(outcome);
                    info!(why, "user moved: session not moved live, closing it");
                }
                Box::pin(close_backend(leg.0, leg.1)).await;
                session.backend_closed(&registration);
                Box::pin(goodbye(&mut cw, reason)).await;
                return session.ended(RelayEnd::Stopped, Some(reason), why_not.map(|(_, w)| w));
            };
            // The handover, with the client's input held meanwhile.
            let mut held = Vec::new();
            let mut client_eof = false;
            let result = {
                // Boxed, as every step but the wait: an idle session's state
                // holds none of them.
                let mut steps = Box::pin(session.hand_over(login, &mut registration, leg, &mut cw));
                loop {
                    monoio::select! {
                        r = &mut steps => break r,
                        r = cr.readable(), if !client_eof && held.len() < HELD_MAX => {
                            client_eof |= r.is_err() || !Box::pin(read_held(&mut cr, &mut held)).await;
                        }
                    }
                }
            };
            match result {
                Ok((mut new_leg, to_client, new_kick)) => {
                    session.moves += 1;
                    core.counters.live_move(LiveMoveOutcome::Moved);
                    kick = new_kick;
                    let mut ok = true;
                    if !to_client.is_empty() {
                        session.tracker.backend_bytes(&to_client);
                        session.stats.down += to_client.len() as u64;
                        ok &= Box::pin(write_bounded(&mut cw, to_client, session.stall)).await;
                    }
                    if ok && !held.is_empty() {
                        session.tracker.client_bytes(&held);
                        session.stats.up += held.len() as u64;
                        ok &= Box::pin(new_leg.1.write_all(held)).await.0.is_ok();
                    }
                    leg = new_leg;
                    if !ok {
                        end = Some(LegEnd::Failed(RelayEnd::Error));
                    }
                    pending_client_eof = client_eof;
                }
                Err(failure) => {
                    core.counters.live_move(failure.outcome);
                    info!(
                        why = failure.why.text(),
                        "live move failed, closing the session"
                    );
                    if let Some(leg) = failure.close {
                        Box::pin(close_backend(leg.0, leg.1)).await;
                    }
                    if failure.release {
                        session.backend_closed(&registration);
                    }
                    Box::pin(goodbye(&mut cw, reason)).await;
                    return session.ended(
                        RelayEnd::Stopped,
                        Some(reason),
                        Some(failure.why.text()),
                    );
                }
            }
        }
    }
}

/// Writes `bytes` to the client; false when it failed or stalled for `stall`.
async fn write_bounded<W: WriteSide>(cw: &mut W, bytes: Vec<u8>, stall: Duration) -> bool {
    matches!(
        monoio::time::timeout(stall, cw.write_all(bytes)).await,
        Ok((Ok(_), _))
    )
}

/// Reads what the client has into `held`; false when it closed or failed.
async fn read_held<R: ReadSide>(cr: &mut R, held: &mut Vec<u8>) -> bool {
    held.reserve(4096.min(HELD_MAX - held.len()).max(1));
    let res = match cr.try_read_into(held) {
        Some(res) => res,
        None => {
            let (res, b) = cr.read_into(std::mem::take(held)).await;
            *held = b;
            res
        }
    };
    match res {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// The kicked client's goodbye, bounded; the backend is closed already.
async fn goodbye<W: WriteSide>(cw: &mut W, reason: KickReason) {
    let text = crate::session::goodbye::goodbye(Protocol::Imap, reason);
    let _ = monoio::time::timeout(GOODBYE_TIMEOUT, cw.write_all(text)).await;
    let _ = monoio::time::timeout(GOODBYE_TIMEOUT, cw.shutdown()).await;
}

/// Why a handover failed, and what is left to close.
struct Failure {
    /// The backend connection still open (old or new), to close first.
    close: Option<Leg>,
    /// The session still counts on its current backend: release it.
    release: bool,
    why: ResumeError,
    outcome: LiveMoveOutcome,
}

/// The state of one live-capable session across its backends.
struct Session<'c> {
    core: &'c Core,
    key: &'c str,
    origin: SessionOrigin,
    /// The backend the session counts on now.
    backend_id: BackendId,
    tracker: ImapTracker,
    stats: RelayStats,
    moves: u32,
    stall: Duration,
}

impl Session<'_> {
    fn backend_name(&self) -> String {
        self.core
            .router
            .backends()
            .get(self.backend_id)
            .map(|b| b.name.to_string())
            .unwrap_or_default()
    }

    /// The backend connection is closed: counted so for a move's wait,
    /// and the user's session count released.
    fn backend_closed(&self, registration: &Registration<'_>) {
        registration.backend_closed();
        self.core
            .router
            .release(self.key, self.backend_id, Some(self.origin));
    }

    fn ended(
        &self,
        end: RelayEnd,
        kicked: Option<KickReason>,
        not_moved: Option<&'static str>,
    ) -> LiveEnd {
        LiveEnd {
            end,
            kicked,
            stats: self.stats,
            moves: self.moves,
            not_moved,
        }
    }

    /// Relays both ways over `leg` until a side ends, fails or a kick
    /// comes; waits only on readiness, so a kick never cuts a transfer.
    async fn run_leg<CR: ReadSide, CW: WriteSide>(
        &mut self,
        cr: &mut CR,
        cw: &mut CW,
        leg: &mut Leg,
        kick: &KickSignal,
    ) -> LegEnd {
        enum Woke {
            Client(io::Result<()>),
            Backend(io::Result<()>),
            Kick(KickReason),
        }
        loop {
            let ready = monoio::select! {
                r = cr.readable() => Woke::Client(r),
                r = leg.0.readable() => Woke::Backend(r),
                reason = kick.wait() => Woke::Kick(reason),
            };
            let tracker = &mut self.tracker;
            let flow = match ready {
                Woke::Kick(reason) => return LegEnd::Kicked(reason),
                Woke::Client(Err(_)) | Woke::Backend(Err(_)) => {
                    return LegEnd::Failed(RelayEnd::Error)
                }
                Woke::Client(Ok(())) => {
                    let pass = pass(cr, &mut leg.1, self.stall, |b| tracker.client_bytes(b));
                    match Box::pin(pass).await {
                        Ok(Flow::Eof) => return LegEnd::ClientEof,
                        Ok(Flow::Moved(n)) => {
                            self.stats.up += n as u64;
                            continue;
                        }
                        other => other,
                    }
                }
                Woke::Backend(Ok(())) => {
                    let pass = pass(&mut leg.0, cw, self.stall, |b| tracker.backend_bytes(b));
                    match Box::pin(pass).await {
                        Ok(Flow::Eof) => return LegEnd::BackendEof,
                        Ok(Flow::Moved(n)) => {
                            self.stats.down += n as u64;
                            continue;
                        }
                        other => other,
                    }
                }
            };
            match flow {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return LegEnd::Failed(RelayEnd::Stalled)
                }
                Err(_) => return LegEnd::Failed(RelayEnd::Error),
            }
        }
    }

    /// After the client closed: what the backend still says (the answer
    /// to LOGOUT) goes to the client until the backend closes, bounded.
    async fn drain_backend<CW: WriteSide>(&mut self, leg: &mut Leg, cw: &mut CW) {
        let stall = self.stall;
        let _ = monoio::time::timeout(FIN_TIMEOUT, async {
            loop {
                if leg.0.readable().await.is_err() {
                    return;
                }
                match pass(&mut leg.0, cw, stall, |_| {}).await {
                    Ok(Flow::Moved(n)) => self.stats.down += n as u64,
                    Ok(Flow::Nothing) => {}
                    Ok(Flow::Eof) | Err(_) => return,
                }
            }
        })
        .await;
    }

    /// The handover (see the module documentation): old side closed,
    /// route again, new side resumed (what it reconciled is logged).
    /// Returns the new leg, bytes for the client and the session's new
    /// kick signal.
    async fn hand_over<CW: WriteSide>(
        &mut self,
        live: &LiveLogin,
        registration: &mut Registration<'_>,
        mut old: Leg,
        cw: &mut CW,
    ) -> Result<(Leg, Vec<u8>, KickSignal), Failure> {
        let fail = |close, release, why, outcome| Failure {
            close,
            release,
            why,
            outcome,
        };
        let closed = monoio::time::timeout(
            OLD_SIDE_TIMEOUT,
            close_old(&mut old.0, &mut old.1, cw, &mut self.tracker),
        )
        .await;
        let old_state = match closed {
            Ok(Ok(state)) => state,
            Ok(Err(why)) => {
                let outcome = match why {
                    ResumeError::Changed(_) => LiveMoveOutcome::Changed,
                    ResumeError::Backend(_) => LiveMoveOutcome::OldBackend,
                };
                return Err(fail(Some(old), true, why, outcome));
            }
            Err(_) => {
                let why = ResumeError::Backend("the old backend did not answer in time");
                return Err(fail(Some(old), true, why, LiveMoveOutcome::OldBackend));
            }
        };
        // The old backend closed the connection: the session no longer
        // exists there.
        drop(old);
        self.backend_closed(registration);
        let routed = self
            .core
            .router
            .acquire(self.key, Protocol::Imap, &[], Some(self.origin))
            .await;
        let Ok(new_id) = routed else {
            let why = ResumeError::Backend("no backend for the user after the move");
            return Err(fail(None, false, why, LiveMoveOutcome::NoRoute));
        };
        self.backend_id = new_id;
        let kick = registration.moved_to(new_id);
        let set = self.core.router.backends();
        let Some(backend) = set.get(new_id).filter(|b| b.keeps_users()) else {
            let why = ResumeError::Backend("the new backend cannot keep users");
            return Err(fail(None, true, why, LiveMoveOutcome::NewBackend));
        };
        // Wait for this core's turn: the new-side timeout counts from it.
        let slot =
            monoio::time::timeout(RESUME_QUEUE_LIMIT, self.core.live_resumes.acquire()).await;
        let Ok(Ok(_slot)) = slot else {
            let why = ResumeError::Backend("too many live moves at once; not resumed in time");
            return Err(fail(None, true, why, LiveMoveOutcome::NewBackend));
        };
        let Ok(mut stream) = connect(backend, Protocol::Imap, &live.client).await else {
            let why = ResumeError::Backend("cannot connect to the new backend");
            return Err(fail(None, true, why, LiveMoveOutcome::NewBackend));
        };
        let snapshot = match self.tracker.movable() {
            Ok(s) => s,
            Err(why) => {
                let why = ResumeError::Backend(why);
                return Err(fail(
                    Some(split(stream)),
                    true,
                    why,
                    LiveMoveOutcome::NotMovable,
                ));
            }
        };
        let shared = self.core.shared();
        let login = MasterLogin {
            user: &live.user,
            master_user: &shared.config.backends.master_user,
            master_password: shared.config.backends.master_password.expose(),
        };
        let resumed = monoio::time::timeout(
            NEW_SIDE_TIMEOUT,
            resume(
                &mut stream,
                backend,
                &live.client,
                &login,
                &snapshot,
                old_state,
            ),
        )
        .await;
        match resumed {
            Ok(Ok((to_client, reconciled))) => {
                self.core.shared().config.server.keepalive().apply(&stream);
                info!(
                    backend = self.backend_name(),
                    expunged = reconciled.expunged,
                    appended = reconciled.appended,
                    flags_changed = reconciled.flags,
                    "session moved live"
                );
                Ok((split(stream), to_client, kick))
            }
            Ok(Err(why)) => {
                let outcome = match why {
                    ResumeError::Changed(_) => LiveMoveOutcome::Changed,
                    ResumeError::Backend(_) => LiveMoveOutcome::NewBackend,
                };
                Err(fail(Some(split(stream)), true, why, outcome))
            }
            Err(_) => {
                let why = ResumeError::Backend("the new backend did not answer in time");
                Err(fail(
                    Some(split(stream)),
                    true,
                    why,
                    LiveMoveOutcome::NewBackend,
                ))
            }
        }
    }
}

fn split(stream: TcpStream) -> Leg {
    stream.into_split()
}
