//! The IMAP command reader: bytes from a client in, [`Command`]s out.
//!
//! [`CommandReader`] is incremental. The caller appends whatever it read to
//! a `Vec<u8>` and calls [`CommandReader::next`]; the reader remembers how
//! far it got, so a command that arrives one byte at a time costs the same
//! as one that arrives whole, and a line that never ends is rejected as
//! soon as it passes [`Limits::max_line`] without being kept in memory.
//!
//! Syntax (RFC 9051 / RFC 3501, RFC 7888 LITERAL+ and LITERAL-):
//!
//! - `tag SP name *(SP arg) CRLF`; a bare LF ends a line too.
//! - tag: one or more ASTRING-CHARs except `+`; name: an atom, upper-cased.
//! - arguments: atoms (including `\Seen`, `*`, `%`, sequence sets such as
//!   `1:*,3`, and FETCH items such as `BODY.PEEK[HEADER.FIELDS (FROM)]<0.2048>`
//!   whose `[...]` section may hold spaces and parentheses), quoted strings
//!   with `\"` and `\\` escapes, literals `{N}` (synchronising), `{N+}`
//!   (non-synchronising) and `~{N}` (literal8, read as a literal),
//!   parenthesised lists nested at most [`MAX_LIST_DEPTH`] deep, and `NIL`.
//!
//! Errors and what the caller does next are described on [`ParseError`].

use std::fmt;

/// How deep parenthesised lists may nest; deeper input is a syntax error.
pub const MAX_LIST_DEPTH: usize = 32;

/// Size limits the reader enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest line (without its CRLF, literal octets not counted).
    pub max_line: usize,
    /// Largest literal a client may announce.
    pub max_literal: usize,
    /// Largest whole command: every line and literal octet, CRLFs included.
    pub max_command: usize,
}

impl Default for Limits {
    /// 8 KiB lines, 64 KiB literals, 128 KiB commands: ample for every
    /// pre-login command (LOGIN, AUTHENTICATE, ID, CAPABILITY).
    fn default() -> Self {
        Limits {
            max_line: 8192,
            max_literal: 64 * 1024,
            max_command: 128 * 1024,
        }
    }
}

/// What [`CommandReader::next`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The command is not complete: read more bytes and call again.
    NeedMore,
    /// A synchronising literal `{N}` was announced (and accepted): write a
    /// continuation request such as `+ Ready for literal data\r\n`, then
    /// read more and call again. Returned exactly once per such literal.
    Continue,
    /// A whole command; its bytes have been drained from the buffer.
    Command(Command),
}

/// One client command.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    /// The client's tag, as sent.
    pub tag: String,
    /// The command name, upper-cased (`UID` for `UID FETCH ...`).
    pub name: String,
    /// The arguments after the name, in order.
    pub args: Vec<Arg>,
}

impl Command {
    /// The value of argument `index` read as an IMAP astring (atom, quoted
    /// string or literal), or `None` when it is missing or another kind.
    pub fn astring(&self, index: usize) -> Option<&[u8]> {
        self.args.get(index).and_then(Arg::as_astring)
    }
}

/// Commands whose arguments carry credentials; their `Debug` output hides
/// the arguments.
const SECRET_COMMANDS: [&str; 2] = ["LOGIN", "AUTHENTICATE"];

impl fmt::Debug for Command {
    /// Prints tag, name and arguments, except that the arguments of LOGIN
    /// and AUTHENTICATE are replaced by `<redacted>`: they hold passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Command");
        s.field("tag", &self.tag).field("name", &self.name);
        if SECRET_COMMANDS.contains(&self.name.as_str()) {
            s.field("args", &format_args!("<{} redacted>", self.args.len()));
        } else {
            s.field("args", &self.args);
        }
        s.finish()
    }
}

/// One argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    /// An atom: printable ASCII without specials (flags, sequence sets,
    /// FETCH items with their `[...]` section, search keys, ...).
    Atom(String),
    /// A quoted string, unescaped; may hold 8-bit (UTF-8) octets.
    Quoted(Vec<u8>),
    /// A literal's octets (`{N}`, `{N+}` or `~{N}`).
    Literal(Vec<u8>),
    /// A parenthesised list.
    List(Vec<Arg>),
    /// The atom `NIL` spelt in capitals. Other spellings stay
    /// [`Arg::Atom`]; [`Arg::is_nil`] accepts every spelling.
    Nil,
}

impl Arg {
    /// The value as an IMAP astring: an atom's text, a quoted string's or
    /// literal's octets, and `NIL` for [`Arg::Nil`] (where an astring is
    /// expected, NIL is an ordinary atom). `None` for a list.
    pub fn as_astring(&self) -> Option<&[u8]> {
        match self {
            Arg::Atom(atom) => Some(atom.as_bytes()),
            Arg::Quoted(bytes) | Arg::Literal(bytes) => Some(bytes),
            Arg::Nil => Some(b"NIL"),
            Arg::List(_) => None,
        }
    }

    /// Whether this is NIL in any letter case (`NIL`, `nil`, `Nil`).
    pub fn is_nil(&self) -> bool {
        match self {
            Arg::Nil => true,
            Arg::Atom(atom) => atom.eq_ignore_ascii_case("NIL"),
            _ => false,
        }
    }

    /// The elements of a parenthesised list, or `None` for anything else.
    pub fn as_list(&self) -> Option<&[Arg]> {
        match self {
            Arg::List(items) => Some(items),
            _ => None,
        }
    }
}

/// Why the reader rejected input.
///
/// Every variant carries the command's tag when one had been read, so the
/// caller can answer `TAG BAD ...` (or `* BAD ...` when `tag` is `None`).
///
/// After an error the reader has already reset itself and dropped the
/// offending bytes from the buffer, so it may be used again, but:
///
/// - [`ParseError::must_close`] is `true` when the client's byte stream can
///   no longer be trusted to be at a command boundary (an over-long command
///   or a non-synchronising literal that was refused: the client sends those
///   octets anyway). Answer `* BYE ...` and close.
/// - After [`ParseError::LineTooLong`] without a line end in sight, the
///   reader discards input up to the next LF and then resynchronises. This
///   is safe, but pre-login the recommended answer is `* BYE` and close:
///   nobody legitimate sends 8 KiB lines before logging in.
/// - After [`ParseError::Syntax`] and a synchronising
///   [`ParseError::LiteralTooLarge`], the offending line is gone and the
///   next line is read as a new command, as IMAP servers usually do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A line passed [`Limits::max_line`].
    LineTooLong {
        /// The tag, if one was read.
        tag: Option<String>,
    },
    /// A literal was announced larger than [`Limits::max_literal`]; the
    /// caller may answer `TAG NO [TOOBIG] ...` (or BAD). No continuation
    /// was requested.
    LiteralTooLarge {
        /// The tag, if one was read.
        tag: Option<String>,
        /// The announced size; `None` when it does not even fit in a `u64`.
        size: Option<u64>,
        /// Whether the literal was non-synchronising (`{N+}`): the client
        /// sends the octets regardless, so the connection must be closed.
        non_sync: bool,
    },
    /// The whole command passed [`Limits::max_command`].
    CommandTooLarge {
        /// The tag, if one was read.
        tag: Option<String>,
    },
    /// The input is not IMAP command syntax.
    Syntax {
        /// The tag, if one was read (`None` for an empty line).
        tag: Option<String>,
        /// What was wrong, suitable for the text of a BAD response.
        reason: &'static str,
    },
}

impl ParseError {
    /// The tag of the rejected command, if it had been read.
    pub fn tag(&self) -> Option<&str> {
        match self {
            ParseError::LineTooLong { tag }
            | ParseError::LiteralTooLarge { tag, .. }
            | ParseError::CommandTooLarge { tag }
            | ParseError::Syntax { tag, .. } => tag.as_deref(),
        }
    }

    /// Whether the caller must close the connection: the input stream is
    /// no longer at a known command boundary.
    pub fn must_close(&self) -> bool {
        match self {
            ParseError::CommandTooLarge { .. } => true,
            ParseError::LiteralTooLarge { non_sync, .. } => *non_sync,
            ParseError::LineTooLong { .. } | ParseError::Syntax { .. } => false,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::LineTooLong { .. } => f.write_str("line too long"),
            ParseError::LiteralTooLarge { size: Some(n), .. } => {
                write!(f, "literal of {n} octets too large")
            }
            ParseError::LiteralTooLarge { size: None, .. } => f.write_str("literal too large"),
            ParseError::CommandTooLarge { .. } => f.write_str("command too large"),
            ParseError::Syntax { reason, .. } => write!(f, "syntax error: {reason}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A problem found while reading one line, before the tag is attached.
enum Fault {
    Syntax(&'static str),
    LiteralTooLarge { size: Option<u64>, non_sync: bool },
    CommandTooLarge,
}

/// Where the reader is inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Just after a space: an argument must follow.
    Space,
    /// Just after `(`: an argument or `)` must follow.
    Open,
    /// Just after a complete token: a space, `)` or the line end follows.
    Token,
}

/// How a line ended.
enum LineEnd {
    /// The command is complete.
    Complete,
    /// The line announced a literal of `len` octets.
    Literal { len: usize, sync: bool },
}

/// The command being read: everything parsed so far.
#[derive(Debug)]
struct Partial {
    tag: Option<String>,
    name: Option<String>,
    /// The top-level arguments read so far.
    args: Vec<Arg>,
    /// Parenthesised lists opened and not yet closed, innermost last.
    open: Vec<Vec<Arg>>,
    /// Bytes at the front of the buffer that belong to this command and
    /// have been parsed (the command always starts at offset 0).
    parsed: usize,
    /// The search for the next LF resumes here (`>= parsed`).
    scanned: usize,
    /// Octets of an announced literal still to be read.
    literal: Option<usize>,
    last: Last,
}

impl Partial {
    fn new() -> Self {
        Partial {
            tag: None,
            name: None,
            args: Vec::new(),
            open: Vec::new(),
            parsed: 0,
            scanned: 0,
            literal: None,
            last: Last::Token,
        }
    }

    /// Appends a finished argument to the innermost open list.
    fn push(&mut self, arg: Arg) {
        match self.open.last_mut() {
            Some(list) => list.push(arg),
            None => self.args.push(arg),
        }
        self.last = Last::Token;
    }
}

/// Reads IMAP commands from a byte buffer, incrementally and within
/// [`Limits`]. One reader per connection.
///
/// Contract: between calls the caller only *appends* to the buffer (or
/// lets the reader drain it). [`CommandReader::take_line`] is for raw lines
/// between commands (IDLE's `DONE`, AUTHENTICATE answers), not in the
/// middle of one.
#[derive(Debug)]
pub struct CommandReader {
    limits: Limits,
    partial: Partial,
    /// After a line passed the limit with no LF in sight: drop input up to
    /// and including the next LF.
    discarding: bool,
    /// Where [`CommandReader::take_line`] resumes its search for LF.
    line_scanned: usize,
}

impl CommandReader {
    /// A reader enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        CommandReader {
            limits,
            partial: Partial::new(),
            discarding: false,
            line_scanned: 0,
        }
    }

    /// The limits this reader enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Parses what is buffered in `buf`.
    ///
    /// On [`Step::Command`] the command's bytes are drained from the front
    /// of `buf`; pipelined bytes after it stay. On [`Step::NeedMore`] and
    /// [`Step::Continue`] nothing is drained. On error the offending bytes
    /// are drained (see [`ParseError`] for what the caller does next).
    pub fn next(&mut self, buf: &mut Vec<u8>) -> Result<Step, ParseError> {
        // take_line's progress is only valid until someone else drains.
        self.line_scanned = 0;
        if self.partial.scanned > buf.len() {
            // The caller broke the append-only contract (the buffer shrank):
            // start over rather than index past its end.
            self.partial = Partial::new();
        }
        loop {
            if !self.skip_discarded(buf) {
                return Ok(Step::NeedMore);
            }
            if let Some(len) = self.partial.literal {
                let start = self.partial.parsed;
                if buf.len() - start < len {
                    return Ok(Step::NeedMore);
                }
                let octets = buf[start..start + len].to_vec();
                self.partial.push(Arg::Literal(octets));
                self.partial.parsed += len;
                self.partial.scanned = self.partial.parsed;
                self.partial.literal = None;
                continue;
            }
            let start = self.partial.parsed;
            let Some(offset) = find_lf(&buf[self.partial.scanned..]) else {
                self.partial.scanned = buf.len();
                return self
                    .check_unfinished_line(buf, start)
                    .map(|()| Step::NeedMore);
            };
            let lf = self.partial.scanned + offset;
            let end = if lf > start && buf[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            let fault = if end - start > self.limits.max_line {
                Some(ParseError::LineTooLong { tag: None })
            } else if lf + 1 > self.limits.max_command {
                Some(ParseError::CommandTooLarge { tag: None })
            } else {
                None
            };
            if let Some(err) = fault {
                return Err(self.fail_line(buf, lf, err));
            }
            match self.parse_line(&buf[start..end], lf + 1) {
                Ok(LineEnd::Complete) => {
                    let partial = std::mem::replace(&mut self.partial, Partial::new());
                    buf.drain(..lf + 1);
                    return Ok(Step::Command(finish(partial)));
                }
                Ok(LineEnd::Literal { len, sync }) => {
                    self.partial.parsed = lf + 1;
                    self.partial.scanned = lf + 1;
                    self.partial.literal = Some(len);
                    if sync {
                        return Ok(Step::Continue);
                    }
                }
                Err(fault) => {
                    let err = match fault {
                        Fault::Syntax(reason) => ParseError::Syntax { tag: None, reason },
                        Fault::LiteralTooLarge { size, non_sync } => ParseError::LiteralTooLarge {
                            tag: None,
                            size,
                            non_sync,
                        },
                        Fault::CommandTooLarge => ParseError::CommandTooLarge { tag: None },
                    };
                    return Err(self.fail_line(buf, lf, err));
                }
            }
        }
    }

    /// Drains and returns one raw line without its line end (CRLF or bare
    /// LF), or `None` when no whole line is buffered yet. For lines that
    /// are not commands: IDLE's `DONE`, AUTHENTICATE continuation answers.
    ///
    /// A line longer than [`Limits::max_line`] is [`ParseError::LineTooLong`]
    /// (tag `None`); its bytes are dropped as with [`CommandReader::next`].
    ///
    /// Call it only between commands: a command partly read by
    /// [`CommandReader::next`] is abandoned.
    pub fn take_line(&mut self, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, ParseError> {
        self.take_line_within(buf, self.limits.max_line)
    }

    /// As [`CommandReader::take_line`], for a line with a bound of its own
    /// (`max` bytes without the line end): a SASL response may be longer
    /// or shorter than a command line.
    pub fn take_line_within(
        &mut self,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> Result<Option<Vec<u8>>, ParseError> {
        if self.partial.tag.is_some() || self.partial.scanned > 0 {
            self.partial = Partial::new();
        }
        if !self.skip_discarded(buf) {
            return Ok(None);
        }
        let from = self.line_scanned.min(buf.len());
        let Some(offset) = find_lf(&buf[from..]) else {
            self.line_scanned = buf.len();
            if unfinished_line_len(buf) > max {
                buf.clear();
                self.line_scanned = 0;
                self.discarding = true;
                return Err(ParseError::LineTooLong { tag: None });
            }
            return Ok(None);
        };
        let lf = from + offset;
        self.line_scanned = 0;
        let end = if lf > 0 && buf[lf - 1] == b'\r' {
            lf - 1
        } else {
            lf
        };
        if end > max {
            buf.drain(..lf + 1);
            return Err(ParseError::LineTooLong { tag: None });
        }
        let line = buf[..end].to_vec();
        buf.drain(..lf + 1);
        Ok(Some(line))
    }

    /// How many more bytes the reader needs before it can make progress,
    /// given what is buffered: the rest of a literal being read, else 1.
    /// A hint for sizing reads; never 0.
    pub fn wants(&self, buf: &[u8]) -> usize {
        match self.partial.literal {
            Some(len) => (self.partial.parsed + len).saturating_sub(buf.len()).max(1),
            None => 1,
        }
    }

    /// Drops input up to and including the next LF while discarding after
    /// an over-long line. Returns whether the reader may parse now.
    fn skip_discarded(&mut self, buf: &mut Vec<u8>) -> bool {
        if !self.discarding {
            return true;
        }
        match find_lf(buf) {
            Some(lf) => {
                buf.drain(..lf + 1);
                self.discarding = false;
                true
            }
            None => {
                buf.clear();
                false
            }
        }
    }

    /// Checks the limits for a line whose end has not arrived yet.
    fn check_unfinished_line(&mut self, buf: &mut Vec<u8>, start: usize) -> Result<(), ParseError> {
        let err = if unfinished_line_len(&buf[start..]) > self.limits.max_line {
            ParseError::LineTooLong { tag: None }
        } else if buf.len() > self.limits.max_command {
            ParseError::CommandTooLarge { tag: None }
        } else {
            return Ok(());
        };
        let tag = self.partial.tag.take().or_else(|| leading_tag(buf));
        let must_close = matches!(err, ParseError::CommandTooLarge { .. });
        buf.clear();
        self.partial = Partial::new();
        self.discarding = !must_close;
        Err(with_tag(err, tag))
    }

    /// Resets after an error found in the line ending at `lf`: drops the
    /// command's bytes through that LF (everything buffered when the stream
    /// is lost) and attaches the tag.
    fn fail_line(&mut self, buf: &mut Vec<u8>, lf: usize, err: ParseError) -> ParseError {
        let partial = std::mem::replace(&mut self.partial, Partial::new());
        let tag = partial.tag.or_else(|| leading_tag(buf));
        let err = with_tag(err, tag);
        if err.must_close() {
            buf.clear();
        } else {
            buf.drain(..lf + 1);
        }
        err
    }

    /// Parses one line (without its line end) of the current command.
    /// `line_end` is the offset just past this line's LF in the buffer.
    fn parse_line(&mut self, line: &[u8], line_end: usize) -> Result<LineEnd, Fault> {
        let mut i = 0;
        if self.partial.tag.is_none() {
            i = self.parse_tag_and_name(line)?;
        }
        let state = &mut self.partial;
        loop {
            let Some(&c) = line.get(i) else {
                return match state.last {
                    Last::Token if state.open.is_empty() => Ok(LineEnd::Complete),
                    Last::Token | Last::Open => Err(Fault::Syntax("unclosed parenthesised list")),
                    Last::Space => Err(Fault::Syntax("trailing space")),
                };
            };
            if state.last == Last::Token {
                match c {
                    b' ' => state.last = Last::Space,
                    b')' => close_list(state)?,
                    _ => return Err(Fault::Syntax("expected a space between arguments")),
                }
                i += 1;
                continue;
            }
            match c {
                b'(' => {
                    if state.open.len() >= MAX_LIST_DEPTH {
                        return Err(Fault::Syntax("parenthesised lists nested too deeply"));
                    }
                    state.open.push(Vec::new());
                    state.last = Last::Open;
                    i += 1;
                }
                b')' if state.last == Last::Open => {
                    close_list(state)?;
                    i += 1;
                }
                b'"' => {
                    let (value, next) = parse_quoted(line, i)?;
                    state.push(Arg::Quoted(value));
                    i = next;
                }
                b'{' => return literal_announcement(&line[i..], line_end, &self.limits),
                b'~' if line.get(i + 1) == Some(&b'{') => {
                    return literal_announcement(&line[i + 1..], line_end, &self.limits)
                }
                _ => {
                    let len = atom_len(&line[i..])?;
                    let text = &line[i..i + len];
                    let arg = if text == b"NIL" {
                        Arg::Nil
                    } else {
                        Arg::Atom(ascii_string(text))
                    };
                    state.push(arg);
                    i += len;
                }
            }
        }
    }

    /// Reads `tag SP name` at the start of a command's first line and
    /// returns the offset just after the name.
    fn parse_tag_and_name(&mut self, line: &[u8]) -> Result<usize, Fault> {
        if line.is_empty() {
            return Err(Fault::Syntax("empty line"));
        }
        let tag_len = line.iter().take_while(|&&b| is_tag_char(b)).count();
        if tag_len == 0 {
            return Err(Fault::Syntax("invalid tag"));
        }
        self.partial.tag = Some(ascii_string(&line[..tag_len]));
        match line.get(tag_len) {
            None => return Err(Fault::Syntax("missing command name")),
            Some(b' ') => {}
            Some(_) => return Err(Fault::Syntax("invalid character in tag")),
        }
        let name_start = tag_len + 1;
        let name_len = line[name_start..]
            .iter()
            .take_while(|&&b| is_atom_char(b))
            .count();
        if name_len == 0 {
            return Err(Fault::Syntax("missing command name"));
        }
        let mut name = ascii_string(&line[name_start..name_start + name_len]);
        name.make_ascii_uppercase();
        self.partial.name = Some(name);
        self.partial.last = Last::Token;
        Ok(name_start + name_len)
    }
}

impl Default for CommandReader {
    /// A reader with [`Limits::default`].
    fn default() -> Self {
        CommandReader::new(Limits::default())
    }
}

/// Builds the command from a complete parse.
fn finish(partial: Partial) -> Command {
    Command {
        tag: partial.tag.unwrap_or_default(),
        name: partial.name.unwrap_or_default(),
        args: partial.args,
    }
}

/// Closes the innermost list, which must not be the top level.
fn close_list(state: &mut Partial) -> Result<(), Fault> {
    let Some(items) = state.open.pop() else {
        return Err(Fault::Syntax("unbalanced ')'"));
    };
    state.push(Arg::List(items));
    Ok(())
}

/// Parses `{N}` or `{N+}` at the start of `text`, which must end the line.
/// `line_end` is the command's size so far, for the command limit.
fn literal_announcement(text: &[u8], line_end: usize, limits: &Limits) -> Result<LineEnd, Fault> {
    let body = &text[1..];
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(Fault::Syntax("invalid literal size"));
    }
    let (non_sync, close_at) = match body.get(digits) {
        Some(b'+') => (true, digits + 1),
        _ => (false, digits),
    };
    if body.get(close_at) != Some(&b'}') {
        return Err(Fault::Syntax("invalid literal announcement"));
    }
    if close_at + 1 != body.len() {
        return Err(Fault::Syntax("a literal announcement must end the line"));
    }
    let size = body[..digits].iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    });
    let len = match size.and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n <= limits.max_literal => n,
        _ => return Err(Fault::LiteralTooLarge { size, non_sync }),
    };
    if line_end.saturating_add(len) > limits.max_command {
        return Err(Fault::CommandTooLarge);
    }
    Ok(LineEnd::Literal {
        len,
        sync: !non_sync,
    })
}

/// Parses a quoted string whose opening `"` is at `line[start]`; returns
/// the unescaped value and the offset just after the closing `"`.
fn parse_quoted(line: &[u8], start: usize) -> Result<(Vec<u8>, usize), Fault> {
    let mut value = Vec::new();
    let mut i = start + 1;
    loop {
        let plain = line[i..]
            .iter()
            .take_while(|&&b| !matches!(b, b'"' | b'\\' | 0 | b'\r'))
            .count();
        value.extend_from_slice(&line[i..i + plain]);
        i += plain;
        match line.get(i) {
            None => return Err(Fault::Syntax("unterminated quoted string")),
            Some(b'"') => return Ok((value, i + 1)),
            Some(b'\\') => match line.get(i + 1) {
                Some(&c @ (b'"' | b'\\')) => {
                    value.push(c);
                    i += 2;
                }
                _ => return Err(Fault::Syntax("invalid escape in quoted string")),
            },
            Some(0 | b'\r') => return Err(Fault::Syntax("NUL or CR in quoted string")),
            Some(&c) => {
                value.push(c);
                i += 1;
            }
        }
    }
}

/// Length of the atom at the start of `text`, including any `[...]`
/// section (where spaces, parentheses and quoted strings are allowed).
/// The atom must be followed by the line end, a space or `)`.
fn atom_len(text: &[u8]) -> Result<usize, Fault> {
    let mut i = 0;
    while let Some(&c) = text.get(i) {
        if c == b'[' {
            i = section_end(text, i)?;
        } else if is_atom_char(c) || matches!(c, b'\\' | b'*' | b'%' | b']') {
            i += 1;
        } else {
            break;
        }
    }
    match text.get(i) {
        _ if i == 0 => Err(Fault::Syntax("invalid character in argument")),
        None | Some(b' ' | b')') => Ok(i),
        Some(_) => Err(Fault::Syntax("invalid character in atom")),
    }
}

/// Given `text[open] == b'['`, returns the offset just after the matching
/// `]`. Inside, printable ASCII and spaces are allowed, and a quoted string
/// may contain `]`.
fn section_end(text: &[u8], open: usize) -> Result<usize, Fault> {
    let mut i = open + 1;
    let mut in_quotes = false;
    loop {
        let Some(&c) = text.get(i) else {
            return Err(Fault::Syntax("unterminated '[' in atom"));
        };
        if !(0x20..=0x7e).contains(&c) {
            return Err(Fault::Syntax("invalid character in '[...]'"));
        }
        match c {
            b'\\' if in_quotes => i += 1,
            b'"' => in_quotes = !in_quotes,
            b']' if !in_quotes => return Ok(i + 1),
            _ => {}
        }
        i += 1;
    }
}

/// ATOM-CHAR: printable ASCII except atom-specials `( ) { SP % * " \ ]`.
fn is_atom_char(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
        && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']')
}

/// A tag character: ASTRING-CHAR (ATOM-CHAR or `]`) except `+`.
fn is_tag_char(b: u8) -> bool {
    (is_atom_char(b) || b == b']') && b != b'+'
}

/// Text of bytes already checked to be ASCII (so never lossy).
fn ascii_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Offset of the first LF in `bytes`.
fn find_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// Length of a line whose LF has not arrived: a final CR does not count,
/// since it may be the start of the line end.
fn unfinished_line_len(line: &[u8]) -> usize {
    match line.last() {
        Some(b'\r') => line.len() - 1,
        _ => line.len(),
    }
}

/// The tag at the front of `buf`, if a complete one (followed by a space)
/// is there: reported with errors found before the line was parsed.
fn leading_tag(buf: &[u8]) -> Option<String> {
    let len = buf
        .iter()
        .take(256)
        .take_while(|&&b| is_tag_char(b))
        .count();
    (len > 0 && buf.get(len) == Some(&b' ')).then(|| ascii_string(&buf[..len]))
}

/// Attaches `tag` to an error built without one.
fn with_tag(err: ParseError, tag: Option<String>) -> ParseError {
    match err {
        ParseError::LineTooLong { .. } => ParseError::LineTooLong { tag },
        ParseError::LiteralTooLarge { size, non_sync, .. } => ParseError::LiteralTooLarge {
            tag,
            size,
            non_sync,
        },
        ParseError::CommandTooLarge { .. } => ParseError::CommandTooLarge { tag },
        ParseError::Syntax { reason, .. } => ParseError::Syntax { tag, reason },
    }
}

#[cfg(test)]
mod tests;
