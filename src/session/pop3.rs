//! POP3 before login, as the director answers it (RFC 1939, RFC 2449 CAPA
//! and response codes, RFC 5034 SASL, RFC 2595 STLS).
//!
//! The director greets, answers CAPA, STLS and QUIT itself, takes USER/PASS
//! and `AUTH PLAIN` (with an initial response or after a `+ ` continuation;
//! `*` cancels), routes the user and replays the credentials on its backend,
//! whose `+OK` or `-ERR` the client gets word for word. `AUTH OAUTHBEARER`,
//! `XOAUTH2` and `SCRAM-*` are routed by the user in the first message and
//! relayed round by round ([`crate::session::relayed_auth`]);
//! `server.sasl_mechanisms` says which mechanisms are offered. When no backend can
//! take the user the client hears `-ERR [SYS/TEMP]` (RFC 3206). Lines, SASL
//! responses, the bytes and the commands before login are bounded
//! ([`crate::session::limits`]); past a bound, or after too many bad
//! commands, the client hears `-ERR` and is closed.

use crate::session::failover::{login_key, login_key_of};
use monoio::time::Instant;
use tracing::{debug, info};

use crate::backend::client_info::ClientInfo;
use crate::backend::pop3::login;
use crate::backend::sasl_relay::Auth;
use crate::config::Protocol;
use crate::io::{write_bytes, Connection};
use crate::plane::stats::PreloginLimit;
use crate::proto::client_input::{ClientInput, InputError};
use crate::proto::pop3::{parse_command, pass_argument};
use crate::proto::sasl::{self, Credentials};
use crate::proto::sasl_passthrough::Mechanism;
use crate::route::user_key::check_login_name;
use crate::runtime::core::Core;
use crate::session::limits::{limit_text, Budget, PreloginLimits, Stopped};
use crate::session::outcome::Outcome;
use crate::session::relayed_auth::{self, FirstMessageError};
use crate::session::sasl_input::InputSaslClient;

/// What the listener allows before login.
#[derive(Debug, Clone, Copy)]
pub struct Pop3Policy {
    /// STLS is offered (a `tls = "starttls"` listener).
    pub starttls: bool,
    /// USER/PASS and AUTH are allowed before TLS.
    pub plaintext_auth: bool,
}

/// The state of one POP3 client before login; survives an STLS upgrade.
pub struct Prelogin<'a> {
    core: &'a Core,
    policy: Pop3Policy,
    client: ClientInfo,
    input: ClientInput,
    budget: Budget,
    user: Option<String>,
    bad: u32,
    deadline: Instant,
}

/// The session must end.
struct Close;

impl<'a> Prelogin<'a> {
    /// A new pre-login phase for `client`, bounded by `server.prelogin_timeout`.
    pub fn new(core: &'a Core, policy: Pop3Policy, client: ClientInfo) -> Prelogin<'a> {
        Prelogin {
            core,
            policy,
            client,
            input: ClientInput::new(),
            budget: Budget::new(PreloginLimits::of(&core.shared().config), Protocol::Pop3),
            user: None,
            bad: 0,
            deadline: Instant::now() + core.shared().config.server.prelogin_timeout,
        }
    }

    /// Marks the connection as TLS from now on and drops anything the
    /// client sent in plaintext after STLS, and the USER given before it
    /// (RFC 2595 §4: the state is reset).
    pub fn upgraded(&mut self) {
        self.client.tls = true;
        self.input.reset();
        self.user = None;
    }

    fn login_allowed(&self) -> bool {
        self.client.tls || self.policy.plaintext_auth
    }

    /// The SASL mechanisms offered: `server.sasl_mechanisms` but LOGIN,
    /// which POP3 has USER/PASS for.
    fn offered(&self) -> Vec<Mechanism> {
        let mut mechanisms = self.core.shared().config.server.sasl_mechanisms();
        mechanisms.retain(|m| *m != Mechanism::Login);
        mechanisms
    }

    /// The CAPA answer before login.
    pub fn capabilities(&self) -> String {
        let mut caps = String::from(
            "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n",
        );
        if self.login_allowed() {
            caps.push_str("USER\r\nSASL");
            for mechanism in self.offered() {
                caps.push(' ');
                caps.push_str(mechanism.name());
            }
            caps.push_str("\r\n");
        }
        if self.policy.starttls && !self.client.tls {
            caps.push_str("STLS\r\n");
        }
        caps.push_str(".\r\n");
        caps
    }

    /// Writes the greeting.
    pub async fn greet<S: Connection>(&self, s: &mut S) -> bool {
        write_bytes(s, b"+OK mailpin ready.\r\n").await.is_ok()
    }

    /// Runs the dialogue until login, STLS or the end.
    pub async fn run<S: Connection>(&mut self, s: &mut S) -> Outcome {
        loop {
            let core = self.core;
            let read = core
                .prelogin_drain
                .unless_started(self.read_line(s, PreloginLimit::Line))
                .await;
            let line = match read {
                Some(Ok(line)) => line,
                Some(Err(Close)) => return Outcome::Closed,
                None => return self.refuse_next_command(s).await,
            };
            if let Err(limit) = self.budget.command() {
                self.limit_reached(s, limit).await;
                return Outcome::Closed;
            }
            match self.handle(s, &line).await {
                Ok(None) => {}
                Ok(Some(outcome)) => return outcome,
                Err(Close) => return Outcome::Closed,
            }
        }
    }

    /// The director drains: POP3 has no unsolicited reply (RFC 1939 §3),
    /// so the client's next command is answered `-ERR [SYS/TEMP]` (RFC
    /// 2449 §8.1.3: a temporary condition, try again later) and the
    /// connection closes. A client that sends nothing more is closed with
    /// the drain's end or its pre-login timeout, whichever comes first.
    async fn refuse_next_command<S: Connection>(&mut self, s: &mut S) -> Outcome {
        info!("director draining: the next command before login is refused");
        if self.read_line(s, PreloginLimit::Line).await.is_ok() {
            let _ = write_bytes(
                s,
                b"-ERR [SYS/TEMP] Server shutting down, try again later.\r\n",
            )
            .await;
        }
        Outcome::Closed
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
            Err(Stopped::Limit(limit)) => {
                self.limit_reached(s, limit).await;
                Err(Close)
            }
            Err(Stopped::Input(InputError::Timeout)) => {
                info!("pre-login timeout");
                let _ = write_bytes(s, b"-ERR Disconnected for inactivity.\r\n").await;
                Err(Close)
            }
            Err(Stopped::Input(_)) => Err(Close),
        }
    }

    /// Counts and logs a pre-login limit hit and says `-ERR`; the caller
    /// closes.
    async fn limit_reached<S: Connection>(&mut self, s: &mut S, limit: PreloginLimit) {
        self.budget.reached(&self.core.counters, limit);
        let reply = format!("-ERR {}.\r\n", limit_text(limit, Protocol::Pop3));
        let _ = write_bytes(s, reply.as_bytes()).await;
    }

    async fn reply<S: Connection>(&mut self, s: &mut S, text: &str) -> Result<(), Close> {
        write_bytes(s, text.as_bytes()).await.map_err(|_| Close)
    }

    /// Counts a bad command; too many end the session.
    async fn bad<S: Connection>(&mut self, s: &mut S, text: &str) -> Result<(), Close> {
        self.bad += 1;
        let mut reply = format!("-ERR {text}\r\n");
        let too_many = self.bad >= self.core.shared().config.server.max_bad_commands;
        if too_many {
            reply = format!("-ERR {text}\r\n-ERR Too many invalid commands.\r\n");
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
        line: &[u8],
    ) -> Result<Option<Outcome>, Close> {
        let Some(cmd) = parse_command(line) else {
            self.bad(s, "Unknown command.").await?;
            return Ok(None);
        };
        match (cmd.keyword.as_str(), cmd.args.as_slice()) {
            ("CAPA", []) => {
                let caps = self.capabilities();
                self.reply(s, &caps).await?;
            }
            ("QUIT", []) => {
                let _ = self.reply(s, "+OK Logging out.\r\n").await;
                return Err(Close);
            }
            ("NOOP", []) => self.reply(s, "+OK\r\n").await?,
            ("STLS", []) => {
                if self.client.tls {
                    self.bad(s, "TLS is already active.").await?;
                } else if !self.policy.starttls {
                    self.bad(s, "STLS is not available on this port.").await?;
                } else {
                    self.reply(s, "+OK Begin TLS negotiation now.\r\n").await?;
                    return Ok(Some(Outcome::StartTls));
                }
            }
            ("USER", [name]) if !name.is_empty() => {
                if !self.login_allowed() {
                    return self.privacy_required(s).await;
                }
                let Ok(name) = String::from_utf8(name.to_vec()) else {
                    self.bad(s, "User name is not UTF-8.").await?;
                    return Ok(None);
                };
                if let Err(e) = check_login_name(&name, None) {
                    debug!(error = %e, "login name refused");
                    self.bad(s, &format!("Invalid login: {e}.")).await?;
                    return Ok(None);
                }
                self.user = Some(name);
                self.reply(s, "+OK\r\n").await?;
            }
            ("PASS", _) => {
                let Some(user) = self.user.take() else {
                    self.bad(s, "No USER given.").await?;
                    return Ok(None);
                };
                if !self.login_allowed() {
                    return self.privacy_required(s).await;
                }
                let pass = pass_argument(line).unwrap_or_default();
                return self.login(s, Credentials::new(user, pass)).await;
            }
            ("AUTH", []) => {
                let mut list = String::from("+OK\r\n");
                for mechanism in self.offered() {
                    list.push_str(mechanism.name());
                    list.push_str("\r\n");
                }
                list.push_str(".\r\n");
                self.reply(s, &list).await?;
            }
            ("AUTH", [mech, rest @ ..]) if rest.len() <= 1 => {
                let initial = rest.first().map(|ir| ir.to_vec());
                return self.authenticate(s, mech, initial).await;
            }
            ("TOP" | "UIDL" | "STAT" | "LIST" | "RETR" | "DELE" | "RSET" | "LAST", _) => {
                self.bad(s, "Log in first.").await?;
            }
            ("APOP", _) => {
                self.bad(s, "APOP is not supported.").await?;
            }
            _ => self.bad(s, "Unknown command or bad arguments.").await?,
        }
        Ok(None)
    }

    async fn privacy_required<S: Connection>(
        &mut self,
        s: &mut S,
    ) -> Result<Option<Outcome>, Close> {
        self.bad(
            s,
            "[AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
        )
        .await?;
        Ok(None)
    }

    /// AUTH with one of `server.sasl_mechanisms`, with or without an
    /// initial response (RFC 5034).
    async fn authenticate<S: Connection>(
        &mut self,
        s: &mut S,
        mech: &[u8],
        initial: Option<Vec<u8>>,
    ) -> Result<Option<Outcome>, Close> {
        let offered = self.offered();
        let Some(mechanism) = Mechanism::parse(mech).filter(|m| offered.contains(m)) else {
            self.bad(s, "Unsupported authentication mechanism.").await?;
            return Ok(None);
        };
        if !self.login_allowed() {
            return self.privacy_required(s).await;
        }
        let response = match initial {
            Some(ir) => {
                if let Err(limit) = self.budget.sasl(ir.len()) {
                    self.limit_reached(s, limit).await;
                    return Err(Close);
                }
                ir
            }
            None => {
                self.reply(s, "+ \r\n").await?;
                let line = self.read_line(s, PreloginLimit::Sasl).await?;
                if line == sasl::CANCEL {
                    self.bad(s, "Authentication cancelled.").await?;
                    return Ok(None);
                }
                line
            }
        };
        if mechanism.is_relayed() {
            return self.relayed(s, mechanism, response).await;
        }
        match sasl::decode_plain(&response) {
            Ok(creds) => self.login(s, creds).await,
            Err(e) => {
                debug!(error = %e, "bad SASL response");
                self.bad(s, &format!("Invalid SASL response: {e}.")).await?;
                Ok(None)
            }
        }
    }

    /// Routes a relayed mechanism by the user in its first message and
    /// relays the exchange to the backend.
    async fn relayed<S: Connection>(
        &mut self,
        s: &mut S,
        mechanism: Mechanism,
        first: Vec<u8>,
    ) -> Result<Option<Outcome>, Close> {
        let (identity, relayed) = match relayed_auth::start(mechanism, first) {
            Ok(started) => started,
            Err(FirstMessageError::Encoding(e)) => {
                self.bad(s, &format!("Invalid SASL response: {e}.")).await?;
                return Ok(None);
            }
            Err(e) => {
                debug!(error = %e, mechanism = mechanism.name(), "first SASL message refused");
                self.bad(s, &format!("[AUTH] Cannot log in: {e}.")).await?;
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
            Protocol::Pop3,
        )
        .route(
            core,
            &key,
            client.origin(Protocol::Pop3),
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
                    // RFC 2449: IN-USE for a per-user session limit.
                    let code = if refusal.is_user_limit() {
                        "IN-USE"
                    } else {
                        "SYS/TEMP"
                    };
                    self.reply(s, &format!("-ERR [{code}] {text}\r\n")).await?;
                }
                Ok(None)
            }
        }
    }
}
