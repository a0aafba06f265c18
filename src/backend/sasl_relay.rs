//! What a backend login needs from the client while a SASL exchange is
//! relayed (OAUTHBEARER, XOAUTH2, SCRAM): the client's first message, and
//! the client's next answer whenever the backend sends a challenge.
//!
//! Each protocol's backend module sends `AUTHENTICATE`/`AUTH` with the
//! client's first message as the client encoded it, then relays every
//! backend challenge to the client and every client answer to the backend,
//! round by round, until the backend's final answer, which the client gets
//! word for word. The client side — reading a bounded answer within the
//! pre-login budget and deadline — is the session's [`SaslClient`].
//! Payloads are never logged and are zeroed when dropped.

use zeroize::Zeroizing;

use crate::io::WriteSide;
use crate::proto::sasl::Credentials;
use crate::proto::sasl_passthrough::Mechanism;

/// The client stopped the exchange: it left, timed out or ran into a
/// pre-login bound. The session has said whatever goodbye was due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientGone;

/// The client side of a relayed SASL exchange.
#[allow(async_fn_in_trait)]
pub trait SaslClient: WriteSide {
    /// Reads the client's next SASL answer, as sent (base64 or `*`; for
    /// ManageSieve the string's contents), bounded by `limits.sasl_max`,
    /// the pre-login byte budget and deadline.
    async fn sasl_response(&mut self) -> Result<Zeroizing<Vec<u8>>, ClientGone>;
}

/// A relayed login: the mechanism and the client's first message.
pub struct RelayedAuth {
    /// The mechanism the client chose.
    pub mechanism: Mechanism,
    /// The client's first message, base64 as the client sent it (never
    /// empty: these mechanisms have a client-first message).
    pub initial: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RelayedAuth {
    /// Shows the mechanism only; the message holds a token or a nonce.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayedAuth")
            .field("mechanism", &self.mechanism)
            .field("initial", &format_args!("<redacted>"))
            .finish()
    }
}

/// How a backend login authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Auth<'c> {
    /// Replay decoded credentials as PLAIN.
    Plain(&'c Credentials),
    /// Relay the client's own exchange.
    Relayed(&'c RelayedAuth),
}
