//! ManageSieve before login, as the director answers it (RFC 5804).
//!
//! The director greets with its capabilities, answers CAPABILITY, NOOP,
//! LOGOUT and STARTTLS itself (re-issuing the capabilities after TLS, §2.2),
//! takes `AUTHENTICATE "PLAIN"` with the initial response as a quoted
//! string or a literal — or after an empty `""` challenge, `"*"` cancelling —
//! and replays the credentials on the user's backend, whose answer reaches
//! the client word for word. No backend for the user: `NO (TRYLATER)`
//! (§1.3). The SIEVE extension list before login is Pigeonhole's usual
//! set; after login, CAPABILITY goes to the backend and is authoritative.

use crate::session::failover::{login_key, login_routed};
use monoio::time::Instant;
use tracing::{debug, info, warn};

use crate::backend::sieve::login;
use crate::config::Protocol;
use crate::io::{write_bytes, Connection};
use crate::proto::sasl::{self, Credentials};
use crate::proto::sieve::{parse_line, quote, SieveArg, MAX_COMMAND_LINE, MAX_LITERAL};
use crate::runtime::core::Core;
use crate::session::imap::Outcome;
use crate::session::input::{ClientInput, InputError};
use crate::session::ClientInfo;

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
            recapability: false,
            bad: 0,
            deadline: Instant::now() + core.shared.config.server.prelogin_timeout,
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

    /// The capability response, ending with OK.
    pub fn capabilities(&self) -> String {
        let mut caps = String::from("\"IMPLEMENTATION\" \"mailpin\"\r\n");
        if self.login_allowed() {
            caps.push_str("\"SASL\" \"PLAIN\"\r\n");
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
            let args = match self.read_command(s).await {
                Ok(Some(args)) => args,
                Ok(None) => continue,
                Err(Close) => return Outcome::Closed,
            };
            match self.handle(s, args).await {
                Ok(None) => {}
                Ok(Some(outcome)) => return outcome,
                Err(Close) => return Outcome::Closed,
            }
        }
    }

    async fn read_line<S: Connection>(&mut self, s: &mut S) -> Result<Vec<u8>, Close> {
        match self.input.line(s, MAX_COMMAND_LINE, self.deadline).await {
            Ok(line) => Ok(line),
            Err(e) => {
                self.input_failed(s, e).await;
                Err(Close)
            }
        }
    }

    async fn input_failed<S: Connection>(&mut self, s: &mut S, e: InputError) {
        match e {
            InputError::Closed => {}
            InputError::Timeout => {
                info!("pre-login timeout");
                let _ = write_bytes(s, b"BYE \"Disconnected for inactivity.\"\r\n").await;
            }
            InputError::TooLong => {
                warn!("oversized input before login");
                let _ = write_bytes(s, b"BYE \"Line too long.\"\r\n").await;
            }
        }
    }

    /// Reads a whole command, literals included; `None` after a syntax
    /// error that has been answered.
    async fn read_command<S: Connection>(
        &mut self,
        s: &mut S,
    ) -> Result<Option<Vec<SieveArg>>, Close> {
        let mut args = Vec::new();
        loop {
            let line = self.read_line(s).await?;
            match parse_line(&line, &mut args) {
                Ok(None) => return Ok(Some(args)),
                Ok(Some(lit)) => {
                    if lit.len > MAX_LITERAL {
                        let _ = self.reply(s, "BYE \"Literal too large.\"\r\n").await;
                        warn!("oversized literal before login");
                        return Err(Close);
                    }
                    match self.input.exact(s, lit.len, self.deadline).await {
                        Ok(bytes) => args.push(SieveArg::String(bytes)),
                        Err(e) => {
                            self.input_failed(s, e).await;
                            return Err(Close);
                        }
                    }
                }
                Err(reason) => {
                    debug!(reason, "syntax error before login");
                    self.bad(s, &format!("Syntax error: {reason}.")).await?;
                    return Ok(None);
                }
            }
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
        let too_many = self.bad >= self.core.shared.config.server.max_bad_commands;
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
                if !mech.eq_ignore_ascii_case(b"PLAIN") {
                    self.bad(s, "Unsupported authentication mechanism.").await?;
                    return Ok(None);
                }
                if !self.login_allowed() {
                    self.bad(s, "(ENCRYPT-NEEDED) Use STARTTLS before logging in.")
                        .await?;
                    return Ok(None);
                }
                let response = match initial.first() {
                    Some(SieveArg::String(ir)) => ir.clone(),
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
    /// answer; `None` when it cancels with `"*"`.
    async fn challenge<S: Connection>(&mut self, s: &mut S) -> Result<Option<Vec<u8>>, Close> {
        self.reply(s, "\"\"\r\n").await?;
        let mut args = Vec::new();
        let line = self.read_line(s).await?;
        match parse_line(&line, &mut args) {
            Ok(None) => {}
            Ok(Some(lit)) if lit.len <= MAX_LITERAL => {
                match self.input.exact(s, lit.len, self.deadline).await {
                    Ok(bytes) => args.push(SieveArg::String(bytes)),
                    Err(e) => {
                        self.input_failed(s, e).await;
                        return Err(Close);
                    }
                }
                // The literal ends the answer: the line after it is empty.
                let _ = self.read_line(s).await?;
            }
            _ => {
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

    /// Routes the user and replays the credentials on its backend.
    async fn login<S: Connection>(
        &mut self,
        s: &mut S,
        creds: Credentials,
    ) -> Result<Option<Outcome>, Close> {
        let core = self.core;
        let key = login_key(core, &creds);
        let client = &self.client;
        let origin = client.origin(Protocol::Sieve);
        let routed = login_routed(core, &key, origin, s, |backend, s, _| {
            Box::pin(login(backend, &creds, client, s))
        })
        .await;
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
