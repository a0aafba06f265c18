//! IMAP before login, as the director answers it (RFC 9051, RFC 3501).
//!
//! The director speaks just enough IMAP to learn who the user is: it greets,
//! answers CAPABILITY, NOOP, ID, LOGOUT and STARTTLS itself, takes LOGIN and
//! AUTHENTICATE (PLAIN, LOGIN; with or without SASL-IR; `*` cancels), and
//! hands the credentials to the user's backend, whose answer the client gets
//! word for word. OAUTHBEARER, XOAUTH2 and SCRAM are routed by the user in
//! the client's first message and then relayed round by round
//! ([`crate::session::relayed_auth`]); `server.sasl_mechanisms` says which
//! mechanisms are offered. Everything else before login is refused with the tagged
//! BAD the RFC asks for. Lines, literals, SASL responses, the bytes and the
//! commands before login are bounded ([`crate::session::limits`]): past a
//! bound, or after too many bad commands, the session ends with `* BYE`.

use monoio::time::Instant;
use tracing::{debug, info};

use zeroize::Zeroizing;

use crate::backend::client_info::ClientInfo;
use crate::backend::imap::{login, IdFields};
use crate::backend::sasl_relay::{Auth, ClientGone, SaslClient};
use crate::config::Protocol;
use crate::io::{write_bytes, Connection, WriteSide};
use crate::plane::stats::{Counters, PreloginLimit};
use crate::proto::imap::command::{Arg, Command, CommandReader, Limits, ParseError, Step};
use crate::proto::sasl::{self, Credentials};
use crate::proto::sasl_passthrough::Mechanism;
use crate::runtime::core::Core;
use crate::session::failover::{login_key, login_key_of, login_routed};
use crate::session::limits::{limit_text, Budget, PreloginLimits};
use crate::session::outcome::Outcome;
use crate::session::relayed_auth::{self, FirstMessageError};

/// At most this many ID field pairs are kept (RFC 2971 allows 30).
const MAX_ID_FIELDS: usize = 30;

/// What the listener allows before login.
#[derive(Debug, Clone, Copy)]
pub struct ImapPolicy {
    /// STARTTLS is offered (a `tls = "starttls"` listener).
    pub starttls: bool,
    /// LOGIN and AUTHENTICATE are allowed before TLS.
    pub plaintext_auth: bool,
}

/// The state of one client before login; survives a STARTTLS upgrade.
pub struct Prelogin<'a> {
    core: &'a Core,
    policy: ImapPolicy,
    client: ClientInfo,
    reader: CommandReader,
    buf: Vec<u8>,
    /// Bytes read from the client so far.
    received: u64,
    budget: Budget,
    id_fields: IdFields,
    bad: u32,
    deadline: Instant,
    /// The identity of the login under way (for a live move's master
    /// login: the authorization id, else the user name).
    login_user: String,
}

/// A reply that ends with the client being disconnected.
struct Bye;

/// What a client before login is told when the director drains (RFC 9051
/// §7.1.5: BYE, sent unsolicited, then the server closes; RFC 5530's
/// UNAVAILABLE says it is temporary).
const SHUTDOWN_BYE: &[u8] = b"* BYE [UNAVAILABLE] Server shutting down, please reconnect.\r\n";

impl<'a> Prelogin<'a> {
    /// A new pre-login phase for `client`, bounded by `server.prelogin_timeout`.
    pub fn new(core: &'a Core, policy: ImapPolicy, client: ClientInfo) -> Prelogin<'a> {
        let server = &core.shared().config.server;
        let budget = Budget::new(PreloginLimits::of(&core.shared().config), Protocol::Imap);
        Prelogin {
            core,
            policy,
            client,
            reader: CommandReader::new(reader_limits(budget.limits())),
            buf: Vec::new(),
            received: 0,
            budget,
            id_fields: Vec::new(),
            bad: 0,
            deadline: Instant::now() + server.prelogin_timeout,
            login_user: String::new(),
        }
    }

    /// The client as known so far.
    pub fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// Marks the connection as TLS from now on and forgets everything the
    /// client sent in plaintext after STARTTLS (RFC 9051 §6.2.1: no command
    /// injection across the upgrade).
    pub fn upgraded(&mut self) {
        self.client.tls = true;
        self.buf = Vec::new();
        self.reader = CommandReader::new(reader_limits(self.budget.limits()));
    }

    fn login_allowed(&self) -> bool {
        self.client.tls || self.policy.plaintext_auth
    }

    /// The capability list before login.
    pub fn capabilities(&self) -> String {
        let mut caps = String::from("IMAP4rev1 ID LITERAL+ SASL-IR");
        if self.policy.starttls && !self.client.tls {
            caps.push_str(" STARTTLS");
        }
        if self.login_allowed() {
            for mechanism in self.core.shared().config.server.sasl_mechanisms() {
                caps.push_str(" AUTH=");
                caps.push_str(mechanism.name());
            }
        } else {
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    /// Writes the greeting.
    pub async fn greet<S: Connection>(&self, s: &mut S) -> bool {
        let greeting = format!(
            "* OK [CAPABILITY {}] mailpin ready.\r\n",
            self.capabilities()
        );
        write_bytes(s, greeting.as_bytes()).await.is_ok()
    }

    /// Runs the dialogue until login, STARTTLS or the end.
    pub async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        loop {
            let step = self.reader.next(&mut self.buf);
            let cmd = match step {
                Ok(Step::Command(cmd)) => {
                    if let Err(limit) = self.budget.command() {
                        self.limit_reached(s, limit).await;
                        return Outcome::Closed;
                    }
                    cmd
                }
                Ok(Step::Continue) => {
                    if write_bytes(s, b"+ Ready for literal data\r\n")
                        .await
                        .is_err()
                    {
                        return Outcome::Closed;
                    }
                    continue;
                }
                Ok(Step::NeedMore) => {
                    let core = self.core;
                    match core.prelogin_drain.unless_started(self.fill(s)).await {
                        Some(true) => continue,
                        Some(false) => return Outcome::Closed,
                        None => {
                            info!("director draining: closing before login");
                            let _ = write_bytes(s, SHUTDOWN_BYE).await;
                            return Outcome::Closed;
                        }
                    }
                }
                Err(e) => {
                    if self.refuse_input(s, &e).await.is_err() {
                        return Outcome::Closed;
                    }
                    continue;
                }
            };
            match self.handle(s, cmd).await {
                Ok(None) => {}
                Ok(Some(outcome)) => return outcome,
                Err(Bye) => return Outcome::Closed,
            }
        }
    }

    /// Reads more client bytes before the deadline; false when the session
    /// must end (closed, error, or pre-login timeout, which says BYE).
    async fn fill<S: Connection>(&mut self, s: &mut S) -> bool {
        let mut input = ImapInput {
            buf: &mut self.buf,
            received: &mut self.received,
            budget: &mut self.budget,
            counters: &self.core.counters,
            deadline: self.deadline,
        };
        input.fill(s).await
    }

    /// Answers unparseable input. A syntax error or a refused
    /// synchronising literal counts as a bad command and the dialogue goes
    /// on; oversized input cannot be resynchronised before login (nobody
    /// legitimate sends it), so the client is told and disconnected.
    async fn refuse_input<S: Connection>(&mut self, s: &mut S, e: &ParseError) -> Result<(), Bye> {
        let tag = e.tag().unwrap_or("*").to_string();
        match e {
            ParseError::Syntax { reason, .. } => {
                debug!(reason, "syntax error before login");
                self.bad(s, &tag, &format!("Syntax error: {reason}.")).await
            }
            ParseError::LiteralTooLarge {
                non_sync: false, ..
            } => {
                self.budget
                    .reached(&self.core.counters, PreloginLimit::Literal);
                self.bad += 1;
                self.reply(s, format!("{tag} NO [TOOBIG] Literal too large.\r\n"))
                    .await
            }
            ParseError::LiteralTooLarge { .. } => {
                self.budget
                    .reached(&self.core.counters, PreloginLimit::Literal);
                let reply =
                    format!("{tag} NO [TOOBIG] Literal too large.\r\n* BYE Too much data.\r\n");
                let _ = self.reply(s, reply).await;
                Err(Bye)
            }
            ParseError::LineTooLong { .. } => {
                self.limit_reached(s, PreloginLimit::Line).await;
                Err(Bye)
            }
            // More than any login needs: see `reader_limits`.
            ParseError::CommandTooLarge { .. } => {
                self.limit_reached(s, PreloginLimit::Bytes).await;
                Err(Bye)
            }
        }
    }

    /// Counts and logs a pre-login limit hit and says `* BYE`; the caller
    /// closes.
    async fn limit_reached<S: Connection>(&mut self, s: &mut S, limit: PreloginLimit) {
        self.budget.reached(&self.core.counters, limit);
        let bye = format!("* BYE {}.\r\n", limit_text(limit, Protocol::Imap));
        let _ = write_bytes(s, bye.as_bytes()).await;
    }

    /// Counts a bad command; too many end the session.
    async fn bad<S: Connection>(&mut self, s: &mut S, tag: &str, text: &str) -> Result<(), Bye> {
        self.bad += 1;
        let mut reply = format!("{tag} BAD {text}\r\n");
        let too_many = self.bad >= self.core.shared().config.server.max_bad_commands;
        if too_many {
            reply.push_str("* BYE Too many invalid commands.\r\n");
        }
        write_bytes(s, reply.as_bytes()).await.map_err(|_| Bye)?;
        if too_many {
            info!(bad_commands = self.bad, "too many invalid commands");
            return Err(Bye);
        }
        Ok(())
    }

    async fn reply<S: Connection>(&mut self, s: &mut S, text: String) -> Result<(), Bye> {
        write_bytes(s, text.as_bytes()).await.map_err(|_| Bye)
    }

    async fn handle<S: Connection>(
        &mut self,
        s: &mut S,
        cmd: Command,
    ) -> Result<Option<Outcome>, Bye> {
        let tag = cmd.tag.clone();
        match cmd.name.as_str() {
            "CAPABILITY" if cmd.args.is_empty() => {
                let caps = self.capabilities();
                self.reply(
                    s,
                    format!("* CAPABILITY {caps}\r\n{tag} OK Capability completed.\r\n"),
                )
                .await?;
            }
            "NOOP" if cmd.args.is_empty() => {
                self.reply(s, format!("{tag} OK NOOP completed.\r\n"))
                    .await?;
            }
            "LOGOUT" if cmd.args.is_empty() => {
                let _ = self
                    .reply(
                        s,
                        format!("* BYE Logging out.\r\n{tag} OK Logout completed.\r\n"),
                    )
                    .await;
                return Err(Bye);
            }
            "ID" => self.id(s, &tag, &cmd.args).await?,
            "STARTTLS" if cmd.args.is_empty() => {
                if self.client.tls {
                    self.bad(s, &tag, "TLS is already active.").await?;
                } else if !self.policy.starttls {
                    self.bad(s, &tag, "STARTTLS is not available on this port.")
                        .await?;
                } else {
                    self.reply(s, format!("{tag} OK Begin TLS negotiation now.\r\n"))
                        .await?;
                    return Ok(Some(Outcome::StartTls));
                }
            }
            "LOGIN" => {
                let (user, pass) = match cmd.args.as_slice() {
                    [u, p] => (u.as_astring(), p.as_astring()),
                    _ => (None, None),
                };
                let (Some(user), Some(pass)) = (user, pass) else {
                    self.bad(s, &tag, "LOGIN needs a user name and a password.")
                        .await?;
                    return Ok(None);
                };
                if !self.login_allowed() {
                    return self.privacy_required(s, &tag).await;
                }
                let Ok(user) = String::from_utf8(user.to_vec()) else {
                    self.bad(s, &tag, "User name is not UTF-8.").await?;
                    return Ok(None);
                };
                return self.login(s, &tag, Credentials::new(user, pass)).await;
            }
            "AUTHENTICATE" => return self.authenticate(s, &tag, &cmd.args).await,
            "CAPABILITY" | "NOOP" | "LOGOUT" | "STARTTLS" => {
                self.bad(s, &tag, "Unexpected arguments.").await?;
            }
            "SELECT" | "EXAMINE" | "CREATE" | "DELETE" | "RENAME" | "SUBSCRIBE" | "UNSUBSCRIBE"
            | "LIST" | "LSUB" | "NAMESPACE" | "STATUS" | "APPEND" | "IDLE" | "ENABLE" | "CHECK"
            | "CLOSE" | "UNSELECT" | "EXPUNGE" | "SEARCH" | "FETCH" | "STORE" | "COPY" | "MOVE"
            | "UID" | "GETQUOTA" | "GETQUOTAROOT" | "GETACL" | "MYRIGHTS" | "COMPRESS" => {
                self.bad(s, &tag, "Log in first.").await?;
            }
            _ => self.bad(s, &tag, "Unknown command.").await?,
        }
        Ok(None)
    }

    async fn privacy_required<S: Connection>(
        &mut self,
        s: &mut S,
        tag: &str,
    ) -> Result<Option<Outcome>, Bye> {
        self.reply(
            s,
            format!("{tag} NO [PRIVACYREQUIRED] Use STARTTLS before logging in.\r\n"),
        )
        .await?;
        Ok(None)
    }

    /// RFC 2971 ID: keep the client's fields to forward; answer with ours.
    async fn id<S: Connection>(&mut self, s: &mut S, tag: &str, args: &[Arg]) -> Result<(), Bye> {
        let fields = match args {
            [Arg::Nil] => Some(Vec::new()),
            [Arg::List(items)] if items.len() % 2 == 0 && items.len() <= 2 * MAX_ID_FIELDS => items
                .chunks(2)
                .map(|pair| {
                    let key = pair[0].as_astring()?.to_vec();
                    let value = match &pair[1] {
                        Arg::Nil => None,
                        v => Some(v.as_astring()?.to_vec()),
                    };
                    Some((key, value))
                })
                .collect::<Option<IdFields>>(),
            _ => None,
        };
        match fields {
            Some(fields) => {
                self.id_fields = fields;
                self.reply(
                    s,
                    format!("* ID (\"name\" \"mailpin\")\r\n{tag} OK ID completed.\r\n"),
                )
                .await
            }
            None => {
                self.bad(s, tag, "ID takes NIL or a list of field/value pairs.")
                    .await
            }
        }
    }

    /// AUTHENTICATE with one of `server.sasl_mechanisms`, with or without
    /// an initial response.
    async fn authenticate<S: Connection>(
        &mut self,
        s: &mut S,
        tag: &str,
        args: &[Arg],
    ) -> Result<Option<Outcome>, Bye> {
        let (mech, initial) = match args {
            [Arg::Atom(m)] => (m.to_ascii_uppercase(), None),
            [Arg::Atom(m), Arg::Atom(ir)] => (m.to_ascii_uppercase(), Some(ir.clone())),
            _ => {
                self.bad(s, tag, "AUTHENTICATE needs a mechanism name.")
                    .await?;
                return Ok(None);
            }
        };
        let offered = self.core.shared().config.server.sasl_mechanisms();
        let Some(mechanism) = Mechanism::parse(mech.as_bytes()).filter(|m| offered.contains(m))
        else {
            self.reply(
                s,
                format!("{tag} NO Unsupported authentication mechanism.\r\n"),
            )
            .await?;
            return Ok(None);
        };
        if !self.login_allowed() {
            return self.privacy_required(s, tag).await;
        }
        if let Some(ir) = &initial {
            if let Err(limit) = self.budget.sasl(ir.len()) {
                self.limit_reached(s, limit).await;
                return Err(Bye);
            }
        }
        if mechanism.is_relayed() {
            return self.relayed(s, tag, mechanism, initial).await;
        }
        let creds = if mech == "PLAIN" {
            let response = match initial {
                Some(ir) => ir.into_bytes(),
                None => match self.sasl_step(s, b"+ \r\n").await? {
                    Some(r) => r,
                    None => return self.cancelled(s, tag).await,
                },
            };
            sasl::decode_plain(&response)
        } else {
            let user = match initial {
                Some(ir) => ir.into_bytes(),
                None => {
                    let challenge = format!("+ {}\r\n", sasl::LOGIN_USER_CHALLENGE);
                    match self.sasl_step(s, challenge.as_bytes()).await? {
                        Some(r) => r,
                        None => return self.cancelled(s, tag).await,
                    }
                }
            };
            let challenge = format!("+ {}\r\n", sasl::LOGIN_PASSWORD_CHALLENGE);
            let pass = match self.sasl_step(s, challenge.as_bytes()).await? {
                Some(r) => r,
                None => return self.cancelled(s, tag).await,
            };
            sasl::decode_login_user(&user).and_then(|user| {
                sasl::decode_login_password(&pass).map(|pass| Credentials::new(user, pass.to_vec()))
            })
        };
        match creds {
            Ok(creds) => self.login(s, tag, creds).await,
            Err(e) => {
                self.bad(s, tag, &format!("Invalid SASL response: {e}."))
                    .await?;
                Ok(None)
            }
        }
    }

    async fn cancelled<S: Connection>(
        &mut self,
        s: &mut S,
        tag: &str,
    ) -> Result<Option<Outcome>, Bye> {
        self.bad(s, tag, "Authentication cancelled.").await?;
        Ok(None)
    }

    /// Sends a SASL challenge and reads the client's answer line, bounded
    /// by `limits.sasl_max`; `None` when the client cancels with `*`.
    async fn sasl_step<S: Connection>(
        &mut self,
        s: &mut S,
        challenge: &[u8],
    ) -> Result<Option<Vec<u8>>, Bye> {
        write_bytes(s, challenge).await.map_err(|_| Bye)?;
        loop {
            let max = self.budget.limits().sasl;
            match self.reader.take_line_within(&mut self.buf, max) {
                Ok(Some(line)) if line == sasl::CANCEL => return Ok(None),
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {
                    if !self.fill(s).await {
                        return Err(Bye);
                    }
                }
                Err(_) => {
                    self.limit_reached(s, PreloginLimit::Sasl).await;
                    return Err(Bye);
                }
            }
        }
    }

    /// Starts a relayed mechanism: reads the first message (the initial
    /// response, or the answer to an empty challenge), routes by its user
    /// and relays the exchange to the backend.
    async fn relayed<S: Connection>(
        &mut self,
        s: &mut S,
        tag: &str,
        mechanism: Mechanism,
        initial: Option<String>,
    ) -> Result<Option<Outcome>, Bye> {
        let first = match initial {
            Some(ir) => ir.into_bytes(),
            None => match self.sasl_step(s, b"+ \r\n").await? {
                Some(r) => r,
                None => return self.cancelled(s, tag).await,
            },
        };
        let (identity, relayed) = match relayed_auth::start(mechanism, first) {
            Ok(started) => started,
            Err(FirstMessageError::Encoding(e)) => {
                self.bad(s, tag, &format!("Invalid SASL response: {e}."))
                    .await?;
                return Ok(None);
            }
            Err(e) => {
                debug!(error = %e, mechanism = mechanism.name(), "first SASL message refused");
                self.reply(
                    s,
                    format!("{tag} NO [AUTHENTICATIONFAILED] Cannot log in: {e}.\r\n"),
                )
                .await?;
                return Ok(None);
            }
        };
        let key = match login_key_of(self.core, &identity.user, identity.authzid.as_deref()) {
            Ok(key) => key,
            Err(e) => {
                debug!(error = %e, "login name refused");
                self.bad(s, tag, &format!("Invalid login: {e}.")).await?;
                return Ok(None);
            }
        };
        self.login_user = identity
            .authzid
            .clone()
            .unwrap_or_else(|| identity.user.clone());
        self.route(s, tag, key, Auth::Relayed(&relayed)).await
    }

    /// Routes the user of `creds` and replays them on its backend.
    async fn login<S: Connection>(
        &mut self,
        s: &mut S,
        tag: &str,
        creds: Credentials,
    ) -> Result<Option<Outcome>, Bye> {
        let key = match login_key(self.core, &creds) {
            Ok(key) => key,
            Err(e) => {
                debug!(error = %e, "login name refused");
                self.bad(s, tag, &format!("Invalid login: {e}.")).await?;
                return Ok(None);
            }
        };
        self.login_user = creds.authzid.clone().unwrap_or_else(|| creds.user.clone());
        self.route(s, tag, key, Auth::Plain(&creds)).await
    }

    /// Logs the user of `key` in on its backend with `auth`.
    async fn route<S: Connection>(
        &mut self,
        s: &mut S,
        tag: &str,
        key: String,
        auth: Auth<'_>,
    ) -> Result<Option<Outcome>, Bye> {
        let core = self.core;
        let (client, id_fields) = (&self.client, &self.id_fields);
        let (routed, gone) = {
            let mut sasl_client = ImapSaslClient {
                s: &mut *s,
                reader: &mut self.reader,
                input: ImapInput {
                    buf: &mut self.buf,
                    received: &mut self.received,
                    budget: &mut self.budget,
                    counters: &core.counters,
                    deadline: self.deadline,
                },
                gone: false,
            };
            let routed = login_routed(
                core,
                &key,
                client.origin(Protocol::Imap),
                &mut sasl_client,
                |backend, c, _| Box::pin(login(backend, auth, tag, client, id_fields, c)),
            )
            .await;
            (routed, sasl_client.gone)
        };
        if gone {
            return Err(Bye);
        }
        match routed.into_logged_in(key, || std::mem::take(&mut self.buf)) {
            Ok(mut l) => {
                // Live moves (issue 12): what a move of this session needs.
                if crate::session::live_move::enabled(core) {
                    l.live = Some(Box::new(crate::session::outcome::LiveLogin {
                        client: self.client.clone(),
                        user: std::mem::take(&mut self.login_user),
                    }));
                }
                Ok(Some(Outcome::LoggedIn(l)))
            }
            Err(refusal) => {
                if let Some(text) = refusal.message() {
                    // RFC 5530: LIMIT for a per-user session limit.
                    let code = if refusal.is_user_limit() {
                        "LIMIT"
                    } else {
                        "UNAVAILABLE"
                    };
                    self.reply(s, format!("{tag} NO [{code}] {text}\r\n"))
                        .await?;
                }
                Ok(None)
            }
        }
    }
}

/// The client's input before login, borrowed from [`Prelogin`] field by
/// field so a relayed SASL exchange can read from it while the backend
/// login holds the client's details.
struct ImapInput<'p> {
    buf: &'p mut Vec<u8>,
    received: &'p mut u64,
    budget: &'p mut Budget,
    counters: &'p Counters,
    deadline: Instant,
}

impl ImapInput<'_> {
    /// Reads more client bytes before the deadline; false when the session
    /// must end (closed, error, byte budget, or pre-login timeout, which
    /// says BYE).
    async fn fill<S: Connection>(&mut self, s: &mut S) -> bool {
        self.buf.reserve(1024);
        let read = monoio::time::timeout_at(self.deadline, s.read_into(std::mem::take(self.buf)));
        match read.await {
            Ok((Ok(n), buf)) => {
                *self.buf = buf;
                *self.received += n as u64;
                if let Err(limit) = self.budget.bytes(*self.received) {
                    self.limit_reached(s, limit).await;
                    return false;
                }
                n > 0
            }
            Ok((Err(e), _)) => {
                debug!(error = %e, "client read failed");
                false
            }
            Err(_) => {
                info!("pre-login timeout");
                let _ = write_bytes(s, b"* BYE Pre-login timeout, disconnecting.\r\n").await;
                false
            }
        }
    }

    /// Counts and logs a pre-login limit hit and says `* BYE`.
    async fn limit_reached<S: Connection>(&mut self, s: &mut S, limit: PreloginLimit) {
        self.budget.reached(self.counters, limit);
        let bye = format!("* BYE {}.\r\n", limit_text(limit, Protocol::Imap));
        let _ = write_bytes(s, bye.as_bytes()).await;
    }
}

/// The client side of a backend login: where the backend's answer goes,
/// and, for a relayed mechanism, where each answer to a challenge comes
/// from (one line, bounded by `limits.sasl_max`).
struct ImapSaslClient<'p, S> {
    s: &'p mut S,
    reader: &'p mut CommandReader,
    input: ImapInput<'p>,
    /// The client left or was sent away during the exchange.
    gone: bool,
}

impl<S: Connection> WriteSide for ImapSaslClient<'_, S> {
    async fn write_all(&mut self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        self.s.write_all(buf).await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.s.shutdown().await
    }
}

impl<S: Connection> SaslClient for ImapSaslClient<'_, S> {
    async fn sasl_response(&mut self) -> Result<Zeroizing<Vec<u8>>, ClientGone> {
        loop {
            let max = self.input.budget.limits().sasl;
            match self.reader.take_line_within(self.input.buf, max) {
                Ok(Some(line)) => return Ok(Zeroizing::new(line)),
                Ok(None) => {
                    if !self.input.fill(self.s).await {
                        self.gone = true;
                        return Err(ClientGone);
                    }
                }
                Err(_) => {
                    self.input.limit_reached(self.s, PreloginLimit::Sasl).await;
                    self.gone = true;
                    return Err(ClientGone);
                }
            }
        }
    }
}

/// The command reader's bounds: each line and literal no larger than
/// theirs, and a whole command no larger than the largest one a client
/// needs before login — LOGIN's line with two literals (user name and
/// password) — nor than the byte budget. A larger command is more data
/// than any login needs, counted as `bytes`.
fn reader_limits(limits: &PreloginLimits) -> Limits {
    let login = limits.line + 2 * (limits.literal + LITERAL_FRAMING);
    Limits {
        max_line: limits.line,
        max_literal: limits.literal,
        max_command: login.min(limits.bytes),
    }
}

/// Room for a literal's CRLF and the line end after it.
const LITERAL_FRAMING: usize = 4;
