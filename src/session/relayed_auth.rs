//! The start of a relayed SASL login (OAUTHBEARER, XOAUTH2, SCRAM), the
//! same in every protocol: decode the client's first message, read the
//! user from it, and keep the message as the client encoded it, to replay
//! to the backend unchanged. The caller routes by the user
//! ([`crate::session::failover::login_key_of`], which also refuses control
//! characters before any backend is contacted) and then hands the
//! exchange to its backend module ([`crate::backend::sasl_relay`]).

use zeroize::Zeroizing;

use crate::backend::sasl_relay::RelayedAuth;
use crate::proto::sasl::{decode_initial_response, SaslError};
use crate::proto::sasl_passthrough::{
    first_message_identity, IdentityError, Mechanism, SaslIdentity,
};

/// Why a first message cannot start a relayed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstMessageError {
    /// Not base64, or `*` (the protocol's BAD / cancel answer).
    Encoding(SaslError),
    /// Empty: these mechanisms start with a client message.
    Empty,
    /// The message cannot be routed (the protocol's NO).
    Identity(IdentityError),
}

impl std::fmt::Display for FirstMessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FirstMessageError::Encoding(e) => write!(f, "invalid SASL response: {e}"),
            FirstMessageError::Empty => f.write_str("the mechanism needs a client first message"),
            FirstMessageError::Identity(e) => e.fmt(f),
        }
    }
}

/// Reads the identities from the client's first message of `mechanism`,
/// `encoded` as the client sent it (base64; `=` for empty), and keeps it
/// to replay.
pub fn start(
    mechanism: Mechanism,
    encoded: Vec<u8>,
) -> Result<(SaslIdentity, RelayedAuth), FirstMessageError> {
    let encoded = Zeroizing::new(encoded);
    let message = decode_initial_response(&encoded).map_err(FirstMessageError::Encoding)?;
    if message.is_empty() {
        return Err(FirstMessageError::Empty);
    }
    let identity =
        first_message_identity(mechanism, &message).map_err(FirstMessageError::Identity)?;
    Ok((
        identity,
        RelayedAuth {
            mechanism,
            initial: encoded,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;

    #[test]
    fn keeps_the_client_encoding_and_reads_the_user() {
        let encoded = STANDARD.encode(b"n,,n=alice,r=abc").into_bytes();
        let (id, relayed) = start(Mechanism::ScramSha256, encoded.clone()).expect("valid");
        assert_eq!(id.user, "alice");
        assert_eq!(&**relayed.initial, &encoded[..]);
        assert!(!format!("{relayed:?}").contains("bixuPWFsaWNl"));
    }

    #[test]
    fn refuses_empty_and_bad_encoding() {
        assert_eq!(
            start(Mechanism::XOAuth2, b"=".to_vec()).err(),
            Some(FirstMessageError::Empty)
        );
        assert_eq!(
            start(Mechanism::XOAuth2, b"!!".to_vec()).err(),
            Some(FirstMessageError::Encoding(SaslError::NotBase64))
        );
        let no_user = STANDARD
            .encode(b"n,,\x01auth=Bearer t\x01\x01")
            .into_bytes();
        assert_eq!(
            start(Mechanism::OAuthBearer, no_user).err(),
            Some(FirstMessageError::Identity(IdentityError::NoUser))
        );
    }
}
