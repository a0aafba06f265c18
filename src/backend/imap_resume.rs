//! The two backend dialogues of a live IMAP move (issue 12): closing the
//! old backend's session after a snapshot, and resuming the session on the
//! new backend with the master user, verified against that snapshot.
//!
//! Old side ([`close_old`]): the client is idling. `DONE`, `STATUS
//! (HIGHESTMODSEQ)`, `NOOP` (a full sync) and `UID FETCH 1:* (UID)` (the
//! UIDs the client knows, in its sequence order) go out one after the
//! other (Dovecot runs pipelined commands side by side); the
//! untagged updates the backend sends are passed to the client (legal: the
//! client's IDLE is still running), the tagged answers are swallowed; an
//! `EXAMINE` of the mailbox reads its keyword list (`* FLAGS`, all its
//! answers swallowed); then `LOGOUT`, and the dialogue returns once the backend closed the
//! connection — the old session no longer exists.
//!
//! New side ([`resume`]): connect, forward the client's address (ID),
//! log in with SASL PLAIN, authorization id = the user, authentication id
//! = `backends.master_user` (what Dovecot's own proxy sends), check the
//! capabilities, replay ENABLE, SELECT or EXAMINE with the client's own
//! argument bytes and `UID FETCH 1:* (UID)`, swallowing the
//! answers; UIDVALIDITY must equal what the client knows. A probe
//! connection of its own reads the flags changed since the old
//! HIGHESTMODSEQ (so the resumed session never switches CONDSTORE on for a
//! client that did not). The difference of both views goes to the client
//! as untagged responses ([`crate::backend::imap_reconcile`]: expunges,
//! appends, flags). Then `IDLE` under the client's tag; its `+` is
//! swallowed. Anything that cannot be reconciled is an error: the caller
//! closes the new side and ends the session, never leaving the client with
//! a wrong view.
//!
//! Every step is bounded (lines by [`MAX_BACKEND_LINE`], time by the
//! caller). The master password goes out only base64-encoded in the
//! AUTHENTICATE line and is never logged.

use std::time::Duration;

use monoio::net::TcpStream;
use zeroize::Zeroizing;

use crate::backend::client_info::ClientInfo;
use crate::backend::greeting::{classify, GreetingKind};
use crate::backend::imap::id_command;
use crate::backend::imap_reconcile::{
    flag_fetch, listed, reconcile, ClientExtensions, FlagUpdate, Listed, Listing, Reconciled,
    UidSet, Views, MAX_FLAG_UPDATES, MAX_LISTED_MESSAGES,
};
use crate::backend::{read_greeting, MAX_BACKEND_LINE};
use crate::config::{Forward, Protocol};
use crate::io::{write_bytes, ReadSide, WriteSide};
use crate::proto::imap::tracker::{ImapTracker, Snapshot};
use crate::proto::lines::LineReader;
use crate::proto::sasl::{encode_plain, Credentials};
use crate::route::backends::Backend;

/// How long the old backend may take to close after LOGOUT.
pub const LOGOUT_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The old backend's snapshot: the UIDs the client knows, and the
/// mailbox's HIGHESTMODSEQ taken just before the sync whose updates the
/// client got (so every change after it shows up as a higher MODSEQ on
/// the new backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldSnapshot {
    /// The messages after the sync, in the client's sequence order.
    pub uids: UidSet,
    /// HIGHESTMODSEQ before the sync.
    pub highest_modseq: u64,
    /// The mailbox's `* FLAGS` line after the sync (the client was told
    /// of every keyword in it).
    pub flags: Vec<u8>,
}

/// Why a step of a live move failed; the words go to the session log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// A backend failed, refused or said something unexpected.
    Backend(&'static str),
    /// The mailbox changed between the old backend's snapshot and the new
    /// backend's view in a way that cannot be reconciled safely.
    Changed(&'static str),
}

impl ResumeError {
    /// In words, for the session log.
    pub fn text(self) -> &'static str {
        match self {
            ResumeError::Backend(t) | ResumeError::Changed(t) => t,
        }
    }
}

impl From<&'static str> for ResumeError {
    fn from(text: &'static str) -> Self {
        ResumeError::Backend(text)
    }
}

/// Our own command tags, never the client's IDLE tag.
fn our_tag(n: u8, client_tag: &[u8]) -> String {
    let tag = format!("mpm{n}");
    if client_tag == tag.as_bytes() {
        format!("mpmx{n}")
    } else {
        tag
    }
}

/// The status word of `line` if it is tagged `tag`.
fn tagged<'a>(line: &'a [u8], tag: &str) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(tag.as_bytes())?.strip_prefix(b" ")?;
    Some(rest.split(|&b| b == b' ').next().unwrap_or(rest))
}

fn is_ok(status: &[u8]) -> bool {
    status.eq_ignore_ascii_case(b"OK")
}

/// Whether a line announces a literal (`{n}` at its end).
fn ends_in_literal(line: &[u8]) -> bool {
    line.ends_with(b"}") && line.contains(&b'{')
}

/// The mailbox name at the start of SELECT / EXAMINE arguments, bytes as
/// the client sent them (an atom or a quoted string).
fn mailbox_name(args: &[u8]) -> Option<Vec<u8>> {
    if args.first() == Some(&b'"') {
        let mut escaped = false;
        for (i, &b) in args.iter().enumerate().skip(1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return Some(args[..=i].to_vec()),
                _ => {}
            }
        }
        return None;
    }
    let end = args.iter().position(|&b| b == b' ').unwrap_or(args.len());
    (end > 0 && args[0] != b'{' && args[0] != b'(').then(|| args[..end].to_vec())
}

/// HIGHESTMODSEQ of a `* STATUS mailbox (HIGHESTMODSEQ n)` line.
fn status_modseq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"* STATUS ")?;
    let at = rest
        .windows(14)
        .rposition(|w| w.eq_ignore_ascii_case(b"HIGHESTMODSEQ "))?;
    let digits: Vec<u8> = rest[at + 14..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// A forwarded FETCH line without its `MODSEQ (n)` item, for a client
/// that never switched CONDSTORE on (RFC 7162 §3.2).
fn strip_modseq(line: &[u8]) -> Vec<u8> {
    let lower: Vec<u8> = line.to_ascii_uppercase();
    let Some(at) = lower.windows(8).position(|w| w == b"MODSEQ (") else {
        return line.to_vec();
    };
    let Some(close) = line[at..].iter().position(|&b| b == b')') else {
        return line.to_vec();
    };
    let mut end = at + close + 1;
    let mut start = at;
    if line.get(end) == Some(&b' ') {
        end += 1;
    } else if start > 0 && line[start - 1] == b' ' {
        start -= 1;
    }
    let mut out = line[..start].to_vec();
    out.extend_from_slice(&line[end..]);
    out
}

fn number(s: &[u8]) -> Option<u32> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Reads one backend line, bounded.
async fn line<R: ReadSide>(lines: &mut LineReader, r: &mut R) -> Result<Vec<u8>, ResumeError> {
    lines
        .read_line(r, MAX_BACKEND_LINE)
        .await
        .map_err(|_| ResumeError::Backend("backend connection lost"))
}

/// Writes `bytes` to the old backend.
async fn send_old<W: WriteSide>(bw: &mut W, bytes: &[u8]) -> Result<(), ResumeError> {
    write_bytes(bw, bytes)
        .await
        .map_err(|_| ResumeError::Backend("old backend connection lost"))
}

/// `head`, the mailbox name bytes, `tail` and CRLF: one command line.
fn command(head: &str, mailbox: &[u8], tail: &str) -> Vec<u8> {
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(mailbox);
    out.extend_from_slice(tail.as_bytes());
    out.extend_from_slice(b"\r\n");
    out
}

/// How many times the old side lists the client's UIDs at most (a change
/// during a listing makes it list again).
const MAX_LISTINGS: usize = 3;

/// Ends the old backend's session of an idling client (see the module
/// documentation): untagged updates go to `client` and through `tracker`;
/// returns the mailbox state once the backend has closed the connection.
/// With nothing selected only `LOGOUT` is sent. On an error the backend
/// connection may still be open: the caller closes it.
pub async fn close_old<BR: ReadSide, BW: WriteSide, CW: WriteSide>(
    br: &mut BR,
    bw: &mut BW,
    client: &mut CW,
    tracker: &mut ImapTracker,
) -> Result<Option<OldSnapshot>, ResumeError> {
    let snapshot = tracker.movable().map_err(ResumeError::Backend)?;
    let mailbox = match snapshot.select {
        Some((_, args)) => {
            Some(mailbox_name(args).ok_or(ResumeError::Backend("mailbox name not understood"))?)
        }
        None => None,
    };
    let condstore = snapshot.condstore;
    let idle_tag = snapshot.idle_tag.unwrap_or_default().to_vec();
    let (noop, search, logout, status, examine) = (
        our_tag(1, &idle_tag),
        our_tag(2, &idle_tag),
        our_tag(3, &idle_tag),
        our_tag(0, &idle_tag),
        our_tag(4, &idle_tag),
    );
    let mut lines = LineReader::new();
    let mut listing = Listing::default();
    // The NOOP answered: the lines that follow list the UIDs.
    let mut listing_started = false;
    // The UIDs listed: an EXAMINE reads the keyword list, nothing more
    // goes to the client.
    let (mut examining, mut flags) = (false, None);
    let mut state = None;
    let mut modseq = None;
    // Updates the backend sent while it listed (a change after the NOOP:
    // Dovecot tells the session at the listing's end) make the listing
    // older than what the client now knows: it is taken again.
    let mut changed_while_listing = false;
    let mut listings = 0;
    if mailbox.is_some() && tracker.exists() > MAX_LISTED_MESSAGES {
        return Err(ResumeError::Changed("mailbox too large to reconcile"));
    }
    if let Some(mailbox) = &mailbox {
        // STATUS (HIGHESTMODSEQ) before the NOOP: whatever changes after it
        // raises HIGHESTMODSEQ, whether the NOOP told the client or not.
        // It switches CONDSTORE on for this (closing) session, so MODSEQ is
        // taken out of what goes to a client that did not ask for it.
        // One command at a time: Dovecot runs pipelined commands side by
        // side (a FETCH sent after a NOOP may answer before the NOOP's sync).
        let head = format!("DONE\r\n{status} STATUS ");
        send_old(bw, &command(&head, mailbox, " (HIGHESTMODSEQ)")).await?;
        loop {
            let l = line(&mut lines, br).await?;
            if ends_in_literal(&l) {
                return Err(ResumeError::Backend(
                    "old backend sent a literal during the snapshot",
                ));
            }
            if examining {
                if l.starts_with(b"* FLAGS ") {
                    flags = Some(l);
                } else if let Some(status) = tagged(&l, &examine) {
                    if !is_ok(status) {
                        return Err(ResumeError::Backend("old backend refused EXAMINE"));
                    }
                    break;
                }
                continue;
            }
            if listing_started {
                if let Listed::Message { seq, uid } = listed(&l) {
                    listing.add(seq, uid).map_err(ResumeError::Changed)?;
                    continue;
                }
            }
            if let Some(status) = tagged(&l, &search) {
                // An empty mailbox may answer NO or BAD to `1:*`.
                if !is_ok(status) && tracker.exists() != 0 {
                    return Err(ResumeError::Backend("old backend refused the UID FETCH"));
                }
                listings += 1;
                if changed_while_listing && listings < MAX_LISTINGS {
                    changed_while_listing = false;
                    listing = Listing::default();
                    send_old(bw, format!("{search} UID FETCH 1:* (UID)\r\n").as_bytes()).await?;
                    continue;
                }
                examining = true;
                let head = format!("{examine} EXAMINE ");
                send_old(bw, &command(&head, mailbox, "")).await?;
                continue;
            }
            if let Some(found) = status_modseq(&l) {
                modseq = Some(found);
                continue;
            }
            if let Some(answer) = tagged(&l, &status) {
                if !is_ok(answer) {
                    return Err(ResumeError::Backend("old backend refused STATUS"));
                }
                send_old(bw, format!("{noop} NOOP\r\n").as_bytes()).await?;
                continue;
            }
            if tagged(&l, &noop).is_some() {
                // The sync is over: what the client knows is listed now.
                listing_started = true;
                send_old(bw, format!("{search} UID FETCH 1:* (UID)\r\n").as_bytes()).await?;
                continue;
            }
            if !condstore && l.starts_with(b"* OK [HIGHESTMODSEQ ") {
                continue;
            }
            if !idle_tag.is_empty()
                && l.starts_with(&idle_tag)
                && l.get(idle_tag.len()) == Some(&b' ')
            {
                // The IDLE's own completion: the client's IDLE goes on.
                continue;
            }
            if l.first() != Some(&b'*') {
                return Err(ResumeError::Backend("unexpected line from the old backend"));
            }
            let mut forwarded = if condstore { l } else { strip_modseq(&l) };
            forwarded.extend_from_slice(b"\r\n");
            changed_while_listing |= listing_started;
            tracker.backend_bytes(&forwarded);
            let (res, _) = client.write_all(forwarded).await;
            res.map_err(|_| ResumeError::Backend("client connection lost"))?;
        }
        let found = std::mem::take(&mut listing).finish();
        if found.len() != u64::from(tracker.exists()) {
            return Err(ResumeError::Changed(
                "old backend's message count differs from the client's",
            ));
        }
        let highest_modseq = modseq.ok_or(ResumeError::Backend(
            "no HIGHESTMODSEQ from the old backend",
        ))?;
        let flags = flags.ok_or(ResumeError::Backend("no FLAGS from the old backend"))?;
        state = Some(OldSnapshot {
            uids: found,
            highest_modseq,
            flags,
        });
    }
    if !lines.into_leftover().is_empty() {
        return Err(ResumeError::Backend("old backend sent more than was asked"));
    }
    let out = format!("{logout} LOGOUT\r\n");
    write_bytes(bw, out.as_bytes())
        .await
        .map_err(|_| ResumeError::Backend("old backend connection lost"))?;
    // Swallow BYE and the tagged OK until the backend closes.
    let closed = monoio::time::timeout(LOGOUT_CLOSE_TIMEOUT, async {
        loop {
            let buf = Vec::with_capacity(4096);
            let (res, _) = br.read_into(buf).await;
            match res {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.map_err(|_| ResumeError::Backend("old backend did not close after LOGOUT"))?;
    Ok(state)
}

/// Who logs in on the new backend.
pub struct MasterLogin<'a> {
    /// The user the session belongs to (authorization id).
    pub user: &'a str,
    /// `backends.master_user`.
    pub master_user: &'a str,
    /// Its password, from `backends.master_password_file`.
    pub master_password: &'a str,
}

/// Greeting, ID (with `forward = "id"`) and the master login on a fresh
/// connection; the capabilities of the tagged OK, if it lists them.
async fn master_login(
    stream: &mut TcpStream,
    lines: &mut LineReader,
    backend: &Backend,
    client: &ClientInfo,
    login: &MasterLogin<'_>,
    id_tag: &str,
    auth_tag: &str,
) -> Result<Option<Vec<u8>>, ResumeError> {
    let greeting = read_greeting(stream, lines, backend.connect_timeout)
        .await
        .map_err(|_| ResumeError::Backend("no greeting from the new backend"))?;
    if classify(Protocol::Imap, &greeting) != Some(GreetingKind::Ready) {
        return Err(ResumeError::Backend(
            "the new backend refused the connection",
        ));
    }
    let sasl_ir = greeting
        .split(|&b| b == b' ' || b == b']' || b == b'[')
        .any(|w| w.eq_ignore_ascii_case(b"SASL-IR"));
    let creds = Credentials {
        authzid: Some(login.user.to_owned()),
        user: login.master_user.to_owned(),
        password: Zeroizing::new(login.master_password.as_bytes().to_vec()),
    };
    let response = encode_plain(&creds);
    let mut out = Zeroizing::new(Vec::with_capacity(512));
    if backend.forward == Forward::Id {
        out.extend_from_slice(&id_command(id_tag, client, &Vec::new()));
    }
    out.extend_from_slice(auth_tag.as_bytes());
    out.extend_from_slice(b" AUTHENTICATE PLAIN");
    if sasl_ir {
        out.push(b' ');
        out.extend_from_slice(response.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    write_bytes(stream, &out)
        .await
        .map_err(|_| ResumeError::Backend("new backend connection lost"))?;
    drop(out);
    let caps = loop {
        let l = line(lines, stream).await?;
        if l.first() == Some(&b'+') && !sasl_ir {
            let mut answer = Zeroizing::new(response.as_bytes().to_vec());
            answer.extend_from_slice(b"\r\n");
            write_bytes(stream, &answer)
                .await
                .map_err(|_| ResumeError::Backend("new backend connection lost"))?;
            continue;
        }
        if let Some(status) = tagged(&l, auth_tag) {
            if !is_ok(status) {
                return Err(ResumeError::Backend(
                    "master login refused by the new backend",
                ));
            }
            break capability_code(&l);
        }
    };
    drop(response);
    Ok(caps)
}

/// What a probe connection saw of the mailbox.
#[derive(Debug, Default)]
struct Probe {
    highest_modseq: u64,
    /// Flags of the messages up to the old highest UID changed after the
    /// old HIGHESTMODSEQ.
    updates: Vec<FlagUpdate>,
}

/// Asks about `mailbox` on a connection of its own (the resumed session
/// must not switch CONDSTORE on for a client that did not): its
/// HIGHESTMODSEQ now and, when that is past `since` (the old
/// HIGHESTMODSEQ) and the client knows messages (`old_max`), read-only
/// (EXAMINE), the flags of those changed after `since`, at most
/// [`MAX_FLAG_UPDATES`].
async fn probe(
    backend: &Backend,
    client: &ClientInfo,
    login: &MasterLogin<'_>,
    mailbox: &[u8],
    old_max: Option<u32>,
    since: u64,
) -> Result<Probe, ResumeError> {
    let mut stream = crate::backend::connect(backend, Protocol::Imap, client)
        .await
        .map_err(|_| ResumeError::Backend("cannot connect to the new backend"))?;
    let mut lines = LineReader::new();
    master_login(&mut stream, &mut lines, backend, client, login, "p1", "p2").await?;
    write_bytes(
        &mut stream,
        &command("p3 STATUS ", mailbox, " (HIGHESTMODSEQ)"),
    )
    .await
    .map_err(|_| ResumeError::Backend("new backend connection lost"))?;
    let mut probe = Probe::default();
    let mut modseq = None;
    loop {
        let l = line(&mut lines, &mut stream).await?;
        if let Some(found) = status_modseq(&l) {
            modseq = Some(found);
        } else if let Some(status) = tagged(&l, "p3") {
            if !is_ok(status) {
                return Err(ResumeError::Backend("the new backend refused a probe"));
            }
            break;
        }
    }
    probe.highest_modseq = modseq.ok_or(ResumeError::Backend(
        "no HIGHESTMODSEQ from the new backend",
    ))?;
    if let Some(max) = old_max.filter(|_| probe.highest_modseq > since) {
        let mut out = command("p4 EXAMINE ", mailbox, "");
        out.extend_from_slice(
            format!("p5 UID FETCH 1:{max} (UID FLAGS) (CHANGEDSINCE {since})\r\n").as_bytes(),
        );
        write_bytes(&mut stream, &out)
            .await
            .map_err(|_| ResumeError::Backend("new backend connection lost"))?;
        loop {
            let l = line(&mut lines, &mut stream).await?;
            if let Some(update) = flag_fetch(&l) {
                if probe.updates.len() == MAX_FLAG_UPDATES {
                    return Err(ResumeError::Changed("too many flag changes to reconcile"));
                }
                probe.updates.push(update);
            } else if let Some(status) = ["p4", "p5"].iter().find_map(|t| tagged(&l, t)) {
                if !is_ok(status) {
                    return Err(ResumeError::Backend("the new backend refused a probe"));
                }
                if tagged(&l, "p5").is_some() {
                    break;
                }
            }
        }
    }
    // The probe's LOGOUT is answered and the connection closed by the
    // backend; it is dropped without waiting for that.
    let _ = write_bytes(&mut stream, b"p7 LOGOUT\r\n").await;
    Ok(probe)
}

/// The count of a `* n EXISTS` line.
fn exists_count(line: &[u8]) -> Option<u32> {
    let rest = line.strip_prefix(b"* ")?;
    let (n, word) = rest.split_at(rest.iter().position(|&b| b == b' ')?);
    word[1..]
        .eq_ignore_ascii_case(b"EXISTS")
        .then(|| number(n))
        .flatten()
}

/// Whether an untagged line reports a change of the mailbox (sent by the
/// new backend's sync after its SELECT: the search result may not
/// include it, so the move is not safe).
fn reports_change(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"* ") else {
        return false;
    };
    let mut words = rest.split(|&b| b == b' ');
    let (first, second) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    if first.eq_ignore_ascii_case(b"VANISHED") {
        return true;
    }
    number(first).is_some()
        && [&b"EXPUNGE"[..], b"EXISTS", b"FETCH"]
            .iter()
            .any(|w| second.eq_ignore_ascii_case(w))
}

/// Resumes the session of `snapshot` on `stream`, a fresh connection to
/// `backend` (see the module documentation); `old` is what the old backend
/// reported. Returns the bytes for the client (the reconciling responses,
/// then what the new backend sent past the IDLE continuation or its last
/// answer) and what was reconciled. The caller bounds it in time and
/// closes `stream` on an error.
pub async fn resume(
    stream: &mut TcpStream,
    backend: &Backend,
    client: &ClientInfo,
    login: &MasterLogin<'_>,
    snapshot: &Snapshot<'_>,
    old: Option<OldSnapshot>,
) -> Result<(Vec<u8>, Reconciled), ResumeError> {
    let idle_tag = snapshot.idle_tag.unwrap_or_default();
    let tags: Vec<String> = (4..=9).map(|n| our_tag(n, idle_tag)).collect();
    let (id_tag, auth_tag, enable_tag, select_tag, search_tag) =
        (&tags[0], &tags[1], &tags[2], &tags[3], &tags[4]);
    let mut lines = LineReader::new();
    let mut caps =
        master_login(stream, &mut lines, backend, client, login, id_tag, auth_tag).await?;
    let mut pipeline = String::new();
    if caps.is_none() {
        pipeline.push_str(&format!("{id_tag} CAPABILITY\r\n"));
    }
    let enable = if snapshot.qresync {
        Some("QRESYNC")
    } else if snapshot.condstore {
        Some("CONDSTORE")
    } else {
        None
    };
    if let Some(ext) = enable {
        pipeline.push_str(&format!("{enable_tag} ENABLE {ext}\r\n"));
    }
    let mut out = pipeline.into_bytes();
    if let Some((command, args)) = snapshot.select {
        out.extend_from_slice(format!("{select_tag} {command} ").as_bytes());
        out.extend_from_slice(args);
        out.extend_from_slice(b"\r\n");
    }
    let last = if snapshot.select.is_some() {
        search_tag
    } else if enable.is_some() {
        enable_tag
    } else if caps.is_none() {
        id_tag
    } else {
        return finish_unselected(lines, &caps, snapshot);
    };
    write_bytes(stream, &out)
        .await
        .map_err(|_| ResumeError::Backend("new backend connection lost"))?;
    let (mut uidvalidity, mut listing, mut enabled) = (None, Listing::default(), false);
    // The SELECT's `* FLAGS` and `* OK [PERMANENTFLAGS` lines and its
    // EXISTS count; its tagged OK.
    let (mut flag_lists, mut select_exists, mut selected) = (Vec::new(), None, false);
    let mut listed_all = false;
    loop {
        let l = line(&mut lines, stream).await?;
        if ends_in_literal(&l) {
            return Err(ResumeError::Backend(
                "new backend sent a literal while resuming",
            ));
        }
        let item = if selected {
            listed(&l)
        } else {
            Listed::NotFetch
        };
        if let Listed::Message { seq, uid } = item {
            listing.add(seq, uid).map_err(ResumeError::Changed)?;
        } else if item == Listed::OtherFetch || selected && reports_change(&l) {
            return Err(ResumeError::Changed(
                "the mailbox changed while the new backend's session was opened",
            ));
        } else if let Some(rest) = l.strip_prefix(b"* CAPABILITY ") {
            caps = Some(rest.to_vec());
        } else if let Some(rest) = l.strip_prefix(b"* ENABLED") {
            enabled |= enable.is_some_and(|e| {
                rest.split(|&b| b == b' ')
                    .any(|w| w.eq_ignore_ascii_case(e.as_bytes()))
            });
        } else if let Some(v) = l
            .strip_prefix(b"* OK [UIDVALIDITY ")
            .and_then(|r| r.split(|&b| b == b']').next())
        {
            uidvalidity = number(v);
        } else if l.starts_with(b"* FLAGS ") || l.starts_with(b"* OK [PERMANENTFLAGS ") {
            if flag_lists.len() < 2 && !selected {
                flag_lists.push(l);
            }
        } else if let Some(n) = exists_count(&l).filter(|_| !selected) {
            select_exists = Some(n);
        } else if l.first() != Some(&b'*') {
            let status = [id_tag, enable_tag, select_tag, search_tag]
                .iter()
                .find_map(|t| tagged(&l, t).map(|s| (*t, s)));
            listed_all |= tagged(&l, search_tag).is_some();
            match status {
                Some((_, s)) if is_ok(s) => {}
                // An empty mailbox may answer NO or BAD to `1:*`.
                Some((t, _)) if t == search_tag && select_exists == Some(0) => {}
                Some(_) => {
                    return Err(ResumeError::Backend(
                        "the new backend refused a replayed command",
                    ))
                }
                None => return Err(ResumeError::Backend("unexpected line from the new backend")),
            }
            if tagged(&l, select_tag).is_some() {
                // Listed once the SELECT is over (Dovecot runs pipelined
                // commands side by side).
                selected = true;
                write_bytes(
                    stream,
                    format!("{search_tag} UID FETCH 1:* (UID)\r\n").as_bytes(),
                )
                .await
                .map_err(|_| ResumeError::Backend("new backend connection lost"))?;
            }
            if tagged(&l, last).is_some() {
                break;
            }
        }
    }
    if enable.is_some() && !enabled {
        return Err(ResumeError::Backend(
            "the new backend did not enable CONDSTORE/QRESYNC",
        ));
    }
    if snapshot.select.is_none() {
        return finish_unselected(lines, &caps, snapshot);
    }
    check_caps(&caps, snapshot)?;
    if uidvalidity != Some(snapshot.uidvalidity) {
        return Err(ResumeError::Changed(
            "UIDVALIDITY differs on the new backend",
        ));
    }
    if !listed_all {
        return Err(ResumeError::Backend("no UID list from the new backend"));
    }
    let found = listing.finish();
    if Some(found.len()) != select_exists.map(u64::from) {
        return Err(ResumeError::Changed(
            "the new backend's UID list differs from its SELECT",
        ));
    }
    let old = old.ok_or(ResumeError::Backend("no snapshot from the old backend"))?;
    if old.uids.len() != u64::from(snapshot.exists) {
        return Err(ResumeError::Changed(
            "the client's message count differs from the old backend's",
        ));
    }
    let mailbox = snapshot
        .select
        .and_then(|(_, args)| mailbox_name(args))
        .ok_or(ResumeError::Backend("mailbox name not understood"))?;
    let probe = probe(
        backend,
        client,
        login,
        &mailbox,
        old.uids.max(),
        old.highest_modseq,
    )
    .await?;
    if probe.highest_modseq < old.highest_modseq {
        return Err(ResumeError::Changed(
            "HIGHESTMODSEQ went down between the old and the new backend",
        ));
    }
    // Stage 2: expunges, appends and flag changes since the old snapshot
    // are told to the client as the new backend would have told it.
    let views = Views {
        old: &old.uids,
        new: &found,
        updates: &probe.updates,
        flag_lists: &flag_lists,
        old_flags: Some(&old.flags),
    };
    let extensions = ClientExtensions {
        condstore: snapshot.condstore,
        qresync: snapshot.qresync,
    };
    let (mut to_client, reconciled) =
        reconcile(&views, extensions).map_err(ResumeError::Changed)?;
    // Commit: the client's IDLE goes on here.
    let mut idle = idle_tag.to_vec();
    idle.extend_from_slice(b" IDLE\r\n");
    write_bytes(stream, &idle)
        .await
        .map_err(|_| ResumeError::Backend("new backend connection lost"))?;
    loop {
        let l = line(&mut lines, stream).await?;
        if l.first() == Some(&b'+') {
            break;
        }
        if l.first() != Some(&b'*') || ends_in_literal(&l) {
            return Err(ResumeError::Backend("the new backend refused IDLE"));
        }
        to_client.extend_from_slice(&l);
        to_client.extend_from_slice(b"\r\n");
    }
    to_client.extend_from_slice(&lines.into_leftover());
    Ok((to_client, reconciled))
}

/// An authenticated session without a mailbox: logged in (and ENABLE
/// replayed) is all; bytes read past the last answer go to the client.
fn finish_unselected(
    lines: LineReader,
    caps: &Option<Vec<u8>>,
    snapshot: &Snapshot<'_>,
) -> Result<(Vec<u8>, Reconciled), ResumeError> {
    check_caps(caps, snapshot)?;
    Ok((lines.into_leftover(), Reconciled::default()))
}

/// The new backend must offer what the session relies on.
fn check_caps(caps: &Option<Vec<u8>>, snapshot: &Snapshot<'_>) -> Result<(), ResumeError> {
    let caps = caps
        .as_deref()
        .ok_or(ResumeError::Backend("no capabilities from the new backend"))?;
    let has = |c: &[u8]| {
        caps.split(|&b| b == b' ')
            .any(|w| w.eq_ignore_ascii_case(c))
    };
    if snapshot.idle_tag.is_some() && !has(b"IDLE") {
        return Err(ResumeError::Backend("the new backend does not offer IDLE"));
    }
    if snapshot.qresync && !has(b"QRESYNC") || snapshot.condstore && !has(b"CONDSTORE") {
        return Err(ResumeError::Backend(
            "the new backend does not offer CONDSTORE/QRESYNC",
        ));
    }
    Ok(())
}

/// The words of a `[CAPABILITY ...]` response code in `line`.
fn capability_code(line: &[u8]) -> Option<Vec<u8>> {
    let start = line
        .windows(12)
        .position(|w| w.eq_ignore_ascii_case(b"[CAPABILITY "))?
        + 12;
    let end = start + line[start..].iter().position(|&b| b == b']')?;
    Some(line[start..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_names_modseq_and_its_removal() {
        assert_eq!(mailbox_name(b"INBOX"), Some(b"INBOX".to_vec()));
        assert_eq!(
            mailbox_name(b"\"Sent \\\"x\\\"\" (CONDSTORE)"),
            Some(b"\"Sent \\\"x\\\"\"".to_vec())
        );
        assert_eq!(mailbox_name(b"{5}"), None);
        assert_eq!(
            status_modseq(b"* STATUS INBOX (HIGHESTMODSEQ 42)"),
            Some(42)
        );
        assert_eq!(
            strip_modseq(b"* 3 FETCH (UID 5 MODSEQ (12) FLAGS (\\Seen))"),
            b"* 3 FETCH (UID 5 FLAGS (\\Seen))".to_vec()
        );
        assert_eq!(
            strip_modseq(b"* 3 FETCH (FLAGS (\\Seen) MODSEQ (12))"),
            b"* 3 FETCH (FLAGS (\\Seen))".to_vec()
        );
    }

    #[test]
    fn our_tags_never_equal_the_clients() {
        assert_eq!(our_tag(2, b"a1"), "mpm2");
        assert_eq!(our_tag(2, b"mpm2"), "mpmx2");
    }

    #[test]
    fn capability_codes_are_found_in_a_tagged_ok() {
        assert_eq!(
            capability_code(b"mpm5 OK [CAPABILITY IMAP4rev1 IDLE] Logged in"),
            Some(b"IMAP4rev1 IDLE".to_vec())
        );
        assert_eq!(capability_code(b"mpm5 OK Logged in"), None);
    }
}
