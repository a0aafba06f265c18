//! The dev backends' SASL server, shared by their IMAP, POP3 and
//! ManageSieve: PLAIN with the dev password, OAUTHBEARER and XOAUTH2 with
//! any non-empty bearer token for the user they name (there is no token
//! issuer here), and SCRAM-SHA-1/-256 with the dev password
//! ([`super::scram`]). Each protocol frames the challenges and answers;
//! this only decides.

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::io::write_bytes;
use crate::proto::client_input::ClientInput;
use crate::proto::sasl::{decode_initial_response, decode_response};
use crate::proto::sieve::{parse_line, SieveArg};

use crate::proto::sasl::parse_plain;
use crate::proto::sasl_passthrough::{first_message_identity, Mechanism};

use super::scram::{SaltedCache, ScramHash, ScramServer, ServerStep, DEV_ITERATIONS};

/// The mechanisms the dev backends offer, space-separated.
pub(crate) const DEV_MECHANISMS: &str = "PLAIN OAUTHBEARER XOAUTH2 SCRAM-SHA-1 SCRAM-SHA-256";

/// How long a dev client may take to answer a challenge.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The salt of the dev password's SCRAM keys.
const DEV_SALT: &[u8] = b"mailpin-dev-salt";

/// The error challenge of a refused OAUTHBEARER token (RFC 7628 §3.2.2).
const OAUTH_ERROR: &[u8] = br#"{"status":"invalid_token"}"#;

thread_local! {
    static KEYS: RefCell<SaltedCache> = RefCell::new(SaltedCache::default());
}

/// What the server says next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DevStep {
    /// A challenge, raw (the protocol base64-encodes it).
    Challenge(Vec<u8>),
    /// Logged in as this user.
    Success(String),
    /// Authentication failed.
    Failure,
}

/// One SASL exchange on a dev backend.
pub(crate) struct DevSasl {
    state: State,
    password: String,
}

enum State {
    Plain,
    OAuth(Mechanism),
    /// An OAuth error challenge was sent: the client's dummy answer ends it.
    OAuthRefused,
    Scram(Box<ScramServer>),
}

impl DevSasl {
    /// Starts an exchange of the mechanism named `name`; `None` when the
    /// dev backends do not offer it.
    pub(crate) fn start(name: &[u8], password: &str) -> Option<DevSasl> {
        let state = match Mechanism::parse(name)? {
            Mechanism::Plain => State::Plain,
            Mechanism::Login => return None,
            m @ (Mechanism::OAuthBearer | Mechanism::XOAuth2) => State::OAuth(m),
            m @ (Mechanism::ScramSha1 | Mechanism::ScramSha256) => {
                let hash = if m == Mechanism::ScramSha1 {
                    ScramHash::Sha1
                } else {
                    ScramHash::Sha256
                };
                let iterations = NonZeroU32::new(DEV_ITERATIONS).expect("non-zero");
                let keys = KEYS.with(|k| {
                    k.borrow_mut()
                        .keys(hash, password.as_bytes(), DEV_SALT, iterations)
                });
                State::Scram(Box::new(ScramServer::new(hash, keys, DEV_SALT)))
            }
        };
        Some(DevSasl {
            state,
            password: password.to_owned(),
        })
    }

    /// Takes the client's next decoded message.
    pub(crate) fn step(&mut self, message: &[u8]) -> DevStep {
        match &mut self.state {
            State::Plain => match parse_plain(message) {
                Ok(c)
                    if c.authzid.as_ref().is_none_or(|a| *a == c.user)
                        && c.password.as_slice() == self.password.as_bytes() =>
                {
                    DevStep::Success(c.user)
                }
                _ => DevStep::Failure,
            },
            State::OAuth(m) => match first_message_identity(*m, message) {
                Ok(id) if !token_is_empty(message) => DevStep::Success(id.user),
                _ => {
                    self.state = State::OAuthRefused;
                    DevStep::Challenge(OAUTH_ERROR.to_vec())
                }
            },
            State::OAuthRefused => DevStep::Failure,
            State::Scram(server) => match server.step(message) {
                ServerStep::Challenge(c) => DevStep::Challenge(c),
                ServerStep::Success(user) => DevStep::Success(user),
                ServerStep::Failure => DevStep::Failure,
            },
        }
    }
}

/// How challenges and answers are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// POP3: `+ <base64>` lines, answered by a base64 line.
    Pop3,
    /// ManageSieve: `"<base64>"` lines, answered by a quoted string.
    Sieve,
}

/// Runs an exchange over POP3 or ManageSieve from the client's optional
/// `initial` response (as sent). `Ok(Some(user))` logged in, `Ok(None)`
/// refused or cancelled, `Err(())` when the connection is gone.
pub(crate) async fn run_exchange(
    conn: &mut TcpStream,
    input: &mut ClientInput,
    mut exchange: DevSasl,
    initial: Option<&[u8]>,
    framing: Framing,
) -> Result<Option<String>, ()> {
    let mut next = match initial {
        Some(ir) => decode_initial_response(ir),
        None => read_answer(conn, input, framing, b"").await?,
    };
    // Bounded: SCRAM, the longest exchange, has three client messages.
    for _ in 0..4 {
        let Ok(message) = next else {
            return Ok(None);
        };
        match exchange.step(&message) {
            DevStep::Success(user) => return Ok(Some(user)),
            DevStep::Failure => return Ok(None),
            DevStep::Challenge(c) => next = read_answer(conn, input, framing, &c).await?,
        }
    }
    Ok(None)
}

/// Sends `challenge` and reads the decoded answer (`Err` inside for `*`
/// or bad base64).
async fn read_answer(
    conn: &mut TcpStream,
    input: &mut ClientInput,
    framing: Framing,
    challenge: &[u8],
) -> Result<Result<zeroize::Zeroizing<Vec<u8>>, crate::proto::sasl::SaslError>, ()> {
    let encoded = STANDARD.encode(challenge);
    let line = match framing {
        Framing::Pop3 => format!("+ {encoded}\r\n"),
        Framing::Sieve => format!("\"{encoded}\"\r\n"),
    };
    write_bytes(conn, line.as_bytes()).await.map_err(|_| ())?;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let answer = input.line(conn, 65536, deadline).await.map_err(|_| ())?;
    Ok(match framing {
        Framing::Pop3 => decode_response(&answer),
        Framing::Sieve => {
            let mut args = Vec::new();
            match (parse_line(&answer, &mut args), args.as_slice()) {
                (Ok(None), [SieveArg::String(s)]) => decode_response(s),
                _ => Err(crate::proto::sasl::SaslError::NotBase64),
            }
        }
    })
}

/// True when the `auth=` value carries no token (`auth=Bearer ` or none).
fn token_is_empty(message: &[u8]) -> bool {
    !message
        .split(|&b| b == 0x01)
        .filter_map(|kv| kv.strip_prefix(b"auth=Bearer "))
        .any(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_takes_any_token_for_the_named_user() {
        let mut s = DevSasl::start(b"oauthbearer", "dev").unwrap();
        assert_eq!(
            s.step(b"n,a=alice,\x01auth=Bearer anything\x01\x01"),
            DevStep::Success("alice".into())
        );
        let mut s = DevSasl::start(b"XOAUTH2", "dev").unwrap();
        assert!(matches!(
            s.step(b"user=bob\x01auth=Bearer \x01\x01"),
            DevStep::Challenge(_)
        ));
        assert_eq!(s.step(b""), DevStep::Failure);
    }

    #[test]
    fn plain_checks_the_password() {
        let mut s = DevSasl::start(b"PLAIN", "dev").unwrap();
        assert_eq!(s.step(b"\0carol\0dev"), DevStep::Success("carol".into()));
        let mut s = DevSasl::start(b"PLAIN", "dev").unwrap();
        assert_eq!(s.step(b"\0carol\0nope"), DevStep::Failure);
        assert!(DevSasl::start(b"CRAM-MD5", "dev").is_none());
    }
}
