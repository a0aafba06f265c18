//! The client side of a POP3 or ManageSieve backend login: where the
//! backend's answer goes, and — for a relayed SASL mechanism — where each
//! answer to a backend challenge comes from, read within `limits.sasl_max`,
//! the pre-login byte budget and the pre-login deadline.
//!
//! POP3 answers are one line (base64 or `*`, RFC 5034); ManageSieve
//! answers are a string, quoted or a literal (RFC 5804 §2.1), of which the
//! contents are handed on. A client that passes a bound hears the
//! protocol's goodbye, and the session ends. (IMAP reads its answers with
//! its command reader: `crate::session::imap`.)

use monoio::time::Instant;
use tracing::info;
use zeroize::Zeroizing;

use crate::backend::sasl_relay::{ClientGone, SaslClient};
use crate::config::Protocol;
use crate::io::{write_bytes, Connection, WriteSide};
use crate::plane::stats::{Counters, PreloginLimit};
use crate::proto::client_input::{ClientInput, InputError};
use crate::proto::sieve::{parse_line, SieveArg};
use crate::route::backends::Backend;
use crate::route::shard::SessionOrigin;
use crate::runtime::core::Core;
use crate::session::failover::{login_routed, Attempt, Routed};
use crate::session::limits::{limit_text, Budget, Stopped};

/// A POP3 or ManageSieve client during its backend login.
pub struct InputSaslClient<'p, S> {
    /// The client connection.
    pub s: &'p mut S,
    /// The client's buffered input.
    pub input: &'p mut ClientInput,
    /// The client's pre-login account.
    pub budget: &'p mut Budget,
    /// Where limit hits are counted.
    pub counters: &'p Counters,
    /// The end of the pre-login phase.
    pub deadline: Instant,
    /// [`Protocol::Pop3`] or [`Protocol::Sieve`]: the framing of answers
    /// and goodbyes.
    pub protocol: Protocol,
    /// The client left or was sent away during the exchange.
    pub gone: bool,
}

impl<'p, S: Connection> InputSaslClient<'p, S> {
    /// A POP3 or ManageSieve client (`protocol`) about to log in.
    pub fn new(
        s: &'p mut S,
        input: &'p mut ClientInput,
        budget: &'p mut Budget,
        counters: &'p Counters,
        deadline: Instant,
        protocol: Protocol,
    ) -> Self {
        InputSaslClient {
            s,
            input,
            budget,
            counters,
            deadline,
            protocol,
            gone: false,
        }
    }

    /// Routes the login of `key` from `origin`, running `attempt` on the
    /// chosen backend with this client (a relayed mechanism reads the
    /// client's answers through it); `None` when the client left or was
    /// sent away during the exchange.
    pub async fn route<'a, F>(
        mut self,
        core: &Core,
        key: &str,
        origin: SessionOrigin,
        attempt: F,
    ) -> Option<Routed>
    where
        F: for<'x> FnMut(&'x Backend, &'x mut Self, &'x &'a ()) -> Attempt<'x>,
    {
        let routed = login_routed(core, key, origin, &mut self, attempt).await;
        (!self.gone).then_some(routed)
    }

    /// Says the protocol's goodbye with `text` and marks the client gone.
    async fn goodbye(&mut self, text: &str) -> ClientGone {
        let line = match self.protocol {
            Protocol::Sieve => format!("BYE \"{text}.\"\r\n"),
            _ => format!("-ERR {text}.\r\n"),
        };
        let _ = write_bytes(self.s, line.as_bytes()).await;
        self.gone = true;
        ClientGone
    }

    async fn limit_reached(&mut self, limit: PreloginLimit) -> ClientGone {
        self.budget.reached(self.counters, limit);
        self.goodbye(limit_text(limit, self.protocol)).await
    }

    async fn stopped(&mut self, e: InputError) -> ClientGone {
        match e {
            InputError::Timeout => {
                info!("pre-login timeout");
                self.goodbye("Disconnected for inactivity").await
            }
            InputError::TooLong => self.limit_reached(PreloginLimit::Sasl).await,
            InputError::Closed => {
                self.gone = true;
                ClientGone
            }
        }
    }

    async fn line(&mut self) -> Result<Vec<u8>, ClientGone> {
        let read = self
            .budget
            .line(self.input, self.s, PreloginLimit::Sasl, self.deadline);
        match read.await {
            Ok(line) => Ok(line),
            Err(Stopped::Limit(limit)) => Err(self.limit_reached(limit).await),
            Err(Stopped::Input(e)) => Err(self.stopped(e).await),
        }
    }

    /// A ManageSieve answer: one string, quoted or a literal.
    async fn sieve_string(&mut self, line: &[u8]) -> Result<Vec<u8>, ClientGone> {
        let mut args = Vec::new();
        match parse_line(line, &mut args) {
            Ok(None) => {}
            Ok(Some(lit)) => {
                if let Err(limit) = self.budget.sasl(lit.len) {
                    return Err(self.limit_reached(limit).await);
                }
                let bytes = match self.input.exact(self.s, lit.len, self.deadline).await {
                    Ok(bytes) => bytes,
                    Err(e) => return Err(self.stopped(e).await),
                };
                if let Err(limit) = self.budget.bytes(self.input.received()) {
                    return Err(self.limit_reached(limit).await);
                }
                args.push(SieveArg::String(bytes));
                // The literal ends the answer: the line after it is empty.
                let _ = self.line().await?;
            }
            Err(_) => return Err(self.goodbye("Bad SASL response").await),
        }
        match args.pop() {
            Some(SieveArg::String(answer)) if args.is_empty() => Ok(answer),
            _ => Err(self.goodbye("Bad SASL response").await),
        }
    }
}

impl<S: Connection> WriteSide for InputSaslClient<'_, S> {
    async fn write_all(&mut self, buf: Vec<u8>) -> (std::io::Result<()>, Vec<u8>) {
        self.s.write_all(buf).await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.s.shutdown().await
    }
}

impl<S: Connection> SaslClient for InputSaslClient<'_, S> {
    async fn sasl_response(&mut self) -> Result<Zeroizing<Vec<u8>>, ClientGone> {
        let line = Zeroizing::new(self.line().await?);
        match self.protocol {
            Protocol::Sieve => self.sieve_string(&line).await.map(Zeroizing::new),
            _ => Ok(line),
        }
    }
}
