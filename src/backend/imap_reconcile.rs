//! Stage 2 of a live IMAP move (issue 12): what the client is told so that
//! its view of the mailbox (the old backend's, at the snapshot) becomes the
//! new backend's view at its `SELECT`, as Dovecot's `imap-state.c` does.
//!
//! Pure parts only, no I/O: UID sets as the backends list them
//! (`UID FETCH 1:* (UID)`, one line per message: Dovecot's ESEARCH `ALL`
//! turns sequence ranges into UID ranges, so it covers expunged UIDs and
//! cannot say which UIDs exist), the flag changes read on the probe
//! connection, and [`reconcile`], which turns both views into untagged
//! responses, in this order: the expunges (`* n EXPUNGE` with the client's
//! sequence numbers, highest first so none shifts another; or one
//! `* VANISHED` for a client that enabled QRESYNC), `* n EXISTS` for
//! appends, the mailbox's `FLAGS` / `PERMANENTFLAGS` when its keyword list
//! changed or a changed message carries a keyword, and `* n FETCH (FLAGS (...))` for each message whose
//! flags changed (`UID` only for QRESYNC clients, RFC 7162 §3.2.4;
//! `MODSEQ` only for CONDSTORE/QRESYNC clients, §3.1). Every step is
//! bounded; anything not understood is an error, and the caller ends the
//! session rather than leave the client with a wrong view.

/// UID ranges accepted in one set; a more fragmented mailbox is not
/// reconciled (the session ends with `BYE`, as without stage 2).
pub const MAX_UID_RANGES: usize = 32_768;

/// Messages a selected mailbox may hold for its session to move live: each
/// move lists their UIDs on both backends (one short line per message).
pub const MAX_LISTED_MESSAGES: u32 = 100_000;

/// `* n EXPUNGE` lines sent at most (a QRESYNC client gets one `VANISHED`).
pub const MAX_EXPUNGES: u64 = 10_000;

/// Changed messages whose flags are forwarded at most.
pub const MAX_FLAG_UPDATES: usize = 5_000;

/// A set of UIDs: ascending, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidSet {
    ranges: Vec<(u32, u32)>,
}

impl UidSet {
    /// Adds `uid`, higher than every UID in the set; an error when it is
    /// not, or when the set would have more than [`MAX_UID_RANGES`] ranges.
    pub fn push(&mut self, uid: u32) -> Result<(), &'static str> {
        let full = self.ranges.len() >= MAX_UID_RANGES;
        match self.ranges.last_mut() {
            Some(last) if uid <= last.1 => Err("UIDs listed out of order"),
            Some(last) if uid == last.1 + 1 => {
                last.1 = uid;
                Ok(())
            }
            _ if full => Err("a UID set too fragmented to reconcile"),
            _ => {
                self.ranges.push((uid, uid));
                Ok(())
            }
        }
    }

    /// Parses an ascending sequence set (`1:5,7,9:12`); `None` when it is
    /// not one, descends, overlaps or has more than [`MAX_UID_RANGES`]
    /// ranges.
    #[cfg(test)]
    pub fn parse(text: &[u8]) -> Option<UidSet> {
        let mut set = UidSet::default();
        for part in text.split(|&b| b == b',') {
            let mut ends = part.splitn(2, |&b| b == b':');
            let a = uid(ends.next()?)?;
            let b = match ends.next() {
                Some(b) => uid(b)?,
                None => a,
            };
            let (lo, hi) = (a.min(b), a.max(b));
            if set.ranges.len() >= MAX_UID_RANGES {
                return None;
            }
            match set.ranges.last_mut() {
                Some(last) if lo <= last.1 => return None,
                Some(last) if lo == last.1 + 1 => last.1 = hi,
                _ => set.ranges.push((lo, hi)),
            }
        }
        Some(set)
    }

    /// How many UIDs.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The highest UID.
    pub fn max(&self) -> Option<u32> {
        self.ranges.last().map(|r| r.1)
    }

    /// The lowest UID.
    pub fn min(&self) -> Option<u32> {
        self.ranges.first().map(|r| r.0)
    }

    /// The UIDs of `self` not in `other`.
    pub fn minus(&self, other: &UidSet) -> UidSet {
        let mut out = UidSet::default();
        let mut j = 0;
        for &(lo, hi) in &self.ranges {
            let mut from = lo;
            while j < other.ranges.len() && other.ranges[j].1 < from {
                j += 1;
            }
            let mut k = j;
            while from <= hi {
                match other.ranges.get(k) {
                    Some(&(olo, ohi)) if olo <= hi => {
                        if olo > from {
                            out.ranges.push((from, olo - 1));
                        }
                        match ohi.checked_add(1) {
                            Some(next) if ohi < hi => from = next,
                            _ => break,
                        }
                        k += 1;
                    }
                    _ => {
                        out.ranges.push((from, hi));
                        break;
                    }
                }
            }
        }
        out
    }

    /// The sequence-set text (`1:5,7`).
    pub fn to_text(&self) -> String {
        let parts: Vec<String> = self
            .ranges
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}:{b}")
                }
            })
            .collect();
        parts.join(",")
    }

    /// Sequence numbers: position of each UID in the set, 1-based.
    pub fn positions(&self) -> Positions<'_> {
        let mut before = Vec::with_capacity(self.ranges.len());
        let mut n = 0u64;
        for &(a, b) in &self.ranges {
            before.push(n);
            n += u64::from(b - a) + 1;
        }
        Positions { set: self, before }
    }

    /// The UIDs, highest first.
    pub fn descending(&self) -> impl Iterator<Item = u32> + '_ {
        self.ranges.iter().rev().flat_map(|&(a, b)| (a..=b).rev())
    }
}

/// A UID set listed message by message (`* n FETCH (UID u)` in sequence
/// order), bounded by [`MAX_LISTED_MESSAGES`].
#[derive(Debug, Default)]
pub struct Listing {
    set: UidSet,
    count: u64,
}

impl Listing {
    /// Message `seq` has UID `uid`; an error unless `seq` is the next
    /// sequence number and `uid` the highest so far.
    pub fn add(&mut self, seq: u64, uid: u32) -> Result<(), &'static str> {
        if seq != self.count + 1 {
            return Err("messages listed out of sequence");
        }
        if self.count >= u64::from(MAX_LISTED_MESSAGES) {
            return Err("mailbox too large to reconcile");
        }
        self.set.push(uid)?;
        self.count += 1;
        Ok(())
    }

    /// The UIDs listed.
    pub fn finish(self) -> UidSet {
        self.set
    }
}

/// Sequence numbers of the UIDs of a [`UidSet`].
pub struct Positions<'a> {
    set: &'a UidSet,
    /// UIDs in the ranges before each range.
    before: Vec<u64>,
}

impl Positions<'_> {
    /// The 1-based sequence number of `uid`, if the set holds it.
    pub fn of(&self, uid: u32) -> Option<u64> {
        let i = self.set.ranges.partition_point(|r| r.1 < uid);
        let &(lo, _) = self.set.ranges.get(i).filter(|r| r.0 <= uid)?;
        Some(self.before[i] + u64::from(uid - lo) + 1)
    }
}

fn uid(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok().filter(|&n| n > 0)
}

/// What a line of a `UID FETCH 1:* (UID)` answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// `* n FETCH (UID u)` (a `MODSEQ` item allowed): message n has UID u.
    Message {
        /// The sequence number.
        seq: u64,
        /// The UID.
        uid: u32,
    },
    /// Another FETCH (flags changed meanwhile, say).
    OtherFetch,
    /// Not a FETCH.
    NotFetch,
}

/// Reads a line of a `UID FETCH 1:* (UID)` answer.
pub fn listed(line: &[u8]) -> Listed {
    let Some(rest) = line.strip_prefix(b"* ") else {
        return Listed::NotFetch;
    };
    let Some(space) = rest.iter().position(|&b| b == b' ') else {
        return Listed::NotFetch;
    };
    let Some(seq) = uid(&rest[..space]) else {
        return Listed::NotFetch;
    };
    let rest = &rest[space + 1..];
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case(b"FETCH (") {
        return Listed::NotFetch;
    }
    let mut found = None;
    for (name, value) in fetch_items(&rest[7..]).into_iter().flatten() {
        if name.eq_ignore_ascii_case(b"UID") {
            found = uid(value);
        } else if !name.eq_ignore_ascii_case(b"MODSEQ") {
            return Listed::OtherFetch;
        }
    }
    match found {
        Some(uid) => Listed::Message {
            seq: u64::from(seq),
            uid,
        },
        None => Listed::OtherFetch,
    }
}

/// The `name value` pairs of a FETCH item list (`UID 5 FLAGS (\Seen)
/// MODSEQ (7))`, closing parenthesis included); `None` when not understood
/// (a literal, a nested list).
fn fetch_items(list: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut rest = list.strip_suffix(b")")?;
    let mut items = Vec::new();
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b' ')?;
        let (name, after) = (&rest[..end], &rest[end + 1..]);
        let (value, next) = if after.first() == Some(&b'(') {
            let close = after.iter().position(|&b| b == b')')?;
            (&after[1..close], &after[close + 1..])
        } else {
            let close = after.iter().position(|&b| b == b' ').unwrap_or(after.len());
            (&after[..close], &after[close..])
        };
        if value.contains(&b'{') || value.contains(&b'(') {
            return None;
        }
        items.push((name, value));
        rest = next.strip_prefix(b" ").unwrap_or(next);
    }
    Some(items)
}

/// A message's flags as the probe connection read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUpdate {
    /// The message.
    pub uid: u32,
    /// The flags, space-separated, without `\Recent` (a flag of one
    /// session that cannot move with it).
    pub flags: Vec<u8>,
    /// Its MODSEQ.
    pub modseq: u64,
}

impl FlagUpdate {
    /// Whether a flag is a keyword (not a system flag starting with `\`).
    fn has_keyword(&self) -> bool {
        self.flags
            .split(|&b| b == b' ')
            .any(|f| !f.is_empty() && f[0] != b'\\')
    }
}

/// Reads `* n FETCH (UID u FLAGS (...) MODSEQ (m))` (items in any order);
/// `None` for any other line or a FETCH without all three.
pub fn flag_fetch(line: &[u8]) -> Option<FlagUpdate> {
    let rest = line.strip_prefix(b"* ")?;
    let space = rest.iter().position(|&b| b == b' ')?;
    uid(&rest[..space])?;
    let rest = &rest[space + 1..];
    if rest.len() < 7 || !rest[..7].eq_ignore_ascii_case(b"FETCH (") {
        return None;
    }
    let (mut found_uid, mut flags, mut modseq) = (None, None, None);
    for (name, value) in fetch_items(&rest[7..])? {
        if name.eq_ignore_ascii_case(b"UID") {
            found_uid = uid(value);
        } else if name.eq_ignore_ascii_case(b"FLAGS") {
            let kept: Vec<&[u8]> = value
                .split(|&b| b == b' ')
                .filter(|f| !f.is_empty() && !f.eq_ignore_ascii_case(b"\\Recent"))
                .collect();
            flags = Some(kept.join(&b' '));
        } else if name.eq_ignore_ascii_case(b"MODSEQ") {
            modseq = std::str::from_utf8(value).ok()?.parse().ok();
        } else {
            return None;
        }
    }
    Some(FlagUpdate {
        uid: found_uid?,
        flags: flags?,
        modseq: modseq?,
    })
}

/// What the client enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientExtensions {
    /// CONDSTORE on (enabled, or switched on by a command).
    pub condstore: bool,
    /// QRESYNC enabled.
    pub qresync: bool,
}

/// The two views and what changed in between.
#[derive(Debug)]
pub struct Views<'a> {
    /// The UIDs the client knows, in its sequence order (old backend, after
    /// the sync whose updates the client got).
    pub old: &'a UidSet,
    /// The UIDs of the new backend's session after its `SELECT`.
    pub new: &'a UidSet,
    /// Flags of messages changed since the old HIGHESTMODSEQ (probe).
    pub updates: &'a [FlagUpdate],
    /// The new `SELECT`'s `* FLAGS` and `* OK [PERMANENTFLAGS` lines.
    pub flag_lists: &'a [Vec<u8>],
    /// The old backend's `* FLAGS` line at the snapshot (the client's,
    /// since the sync it got tells of every new keyword), if read.
    pub old_flags: Option<&'a [u8]>,
}

/// What [`reconcile`] tells the client, in numbers (for the session log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Messages expunged.
    pub expunged: u64,
    /// Messages appended.
    pub appended: u64,
    /// Messages whose flags were sent.
    pub flags: u64,
}

impl Reconciled {
    /// Whether anything was sent.
    pub fn any(&self) -> bool {
        *self != Reconciled::default()
    }
}

/// The untagged responses that take the client from `views.old` to
/// `views.new` (see the module documentation), and what they were; an
/// error when the views cannot be reconciled safely.
pub fn reconcile(
    views: &Views<'_>,
    client: ClientExtensions,
) -> Result<(Vec<u8>, Reconciled), &'static str> {
    let removed = views.old.minus(views.new);
    let added = views.new.minus(views.old);
    if let (Some(low), Some(known)) = (added.min(), views.old.max()) {
        if low <= known {
            return Err("a message appeared below the highest UID the client knows");
        }
    }
    let mut done = Reconciled {
        expunged: removed.len(),
        appended: added.len(),
        flags: 0,
    };
    let mut out = Vec::new();
    if client.qresync {
        if !removed.is_empty() {
            out.extend_from_slice(format!("* VANISHED {}\r\n", removed.to_text()).as_bytes());
        }
    } else {
        if removed.len() > MAX_EXPUNGES {
            return Err("too many expunges to reconcile");
        }
        let old = views.old.positions();
        for uid in removed.descending() {
            let seq = old
                .of(uid)
                .ok_or("an expunged UID the client does not know")?;
            out.extend_from_slice(format!("* {seq} EXPUNGE\r\n").as_bytes());
        }
    }
    // After VANISHED the count is said again, so the client (and the
    // session tracker) knows it for sure.
    if !added.is_empty() || (client.qresync && !removed.is_empty()) {
        out.extend_from_slice(format!("* {} EXISTS\r\n", views.new.len()).as_bytes());
    }
    if views.updates.len() > MAX_FLAG_UPDATES {
        return Err("too many flag changes to reconcile");
    }
    let new = views.new.positions();
    let mut known: Vec<(u64, &FlagUpdate)> = views
        .updates
        .iter()
        .filter(|u| views.old.max().is_some_and(|m| u.uid <= m))
        .filter_map(|u| new.of(u.uid).map(|seq| (seq, u)))
        .collect();
    known.sort_by_key(|(seq, _)| *seq);
    let new_flags = views.flag_lists.iter().find(|l| l.starts_with(b"* FLAGS "));
    let list_changed = views.old_flags != new_flags.map(Vec::as_slice);
    if list_changed || known.iter().any(|(_, u)| u.has_keyword()) {
        for line in views.flag_lists {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
    }
    for (seq, u) in known {
        out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
        if client.qresync {
            out.extend_from_slice(format!("UID {} ", u.uid).as_bytes());
        }
        out.extend_from_slice(b"FLAGS (");
        out.extend_from_slice(&u.flags);
        out.push(b')');
        if client.condstore || client.qresync {
            out.extend_from_slice(format!(" MODSEQ ({})", u.modseq).as_bytes());
        }
        out.extend_from_slice(b")\r\n");
        done.flags += 1;
    }
    Ok((out, done))
}

#[cfg(test)]
mod tests;
