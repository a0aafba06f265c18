//! One IMAP4rev1 session of a dev backend (RFC 3501, with LITERAL+,
//! SASL-IR, ID, IDLE, UNSELECT and UIDPLUS), enough for curl, mutt,
//! Thunderbird and Python's imaplib.
//!
//! Commands are read with the project's codec
//! ([`crate::proto::imap::command`]); this module only decides what they
//! mean. A session is one monoio task. While it waits for a command it
//! holds no read buffer (it waits for readiness first), so thousands of
//! idle sessions cost little memory and no CPU.
//!
//! Not supported (answered `NO` or `BAD Unknown command`): RENAME, MOVE,
//! STARTTLS, ENABLE, NAMESPACE, LIST extensions, multipart MIME structure
//! (every message is reported as one text/plain part). All mailboxes count
//! as subscribed; SUBSCRIBE and UNSUBSCRIBE succeed without effect.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::SystemTime;

use monoio::net::TcpStream;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::auth::{DevSasl, DevStep};
use super::fetch::{self, Item};
use super::format::{self, push_string};
use super::search::{self, Candidate};
use super::server::{BackendContext, LiveSlot};
use super::sessions::SessionEntry;
use super::store::{FlagChange, MailboxWatcher, StoreError, DELIMITER, SEEN};
use crate::io::{ReadSide, WriteSide};
use crate::proto::imap::command::{Arg, Command, CommandReader, Limits, ParseError, Step};
use crate::proto::sasl;

/// Capabilities announced before login.
const CAPS_PRE_LOGIN: &str = "IMAP4rev1 LITERAL+ SASL-IR ID IDLE UNSELECT UIDPLUS AUTH=PLAIN AUTH=OAUTHBEARER AUTH=XOAUTH2 AUTH=SCRAM-SHA-1 AUTH=SCRAM-SHA-256";
/// Capabilities announced after login.
const CAPS_LOGGED_IN: &str = "IMAP4rev1 LITERAL+ SASL-IR ID IDLE UNSELECT UIDPLUS";
/// The system flags a mailbox offers.
const SYSTEM_FLAGS: &str = "(\\Answered \\Flagged \\Deleted \\Seen \\Draft)";
/// Read buffers start at this size and grow only for longer input.
const READ_CHUNK: usize = 1024;

/// Serves one connection until the client leaves or the backend is killed.
///
/// The session's registry entry lives in `live`; it is ended before the
/// connection is closed, so no client can see the close while the
/// registry still counts the session.
pub(crate) async fn serve(
    conn: TcpStream,
    peer: SocketAddr,
    context: Rc<BackendContext>,
    live: LiveSlot,
) {
    let entry = context.sessions.open(&context.config.name, peer);
    let limits = Limits {
        max_line: Limits::default().max_line,
        max_literal: context.config.max_literal,
        max_command: context.config.max_literal.saturating_add(64 * 1024),
    };
    let mut session = Session {
        context,
        entry,
        conn,
        reader: CommandReader::new(limits),
        input: Vec::new(),
        out: Vec::new(),
        login: None,
        live,
        selected: None,
    };
    if let Err(e) = session.run().await {
        tracing::debug!(error = %e, "dev backend session ended with an error");
    }
    session.live.take();
    drop(session);
}

/// The logged-in user of a session.
struct Login {
    user: String,
}

/// The selected mailbox and the session's view of it: the UIDs its
/// sequence numbers stand for.
struct Selected {
    name: String,
    read_only: bool,
    uids: Vec<u32>,
}

/// Whether the session goes on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session {
    context: Rc<BackendContext>,
    entry: SessionEntry,
    conn: TcpStream,
    reader: CommandReader,
    /// Bytes read but not yet parsed; empty (no allocation) while idle.
    input: Vec<u8>,
    /// Response bytes not yet written.
    out: Vec<u8>,
    login: Option<Login>,
    /// The session's registry entry once logged in.
    live: LiveSlot,
    selected: Option<Selected>,
}

/// Why a message command did not complete: the text of a BAD (bad
/// syntax) or NO (refused) response.
enum Refusal {
    Bad(String),
    No(String),
}

impl From<String> for Refusal {
    fn from(text: String) -> Self {
        Refusal::Bad(text)
    }
}

impl From<&str> for Refusal {
    fn from(text: &str) -> Self {
        Refusal::Bad(text.to_string())
    }
}

/// The result of a message command: the text of its tagged OK (a default
/// one when `None`), or why it was refused.
type Outcome = Result<Option<String>, Refusal>;

/// A tagged response: `tag status text`.
fn tagged(out: &mut Vec<u8>, tag: &str, status: &str, text: &str) {
    let _ = write!(out, "{tag} {status} {text}\r\n");
}

impl Session {
    async fn run(&mut self) -> io::Result<()> {
        let greeting = format!(
            "* OK [CAPABILITY {CAPS_PRE_LOGIN}] {} ready\r\n",
            self.context.config.name
        );
        self.out.extend_from_slice(greeting.as_bytes());
        self.flush().await?;
        loop {
            match self.reader.next(&mut self.input) {
                Ok(Step::NeedMore) => {
                    if !self.fill().await? {
                        return Ok(());
                    }
                }
                Ok(Step::Continue) => {
                    self.out.extend_from_slice(b"+ Ready for literal data\r\n");
                    self.flush().await?;
                }
                Ok(Step::Command(command)) => {
                    let flow = self.handle(command).await?;
                    self.flush().await?;
                    if flow == Flow::Close {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let tag = e.tag().unwrap_or("*").to_string();
                    let text = match &e {
                        ParseError::LiteralTooLarge { .. } => format!("[TOOBIG] {e}"),
                        _ => e.to_string(),
                    };
                    tagged(&mut self.out, &tag, "BAD", &text);
                    if e.must_close() {
                        self.out.extend_from_slice(b"* BYE Protocol error\r\n");
                        self.flush().await?;
                        return Ok(());
                    }
                    self.flush().await?;
                }
            }
        }
    }

    /// Waits for input and appends it to `input`; `false` on end of stream.
    /// No buffer is held while waiting.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.input.is_empty() {
            // Nothing half-read: give the buffer back before waiting.
            self.input = Vec::new();
        }
        ReadSide::readable(&mut self.conn).await?;
        let want = self.reader.wants(&self.input).clamp(READ_CHUNK, 1 << 20);
        self.input.reserve(want);
        let buf = std::mem::take(&mut self.input);
        let (res, buf) = self.conn.read_into(buf).await;
        self.input = buf;
        Ok(res? > 0)
    }

    /// Writes all pending response bytes.
    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        let (res, mut buf) = self.conn.write_all(buf).await;
        buf.clear();
        if buf.capacity() <= 64 * 1024 {
            self.out = buf;
        }
        res
    }

    /// Reads one raw line (AUTHENTICATE answer, IDLE's DONE); `None` on end
    /// of stream.
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            match self.reader.take_line(&mut self.input) {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {
                    if !self.fill().await? {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    fn user(&self) -> &str {
        self.login.as_ref().map(|l| l.user.as_str()).unwrap_or("")
    }

    async fn handle(&mut self, cmd: Command) -> io::Result<Flow> {
        let tag = cmd.tag.clone();
        let name = cmd.name.as_str();
        // Commands valid in any state.
        match name {
            "CAPABILITY" => {
                let caps = if self.login.is_some() {
                    CAPS_LOGGED_IN
                } else {
                    CAPS_PRE_LOGIN
                };
                let _ = write!(self.out, "* CAPABILITY {caps}\r\n");
                tagged(&mut self.out, &tag, "OK", "Capability completed.");
                return Ok(Flow::Continue);
            }
            "NOOP" | "CHECK" => {
                self.sync(true);
                tagged(&mut self.out, &tag, "OK", "NOOP completed.");
                return Ok(Flow::Continue);
            }
            "LOGOUT" => {
                self.out.extend_from_slice(b"* BYE Logging out\r\n");
                tagged(&mut self.out, &tag, "OK", "Logout completed.");
                return Ok(Flow::Close);
            }
            "ID" => {
                self.id(&cmd);
                return Ok(Flow::Continue);
            }
            _ => {}
        }
        if self.login.is_none() {
            return match name {
                "LOGIN" => {
                    self.login_command(&cmd);
                    Ok(Flow::Continue)
                }
                "AUTHENTICATE" => self.authenticate(&cmd).await,
                _ if is_known(name) => {
                    tagged(&mut self.out, &tag, "BAD", "Please log in first.");
                    Ok(Flow::Continue)
                }
                _ => {
                    tagged(&mut self.out, &tag, "BAD", "Unknown command");
                    Ok(Flow::Continue)
                }
            };
        }
        match name {
            "LOGIN" | "AUTHENTICATE" => tagged(&mut self.out, &tag, "BAD", "Already logged in."),
            "SELECT" | "EXAMINE" => self.select(&cmd, name == "EXAMINE"),
            "LIST" | "LSUB" => self.list(&cmd),
            "STATUS" => self.status(&cmd),
            "CREATE" | "DELETE" | "SUBSCRIBE" | "UNSUBSCRIBE" => self.manage(&cmd),
            "RENAME" => tagged(
                &mut self.out,
                &tag,
                "NO",
                "[CANNOT] RENAME is not supported by the dev backend.",
            ),
            "APPEND" => self.append(&cmd),
            "IDLE" => return self.idle(&tag).await,
            _ if self.selected.is_none() && is_selected_command(name) => {
                tagged(&mut self.out, &tag, "BAD", "No mailbox selected.")
            }
            "CLOSE" | "UNSELECT" => {
                if let Some(sel) = self.selected.take() {
                    if name == "CLOSE" && !sel.read_only {
                        let _ = self.context.store.expunge(self.user(), &sel.name, None);
                    }
                }
                tagged(&mut self.out, &tag, "OK", "Completed.");
            }
            "EXPUNGE" => self.expunge(&tag, None),
            "FETCH" | "STORE" | "SEARCH" | "COPY" => {
                self.message_command(&tag, name, &cmd.args, false)
            }
            "UID" => self.uid_command(&cmd),
            _ => tagged(&mut self.out, &tag, "BAD", "Unknown command"),
        }
        Ok(Flow::Continue)
    }

    /// ID: records the client's fields and names the server.
    fn id(&mut self, cmd: &Command) {
        match cmd.args.first() {
            Some(Arg::List(items)) if items.len() % 2 == 0 => {
                let fields = items
                    .chunks(2)
                    .map(|pair| {
                        let key = pair[0].as_astring().unwrap_or_default();
                        let value = (!pair[1].is_nil())
                            .then(|| pair[1].as_astring())
                            .flatten()
                            .map(|v| String::from_utf8_lossy(v).into_owned());
                        (String::from_utf8_lossy(key).to_lowercase(), value)
                    })
                    .collect();
                self.entry.set_id_fields(fields);
            }
            Some(arg) if arg.is_nil() => {}
            _ => {
                tagged(&mut self.out, &cmd.tag, "BAD", "Invalid ID parameters.");
                return;
            }
        }
        let _ = write!(
            self.out,
            "* ID (\"name\" \"mailpin-dev\" \"version\" \"{}\" \"backend\" ",
            env!("CARGO_PKG_VERSION")
        );
        push_string(&mut self.out, self.context.config.name.as_bytes());
        self.out.extend_from_slice(b")\r\n");
        tagged(&mut self.out, &cmd.tag, "OK", "ID completed.");
    }

    /// Completes a login: the user's account exists from now on and the
    /// session counts as live in the registry.
    fn logged_in(&mut self, tag: &str, user: &str) {
        self.context.store.ensure_user(user);
        let live = self.context.registry.login(&self.context.config.name, user);
        self.live.set(live);
        self.entry.set_user(user);
        self.login = Some(Login {
            user: user.to_string(),
        });
        let text = format!("[CAPABILITY {CAPS_LOGGED_IN}] Logged in");
        tagged(&mut self.out, tag, "OK", &text);
    }

    fn auth_failed(&mut self, tag: &str) {
        tagged(
            &mut self.out,
            tag,
            "NO",
            "[AUTHENTICATIONFAILED] Authentication failed.",
        );
    }

    fn password_ok(&self, password: &[u8]) -> bool {
        password == self.context.config.password.as_bytes()
    }

    fn login_command(&mut self, cmd: &Command) {
        let (Some(user), Some(password), 2) = (cmd.astring(0), cmd.astring(1), cmd.args.len())
        else {
            tagged(
                &mut self.out,
                &cmd.tag,
                "BAD",
                "LOGIN needs a user name and a password.",
            );
            return;
        };
        let user = String::from_utf8_lossy(user).into_owned();
        if !user.is_empty() && self.password_ok(password) {
            self.logged_in(&cmd.tag, &user);
        } else {
            self.auth_failed(&cmd.tag);
        }
    }

    async fn authenticate(&mut self, cmd: &Command) -> io::Result<Flow> {
        let tag = cmd.tag.as_str();
        let mechanism = cmd.astring(0).unwrap_or_default();
        let Some(mut exchange) = DevSasl::start(mechanism, &self.context.config.password) else {
            tagged(
                &mut self.out,
                tag,
                "NO",
                "Unsupported authentication mechanism.",
            );
            return Ok(Flow::Continue);
        };
        let mut next = match cmd.astring(1) {
            Some(initial) => sasl::decode_initial_response(initial),
            None => {
                self.out.extend_from_slice(b"+ \r\n");
                self.flush().await?;
                match self.read_line().await? {
                    Some(line) => sasl::decode_response(&line),
                    None => return Ok(Flow::Close),
                }
            }
        };
        // Bounded: SCRAM, the longest exchange, has three client messages.
        for _ in 0..4 {
            let message = match next {
                Ok(m) => m,
                Err(sasl::SaslError::Cancelled) => {
                    tagged(&mut self.out, tag, "BAD", "Authentication cancelled.");
                    return Ok(Flow::Continue);
                }
                Err(e) => {
                    tagged(
                        &mut self.out,
                        tag,
                        "BAD",
                        &format!("Invalid response: {e}."),
                    );
                    return Ok(Flow::Continue);
                }
            };
            match exchange.step(&message) {
                DevStep::Success(user) => {
                    self.logged_in(tag, &user);
                    return Ok(Flow::Continue);
                }
                DevStep::Failure => break,
                DevStep::Challenge(challenge) => {
                    self.out.extend_from_slice(b"+ ");
                    self.out
                        .extend_from_slice(STANDARD.encode(challenge).as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                    self.flush().await?;
                    next = match self.read_line().await? {
                        Some(line) => sasl::decode_response(&line),
                        None => return Ok(Flow::Close),
                    };
                }
            }
        }
        self.auth_failed(tag);
        Ok(Flow::Continue)
    }

    /// The mailbox name argument at `index`, as UTF-8 text.
    fn mailbox_arg(cmd: &Command, index: usize) -> Option<String> {
        cmd.astring(index)
            .map(|m| String::from_utf8_lossy(m).into_owned())
    }

    fn store_error(&mut self, tag: &str, e: StoreError) {
        let code = match e {
            StoreError::NoSuchMailbox => "[NONEXISTENT]",
            StoreError::AlreadyExists => "[ALREADYEXISTS]",
            StoreError::Forbidden => "[CANNOT]",
        };
        tagged(&mut self.out, tag, "NO", &format!("{code} {e}."));
    }

    fn select(&mut self, cmd: &Command, read_only: bool) {
        // A failed SELECT leaves no mailbox selected (RFC 3501 6.3.1).
        self.selected = None;
        let Some(name) = Self::mailbox_arg(cmd, 0) else {
            tagged(&mut self.out, &cmd.tag, "BAD", "Mailbox name expected.");
            return;
        };
        let store = &self.context.store;
        let (status, uids) = match store
            .status(self.user(), &name)
            .and_then(|s| store.uids(self.user(), &name).map(|(_, u)| (s, u)))
        {
            Ok(v) => v,
            Err(e) => return self.store_error(&cmd.tag, e),
        };
        let out = &mut self.out;
        let _ = write!(out, "* FLAGS {SYSTEM_FLAGS}\r\n");
        let _ = write!(
            out,
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted.\r\n"
        );
        let _ = write!(out, "* {} EXISTS\r\n* 0 RECENT\r\n", uids.len());
        if let Some(first) = status.first_unseen {
            let _ = write!(out, "* OK [UNSEEN {first}] First unseen.\r\n");
        }
        let _ = write!(
            out,
            "* OK [UIDVALIDITY {}] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n",
            status.uid_validity, status.uid_next
        );
        let mode = if read_only {
            "[READ-ONLY]"
        } else {
            "[READ-WRITE]"
        };
        tagged(out, &cmd.tag, "OK", &format!("{mode} Select completed."));
        self.selected = Some(Selected {
            name,
            read_only,
            uids,
        });
    }

    fn list(&mut self, cmd: &Command) {
        let (Some(reference), Some(pattern)) =
            (Self::mailbox_arg(cmd, 0), Self::mailbox_arg(cmd, 1))
        else {
            tagged(
                &mut self.out,
                &cmd.tag,
                "BAD",
                "LIST needs a reference and a pattern.",
            );
            return;
        };
        let response = if cmd.name == "LSUB" { "LSUB" } else { "LIST" };
        if pattern.is_empty() {
            let _ = write!(
                self.out,
                "* {response} (\\Noselect) \"{DELIMITER}\" \"\"\r\n"
            );
        } else {
            let full = format!("{reference}{pattern}");
            let names = self.context.store.mailboxes(self.user());
            for name in &names {
                if !pattern_matches(full.as_bytes(), name.as_bytes()) {
                    continue;
                }
                let prefix = format!("{name}{DELIMITER}");
                let children = names.iter().any(|n| n.starts_with(&prefix));
                let attr = if children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                };
                let _ = write!(self.out, "* {response} ({attr}) \"{DELIMITER}\" ");
                push_string(&mut self.out, name.as_bytes());
                self.out.extend_from_slice(b"\r\n");
            }
        }
        tagged(
            &mut self.out,
            &cmd.tag,
            "OK",
            &format!("{response} completed."),
        );
    }

    fn status(&mut self, cmd: &Command) {
        let (Some(name), Some(Arg::List(items))) = (Self::mailbox_arg(cmd, 0), cmd.args.get(1))
        else {
            tagged(
                &mut self.out,
                &cmd.tag,
                "BAD",
                "STATUS needs a mailbox and items.",
            );
            return;
        };
        let status = match self.context.store.status(self.user(), &name) {
            Ok(s) => s,
            Err(e) => return self.store_error(&cmd.tag, e),
        };
        let mut parts = Vec::new();
        for item in items {
            let item = item.as_astring().unwrap_or_default().to_ascii_uppercase();
            let value = match item.as_slice() {
                b"MESSAGES" => status.messages,
                b"RECENT" => 0,
                b"UIDNEXT" => status.uid_next,
                b"UIDVALIDITY" => status.uid_validity,
                b"UNSEEN" => status.unseen,
                _ => {
                    tagged(&mut self.out, &cmd.tag, "BAD", "Unknown STATUS item.");
                    return;
                }
            };
            parts.push(format!("{} {value}", String::from_utf8_lossy(&item)));
        }
        self.out.extend_from_slice(b"* STATUS ");
        push_string(&mut self.out, name.as_bytes());
        let _ = write!(self.out, " ({})\r\n", parts.join(" "));
        tagged(&mut self.out, &cmd.tag, "OK", "Status completed.");
    }

    /// CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE.
    fn manage(&mut self, cmd: &Command) {
        let Some(name) = Self::mailbox_arg(cmd, 0) else {
            tagged(&mut self.out, &cmd.tag, "BAD", "Mailbox name expected.");
            return;
        };
        let store = &self.context.store;
        let result = match cmd.name.as_str() {
            "CREATE" => store.create(self.user(), &name),
            "DELETE" => store.delete(self.user(), &name),
            _ => Ok(()),
        };
        match result {
            Ok(()) => tagged(&mut self.out, &cmd.tag, "OK", "Completed."),
            Err(e) => self.store_error(&cmd.tag, e),
        }
    }

    fn append(&mut self, cmd: &Command) {
        let mut args = cmd.args.iter();
        let name = args.next().and_then(Arg::as_astring);
        let mut flags = Vec::new();
        let mut date = SystemTime::now();
        let mut message = None;
        for arg in args {
            match arg {
                Arg::List(list) if message.is_none() => {
                    flags = list
                        .iter()
                        .filter_map(|f| f.as_astring())
                        .map(|f| String::from_utf8_lossy(f).into_owned())
                        .collect();
                }
                Arg::Quoted(d) if message.is_none() => {
                    match format::parse_date_time(&String::from_utf8_lossy(d)) {
                        Some(d) => date = d,
                        None => {
                            tagged(&mut self.out, &cmd.tag, "BAD", "Invalid date-time.");
                            return;
                        }
                    }
                }
                Arg::Literal(bytes) if message.is_none() => message = Some(bytes.clone()),
                _ => message = None,
            }
        }
        let (Some(name), Some(message)) = (name, message) else {
            tagged(
                &mut self.out,
                &cmd.tag,
                "BAD",
                "APPEND needs a mailbox and a literal.",
            );
            return;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let store = &self.context.store;
        match store.append(self.user(), &name, message, flags, date) {
            Ok(uid) => {
                let validity = store.status(self.user(), &name).map(|s| s.uid_validity);
                self.sync(false);
                let text = match validity {
                    Ok(v) => format!("[APPENDUID {v} {uid}] Append completed."),
                    Err(_) => "Append completed.".to_string(),
                };
                tagged(&mut self.out, &cmd.tag, "OK", &text);
            }
            Err(StoreError::NoSuchMailbox) => tagged(
                &mut self.out,
                &cmd.tag,
                "NO",
                "[TRYCREATE] Mailbox doesn't exist.",
            ),
            Err(e) => self.store_error(&cmd.tag, e),
        }
    }

    /// Brings the session's view of the selected mailbox up to date and
    /// reports the changes: `* n EXPUNGE` (only when `expunges` may be
    /// sent) and `* n EXISTS`.
    fn sync(&mut self, expunges: bool) {
        let user = self.user().to_string();
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let now = match self.context.store.uids(&user, &sel.name) {
            Ok((_, uids)) => uids,
            Err(_) => Vec::new(),
        };
        if expunges {
            // Highest sequence numbers first, so each number is still
            // valid when the client reads it.
            for seq in (1..=sel.uids.len()).rev() {
                if now.binary_search(&sel.uids[seq - 1]).is_err() {
                    let _ = write!(self.out, "* {seq} EXPUNGE\r\n");
                    sel.uids.remove(seq - 1);
                }
            }
        }
        let last = sel.uids.last().copied().unwrap_or(0);
        let before = sel.uids.len();
        sel.uids.extend(now.iter().filter(|u| **u > last));
        if sel.uids.len() != before {
            let _ = write!(self.out, "* {} EXISTS\r\n", sel.uids.len());
        }
    }

    fn expunge(&mut self, tag: &str, only: Option<&[u32]>) {
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        if sel.read_only {
            tagged(&mut self.out, tag, "NO", "Mailbox is read-only.");
            return;
        }
        let name = sel.name.clone();
        let _ = self.context.store.expunge(self.user(), &name, only);
        self.sync(true);
        tagged(&mut self.out, tag, "OK", "Expunge completed.");
    }

    fn uid_command(&mut self, cmd: &Command) {
        let sub = match cmd.args.first() {
            Some(Arg::Atom(a)) => a.to_ascii_uppercase(),
            _ => String::new(),
        };
        match sub.as_str() {
            "FETCH" | "STORE" | "SEARCH" | "COPY" => {
                self.message_command(&cmd.tag, &sub, &cmd.args[1..], true)
            }
            "EXPUNGE" => {
                let set = cmd.args.get(1).and_then(Arg::as_astring);
                match set.and_then(|s| self.resolve(s, true)) {
                    Some(pairs) => {
                        let uids: Vec<u32> = pairs.iter().map(|(_, u)| *u).collect();
                        self.expunge(&cmd.tag, Some(&uids));
                    }
                    None => tagged(&mut self.out, &cmd.tag, "BAD", "Invalid UID set."),
                }
            }
            _ => tagged(&mut self.out, &cmd.tag, "BAD", "Unknown UID command"),
        }
    }

    /// Resolves a sequence set (or UID set) against the view: the
    /// (sequence number, UID) pairs it names that exist, ascending.
    fn resolve(&self, set: &[u8], by_uid: bool) -> Option<Vec<(u32, u32)>> {
        let sel = self.selected.as_ref()?;
        let set = std::str::from_utf8(set).ok()?;
        if by_uid {
            let max = sel.uids.last().copied().unwrap_or(0);
            let uids = format::parse_sequence_set(set, max)?;
            Some(
                uids.into_iter()
                    .filter_map(|u| sel.uids.binary_search(&u).ok().map(|i| (i as u32 + 1, u)))
                    .collect(),
            )
        } else {
            let max = sel.uids.len() as u32;
            let seqs = format::parse_sequence_set(set, max)?;
            Some(
                seqs.into_iter()
                    .filter(|s| *s >= 1 && *s <= max)
                    .map(|s| (s, sel.uids[s as usize - 1]))
                    .collect(),
            )
        }
    }

    /// FETCH, STORE, SEARCH and COPY, by sequence number or (`by_uid`) UID.
    fn message_command(&mut self, tag: &str, name: &str, args: &[Arg], by_uid: bool) {
        // New messages may be announced now; expunges only after commands
        // that allow them (RFC 3501 7.4.1).
        self.sync(false);
        let result = match name {
            "SEARCH" => self.search(args, by_uid),
            _ => match args.first().and_then(Arg::as_astring) {
                None => Err("Sequence set expected.".into()),
                Some(set) => match self.resolve(set, by_uid) {
                    None => Err("Invalid sequence set.".into()),
                    Some(pairs) => match name {
                        "FETCH" => self.fetch(&pairs, &args[1..], by_uid),
                        "STORE" => self.store_flags(&pairs, &args[1..], by_uid),
                        _ => self.copy(&pairs, &args[1..]),
                    },
                },
            },
        };
        match result {
            Ok(text) => {
                let prefix = if by_uid { "UID " } else { "" };
                let text = text.unwrap_or_else(|| format!("{prefix}{name} completed."));
                tagged(&mut self.out, tag, "OK", &text);
            }
            Err(Refusal::Bad(text)) => tagged(&mut self.out, tag, "BAD", &text),
            Err(Refusal::No(text)) => tagged(&mut self.out, tag, "NO", &text),
        }
    }

    fn fetch(&mut self, pairs: &[(u32, u32)], args: &[Arg], by_uid: bool) -> Outcome {
        let mut items = fetch::parse_items(args.first().ok_or("FETCH items expected.")?)?;
        if by_uid && !items.contains(&Item::Uid) {
            items.insert(0, Item::Uid);
        }
        let sel = self.selected.as_ref().ok_or("No mailbox selected.")?;
        let user = self.user().to_string();
        let uids: Vec<u32> = pairs.iter().map(|(_, u)| *u).collect();
        let store = &self.context.store;
        let mut messages = store
            .messages(&user, &sel.name, &uids)
            .map_err(|e| e.to_string())?;
        if !sel.read_only && items.iter().any(Item::sets_seen) {
            let unseen: Vec<u32> = messages
                .iter()
                .filter(|m| !m.has_flag(SEEN))
                .map(|m| m.uid)
                .collect();
            if !unseen.is_empty() {
                let seen = [SEEN.to_string()];
                let _ = store.change_flags(&user, &sel.name, &unseen, FlagChange::Add, &seen);
                messages = store
                    .messages(&user, &sel.name, &uids)
                    .map_err(|e| e.to_string())?;
                if !items.contains(&Item::Flags) {
                    items.push(Item::Flags);
                }
            }
        }
        for msg in &messages {
            if let Ok(i) = sel.uids.binary_search(&msg.uid) {
                fetch::write_fetch(&mut self.out, i as u32 + 1, msg, &items);
            }
        }
        Ok(None)
    }

    fn store_flags(&mut self, pairs: &[(u32, u32)], args: &[Arg], by_uid: bool) -> Outcome {
        let sel = self.selected.as_ref().ok_or("No mailbox selected.")?;
        if sel.read_only {
            return Err(Refusal::No("Mailbox is read-only.".into()));
        }
        let action = match args.first() {
            Some(Arg::Atom(a)) => a.to_ascii_uppercase(),
            _ => return Err("STORE needs FLAGS, +FLAGS or -FLAGS.".into()),
        };
        let (change, silent) = match action.as_str() {
            "FLAGS" => (FlagChange::Replace, false),
            "FLAGS.SILENT" => (FlagChange::Replace, true),
            "+FLAGS" => (FlagChange::Add, false),
            "+FLAGS.SILENT" => (FlagChange::Add, true),
            "-FLAGS" => (FlagChange::Remove, false),
            "-FLAGS.SILENT" => (FlagChange::Remove, true),
            _ => return Err("STORE needs FLAGS, +FLAGS or -FLAGS.".into()),
        };
        let flags: Vec<String> = args[1..]
            .iter()
            .flat_map(|a| match a {
                Arg::List(list) => list.iter().collect::<Vec<_>>(),
                other => vec![other],
            })
            .filter_map(Arg::as_astring)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let uids: Vec<u32> = pairs.iter().map(|(_, u)| *u).collect();
        let user = self.user().to_string();
        let changed = self
            .context
            .store
            .change_flags(&user, &sel.name, &uids, change, &flags)
            .map_err(|e| e.to_string())?;
        if !silent {
            let items: &[Item] = if by_uid {
                &[Item::Uid, Item::Flags]
            } else {
                &[Item::Flags]
            };
            for msg in &changed {
                if let Ok(i) = sel.uids.binary_search(&msg.uid) {
                    fetch::write_fetch(&mut self.out, i as u32 + 1, msg, items);
                }
            }
        }
        Ok(None)
    }

    fn search(&mut self, args: &[Arg], by_uid: bool) -> Outcome {
        let sel = self.selected.as_ref().ok_or("No mailbox selected.")?;
        let max_uid = sel.uids.last().copied().unwrap_or(0);
        let key = search::parse(args, sel.uids.len() as u32, max_uid)?;
        let user = self.user().to_string();
        let messages = self
            .context
            .store
            .messages(&user, &sel.name, &sel.uids)
            .map_err(|e| e.to_string())?;
        self.out.extend_from_slice(b"* SEARCH");
        for msg in &messages {
            let Ok(i) = sel.uids.binary_search(&msg.uid) else {
                continue;
            };
            let seq = i as u32 + 1;
            if key.matches(&Candidate { message: msg, seq }) {
                let n = if by_uid { msg.uid } else { seq };
                let _ = write!(self.out, " {n}");
            }
        }
        self.out.extend_from_slice(b"\r\n");
        Ok(None)
    }

    fn copy(&mut self, pairs: &[(u32, u32)], args: &[Arg]) -> Outcome {
        let dest = args
            .first()
            .and_then(Arg::as_astring)
            .ok_or("COPY needs a mailbox.")?;
        let dest = String::from_utf8_lossy(dest).into_owned();
        let sel = self.selected.as_ref().ok_or("No mailbox selected.")?;
        let user = self.user().to_string();
        let store = &self.context.store;
        let Ok(target) = store.status(&user, &dest) else {
            return Err(Refusal::No("[TRYCREATE] Mailbox doesn't exist.".into()));
        };
        let uids: Vec<u32> = pairs.iter().map(|(_, u)| *u).collect();
        let messages = store
            .messages(&user, &sel.name, &uids)
            .map_err(|e| e.to_string())?;
        let mut source = Vec::new();
        let mut copies = Vec::new();
        for msg in messages {
            let body = msg.body.to_vec();
            if let Ok(uid) = store.append(&user, &dest, body, msg.flags, msg.internal_date) {
                source.push(msg.uid.to_string());
                copies.push(uid.to_string());
            }
        }
        if source.is_empty() {
            return Ok(Some("Copy completed.".into()));
        }
        Ok(Some(format!(
            "[COPYUID {} {} {}] Copy completed.",
            target.uid_validity,
            source.join(","),
            copies.join(",")
        )))
    }

    /// IDLE: reports new mail in the selected mailbox as it arrives, until
    /// the client sends DONE. Waits on the socket and the mailbox at once;
    /// nothing polls.
    async fn idle(&mut self, tag: &str) -> io::Result<Flow> {
        let watcher = MailboxWatcher::new();
        if let Some(sel) = &self.selected {
            let user = self.user().to_string();
            let _ = self.context.store.watch(&user, &sel.name, &watcher);
        }
        self.sync(true);
        self.out.extend_from_slice(b"+ idling\r\n");
        self.flush().await?;
        loop {
            match self.reader.take_line(&mut self.input) {
                Ok(Some(line)) => {
                    if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
                        tagged(&mut self.out, tag, "OK", "Idle completed.");
                    } else {
                        tagged(&mut self.out, tag, "BAD", "Expected DONE.");
                    }
                    return Ok(Flow::Continue);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.input.is_empty() {
                self.input = Vec::new();
            }
            let readable = monoio::select! {
                r = ReadSide::readable(&mut self.conn) => Some(r),
                _ = watcher.changed() => None,
            };
            match readable {
                Some(r) => {
                    r?;
                    if !self.fill().await? {
                        return Ok(Flow::Close);
                    }
                }
                None => {
                    self.sync(true);
                    self.flush().await?;
                }
            }
        }
    }
}

/// Commands this server knows (for "log in first" against "unknown").
fn is_known(name: &str) -> bool {
    matches!(
        name,
        "SELECT"
            | "EXAMINE"
            | "LIST"
            | "LSUB"
            | "STATUS"
            | "CREATE"
            | "DELETE"
            | "RENAME"
            | "SUBSCRIBE"
            | "UNSUBSCRIBE"
            | "APPEND"
            | "IDLE"
            | "CLOSE"
            | "UNSELECT"
            | "EXPUNGE"
            | "FETCH"
            | "STORE"
            | "SEARCH"
            | "COPY"
            | "UID"
    )
}

/// Commands that need a selected mailbox.
fn is_selected_command(name: &str) -> bool {
    matches!(
        name,
        "CLOSE" | "UNSELECT" | "EXPUNGE" | "FETCH" | "STORE" | "SEARCH" | "COPY" | "UID"
    )
}

/// Whether a LIST pattern matches a mailbox name: `*` matches anything,
/// `%` anything but the hierarchy delimiter; INBOX matches in any case.
pub(crate) fn pattern_matches(pattern: &[u8], name: &[u8]) -> bool {
    if name.eq_ignore_ascii_case(b"INBOX") && pattern.eq_ignore_ascii_case(b"INBOX") {
        return true;
    }
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| pattern_matches(rest, &name[i..])),
        Some((b'%', rest)) => (0..=name.len())
            .take_while(|&i| i == 0 || name[i - 1] != DELIMITER as u8)
            .any(|i| pattern_matches(rest, &name[i..])),
        Some((c, rest)) => name.first() == Some(c) && pattern_matches(rest, &name[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::pattern_matches;

    #[test]
    fn list_patterns() {
        assert!(pattern_matches(b"*", b"INBOX"));
        assert!(pattern_matches(b"*", b"a/b"));
        assert!(pattern_matches(b"%", b"Sent"));
        assert!(!pattern_matches(b"%", b"a/b"));
        assert!(pattern_matches(b"a/%", b"a/b"));
        assert!(pattern_matches(b"inbox", b"INBOX"));
        assert!(!pattern_matches(b"S*x", b"Sent"));
    }
}
