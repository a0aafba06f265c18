//! A passive follower of one logged-in IMAP session, fed the bytes the
//! relay passes each way, that knows enough to say whether the session can
//! be moved to another backend live (issue 12) and what to replay there.
//!
//! It never changes a byte and never allocates while bytes flow: each
//! direction is cut into logical lines by a [`Framer`] that keeps only the
//! first [`HEAD`] bytes of a line in a fixed array and skips literals
//! (`{n}`, `{n+}`, `~{n}`) by counting. What it follows (RFC 9051, RFC 3501,
//! RFC 7162): the state (authenticated / selected), the tagged commands
//! still unanswered, the client's IDLE (its tag; `+` seen; `DONE` sent),
//! SELECT / EXAMINE with their argument bytes as the client sent them,
//! UIDVALIDITY, the EXISTS count the client has been told (EXISTS less each
//! EXPUNGE and each UID of a VANISHED), what `* ENABLED` turned on and CONDSTORE switched on by a
//! command. Blockers make a session unmovable for good: COMPRESS, NOTIFY,
//! saved search results (`$`, `RETURN (SAVE)`), CONTEXT=SEARCH updates, a
//! `* BYE`, or a tag longer than [`MAX_TAG`].

/// Bytes of a client command line kept for parsing (SELECT arguments are
/// replayed from it); the rest of a longer line is skipped.
pub const HEAD: usize = 160;

/// Bytes of a backend response line kept: enough for a tag and a status,
/// `* n EXISTS`, `* OK [UIDVALIDITY n]`, `* ENABLED ...`.
pub const RESPONSE_HEAD: usize = 64;

/// The longest tag followed; a longer one makes the session unmovable.
pub const MAX_TAG: usize = 32;

/// The longest SELECT / EXAMINE argument kept for replay.
pub const MAX_SELECT_ARGS: usize = HEAD;

/// The end of a line, as far as a literal announcement goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Brace {
    /// The line does not end in a literal announcement (so far).
    None,
    /// Inside `{digits`.
    Digits(u64),
    /// After `{digits+` (or `-`, LITERAL-).
    Plus(u64),
    /// After `{digits}`: a literal of that size follows the line end.
    Closed(u64),
}

/// Cuts one direction's bytes into logical lines (a line, and after each
/// literal it announces, the rest of the same command or response).
#[derive(Debug)]
struct Framer<const N: usize> {
    head: [u8; N],
    len: u8,
    /// The first physical line was longer than `N`.
    overflow: bool,
    /// Some byte of the current logical line has been seen.
    started: bool,
    /// The logical line goes on after a literal.
    continued: bool,
    /// Bytes of literal still to skip.
    literal_left: u64,
    brace: Brace,
}

impl<const N: usize> Framer<N> {
    fn new() -> Self {
        Framer {
            head: [0; N],
            len: 0,
            overflow: false,
            started: false,
            continued: false,
            literal_left: 0,
            brace: Brace::None,
        }
    }

    /// At a line boundary: nothing of a line or literal pending.
    fn at_boundary(&self) -> bool {
        !self.started && self.literal_left == 0
    }

    fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.len)]
    }

    fn reset(&mut self) {
        self.len = 0;
        self.overflow = false;
        self.started = false;
        self.continued = false;
        self.brace = Brace::None;
    }

    /// Consumes bytes of `chunk` from `*pos`; true when a logical line
    /// ended (its head is in [`Framer::head`]; call [`Framer::reset`]
    /// after handling it), false when the chunk is used up.
    fn feed(&mut self, chunk: &[u8], pos: &mut usize) -> bool {
        while *pos < chunk.len() {
            if self.literal_left > 0 {
                let take = (chunk.len() - *pos)
                    .min(usize::try_from(self.literal_left).unwrap_or(usize::MAX));
                *pos += take;
                self.literal_left -= take as u64;
                continue;
            }
            self.started = true;
            let rest = &chunk[*pos..];
            let (segment, ends) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            *pos += segment.len() + usize::from(ends);
            if !self.continued {
                let room = N - usize::from(self.len);
                let body = segment
                    .strip_suffix(b"\r")
                    .filter(|_| ends)
                    .unwrap_or(segment);
                let n = body.len().min(room);
                let at = usize::from(self.len);
                self.head[at..at + n].copy_from_slice(&body[..n]);
                self.len += n as u8;
                if body.len() > room {
                    self.overflow = true;
                }
            }
            self.scan_brace(segment);
            if !ends {
                return false;
            }
            if let Brace::Closed(n) = self.brace {
                self.literal_left = n;
                self.continued = true;
                self.brace = Brace::None;
                continue;
            }
            return true;
        }
        false
    }

    /// Follows whether the line so far ends in `{n}` (a CR before the LF
    /// is allowed).
    fn scan_brace(&mut self, segment: &[u8]) {
        let from = match segment.iter().rposition(|&b| b == b'{') {
            Some(i) => {
                self.brace = Brace::Digits(0);
                i + 1
            }
            None if self.brace == Brace::None => return,
            None => 0,
        };
        for &b in &segment[from..] {
            self.brace = match (self.brace, b) {
                (Brace::Digits(n), b'0'..=b'9') => {
                    Brace::Digits(n.saturating_mul(10).saturating_add(u64::from(b - b'0')))
                }
                (Brace::Digits(n), b'+' | b'-') => Brace::Plus(n),
                (Brace::Digits(n) | Brace::Plus(n), b'}') => Brace::Closed(n),
                (Brace::Closed(n), b'\r') => Brace::Closed(n),
                _ => Brace::None,
            };
        }
    }
}

/// A tag, kept without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tag {
    bytes: [u8; MAX_TAG],
    len: u8,
}

impl Tag {
    const NONE: Tag = Tag {
        bytes: [0; MAX_TAG],
        len: 0,
    };

    fn of(tag: &[u8]) -> Option<Tag> {
        if tag.is_empty() || tag.len() > MAX_TAG {
            return None;
        }
        let mut t = Tag::NONE;
        t.bytes[..tag.len()].copy_from_slice(tag);
        t.len = tag.len() as u8;
        Some(t)
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn is(&self, tag: &[u8]) -> bool {
        self.len > 0 && self.get() == tag
    }
}

/// SELECT / EXAMINE arguments, kept inline: a session allocates nothing
/// after its relay starts (a small block cut from a freed pre-login block
/// would leave a hole the next session's pre-login block cannot use).
#[derive(Debug, Clone, Copy)]
struct Args {
    bytes: [u8; MAX_SELECT_ARGS],
    len: u8,
}

impl Args {
    const EMPTY: Args = Args {
        bytes: [0; MAX_SELECT_ARGS],
        len: 0,
    };

    /// `args`, which the head bound keeps within [`MAX_SELECT_ARGS`].
    fn of(args: &[u8]) -> Args {
        let n = args.len().min(MAX_SELECT_ARGS);
        let mut a = Args::EMPTY;
        a.bytes[..n].copy_from_slice(&args[..n]);
        a.len = n as u8;
        a
    }

    fn get(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where the client's IDLE stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idle {
    /// No IDLE command in progress.
    None,
    /// IDLE sent, the backend's `+` not yet seen.
    Requested,
    /// The backend said `+`: idling, the client has not sent `DONE`.
    Active,
    /// `DONE` sent, the tagged answer not yet seen.
    Done,
}

/// The mailbox state the client believes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mailbox {
    /// Logged in, nothing selected.
    None,
    /// A mailbox is selected (its SELECT or EXAMINE answered OK).
    Selected,
}

/// What a live move must replay and verify on the new backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<'a> {
    /// `Some` when a mailbox is selected: the command (`SELECT` or
    /// `EXAMINE`) and its arguments, bytes as the client sent them.
    pub select: Option<(&'static str, &'a [u8])>,
    /// UIDVALIDITY of the selected mailbox.
    pub uidvalidity: u32,
    /// The EXISTS count the client has been told.
    pub exists: u32,
    /// The client's IDLE tag, when it is idling.
    pub idle_tag: Option<&'a [u8]>,
    /// CONDSTORE on (enabled, or switched on by a command).
    pub condstore: bool,
    /// QRESYNC enabled.
    pub qresync: bool,
}

/// Follows one session (see the module documentation).
#[derive(Debug)]
pub struct ImapTracker {
    up: Framer<HEAD>,
    down: Framer<RESPONSE_HEAD>,
    state: SessionState,
}

/// What the tracker knows of the session (apart from the line framing).
#[derive(Debug)]
struct SessionState {
    mailbox: Mailbox,
    /// Tagged commands without a tagged answer yet.
    outstanding: u32,
    idle: Idle,
    idle_tag: Tag,
    /// The SELECT / EXAMINE awaiting its answer: tag, EXAMINE?, arguments
    /// usable for replay.
    pending_select: Option<(Tag, bool, bool)>,
    pending_args: Args,
    selected_examine: bool,
    selected_args: Args,
    uidvalidity: u32,
    exists: u32,
    /// An untracked change of the message count (a VANISHED too long to
    /// count) since the last EXISTS: the client's count is not known.
    exists_unknown: bool,
    condstore: bool,
    qresync: bool,
    /// A command line too long to read whole may have switched CONDSTORE on.
    condstore_unknown: bool,
    /// Why the session can never move, if so.
    blocked: Option<&'static str>,
}

impl Default for ImapTracker {
    fn default() -> Self {
        ImapTracker::new()
    }
}

impl ImapTracker {
    /// A session just logged in: authenticated, nothing selected.
    pub fn new() -> ImapTracker {
        ImapTracker {
            up: Framer::new(),
            down: Framer::new(),
            state: SessionState::new(),
        }
    }

    /// Bytes the client sent, as passed on to the backend.
    pub fn client_bytes(&mut self, chunk: &[u8]) {
        let mut pos = 0;
        while self.up.feed(chunk, &mut pos) {
            let (overflow, literal) = (self.up.overflow, self.up.continued);
            self.state.command(self.up.head(), overflow, literal);
            self.up.reset();
        }
    }

    /// Bytes the backend sent, as passed on to the client.
    pub fn backend_bytes(&mut self, chunk: &[u8]) {
        let mut pos = 0;
        while self.down.feed(chunk, &mut pos) {
            let cut = self.down.overflow;
            self.state.response(self.down.head(), cut);
            self.down.reset();
        }
    }

    /// The mailbox state.
    pub fn mailbox(&self) -> Mailbox {
        self.state.mailbox
    }

    /// The EXISTS count the client has been told.
    pub fn exists(&self) -> u32 {
        self.state.exists
    }

    /// What to replay, when the session can move live now; otherwise why
    /// not. Movable: idling in a selected mailbox with nothing else in
    /// flight (stage 1), or authenticated with no command at all in
    /// flight; both directions at a line boundary.
    pub fn movable(&self) -> Result<Snapshot<'_>, &'static str> {
        if !self.up.at_boundary() || !self.down.at_boundary() {
            return Err("in the middle of a line or literal");
        }
        self.state.movable()
    }
}

impl SessionState {
    fn new() -> SessionState {
        SessionState {
            mailbox: Mailbox::None,
            outstanding: 0,
            idle: Idle::None,
            idle_tag: Tag::NONE,
            pending_select: None,
            pending_args: Args::EMPTY,
            selected_examine: false,
            selected_args: Args::EMPTY,
            uidvalidity: 0,
            exists: 0,
            exists_unknown: false,
            condstore: false,
            qresync: false,
            condstore_unknown: false,
            blocked: None,
        }
    }

    /// See [`ImapTracker::movable`]; the framing is checked there.
    fn movable(&self) -> Result<Snapshot<'_>, &'static str> {
        if let Some(reason) = self.blocked {
            return Err(reason);
        }
        if self.condstore_unknown && !self.condstore {
            return Err("a command too long to follow may have enabled CONDSTORE");
        }
        let base = Snapshot {
            select: None,
            uidvalidity: 0,
            exists: 0,
            idle_tag: None,
            condstore: self.condstore,
            qresync: self.qresync,
        };
        match self.mailbox {
            Mailbox::None if self.outstanding == 0 && self.idle == Idle::None => Ok(base),
            Mailbox::None => Err("a command is in progress"),
            Mailbox::Selected => {
                if self.idle != Idle::Active || self.outstanding != 1 {
                    return Err("not idling");
                }
                if self.exists_unknown {
                    return Err("message count unknown after VANISHED");
                }
                if self.selected_args.is_empty() {
                    return Err("mailbox name not replayable");
                }
                let command = if self.selected_examine {
                    "EXAMINE"
                } else {
                    "SELECT"
                };
                Ok(Snapshot {
                    select: Some((command, self.selected_args.get())),
                    uidvalidity: self.uidvalidity,
                    exists: self.exists,
                    idle_tag: Some(self.idle_tag.get()),
                    ..base
                })
            }
        }
    }

    fn block(&mut self, reason: &'static str) {
        if self.blocked.is_none() {
            self.blocked = Some(reason);
        }
    }

    /// One logical client line; `overflow`: its first line was cut at
    /// [`HEAD`]; `literal`: it carried a literal.
    fn command(&mut self, head: &[u8], overflow: bool, literal: bool) {
        if matches!(self.idle, Idle::Requested | Idle::Active) {
            // Inside IDLE the client sends only DONE (anything else ends
            // the IDLE with a BAD all the same).
            self.idle = Idle::Done;
            return;
        }
        let mut words = head.splitn(3, |&b| b == b' ');
        let tag = words.next().unwrap_or_default();
        let name = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default();
        let Some(tag) = Tag::of(tag) else {
            self.block("tag too long");
            return;
        };
        self.outstanding = self.outstanding.saturating_add(1);
        if overflow && !self.condstore {
            self.condstore_unknown = true;
        }
        let (name, rest) = if name.eq_ignore_ascii_case(b"UID") {
            let mut w = rest.splitn(2, |&b| b == b' ');
            (w.next().unwrap_or_default(), w.next().unwrap_or_default())
        } else {
            (name, rest)
        };
        if contains_word(rest, b"CHANGEDSINCE")
            || contains_word(rest, b"UNCHANGEDSINCE")
            || contains_word(rest, b"MODSEQ")
            || contains_word(rest, b"CONDSTORE")
            || contains_word(rest, b"HIGHESTMODSEQ")
        {
            self.condstore = true;
        }
        if rest
            .split(|&b| b == b' ' || b == b'(' || b == b')')
            .any(|w| w == b"$")
        {
            self.block("saved search result ($) in use");
        }
        let mut upper = [0u8; WORD];
        match upper_word(name, &mut upper) {
            b"IDLE" => {
                self.idle = Idle::Requested;
                self.idle_tag = tag;
            }
            b"SELECT" | b"EXAMINE" => {
                let examine = name.eq_ignore_ascii_case(b"EXAMINE");
                let usable = !overflow && !literal && !rest.is_empty();
                self.pending_args = if usable { Args::of(rest) } else { Args::EMPTY };
                self.pending_select = Some((tag, examine, usable));
                // RFC 9051 §6.3.2: the current mailbox is closed at once.
                self.mailbox = Mailbox::None;
                self.exists = 0;
                self.uidvalidity = 0;
                self.exists_unknown = false;
            }
            b"CLOSE" | b"UNSELECT" => self.mailbox = Mailbox::None,
            b"COMPRESS" => self.block("COMPRESS in use"),
            b"NOTIFY" => self.block("NOTIFY in use"),
            b"SEARCH" | b"SORT" | b"THREAD" | b"ESEARCH"
                if contains_word(rest, b"SAVE") || contains_word(rest, b"UPDATE") =>
            {
                self.block("saved or updating search (SEARCHRES, CONTEXT=SEARCH)")
            }
            _ => {}
        }
    }

    /// One logical backend line.
    /// `cut`: the line was longer than [`RESPONSE_HEAD`].
    fn response(&mut self, head: &[u8], cut: bool) {
        if head.first() == Some(&b'+') {
            if self.idle == Idle::Requested {
                self.idle = Idle::Active;
            }
            return;
        }
        let mut words = head.splitn(3, |&b| b == b' ');
        let first = words.next().unwrap_or_default();
        let second = words.next().unwrap_or_default();
        let rest = words.next().unwrap_or_default();
        if first == b"*" {
            self.untagged(second, rest, cut);
            return;
        }
        // Tagged: a command is over.
        self.outstanding = self.outstanding.saturating_sub(1);
        let ok = second.eq_ignore_ascii_case(b"OK");
        if self.idle != Idle::None && self.idle_tag.is(first) {
            self.idle = Idle::None;
        }
        if let Some((tag, examine, usable)) = self.pending_select {
            if tag.is(first) {
                self.pending_select = None;
                if ok {
                    self.mailbox = Mailbox::Selected;
                    self.selected_examine = examine;
                    self.selected_args = if usable {
                        self.pending_args
                    } else {
                        Args::EMPTY
                    };
                }
            }
        }
    }

    fn untagged(&mut self, second: &[u8], rest: &[u8], cut: bool) {
        if let Ok(n) = ascii_u32(second) {
            let word = rest.split(|&b| b == b' ').next().unwrap_or_default();
            if word.eq_ignore_ascii_case(b"EXISTS") {
                self.exists = n;
                self.exists_unknown = false;
            } else if word.eq_ignore_ascii_case(b"EXPUNGE") {
                self.exists = self.exists.saturating_sub(1);
            }
            return;
        }
        let mut upper = [0u8; WORD];
        match upper_word(second, &mut upper) {
            b"OK" => {
                if let Some(v) = rest
                    .strip_prefix(b"[UIDVALIDITY ")
                    .and_then(|r| r.split(|&b| b == b']').next())
                {
                    if let Ok(v) = ascii_u32(v) {
                        self.uidvalidity = v;
                    }
                }
            }
            b"ENABLED" => {
                for cap in rest.split(|&b| b == b' ') {
                    if cap.eq_ignore_ascii_case(b"CONDSTORE") {
                        self.condstore = true;
                    } else if cap.eq_ignore_ascii_case(b"QRESYNC") {
                        self.qresync = true;
                        self.condstore = true;
                    }
                }
            }
            // Without (EARLIER) it lists only messages the client knew and
            // lowers the count by their number (RFC 7162 §3.2.10); a set
            // cut at the head bound leaves the count unknown.
            b"VANISHED" if !starts_with_ci(rest, b"(EARLIER)") => {
                match uid_set_size(rest).filter(|_| !cut) {
                    Some(n) if n <= self.exists => self.exists -= n,
                    _ => self.exists_unknown = true,
                }
            }
            b"BYE" => self.block("the backend said BYE"),
            _ => {}
        }
    }
}

/// Longest command or response word compared (without allocating).
const WORD: usize = 16;

/// `word` upper-cased into `buf`; empty when longer than [`WORD`].
fn upper_word<'b>(word: &[u8], buf: &'b mut [u8; WORD]) -> &'b [u8] {
    if word.len() > WORD {
        return &[];
    }
    for (d, s) in buf.iter_mut().zip(word) {
        *d = s.to_ascii_uppercase();
    }
    &buf[..word.len()]
}

/// A decimal number without sign.
fn ascii_u32(s: &[u8]) -> Result<u32, ()> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    std::str::from_utf8(s)
        .map_err(|_| ())?
        .parse()
        .map_err(|_| ())
}

/// How many UIDs a UID set (`3:5,9`) names; `None` when it is not one.
fn uid_set_size(set: &[u8]) -> Option<u32> {
    let mut n: u32 = 0;
    for part in set.split(|&b| b == b',') {
        let mut ends = part.splitn(2, |&b| b == b':');
        let a = ascii_u32(ends.next()?).ok()?;
        let b = match ends.next() {
            Some(b) => ascii_u32(b).ok()?,
            None => a,
        };
        n = n.checked_add(a.abs_diff(b) + 1)?;
    }
    Some(n)
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Whether `word` occurs in `s` as a whole word (case-insensitive).
fn contains_word(s: &[u8], word: &[u8]) -> bool {
    s.split(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.'))
        .any(|w| w.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests;
