//! LMTP, answered by the director and split per recipient (RFC 2033, with
//! RFC 1652 8BITMIME, 1870 SIZE, 2920 PIPELINING, 3030 CHUNKING, 6531
//! SMTPUTF8, 2034 ENHANCEDSTATUSCODES, 3207 STARTTLS).
//!
//! mailpin answers LHLO, MAIL, RSET, NOOP, VRFY and QUIT itself. Each
//! `RCPT TO` is routed by its own user key and goes to that backend as part
//! of a [`transaction::Transaction`], whose backend's reply is the client's
//! reply. The message (DATA or BDAT chunks) is streamed to every backend
//! involved through one bounded buffer — never held whole — and afterwards
//! each accepted recipient gets its own backend's reply, in RCPT order. A
//! backend that fails fails only its own recipients, with `451 4.4.0`. A
//! client that stops mid-message is timed out and every backend connection
//! is dropped without the end of data, so nothing partial is delivered.
//!
//! Pipelining (RFC 2920): every command the client has already sent is
//! handled before the replies go out in one write, and a run of pipelined
//! RCPTs (with the DATA after them) is handed to the backends as one group.
//!
//! Recipients count as sessions in the router from their RCPT to the end
//! of the transaction, so a user's deliveries go where its IMAP sessions
//! are.
//!
//! The envelope is bounded like the other protocols' pre-login phase
//! ([`crate::session::limits`]): command lines by `server.max_line`, and
//! between two messages the bytes by `limits.prelogin_bytes` (message data
//! not counted) and the commands by `limits.prelogin_commands` (RCPT,
//! bounded by [`MAX_RECIPIENTS`], and BDAT, which carries message data, not
//! counted). A message, or a transaction that got as far as recipients,
//! opens a fresh budget. Past a bound the client hears `500`/`421` and is
//! closed.

mod join;
#[cfg(test)]
mod tests;
pub mod transaction;

use std::time::Duration;

use monoio::time::Instant;
use tracing::{debug, info, warn};

use crate::backend::client_info::ClientInfo;
use crate::config::Protocol;
use crate::io::{write_bytes, Connection};
use crate::plane::stats::PreloginLimit;
use crate::proto::client_input::{ClientInput, InputError};
use crate::proto::smtp::{
    mailbox_user, parse_bdat, parse_command, parse_path, strip_keyword, DotScanner, Reply,
};
use crate::route::user_key::is_valid_login_name;
use crate::runtime::core::Core;
use crate::session::limits::{limit_text, Budget, PreloginLimits, Stopped};
use crate::session::outcome::Outcome;
use join::join_all;
use transaction::{IdlePool, Routed, Transaction};

/// Most recipients (accepted or not) in one transaction (RFC 5321
/// §4.5.3.1.8 asks for at least 100); more get `452 4.5.3`.
pub const MAX_RECIPIENTS: usize = 1000;

/// The largest piece of a message moved at once from client to backends.
const STREAM_CHUNK: usize = 64 * 1024;

/// Most pipelined RCPTs handed to the backends as one group.
const RCPT_GROUP: usize = 100;

/// How the listener is set up.
#[derive(Debug, Clone, Copy)]
pub struct LmtpPolicy {
    /// STARTTLS is offered (a `tls = "starttls"` listener).
    pub starttls: bool,
    /// How long the client may stay silent, between commands or inside a
    /// message.
    pub idle_timeout: Duration,
}

/// One LMTP client connection.
pub struct Lmtp<'a> {
    core: &'a Core,
    policy: LmtpPolicy,
    client: ClientInfo,
    input: ClientInput,
    /// The envelope's bounds, between two messages.
    budget: Budget,
    /// Replies not yet written: they go out in one write once every
    /// command the client pipelined is handled.
    out: Vec<u8>,
    greeted: bool,
    tx: Option<Transaction>,
    /// Backend connections whose last transaction ended cleanly, kept for
    /// the client's next transaction (one per backend).
    idle: IdlePool,
    bad: u32,
}

/// The session must end.
struct Close;

/// What one RCPT of a group comes to before the backends answer.
enum RcptStep {
    /// The director answers it; `bad` counts towards the error limit.
    Local { text: &'static str, bad: bool },
    /// The backend answers it: the index into the group's routed list
    /// (before routing, into the list of recipients to route).
    Routed(usize),
}

impl<'a> Lmtp<'a> {
    /// A new LMTP session for `client`.
    pub fn new(core: &'a Core, policy: LmtpPolicy, client: ClientInfo) -> Lmtp<'a> {
        Lmtp {
            core,
            policy,
            client,
            input: ClientInput::new(),
            budget: Budget::new(PreloginLimits::of(&core.shared().config), Protocol::Lmtp),
            out: Vec::new(),
            greeted: false,
            tx: None,
            idle: Vec::new(),
            bad: 0,
        }
    }

    /// The connection is under TLS from now on: everything said before is
    /// forgotten (RFC 3207 §4.2) and the client must LHLO again.
    pub fn upgraded(&mut self) {
        self.client.tls = true;
        self.input.reset();
        self.out.clear();
        self.greeted = false;
        self.end_transaction();
        self.close_idle();
    }

    /// Writes the greeting.
    pub async fn greet<S: Connection>(&mut self, s: &mut S) -> bool {
        write_bytes(s, b"220 mailpin LMTP ready\r\n").await.is_ok()
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.policy.idle_timeout
    }

    /// Serves commands until QUIT, STARTTLS or the end.
    pub async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        let mut outcome = loop {
            // Replies wait only while more commands are already here.
            if !self.input.buffered().contains(&b'\n') && self.flush(s).await.is_err() {
                break Outcome::Closed;
            }
            let core = self.core;
            let line = match core.prelogin_drain.unless_started(self.next_line(s)).await {
                Some(Ok(line)) => line,
                Some(Err(Close)) => break Outcome::Closed,
                None => {
                    // RFC 5321 §3.8 (LMTP inherits it, RFC 2033): a server
                    // that shuts down answers 421 and closes; a transaction
                    // without its final DATA reply is the client's to retry.
                    info!("director draining: 421 to the LMTP client");
                    self.reply("421 4.3.2 Service shutting down, try again later\r\n");
                    break Outcome::Closed;
                }
            };
            match self.handle(s, line).await {
                Ok(None) => {}
                Ok(Some(outcome)) => break outcome,
                Err(Close) => break Outcome::Closed,
            }
        };
        if self.flush(s).await.is_err() {
            outcome = Outcome::Closed;
        }
        if !matches!(outcome, Outcome::StartTls) {
            self.end_transaction();
            self.close_idle();
        }
        outcome
    }

    /// Writes the replies gathered so far.
    async fn flush<S: Connection>(&mut self, s: &mut S) -> Result<(), Close> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (res, mut buf) = s.write_all(std::mem::take(&mut self.out)).await;
        buf.clear();
        self.out = buf;
        res.map_err(|_| Close)
    }

    async fn input_failed<S: Connection>(&mut self, s: &mut S, e: InputError) {
        match e {
            InputError::Closed => debug!("client closed"),
            InputError::Timeout => {
                info!("client timed out");
                self.reply("421 4.4.2 Timeout, closing connection\r\n");
            }
            InputError::TooLong => return self.limit_reached(s, PreloginLimit::Line).await,
        }
        let _ = self.flush(s).await;
    }

    /// Counts and logs an envelope limit hit and answers `500` (line) or
    /// `421`, with the replies gathered so far; the caller closes.
    async fn limit_reached<S: Connection>(&mut self, s: &mut S, limit: PreloginLimit) {
        self.budget.reached(&self.core.counters, limit);
        let text = limit_text(limit, Protocol::Lmtp);
        let reply = match limit {
            PreloginLimit::Line => format!("500 5.5.2 {text}, closing connection\r\n"),
            _ => format!("421 4.7.0 {text}, closing connection\r\n"),
        };
        self.reply(&reply);
        let _ = self.flush(s).await;
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
    }

    fn send_reply(&mut self, reply: &Reply) {
        self.out.extend_from_slice(&reply.wire);
    }

    /// Answers a client error; too many end the session.
    fn bad(&mut self, text: &str) -> Result<(), Close> {
        self.bad += 1;
        self.reply(text);
        self.reply("\r\n");
        if self.bad >= self.core.shared().config.server.max_bad_commands {
            info!(bad_commands = self.bad, "too many invalid commands");
            self.reply("421 4.7.0 Too many errors, closing connection\r\n");
            return Err(Close);
        }
        Ok(())
    }

    /// The verb of the next command if it is already buffered whole, and
    /// whether it has no arguments.
    fn next_command(&self) -> Option<(String, bool)> {
        let buf = self.input.buffered();
        let end = buf.iter().position(|&b| b == b'\n')?;
        if end > self.budget.limits().line {
            return None;
        }
        let line = &buf[..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        parse_command(line).map(|c| (c.verb, c.rest.is_empty()))
    }

    async fn handle<S: Connection>(
        &mut self,
        s: &mut S,
        line: Vec<u8>,
    ) -> Result<Option<Outcome>, Close> {
        let cmd = parse_command(&line);
        // RCPTs are bounded by MAX_RECIPIENTS, BDATs carry message data.
        if !cmd
            .as_ref()
            .is_some_and(|c| c.verb == "RCPT" || c.verb == "BDAT")
        {
            if let Err(limit) = self.budget.command() {
                self.limit_reached(s, limit).await;
                return Err(Close);
            }
        }
        let Some(cmd) = cmd else {
            self.bad("500 5.5.2 Syntax error, command unrecognized")?;
            return Ok(None);
        };
        match cmd.verb.as_str() {
            "LHLO" => {
                if cmd.rest.is_empty() {
                    self.bad("501 5.5.4 LHLO needs a host name")?;
                    return Ok(None);
                }
                self.end_transaction();
                self.greeted = true;
                self.reply("250-mailpin\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-SIZE\r\n");
                if self.policy.starttls && !self.client.tls {
                    self.reply("250-STARTTLS\r\n");
                }
                self.reply("250 SMTPUTF8\r\n");
            }
            "HELO" | "EHLO" => {
                self.bad("500 5.5.1 This is LMTP: use LHLO")?;
            }
            "STARTTLS" => {
                if !cmd.rest.is_empty() {
                    self.bad("501 5.5.4 STARTTLS takes no arguments")?;
                } else if self.client.tls || !self.policy.starttls {
                    self.bad("502 5.5.1 STARTTLS not available")?;
                } else {
                    self.reply("220 2.0.0 Ready to start TLS\r\n");
                    self.end_transaction();
                    return Ok(Some(Outcome::StartTls));
                }
            }
            "MAIL" => {
                let rest = cmd.rest;
                self.mail(&line, rest)?;
            }
            "RCPT" => self.rcpts(s, line).await?,
            "DATA" => {
                if !cmd.rest.is_empty() {
                    self.bad("501 5.5.4 DATA takes no arguments")?;
                } else {
                    self.data(s).await?;
                }
            }
            "BDAT" => {
                let rest = cmd.rest.to_vec();
                self.bdat(s, &rest).await?;
            }
            "RSET" => {
                self.end_transaction();
                self.reply("250 2.0.0 OK\r\n");
            }
            "NOOP" => self.reply("250 2.0.0 OK\r\n"),
            // RFC 5321 §3.5.3: 252 says "cannot verify, will try": the
            // director cannot verify without a backend round trip, and a
            // 502 would claim VRFY is not implemented at all.
            "VRFY" => self.reply(
                "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n",
            ),
            "QUIT" => {
                self.reply("221 2.0.0 Bye\r\n");
                return Err(Close);
            }
            _ => {
                self.bad("500 5.5.2 Command not recognized")?;
            }
        }
        Ok(None)
    }

    fn mail(&mut self, line: &[u8], rest: &[u8]) -> Result<(), Close> {
        if !self.greeted {
            return self.bad("503 5.5.1 Send LHLO first");
        }
        if self.tx.is_some() {
            return self.bad("503 5.5.1 Nested MAIL command");
        }
        match strip_keyword(rest, b"FROM:").map(parse_path) {
            Some(Ok(_)) => {
                self.tx = Some(Transaction::new(line.to_vec()));
                self.reply("250 2.1.0 OK\r\n");
                Ok(())
            }
            _ => self.bad("501 5.5.4 Syntax: MAIL FROM:<address>"),
        }
    }

    /// Handles `first` and every RCPT pipelined right behind it (and the
    /// DATA after them, if that is here too) as one group.
    async fn rcpts<S: Connection>(&mut self, s: &mut S, first: Vec<u8>) -> Result<(), Close> {
        let mut lines = vec![first];
        while lines.len() < RCPT_GROUP
            && self.next_command().is_some_and(|(verb, _)| verb == "RCPT")
        {
            lines.push(self.next_line(s).await?);
        }
        let data_follows = self
            .next_command()
            .is_some_and(|(verb, bare)| verb == "DATA" && bare);
        if data_follows {
            self.next_line(s).await?;
        }
        let mut steps = Vec::with_capacity(lines.len());
        let mut wanted = Vec::new();
        for line in lines {
            match self.check_rcpt(&line) {
                Ok(key) => {
                    steps.push(RcptStep::Routed(wanted.len()));
                    wanted.push((key, line));
                }
                Err(local) => steps.push(local),
            }
        }
        let routed = self.route(&mut steps, wanted).await;
        let mut replies = Vec::new();
        if let Some(tx) = self.tx.as_mut() {
            if !routed.is_empty() {
                let set = self.core.router.backends();
                replies = tx
                    .add_recipients(&routed, &set, &self.client, &mut self.idle, data_follows)
                    .await;
            }
        }
        for (r, reply) in routed.iter().zip(&replies) {
            if reply.is_positive() {
                debug!(user = %r.key, "recipient accepted");
            } else {
                self.core.router.release(&r.key, r.backend, None);
            }
        }
        for step in steps {
            match step {
                RcptStep::Local { text, bad: true } => self.bad(text)?,
                RcptStep::Local { text, bad: false } => {
                    self.reply(text);
                    self.reply("\r\n");
                }
                RcptStep::Routed(i) => match replies.get(i) {
                    Some(reply) => self.out.extend_from_slice(&reply.wire),
                    None => self.reply("451 4.4.0 Try again later\r\n"),
                },
            }
        }
        if data_follows {
            self.data(s).await?;
        }
        Ok(())
    }

    /// Reads the next command line, within the envelope's byte budget.
    async fn next_line<S: Connection>(&mut self, s: &mut S) -> Result<Vec<u8>, Close> {
        let deadline = self.deadline();
        let read = self
            .budget
            .line(&mut self.input, s, PreloginLimit::Line, deadline);
        match read.await {
            Ok(line) => Ok(line),
            Err(Stopped::Limit(limit)) => {
                self.limit_reached(s, limit).await;
                Err(Close)
            }
            Err(Stopped::Input(e)) => {
                self.input_failed(s, e).await;
                Err(Close)
            }
        }
    }

    /// Checks one RCPT line and counts it; its recipient's user key, or
    /// the director's own answer.
    fn check_rcpt(&mut self, line: &[u8]) -> Result<String, RcptStep> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(RcptStep::Local {
                text: "503 5.5.1 MAIL first",
                bad: true,
            });
        };
        if tx.bdat {
            return Err(RcptStep::Local {
                text: "503 5.5.1 RCPT after BDAT",
                bad: true,
            });
        }
        if tx.attempted >= MAX_RECIPIENTS {
            return Err(RcptStep::Local {
                text: "452 4.5.3 Too many recipients",
                bad: false,
            });
        }
        tx.attempted += 1;
        let user = parse_command(line)
            .and_then(|c| strip_keyword(c.rest, b"TO:"))
            .and_then(|a| parse_path(a).ok())
            .and_then(|p| mailbox_user(p.inner));
        match user.filter(|u| is_valid_login_name(u)) {
            Some(user) => Ok(self.core.shared().user_key.key(&user)),
            None => Err(RcptStep::Local {
                text: "501 5.1.3 Syntax: RCPT TO:<address>",
                bad: true,
            }),
        }
    }

    /// Routes a group's recipients, all at once (a key owned by another
    /// core costs a message round trip). Each step that waits for the
    /// router comes back routed, or answered when no backend is available.
    async fn route(&self, steps: &mut [RcptStep], wanted: Vec<(String, Vec<u8>)>) -> Vec<Routed> {
        let router = &self.core.router;
        // A fenced director (cluster mode) routes no one: 451 at once.
        let chosen = if self.core.fenced() {
            vec![Err(crate::route::router::RouteError::Unavailable); wanted.len()]
        } else {
            join_all(
                wanted
                    .iter()
                    .map(|(key, _)| router.acquire(key, Protocol::Lmtp, &[], None)),
            )
            .await
        };
        let mut routed = Vec::with_capacity(wanted.len());
        let mut placed = Vec::with_capacity(wanted.len());
        for ((key, line), choice) in wanted.into_iter().zip(chosen) {
            match choice {
                Ok(backend) => {
                    placed.push(Some(routed.len()));
                    routed.push(Routed { key, backend, line });
                }
                Err(e) => {
                    warn!(user = %key, ?e, "no backend for recipient");
                    placed.push(None);
                }
            }
        }
        for step in steps.iter_mut() {
            if let RcptStep::Routed(i) = *step {
                *step = match placed.get(i).copied().flatten() {
                    Some(r) => RcptStep::Routed(r),
                    None => RcptStep::Local {
                        text: "451 4.4.0 No delivery server is available for this recipient, try again later",
                        bad: false,
                    },
                };
            }
        }
        routed
    }

    /// Releases the transaction's recipients in the router.
    fn release(&self, tx: &Transaction) {
        for (key, backend) in tx.recipients() {
            self.core.router.release(key, backend, None);
        }
    }

    /// Closes the kept backend connections (STARTTLS, end of session).
    fn close_idle(&mut self) {
        for (_, conn) in self.idle.drain(..) {
            monoio::spawn(conn.quit());
        }
    }

    /// Releases every recipient and closes the transaction's backend
    /// connections (RSET, LHLO, end of session). A transaction that got as
    /// far as its recipients (all refused, say) was progress: the next
    /// envelope has a fresh budget, as after a message.
    fn end_transaction(&mut self) {
        if let Some(tx) = self.tx.take() {
            if tx.attempted > 0 {
                self.budget.restart(self.input.received());
            }
            self.release(&tx);
            tx.close();
        }
    }

    /// Drops the transaction without telling the backends the message
    /// ended, so none of them delivers a partial message.
    fn abort_transaction(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.release(&tx);
            tx.abort();
        }
    }

    /// Checks that a message may start; the error reply otherwise.
    fn message_allowed(&self) -> Result<(), &'static str> {
        match &self.tx {
            None => Err("503 5.5.1 MAIL first"),
            Some(tx) if !tx.has_recipients() => Err("503 5.5.1 No valid recipients"),
            Some(_) => Ok(()),
        }
    }

    async fn data<S: Connection>(&mut self, s: &mut S) -> Result<(), Close> {
        if let Err(e) = self.message_allowed() {
            return self.bad(e);
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(Close);
        };
        if tx.bdat {
            return self.bad("503 5.5.1 DATA after BDAT");
        }
        if let Err(refusal) = tx.start_data().await {
            self.end_transaction();
            self.send_reply(&refusal);
            return Ok(());
        }
        self.reply("354 2.0.0 Start mail input; end with <CRLF>.<CRLF>\r\n");
        self.flush(s).await?;
        let mut scanner = DotScanner::new();
        let mut out = Vec::with_capacity(STREAM_CHUNK + STREAM_CHUNK / 16);
        loop {
            if self.input.buffered().is_empty() {
                if let Err(e) = self.input.fill(s, self.deadline()).await {
                    self.message_stopped(s, e).await;
                    return Err(Close);
                }
            }
            let take = self.input.buffered().len().min(STREAM_CHUNK);
            let end = scanner.feed(&self.input.buffered()[..take], &mut out);
            self.input.consume(end.unwrap_or(take));
            out = self.stream_out(out).await;
            out.clear();
            if end.is_some() {
                break;
            }
        }
        self.finish_message().await
    }

    async fn bdat<S: Connection>(&mut self, s: &mut S, rest: &[u8]) -> Result<(), Close> {
        let Some((size, last)) = parse_bdat(rest) else {
            return self.bad("501 5.5.4 Syntax: BDAT <size> [LAST]");
        };
        if let Err(e) = self.message_allowed() {
            // The chunk follows the command whatever the answer: skip it.
            self.skip_chunk(s, size).await?;
            return self.bad(e);
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(Close);
        };
        if !tx.bdat {
            tx.start_bdat();
        }
        // The command goes out with the chunk's first piece.
        let mut piece = if last {
            format!("BDAT {size} LAST\r\n")
        } else {
            format!("BDAT {size}\r\n")
        }
        .into_bytes();
        let mut left = size;
        loop {
            if left > 0 && self.input.buffered().is_empty() {
                if let Err(e) = self.input.fill(s, self.deadline()).await {
                    self.message_stopped(s, e).await;
                    return Err(Close);
                }
            }
            let take = (self.input.buffered().len() as u64)
                .min(left)
                .min(STREAM_CHUNK as u64) as usize;
            piece.extend_from_slice(&self.input.buffered()[..take]);
            self.input.consume(take);
            left -= take as u64;
            piece = self.stream_out(piece).await;
            piece.clear();
            if left == 0 {
                break;
            }
        }
        self.budget.skip_to(self.input.received());
        if last {
            return self.finish_message().await;
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(Close);
        };
        tx.chunk_replies().await;
        self.reply(&format!("250 2.0.0 {size} octets received\r\n"));
        Ok(())
    }

    /// Reads and drops a BDAT chunk the director refuses.
    async fn skip_chunk<S: Connection>(&mut self, s: &mut S, size: u64) -> Result<(), Close> {
        let mut left = size;
        while left > 0 {
            if self.input.buffered().is_empty() {
                if let Err(e) = self.input.fill(s, self.deadline()).await {
                    self.input_failed(s, e).await;
                    return Err(Close);
                }
            }
            let take = (self.input.buffered().len() as u64).min(left) as usize;
            self.input.consume(take);
            left -= take as u64;
        }
        self.budget.skip_to(self.input.received());
        Ok(())
    }

    /// The client went away or fell silent inside a message.
    async fn message_stopped<S: Connection>(&mut self, s: &mut S, e: InputError) {
        warn!(error = ?e, "client stopped inside a message; nothing delivered");
        self.abort_transaction();
        self.input_failed(s, e).await;
    }

    /// Writes `bytes` to every backend taking the message; returns the
    /// buffer.
    async fn stream_out(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        match self.tx.as_mut() {
            Some(tx) => tx.stream(bytes).await,
            None => bytes,
        }
    }

    /// After the end of the message: one reply per accepted recipient, in
    /// RCPT order, each from its own backend; the transaction ends.
    async fn finish_message(&mut self) -> Result<(), Close> {
        let Some(mut tx) = self.tx.take() else {
            return Err(Close);
        };
        let (wire, _) = tx.final_replies().await;
        self.out.extend_from_slice(&wire);
        self.release(&tx);
        tx.keep_connections(&mut self.idle);
        // A message came through: the next envelope has a fresh budget.
        self.budget.restart(self.input.received());
        Ok(())
    }
}
