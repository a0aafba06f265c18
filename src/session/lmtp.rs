//! LMTP, answered by the director and split per recipient (RFC 2033, with
//! RFC 1652 8BITMIME, 1870 SIZE, 2920 PIPELINING, 3030 CHUNKING, 6531
//! SMTPUTF8, 2034 ENHANCEDSTATUSCODES, 3207 STARTTLS).
//!
//! mailpin answers LHLO, MAIL, RSET, NOOP, VRFY and QUIT itself. Each
//! `RCPT TO` is routed by its own user key: the first recipient on a
//! backend opens that backend's connection for the transaction (LHLO,
//! XCLIENT, the client's MAIL line); later recipients on the same backend
//! share it, and the backend's reply to the RCPT is the client's reply. The
//! message (DATA or BDAT chunks) is streamed to every backend involved
//! through one bounded buffer — never held whole — and afterwards each
//! accepted recipient gets its own backend's reply, in RCPT order. A backend
//! that fails fails only its own recipients, with `451 4.4.0`. A client
//! that stops mid-message is timed out and every backend connection is
//! dropped without the end of data, so nothing partial is delivered.
//!
//! Recipients count as sessions in the router from their RCPT to the end
//! of the transaction, so a user's deliveries go where its IMAP sessions
//! are.

use std::time::Duration;

use monoio::time::Instant;
use tracing::{debug, info, warn};

use crate::backend::lmtp::{open, LmtpBackend, DELIVERY_TIMEOUT};
use crate::io::{write_bytes, Connection};
use crate::proto::smtp::{
    mailbox_user, parse_bdat, parse_command, parse_path, strip_keyword, DotScanner, Reply,
    MAX_COMMAND_LINE,
};
use crate::route::backends::BackendId;
use crate::runtime::core::Core;
use crate::session::imap::Outcome;
use crate::session::input::{ClientInput, InputError};
use crate::session::ClientInfo;

/// Most recipients (accepted or not) in one transaction (RFC 5321
/// §4.5.3.1.8 asks for at least 100); more get `452 4.5.3`.
pub const MAX_RECIPIENTS: usize = 1000;

/// The largest piece of a message moved at once from client to backends.
const STREAM_CHUNK: usize = 64 * 1024;

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
    greeted: bool,
    tx: Option<Transaction>,
    /// Backend connections whose last transaction ended cleanly, kept for
    /// the client's next transaction (one per backend).
    idle: Vec<(BackendId, LmtpBackend)>,
    bad: u32,
}

/// One mail transaction: from MAIL to the end of the message or RSET.
struct Transaction {
    mail_line: Vec<u8>,
    backends: Vec<TxBackend>,
    accepted: Vec<Recipient>,
    attempted: usize,
    bdat: bool,
}

/// A backend taking part in a transaction.
struct TxBackend {
    id: BackendId,
    name: String,
    conn: Option<LmtpBackend>,
    /// Why this backend can no longer deliver; the reply its recipients get.
    failed: Option<Reply>,
}

/// A recipient the backend accepted.
struct Recipient {
    key: String,
    backend: usize,
}

/// The session must end.
struct Close;

fn temp_failure(name: &str) -> Reply {
    Reply::new(
        451,
        &format!("4.4.0 Delivery server {name} failed, try again later"),
    )
}

impl<'a> Lmtp<'a> {
    /// A new LMTP session for `client`.
    pub fn new(core: &'a Core, policy: LmtpPolicy, client: ClientInfo) -> Lmtp<'a> {
        Lmtp {
            core,
            policy,
            client,
            input: ClientInput::new(),
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
        let outcome = loop {
            let line = match self.input.line(s, MAX_COMMAND_LINE, self.deadline()).await {
                Ok(line) => line,
                Err(e) => {
                    self.input_failed(s, e).await;
                    break Outcome::Closed;
                }
            };
            match self.handle(s, &line).await {
                Ok(None) => {}
                Ok(Some(outcome)) => break outcome,
                Err(Close) => break Outcome::Closed,
            }
        };
        if !matches!(outcome, Outcome::StartTls) {
            self.end_transaction();
            self.close_idle();
        }
        outcome
    }

    async fn input_failed<S: Connection>(&mut self, s: &mut S, e: InputError) {
        match e {
            InputError::Closed => debug!("client closed"),
            InputError::Timeout => {
                info!("client timed out");
                let _ = write_bytes(s, b"421 4.4.2 Timeout, closing connection\r\n").await;
            }
            InputError::TooLong => {
                warn!("oversized command line");
                let _ = write_bytes(s, b"500 5.5.2 Line too long, closing connection\r\n").await;
            }
        }
    }

    async fn reply<S: Connection>(&mut self, s: &mut S, text: &str) -> Result<(), Close> {
        write_bytes(s, text.as_bytes()).await.map_err(|_| Close)
    }

    async fn send_reply<S: Connection>(&mut self, s: &mut S, reply: &Reply) -> Result<(), Close> {
        write_bytes(s, &reply.wire).await.map_err(|_| Close)
    }

    /// Answers a client error; too many end the session.
    async fn bad<S: Connection>(&mut self, s: &mut S, text: &str) -> Result<(), Close> {
        self.bad += 1;
        self.reply(s, &format!("{text}\r\n")).await?;
        if self.bad >= self.core.shared.config.server.max_bad_commands {
            info!(bad_commands = self.bad, "too many invalid commands");
            let _ = self
                .reply(s, "421 4.7.0 Too many errors, closing connection\r\n")
                .await;
            return Err(Close);
        }
        Ok(())
    }

    async fn handle<S: Connection>(
        &mut self,
        s: &mut S,
        line: &[u8],
    ) -> Result<Option<Outcome>, Close> {
        let Some(cmd) = parse_command(line) else {
            self.bad(s, "500 5.5.2 Syntax error, command unrecognized")
                .await?;
            return Ok(None);
        };
        match cmd.verb.as_str() {
            "LHLO" => {
                if cmd.rest.is_empty() {
                    self.bad(s, "501 5.5.4 LHLO needs a host name").await?;
                    return Ok(None);
                }
                self.end_transaction();
                self.greeted = true;
                let mut caps = String::from("250-mailpin\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-SIZE\r\n");
                if self.policy.starttls && !self.client.tls {
                    caps.push_str("250-STARTTLS\r\n");
                }
                caps.push_str("250 SMTPUTF8\r\n");
                self.reply(s, &caps).await?;
            }
            "HELO" | "EHLO" => {
                self.bad(s, "500 5.5.1 This is LMTP: use LHLO").await?;
            }
            "STARTTLS" => {
                if !cmd.rest.is_empty() {
                    self.bad(s, "501 5.5.4 STARTTLS takes no arguments").await?;
                } else if self.client.tls || !self.policy.starttls {
                    self.bad(s, "502 5.5.1 STARTTLS not available").await?;
                } else {
                    self.reply(s, "220 2.0.0 Ready to start TLS\r\n").await?;
                    self.end_transaction();
                    return Ok(Some(Outcome::StartTls));
                }
            }
            "MAIL" => self.mail(s, line, cmd.rest).await?,
            "RCPT" => self.rcpt(s, line, cmd.rest).await?,
            "DATA" => {
                if !cmd.rest.is_empty() {
                    self.bad(s, "501 5.5.4 DATA takes no arguments").await?;
                } else {
                    self.data(s).await?;
                }
            }
            "BDAT" => self.bdat(s, cmd.rest).await?,
            "RSET" => {
                self.end_transaction();
                self.reply(s, "250 2.0.0 OK\r\n").await?;
            }
            "NOOP" => self.reply(s, "250 2.0.0 OK\r\n").await?,
            // RFC 5321 §3.5.3: 252 says "cannot verify, will try": the
            // director cannot verify without a backend round trip, and a
            // 502 would claim VRFY is not implemented at all.
            "VRFY" => {
                self.reply(
                    s,
                    "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n",
                )
                .await?
            }
            "QUIT" => {
                let _ = self.reply(s, "221 2.0.0 Bye\r\n").await;
                return Err(Close);
            }
            _ => {
                self.bad(s, "500 5.5.2 Command not recognized").await?;
            }
        }
        Ok(None)
    }

    async fn mail<S: Connection>(
        &mut self,
        s: &mut S,
        line: &[u8],
        rest: &[u8],
    ) -> Result<(), Close> {
        if !self.greeted {
            return self.bad(s, "503 5.5.1 Send LHLO first").await;
        }
        if self.tx.is_some() {
            return self.bad(s, "503 5.5.1 Nested MAIL command").await;
        }
        let path = strip_keyword(rest, b"FROM:").map(parse_path);
        match path {
            Some(Ok(_)) => {
                self.tx = Some(Transaction {
                    mail_line: line.to_vec(),
                    backends: Vec::new(),
                    accepted: Vec::new(),
                    attempted: 0,
                    bdat: false,
                });
                self.reply(s, "250 2.1.0 OK\r\n").await
            }
            _ => self.bad(s, "501 5.5.4 Syntax: MAIL FROM:<address>").await,
        }
    }

    async fn rcpt<S: Connection>(
        &mut self,
        s: &mut S,
        line: &[u8],
        rest: &[u8],
    ) -> Result<(), Close> {
        let Some(tx) = self.tx.as_mut() else {
            return self.bad(s, "503 5.5.1 MAIL first").await;
        };
        if tx.bdat {
            return self.bad(s, "503 5.5.1 RCPT after BDAT").await;
        }
        if tx.attempted >= MAX_RECIPIENTS {
            return self.reply(s, "452 4.5.3 Too many recipients\r\n").await;
        }
        tx.attempted += 1;
        let user = strip_keyword(rest, b"TO:")
            .and_then(|a| parse_path(a).ok())
            .and_then(|p| mailbox_user(p.inner));
        let Some(user) = user else {
            return self.bad(s, "501 5.1.3 Syntax: RCPT TO:<address>").await;
        };
        let core = self.core;
        let key = core.shared.user_key.key(&user);
        let backend_id = match core.router.acquire(&key).await {
            Ok(b) => b,
            Err(e) => {
                warn!(user = %key, ?e, "no backend for recipient");
                return self
                    .reply(s, "451 4.4.0 No delivery server is available for this recipient, try again later\r\n")
                    .await;
            }
        };
        let reply = self.rcpt_on(backend_id, &key, line).await;
        if reply.is_positive() {
            debug!(user = %key, "recipient accepted");
        } else {
            core.router.release(&key, backend_id);
        }
        self.send_reply(s, &reply).await
    }

    /// Sends the RCPT line to the backend (opening its connection for this
    /// transaction first if needed) and returns the reply for the client.
    async fn rcpt_on(&mut self, id: BackendId, key: &str, line: &[u8]) -> Reply {
        let set = self.core.router.backends();
        let Some(backend) = set.get(id) else {
            return Reply::new(451, "4.4.0 Delivery server vanished, try again later");
        };
        let Some(tx) = self.tx.as_mut() else {
            return Reply::new(503, "5.5.1 MAIL first");
        };
        let index = match tx.backends.iter().position(|b| b.id == id) {
            Some(i) => i,
            None => {
                // A connection kept from the previous transaction first;
                // one the backend closed meanwhile is replaced.
                let mut reused = None;
                if let Some(pos) = self.idle.iter().position(|(b, _)| *b == id) {
                    let (_, mut conn) = self.idle.swap_remove(pos);
                    if let Ok(mail) = conn.mail(&tx.mail_line).await {
                        reused = Some((conn, mail));
                    }
                }
                let opened = match reused {
                    Some(r) => Ok(r),
                    None => open(backend, &self.client, &tx.mail_line).await,
                };
                let (conn, failed) = match opened {
                    Ok((conn, mail)) if mail.is_positive() => (Some(conn), None),
                    Ok((conn, mail)) => {
                        conn.quit().await;
                        (None, Some(mail))
                    }
                    Err(e) => {
                        warn!(backend = %backend.name, error = %e, "delivery server unavailable");
                        (None, Some(temp_failure(&backend.name)))
                    }
                };
                tx.backends.push(TxBackend {
                    id,
                    name: backend.name.to_string(),
                    conn,
                    failed,
                });
                tx.backends.len() - 1
            }
        };
        let b = &mut tx.backends[index];
        let Some(conn) = b.conn.as_mut() else {
            return b.failed.clone().unwrap_or_else(|| temp_failure(&b.name));
        };
        match conn.command(line).await {
            Ok(reply) => {
                if reply.is_positive() {
                    info!(user = %key, backend = %b.name, "recipient");
                    tx.accepted.push(Recipient {
                        key: key.to_owned(),
                        backend: index,
                    });
                }
                reply
            }
            Err(e) => {
                warn!(backend = %b.name, error = %e, "delivery server failed");
                b.fail(temp_failure(&b.name.clone()));
                temp_failure(&b.name)
            }
        }
    }

    /// Releases every recipient; backend connections that finished their
    /// part cleanly are kept for the next transaction, the rest are closed.
    fn finish_transaction(&mut self) {
        if let Some(tx) = self.tx.take() {
            for r in &tx.accepted {
                self.core.router.release(&r.key, tx.backends[r.backend].id);
            }
            for b in tx.backends {
                if let Some(conn) = b.conn {
                    self.idle.push((b.id, conn));
                }
            }
        }
    }

    /// Closes the kept backend connections (STARTTLS, end of session).
    fn close_idle(&mut self) {
        for (_, conn) in self.idle.drain(..) {
            monoio::spawn(conn.quit());
        }
    }

    /// Releases every recipient and closes the transaction's backend
    /// connections (RSET, LHLO, end of session).
    fn end_transaction(&mut self) {
        if let Some(tx) = self.tx.take() {
            for r in &tx.accepted {
                self.core.router.release(&r.key, tx.backends[r.backend].id);
            }
            for b in tx.backends {
                if let Some(conn) = b.conn {
                    monoio::spawn(conn.quit());
                }
            }
        }
    }

    /// Drops the transaction without telling the backends the message
    /// ended, so none of them delivers a partial message.
    fn abort_transaction(&mut self) {
        if let Some(mut tx) = self.tx.take() {
            for b in &mut tx.backends {
                b.conn = None;
            }
            for r in &tx.accepted {
                self.core.router.release(&r.key, tx.backends[r.backend].id);
            }
        }
    }

    /// Checks that a message may start; the error reply otherwise.
    fn message_allowed(&self) -> Result<(), &'static str> {
        match &self.tx {
            None => Err("503 5.5.1 MAIL first"),
            Some(tx) if tx.accepted.is_empty() => Err("503 5.5.1 No valid recipients"),
            Some(_) => Ok(()),
        }
    }

    async fn data<S: Connection>(&mut self, s: &mut S) -> Result<(), Close> {
        if let Err(e) = self.message_allowed() {
            return self.bad(s, e).await;
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(Close);
        };
        if tx.bdat {
            return self.bad(s, "503 5.5.1 DATA after BDAT").await;
        }
        // Ask every backend with recipients; 354 means it takes the message.
        let mut any = false;
        let mut first_refusal = None;
        for (i, b) in tx.backends.iter_mut().enumerate() {
            if !tx.accepted.iter().any(|r| r.backend == i) {
                continue;
            }
            let Some(conn) = b.conn.as_mut() else {
                continue;
            };
            match conn.command(b"DATA").await {
                Ok(r) if r.code == 354 => any = true,
                Ok(r) => {
                    first_refusal.get_or_insert(r.clone());
                    b.fail(r);
                }
                Err(e) => {
                    warn!(backend = %b.name, error = %e, "delivery server failed at DATA");
                    let r = temp_failure(&b.name);
                    first_refusal.get_or_insert(r.clone());
                    b.fail(r);
                }
            }
        }
        if !any {
            let r = first_refusal
                .unwrap_or_else(|| Reply::new(451, "4.4.0 No delivery server, try again later"));
            self.end_transaction();
            return self.send_reply(s, &r).await;
        }
        self.reply(s, "354 2.0.0 Start mail input; end with <CRLF>.<CRLF>\r\n")
            .await?;
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
        self.final_replies(s).await
    }

    async fn bdat<S: Connection>(&mut self, s: &mut S, rest: &[u8]) -> Result<(), Close> {
        let Some((size, last)) = parse_bdat(rest) else {
            return self.bad(s, "501 5.5.4 Syntax: BDAT <size> [LAST]").await;
        };
        if let Err(e) = self.message_allowed() {
            // The chunk follows the command whatever the answer: skip it.
            self.skip_chunk(s, size).await?;
            return self.bad(s, e).await;
        }
        let Some(tx) = self.tx.as_mut() else {
            return Err(Close);
        };
        if !tx.bdat {
            tx.bdat = true;
            for (i, b) in tx.backends.iter_mut().enumerate() {
                let has = tx.accepted.iter().any(|r| r.backend == i);
                if has && b.conn.as_ref().is_some_and(|c| !c.chunking) {
                    warn!(backend = %b.name, "delivery server lacks CHUNKING");
                    b.fail(Reply::new(
                        451,
                        "4.4.0 Delivery server does not take BDAT, try again with DATA",
                    ));
                }
            }
        }
        let command = if last {
            format!("BDAT {size} LAST\r\n")
        } else {
            format!("BDAT {size}\r\n")
        };
        let _ = self.stream_out(command.into_bytes()).await;
        let mut left = size;
        while left > 0 {
            if self.input.buffered().is_empty() {
                if let Err(e) = self.input.fill(s, self.deadline()).await {
                    self.message_stopped(s, e).await;
                    return Err(Close);
                }
            }
            let take = (self.input.buffered().len() as u64)
                .min(left)
                .min(STREAM_CHUNK as u64) as usize;
            let piece = self.input.buffered()[..take].to_vec();
            self.input.consume(take);
            left -= take as u64;
            let _ = self.stream_out(piece).await;
        }
        if last {
            return self.final_replies(s).await;
        }
        // Every live backend answers the chunk once.
        let Some(tx) = self.tx.as_mut() else {
            return Err(Close);
        };
        for b in tx.backends.iter_mut() {
            let Some(conn) = b.conn.as_mut() else {
                continue;
            };
            match conn.reply(crate::backend::lmtp::COMMAND_TIMEOUT).await {
                Ok(r) if r.is_positive() => {}
                Ok(r) => b.fail(r),
                Err(e) => {
                    warn!(backend = %b.name, error = %e, "delivery server failed at BDAT");
                    let r = temp_failure(&b.name);
                    b.fail(r);
                }
            }
        }
        self.reply(s, &format!("250 2.0.0 {size} octets received\r\n"))
            .await
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
        Ok(())
    }

    /// The client went away or fell silent inside a message.
    async fn message_stopped<S: Connection>(&mut self, s: &mut S, e: InputError) {
        warn!(error = ?e, "client stopped inside a message; nothing delivered");
        self.abort_transaction();
        self.input_failed(s, e).await;
    }

    /// Writes `bytes` to every backend still delivering; one that fails is
    /// dropped and its recipients get `451 4.4.0`. Returns the buffer.
    async fn stream_out(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        let Some(tx) = self.tx.as_mut() else {
            return bytes;
        };
        let mut lost = false;
        for b in tx.backends.iter_mut() {
            let Some(conn) = b.conn.as_mut() else {
                continue;
            };
            if lost {
                // The bytes are gone (a write timed out before): this
                // backend would miss them, so it cannot deliver either.
                let r = temp_failure(&b.name);
                b.fail(r);
                continue;
            }
            let (res, buf) = conn.send(bytes).await;
            lost = buf.is_none();
            bytes = buf.unwrap_or_default();
            if let Err(e) = res {
                warn!(backend = %b.name, error = %e, "delivery server failed during the message");
                let r = temp_failure(&b.name);
                b.fail(r);
            }
        }
        bytes
    }

    /// After the end of the message: one reply per accepted recipient, in
    /// RCPT order, each from its own backend.
    async fn final_replies<S: Connection>(&mut self, s: &mut S) -> Result<(), Close> {
        let Some(mut tx) = self.tx.take() else {
            return Err(Close);
        };
        let mut out = Vec::new();
        let mut delivered = 0usize;
        for r in &tx.accepted {
            let b = &mut tx.backends[r.backend];
            let reply = match b.conn.as_mut() {
                None => b.failed.clone().unwrap_or_else(|| temp_failure(&b.name)),
                Some(conn) => match conn.reply(DELIVERY_TIMEOUT).await {
                    Ok(reply) => reply,
                    Err(e) => {
                        warn!(backend = %b.name, error = %e, "delivery server failed after the message");
                        let f = temp_failure(&b.name);
                        b.fail(f.clone());
                        f
                    }
                },
            };
            if reply.is_positive() {
                delivered += 1;
            }
            out.extend_from_slice(&reply.wire);
        }
        info!(
            recipients = tx.accepted.len(),
            delivered,
            backends = tx.backends.len(),
            "message delivered"
        );
        self.tx = Some(tx);
        self.finish_transaction();
        write_bytes(s, &out).await.map_err(|_| Close)
    }
}

impl TxBackend {
    /// Marks the backend failed for this transaction with `reply`, dropping
    /// its connection.
    fn fail(&mut self, reply: Reply) {
        self.conn = None;
        self.failed = Some(reply);
    }
}
