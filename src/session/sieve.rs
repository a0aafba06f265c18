//! ManageSieve before login, as the director answers it (RFC 5804).
//!
//! The director greets with its capabilities, answers CAPABILITY, NOOP,
//! LOGOUT and STARTTLS itself (re-issuing the capabilities after TLS, §2.2),
//! takes `AUTHENTICATE "PLAIN"` with the initial response as a quoted
//! string or a literal — or after an empty `""` challenge, `"*"` cancelling —
//! and replays the credentials on the user's backend, whose answer reaches
//! the client word for word. `AUTHENTICATE "OAUTHBEARER"`, `"XOAUTH2"` and
//! `"SCRAM-*"` are routed by the user in the first message and relayed
//! round by round ([`crate::session::relayed_auth`]);
//! `server.sasl_mechanisms` says which mechanisms are offered. No backend for the user: `NO (TRYLATER)`
//! (§1.3). The SIEVE extension list before login is Pigeonhole's usual
//! set; after login, CAPABILITY goes to the backend and is authoritative.
//! Lines, literals, SASL responses, the bytes and the commands before login
//! are bounded ([`crate::session::limits`]); past a bound the client hears
//! `BYE` and is closed.

use crate::session::failover::{login_key, login_key_of};
use monoio::time::Instant;
use tracing::{debug, info};

use crate::backend::client_info::ClientInfo;
use crate::backend::sasl_relay::Auth;
use crate::backend::sieve::login;
use crate::config::Protocol;
use crate::io::{write_bytes, Connection};
use crate::plane::stats::PreloginLimit;
use crate::proto::client_input::{ClientInput, InputError};
use crate::proto::sasl::{self, Credentials};
use crate::proto::sasl_passthrough::Mechanism;
use crate::proto::sieve::{parse_line, quote, LiteralMarker, SieveArg};
use crate::runtime::core::Core;
use crate::session::limits::{limit_text, Budget, PreloginLimits, Stopped};
use crate::session::outcome::Outcome;
use crate::session::relayed_auth::{self, FirstMessageError};
use crate::session::sasl_input::InputSaslClient;

/// The Sieve extensions announced before login (Pigeonhole's defaults).
pub const SIEVE_EXTENSIONS: &str = "fileinto reject envelope encoded-character vacation subaddress comparator-i;ascii-numeric relational regex imap4flags copy include variables body enotify environment mailbox date index ihave duplicate mime foreverypart extracttext";

/// What the listener allows before login.
#[derive(Debug, Clone, Copy)]
pub struct SievePolicy {
    /// STARTTLS is offered (a `tls = "starttls"` listener).
    pub starttls: bool,
    /// AUTHENTICATE is allowed before TLS.
    pub plaintext_auth: bool,
}

/// The state of one ManageSieve client before login.
pub struct Prelogin<'a> {
    core: &'a Core,
    policy: SievePolicy,
    client: ClientInfo,
    input: ClientInput,
    budget: Budget,
    /// Capabilities must be re-issued first (just after STARTTLS).
    recapability: bool,
    bad: u32,
    deadline: Instant,
}

/// The session must end.
struct Close;

impl<'a> Prelogin<'a> {
    /// A new pre-login phase for `client`, bounded by `server.prelogin_timeout`.
    pub fn new(core: &'a Core, policy: SievePolicy, client: ClientInfo) -> Prelogin<'a> {
        Prelogin {
            core,
            policy,
            client,
            input: ClientInput::new(),
            budget: Budget::new(PreloginLimits::of(&core.shared().config), Protocol::Sieve),
            recapability: false,
            bad: 0,
            deadline: Instant::now() + core.shared().config.server.prelogin_timeout,
        }
    }

    /// Marks the connection as TLS from now on; the next [`Prelogin::run`]
    /// re-issues the capabilities first, as RFC 5804 §2.2 requires (the
    /// greeting of an implicit-TLS connection is the same thing).
    pub fn upgraded(&mut self) {
        self.client.tls = true;
        self.input.reset();
        self.recapability = true;
    }

    fn login_allowed(&self) -> bool {
        self.client.tls || self.policy.plaintext_auth
    }

    /// The SASL mechanisms offered: `server.sasl_mechanisms` but LOGIN,
    /// which ManageSieve clients do not use.
    fn offered(&self) -> Vec<Mechanism> {
        let mut mechanisms = self.core.shared().config.server.sasl_mechanisms();
        mechanisms.retain(|m| *m != Mechanism::Login);
        mechanisms
    }

    /// The capability response, ending with OK.
    pub fn capabilities(&self) -> String {
        let mut caps = String::from("\"IMPLEMENTATION\" \"mailpin\"\r\n");
        if self.login_allowed() {
            let names: Vec<&str> = self.offered().iter().map(|m| m.name()).collect();
            caps.push_str(&format!("\"SASL\" \"{}\"\r\n", names.join(" ")));
        } else {
            caps.push_str("\"SASL\" \"\"\r\n");
        }
        caps.push_str(&format!("\"SIEVE\" \"{SIEVE_EXTENSIONS}\"\r\n"));
        caps.push_str("\"NOTIFY\" \"mailto\"\r\n");
        if self.policy.starttls && !self.client.tls {
            caps.push_str("\"STARTTLS\"\r\n");
        }
        caps.push_str("\"VERSION\" \"1.0\"\r\n");
        caps
    }

    /// Writes the greeting: the capabilities and `OK`.
    pub async fn greet<S: Connection>(&mut self, s: &mut S) -> bool {
        self.recapability = false;
        let greeting = format!("{}OK \"mailpin ready.\"\r\n", self.capabilities());
        write_bytes(s, greeting.as_bytes()).await.is_ok()
    }

    /// Runs the dialogue until login, STARTTLS or the end.
    pub async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        if self.recapability {
            self.recapability = false;
            let caps = format!(
                "{}OK \"TLS negotiation successful.\"\r\n",
                self.capabilities()
            );
            if write_bytes(s, caps.as_bytes()).await.is_err() {
                return Outcome::Closed;
            }
        }
        loop {
            let core = self.core;
            let args = match core
                .prelogin_drain
                .unless_started(self.read_command(s))
                .await
            {
                Some(Ok(Some(args))) => args,
                Some(Ok(None)) => continue,
                Some(Err(Close)) => return Outcome::Closed,
                None => {
                    // RFC 5804 §1.3 and §2.12: BYE, with TRYLATER for a
                    // temporary condition, may be sent at any time.
                    info!("director draining: closing before login");
                    let bye = b"BYE (TRYLATER) \"Server shutting down, please reconnect.\"\r\n";
                    let _ = write_bytes(s, bye).await;
                    return Outcome::Closed;
                }
            };
            match self.handle(s, args).await {
                Ok(None) => {}
                Ok(Some(outcome)) => return outcome,
                Err(Close) => return Outcome::Closed,
            }
        }
    }

    /// Reads one line within the byte budget: a command line
    /// ([`PreloginLimit::Line`]) or a SASL answer ([`PreloginLimit::Sasl`]).
    async fn read_line<S: Connection>(
        &mut self,
        s: &mut S,
        limit: PreloginLimit,
    ) -> Result<Vec<u8>, Close> {
        let read = self.budget.line(&mut self.input, s, limit, self.deadline);
        match read.await {
            Ok(line) => Ok(line),
            Err(Stopped::Limit(limit)) => Err(self.limit_reached(s, limit).await),
            Err(Stopped::Input(e)) => {
                self.input_failed(s, e).await;
                Err(Close)
            }
        }
    }

    /// Reads a literal's octets, within the literal bound and the budget.
    async fn read_literal<S: Connection>(
        &mut self,
        s: &mut S,
        lit: LiteralMarker,
    ) -> Result<Vec<u8>, Close> {
        if lit.len > self.budget.limits().literal {
            return Err(self.limit_reached(s, PreloginLimit::Literal).await);
        }
        match self.input.exact(s, lit.len, self.deadline).await {
            Ok(bytes) => {
                self.check_bytes(s).await?;
                Ok(bytes)
            }
            Err(e) => {
                self.input_failed(s, e).await;
                Err(Close)
            }
        }
    }

    /// Ends the session once the client sent more than the pre-login
    /// byte budget.
    async fn check_bytes<S: Connection>(&mut self, s: &mut S) -> Result<(), Close> {
        match self.budget.bytes(self.input.received()) {
            Ok(()) => Ok(()),
            Err(limit) => Err(self.limit_reached(s, limit).await),
        }
    }

    /// Counts and logs a pre-login limit hit, says BYE; the session ends.
    async fn limit_reached<S: Connection>(&mut self, s: &mut S, limit: PreloginLimit) -> Close {
        self.budget.reached(&self.core.counters, limit);
        let bye = format!("BYE \"{}.\"\r\n", limit_text(limit, Protocol::Sieve));
        let _ = write_bytes(s, bye.as_bytes()).await;
        Close
    }

    async fn input_failed<S: Connection>(&mut self, s: &mut S, e: InputError) {
        match e {
            InputError::Closed => {}
            InputError::Timeout => {
                info!("pre-login timeout");
                let _ = write_bytes(s, b"BYE \"Disconnected for inactivity.\"\r\n").await;
            }
            InputError::TooLong => {
                let _ = self.limit_reached(s, PreloginLimit::Line).await;
            }
        }
    }

    /// Reads a whole command, literals included; `None` after a syntax
    /// error that has been answered. Each command counts against the
    /// pre-login command limit.
    async fn read_command<S: Connection>(
        &mut self,
        s: &mut S,
    ) -> Result<Option<Vec<SieveArg>>, Close> {
        let mut args = Vec::new();
        let mut line = self.read_line(s, PreloginLimit::Line).await?;
        if let Err(limit) = self.budget.command() {
            return Err(self.limit_reached(s, limit).await);
        }
        loop {
            match parse_line(&line, &mut args) {
                Ok(None) => return Ok(Some(args)),
                Ok(Some(lit)) => {
                    let bytes = self.read_literal(s, lit).await?;
                    args.push(SieveArg::String(bytes));
                }
                Err(reason) => {
                    debug!(reason, "syntax error before login");
                    self.bad(s, &format!("Syntax error: {reason}.")).await?;
                    return Ok(None);
                }
            }
            line = self.read_line(s, PreloginLimit::Line).await?;
        }
    }

    async fn reply<S: Connection>(&mut self, s: &mut S, text: &str) -> Result<(), Close> {
        write_bytes(s, text.as_bytes()).await.map_err(|_| Close)
    }

    /// Answers NO and counts a bad command; too many end the session.
    async fn bad<S: Connection>(&mut self, s: &mut S, text: &str) -> Result<(), Close> {
        self.bad += 1;
        let quoted = String::from_utf8_lossy(&quote(text.as_bytes())).into_owned();
        let mut reply = format!("NO {quoted}\r\n");
        let too_many = self.bad >= self.core.shared().config.server.max_bad_commands;
        if too_many {
            reply.push_str("BYE \"Too many invalid commands.\"\r\n");
        }
        self.reply(s, &reply).await?;
        if too_many {
            info!(bad_commands = self.bad, "too many invalid commands");
            return Err(Close);
        }
        Ok(())
    }

    async fn handle<S: Connection>(
        &mut self,
        s: &mut S,
        args: Vec<SieveArg>,
    ) -> Result<Option<Outcome>, Close> {
        let Some(SieveArg::Atom(name)) = args.first() else {
            self.bad(s, "Expected a command.").await?;
            return Ok(None);
        };
        let name = name.to_ascii_uppercase();
        let rest = &args[1..];
        match (name.as_str(), rest) {
            ("CAPABILITY", []) => {
                let caps = format!("{}OK \"Capability completed.\"\r\n", self.capabilities());
                self.reply(s, &caps).await?;
            }
            ("NOOP", []) => self.reply(s, "OK \"NOOP completed.\"\r\n").await?,
            ("NOOP", [SieveArg::String(tag)]) => {
                let tag = String::from_utf8_lossy(&quote(tag)).into_owned();
                self.reply(s, &format!("OK (TAG {tag}) \"Done\"\r\n"))
                    .await?;
            }
            ("LOGOUT", []) => {
                let _ = self.reply(s, "OK \"Logout completed.\"\r\n").await;
                return Err(Close);
            }
            ("STARTTLS", []) => {
                if self.client.tls || !self.policy.starttls {
                    self.bad(s, "STARTTLS is not available.").await?;
                } else {
                    self.reply(s, "OK \"Begin TLS negotiation now.\"\r\n")
                        .await?;
                    return Ok(Some(Outcome::StartTls));
                }
            }
            ("AUTHENTICATE", [mech, initial @ ..]) if initial.len() <= 1 => {
                let Some(mech) = mech.as_string() else {
                    self.bad(s, "Mechanism must be a string.").await?;
                    return Ok(None);
                };
                let offered = self.offered();
                let Some(mechanism) = Mechanism::parse(mech).filter(|m| offered.contains(m)) else {
                    self.bad(s, "Unsupported authentication mechanism.").await?;
                    return Ok(None);
                };
                if !self.login_allowed() {
                    self.bad(s, "(ENCRYPT-NEEDED) Use STARTTLS before logging in.")
                        .await?;
                    return Ok(None);
                }
                let response = match initial.first() {
                    Some(SieveArg::String(ir)) => {
                        if let Err(limit) = self.budget.sasl(ir.len()) {
                            return Err(self.limit_reached(s, limit).await);
                        }
                        ir.clone()
                    }
                    Some(SieveArg::Atom(_)) => {
                        self.bad(s, "Initial response must be a string.").await?;
                        return Ok(None);
                    }
                    None => match self.challenge(s).await? {
                        Some(r) => r,
                        None => {
                            self.bad(s, "Authentication cancelled.").await?;
                            return Ok(None);
                        }
                    },
                };
                if mechanism.is_relayed() {
                    return self.relayed(s, mechanism, response).await;
                }
                return match sasl::decode_plain(&response) {
                    Ok(creds) => self.login(s, creds).await,
                    Err(e) => {
                        self.bad(s, &format!("Invalid SASL response: {e}.")).await?;
                        Ok(None)
                    }
                };
            }
            (
                "HAVESPACE" | "PUTSCRIPT" | "LISTSCRIPTS" | "SETACTIVE" | "GETSCRIPT"
                | "DELETESCRIPT" | "RENAMESCRIPT" | "CHECKSCRIPT" | "UNAUTHENTICATE",
                _,
            ) => {
                self.bad(s, "Authenticate first.").await?;
            }
            _ => self.bad(s, "Unknown command or bad arguments.").await?,
        }
        Ok(None)
    }

    /// Sends the empty PLAIN challenge and reads the client's string
    /// answer, bounded by `limits.sasl_max`; `None` when it cancels with
    /// `"*"`.
    async fn challenge<S: Connection>(&mut self, s: &mut S) -> Result<Option<Vec<u8>>, Close> {
        self.reply(s, "\"\"\r\n").await?;
        let mut args = Vec::new();
        let line = self.read_line(s, PreloginLimit::Sasl).await?;
        match parse_line(&line, &mut args) {
            Ok(None) => {}
            Ok(Some(lit)) => {
                if let Err(limit) = self.budget.sasl(lit.len) {
                    return Err(self.limit_reached(s, limit).await);
                }
                let bytes = self.read_literal(s, lit).await?;
                args.push(SieveArg::String(bytes));
                // The literal ends the answer: the line after it is empty.
                let _ = self.read_line(s, PreloginLimit::Sasl).await?;
            }
            Err(_) => {
                let _ = self.reply(s, "BYE \"Bad SASL response.\"\r\n").await;
                return Err(Close);
            }
        }
        match args.as_slice() {
            [SieveArg::String(r)] if r.as_slice() == sasl::CANCEL => Ok(None),
            [SieveArg::String(r)] => Ok(Some(r.clone())),
            _ => {
                let _ = self.reply(s, "BYE \"Bad SASL response.\"\r\n").await;
                Err(Close)
            }
        }
    }

    /// Routes a relayed mechanism by the user in its first message and
    /// relays the exchange to the backend. The first message is the
    /// string's contents: base64 as the client encoded it.
    async fn relayed<S: Connection>(
        &mut self,
        s: &mut S,
        mechanism: Mechanism,
        first: Vec<u8>,
    ) -> Result<Option<Outcome>, Close> {
        let (identity, relayed) = match relayed_auth::start(mechanism, first) {
            Ok(started) => started,
            Err(e) => {
                debug!(error = %e, mechanism = mechanism.name(), "first SASL message refused");
                let text = match e {
                    FirstMessageError::Encoding(e) => format!("Invalid SASL response: {e}."),
                    e => format!("Cannot log in: {e}."),
                };
                self.bad(s, &text).await?;
                return Ok(None);
            }
        };
        let key = match login_key_of(self.core, &identity.user, identity.authzid.as_deref()) {
            Ok(key) => key,
            Err(e) => {
                debug!(error = %e, "login name refused");
                self.bad(s, &format!("Invalid login: {e}.")).await?;
                return Ok(None);
            }
        };
        self.route(s, key, Auth::Relayed(&relayed)).await
    }

    /// Routes the user of `creds` and replays them on its backend.
    async fn login<S: Connection>(
        &mut self,
        s: &mut S,
        creds: Credentials,
    ) -> Result<Option<Outcome>, Close> {
        let key = match login_key(self.core, &creds) {
            Ok(key) => key,
            Err(e) => {
                debug!(error = %e, "login name refused");
                self.bad(s, &format!("Invalid login: {e}.")).await?;
                return Ok(None);
            }
        };
        self.route(s, key, Auth::Plain(&creds)).await
    }

    /// Logs the user of `key` in on its backend with `auth`.
    async fn route<S: Connection>(
        &mut self,
        s: &mut S,
        key: String,
        auth: Auth<'_>,
    ) -> Result<Option<Outcome>, Close> {
        let core = self.core;
        let client = &self.client;
        let routed = InputSaslClient::new(
            &mut *s,
            &mut self.input,
            &mut self.budget,
            &core.counters,
            self.deadline,
            Protocol::Sieve,
        )
        .route(
            core,
            &key,
            client.origin(Protocol::Sieve),
            |backend, c, _| Box::pin(login(backend, auth, client, c)),
        )
        .await;
        let Some(routed) = routed else {
            return Err(Close);
        };
        match routed.into_logged_in(key, || self.input.take_buffered()) {
            Ok(l) => Ok(Some(Outcome::LoggedIn(l))),
            Err(refusal) => {
                if let Some(text) = refusal.message() {
                    self.reply(s, &format!("NO (TRYLATER) \"{text}\"\r\n"))
                        .await?;
                }
                Ok(None)
            }
        }
    }
}
