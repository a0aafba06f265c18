//! The SASL mechanisms a load client can log in with (`logins --mech`):
//! the client side of OAUTHBEARER (any token: the dev backends accept any)
//! and SCRAM-SHA-256 (the dev password), for the IMAP and POP3 clients.
//! The SCRAM keys are derived once per client thread and salt
//! ([`SaltedCache`]): the load measures the director's relay, not the
//! client's PBKDF2.

use std::cell::RefCell;
use std::io;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use mailpin::dev::scram::{SaltedCache, ScramClient, ScramHash};

use super::wire::protocol_error;

thread_local! {
    static KEYS: RefCell<SaltedCache> = RefCell::new(SaltedCache::default());
}

/// How a load client logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LoginMech {
    /// IMAP LOGIN, POP3 USER/PASS (decoded and replayed by the director).
    #[default]
    Plain,
    /// OAUTHBEARER with an initial response (relayed).
    Oauthbearer,
    /// SCRAM-SHA-256 with an initial response (relayed, three rounds).
    #[value(name = "scram-sha-256")]
    ScramSha256,
}

impl LoginMech {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            LoginMech::Plain => "plain",
            LoginMech::Oauthbearer => "oauthbearer",
            LoginMech::ScramSha256 => "scram-sha-256",
        }
    }
}

/// One SASL login in progress.
pub struct SaslLogin {
    mechanism: &'static str,
    first: String,
    scram: Option<ScramClient>,
    password: String,
    verified: bool,
}

impl SaslLogin {
    /// Starts a login of `user` with `mech` (not [`LoginMech::Plain`]).
    pub fn start(mech: LoginMech, user: &str, password: &str, host: &str, port: u16) -> SaslLogin {
        let (mechanism, first, scram) = match mech {
            LoginMech::Plain | LoginMech::Oauthbearer => (
                "OAUTHBEARER",
                format!("n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer load-token-{user}\x01\x01"),
                None,
            ),
            LoginMech::ScramSha256 => {
                let (client, first) = ScramClient::start(ScramHash::Sha256, user);
                ("SCRAM-SHA-256", first, Some(client))
            }
        };
        SaslLogin {
            mechanism,
            first: STANDARD.encode(first),
            scram,
            password: password.to_owned(),
            verified: false,
        }
    }

    /// The mechanism name to send.
    pub fn mechanism(&self) -> &'static str {
        self.mechanism
    }

    /// The first message, base64.
    pub fn initial_response(&self) -> &str {
        &self.first
    }

    /// The answer (base64, maybe empty) to a challenge (base64).
    pub fn answer(&mut self, challenge: &[u8]) -> io::Result<String> {
        let challenge = STANDARD
            .decode(challenge.trim_ascii())
            .map_err(|_| protocol_error("challenge is not base64"))?;
        let challenge = String::from_utf8_lossy(&challenge);
        let Some(scram) = &mut self.scram else {
            return Err(protocol_error(format!(
                "{} refused: {challenge}",
                self.mechanism
            )));
        };
        if challenge.starts_with("v=") {
            if !scram.server_final_ok(&challenge) {
                return Err(protocol_error("SCRAM server signature does not match"));
            }
            self.verified = true;
            return Ok(String::new());
        }
        let password = self.password.as_bytes();
        let last = KEYS
            .with(|k| scram.client_final(&challenge, password, &mut k.borrow_mut()))
            .ok_or_else(|| protocol_error("unreadable SCRAM server-first message"))?;
        Ok(STANDARD.encode(last))
    }

    /// Whether a successful end is acceptable: SCRAM must have checked the
    /// server's signature.
    pub fn finished(&self) -> io::Result<()> {
        if self.scram.is_some() && !self.verified {
            return Err(protocol_error("SCRAM ended without the server's signature"));
        }
        Ok(())
    }
}
