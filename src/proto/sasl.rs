//! SASL for AUTHENTICATE: decoding the client's PLAIN and LOGIN answers
//! and encoding PLAIN to replay the credentials to a backend.
//!
//! PLAIN (RFC 4616) is one message, `authzid NUL authcid NUL passwd`,
//! base64-encoded on the wire. LOGIN (draft-murchison-sasl-login) asks for
//! the user name, then the password, each answered with one base64 line.
//! With SASL-IR (RFC 4959) the first answer may ride on the AUTHENTICATE
//! command; there `=` stands for an empty answer. A client cancels an
//! exchange by answering `*`.
//!
//! Nothing here logs, and [`Credentials`] never prints its password.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::fmt;
use zeroize::Zeroizing;

/// A client's answer that cancels the exchange (RFC 9051 §6.2.2).
pub const CANCEL: &[u8] = b"*";

/// An initial response (SASL-IR, RFC 4959) that means "empty response",
/// as opposed to no initial response at all.
pub const EMPTY_INITIAL_RESPONSE: &[u8] = b"=";

/// The LOGIN mechanism's first challenge, `Username:`, base64-encoded.
pub const LOGIN_USER_CHALLENGE: &str = "VXNlcm5hbWU6";

/// The LOGIN mechanism's second challenge, `Password:`, base64-encoded.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// A user's login credentials, as read from LOGIN, AUTHENTICATE PLAIN or
/// AUTHENTICATE LOGIN.
///
/// The password must never be logged: `Debug` prints `<redacted>` in its
/// place, and its memory is zeroed when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity to act as (PLAIN's authzid), if the client gave one.
    pub authzid: Option<String>,
    /// The user name that authenticates (PLAIN's authcid).
    pub user: String,
    /// The password octets. Never log them.
    pub password: Zeroizing<Vec<u8>>,
}

impl Credentials {
    /// Credentials without an authorization identity.
    pub fn new(user: impl Into<String>, password: impl Into<Vec<u8>>) -> Self {
        Credentials {
            authzid: None,
            user: user.into(),
            password: Zeroizing::new(password.into()),
        }
    }
}

impl fmt::Debug for Credentials {
    /// Shows the identities; the password is always `<redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("user", &self.user)
            .field("password", &format_args!("<redacted>"))
            .finish()
    }
}

/// Why a SASL answer was rejected. The messages never include the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client answered `*`: the exchange is cancelled (answer `BAD`).
    Cancelled,
    /// The answer is not valid base64.
    NotBase64,
    /// A PLAIN message without the two NUL separators it needs.
    MissingNul,
    /// A PLAIN message with more than two NULs.
    TooManyNuls,
    /// A PLAIN message or LOGIN answer with an empty user name.
    EmptyUser,
    /// The user name is not UTF-8.
    UserNotUtf8,
    /// The authorization identity is not UTF-8.
    AuthzidNotUtf8,
}

impl fmt::Display for SaslError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SaslError::Cancelled => "authentication cancelled",
            SaslError::NotBase64 => "invalid base64 data",
            SaslError::MissingNul => {
                "invalid PLAIN message: expected authzid NUL user NUL password"
            }
            SaslError::TooManyNuls => "invalid PLAIN message: more than two NUL separators",
            SaslError::EmptyUser => "empty user name",
            SaslError::UserNotUtf8 => "user name is not UTF-8",
            SaslError::AuthzidNotUtf8 => "authorization identity is not UTF-8",
        })
    }
}

impl std::error::Error for SaslError {}

/// Decodes an initial response carried on the AUTHENTICATE command
/// (SASL-IR): `=` is an empty response, `*` is not allowed there and reads
/// as [`SaslError::Cancelled`], anything else is base64.
pub fn decode_initial_response(arg: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    if arg == EMPTY_INITIAL_RESPONSE {
        return Ok(Zeroizing::new(Vec::new()));
    }
    decode_response(arg)
}

/// Decodes one continuation answer line (without CRLF): `*` cancels, an
/// empty line is an empty response, anything else is base64.
pub fn decode_response(line: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    if line == CANCEL {
        return Err(SaslError::Cancelled);
    }
    let mut out = Zeroizing::new(Vec::with_capacity(line.len() / 4 * 3 + 3));
    STANDARD
        .decode_vec(line, &mut out)
        .map_err(|_| SaslError::NotBase64)?;
    Ok(out)
}

/// Decodes a base64 PLAIN answer (initial response or continuation line)
/// into credentials. `=` and `*` are handled as in
/// [`decode_initial_response`].
pub fn decode_plain(answer: &[u8]) -> Result<Credentials, SaslError> {
    let message = decode_initial_response(answer)?;
    parse_plain(&message)
}

/// Splits a decoded PLAIN message `authzid NUL authcid NUL passwd`.
/// Exactly two NULs, a non-empty UTF-8 authcid; an empty authzid means
/// none. The password may be empty (the backend judges it).
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.splitn(3, |&b| b == 0);
    let (Some(authzid), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MissingNul);
    };
    if password.contains(&0) {
        return Err(SaslError::TooManyNuls);
    }
    if user.is_empty() {
        return Err(SaslError::EmptyUser);
    }
    let user = std::str::from_utf8(user).map_err(|_| SaslError::UserNotUtf8)?;
    let authzid = match authzid {
        [] => None,
        bytes => Some(
            std::str::from_utf8(bytes)
                .map_err(|_| SaslError::AuthzidNotUtf8)?
                .to_owned(),
        ),
    };
    Ok(Credentials {
        authzid,
        user: user.to_owned(),
        password: Zeroizing::new(password.to_vec()),
    })
}

/// Encodes credentials as a base64 PLAIN message, to replay them to a
/// backend (`AUTHENTICATE PLAIN <this>`). The result holds the password.
pub fn encode_plain(credentials: &Credentials) -> Zeroizing<String> {
    let authzid = credentials.authzid.as_deref().unwrap_or("");
    let mut message = Zeroizing::new(Vec::with_capacity(
        authzid.len() + credentials.user.len() + credentials.password.len() + 2,
    ));
    message.extend_from_slice(authzid.as_bytes());
    message.push(0);
    message.extend_from_slice(credentials.user.as_bytes());
    message.push(0);
    message.extend_from_slice(&credentials.password);
    let mut out = Zeroizing::new(String::with_capacity(message.len().div_ceil(3) * 4));
    STANDARD.encode_string(&*message, &mut out);
    out
}

/// Decodes the LOGIN mechanism's first answer, the user name (also used
/// when LOGIN's user name comes as an initial response).
pub fn decode_login_user(answer: &[u8]) -> Result<String, SaslError> {
    let bytes = decode_initial_response(answer)?;
    if bytes.is_empty() {
        return Err(SaslError::EmptyUser);
    }
    std::str::from_utf8(&bytes)
        .map(str::to_owned)
        .map_err(|_| SaslError::UserNotUtf8)
}

/// Decodes the LOGIN mechanism's second answer, the password.
pub fn decode_login_password(answer: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    decode_response(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(raw: &[u8]) -> Vec<u8> {
        STANDARD.encode(raw).into_bytes()
    }

    #[test]
    fn plain_without_authzid() {
        let c = decode_plain(&b64(b"\0alice\0secret")).expect("valid PLAIN");
        assert_eq!(c.authzid, None);
        assert_eq!(c.user, "alice");
        assert_eq!(&**c.password, b"secret");
    }

    #[test]
    fn plain_with_authzid_and_empty_password() {
        let c = decode_plain(&b64(b"admin\0alice\0")).expect("valid PLAIN");
        assert_eq!(c.authzid.as_deref(), Some("admin"));
        assert_eq!(c.user, "alice");
        assert!(c.password.is_empty());
    }

    #[test]
    fn plain_password_may_hold_any_octet_but_nul() {
        let c = decode_plain(&b64(b"\0u\0p\xffw d")).expect("valid PLAIN");
        assert_eq!(&**c.password, b"p\xffw d");
    }

    #[test]
    fn plain_rejects_malformed_messages() {
        assert_eq!(decode_plain(b"not base64!"), Err(SaslError::NotBase64));
        assert_eq!(decode_plain(b"AGFsaWNl="), Err(SaslError::NotBase64));
        assert_eq!(decode_plain(&b64(b"alice")), Err(SaslError::MissingNul));
        assert_eq!(decode_plain(&b64(b"\0alice")), Err(SaslError::MissingNul));
        assert_eq!(
            decode_plain(&b64(b"\0a\0b\0c")),
            Err(SaslError::TooManyNuls)
        );
        assert_eq!(decode_plain(&b64(b"\0\0pw")), Err(SaslError::EmptyUser));
        assert_eq!(
            decode_plain(&b64(b"\0\xff\0pw")),
            Err(SaslError::UserNotUtf8)
        );
        assert_eq!(
            decode_plain(&b64(b"\xfe\0u\0pw")),
            Err(SaslError::AuthzidNotUtf8)
        );
        assert_eq!(decode_plain(b"="), Err(SaslError::MissingNul));
        assert_eq!(decode_plain(b"*"), Err(SaslError::Cancelled));
    }

    #[test]
    fn plain_round_trips() {
        let mut c = Credentials::new("jörg@example.com", b"p\"w".to_vec());
        assert_eq!(decode_plain(encode_plain(&c).as_bytes()), Ok(c.clone()));
        c.authzid = Some("admin".into());
        assert_eq!(decode_plain(encode_plain(&c).as_bytes()), Ok(c));
    }

    #[test]
    fn encode_plain_matches_rfc_4616_example() {
        let c = Credentials::new("tim", b"tanstaaftanstaaf".to_vec());
        assert_eq!(&*encode_plain(&c), "AHRpbQB0YW5zdGFhZnRhbnN0YWFm");
    }

    #[test]
    fn initial_response_equals_sign_is_empty() {
        assert!(decode_initial_response(b"=").expect("empty").is_empty());
        assert_eq!(decode_response(b"="), Err(SaslError::NotBase64));
        assert!(decode_response(b"").expect("empty line").is_empty());
    }

    #[test]
    fn star_cancels() {
        assert_eq!(decode_response(CANCEL), Err(SaslError::Cancelled));
        assert_eq!(decode_login_user(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_login_password(b"*"), Err(SaslError::Cancelled));
    }

    #[test]
    fn login_mechanism_steps() {
        assert_eq!(
            STANDARD.decode(LOGIN_USER_CHALLENGE).ok(),
            Some(b"Username:".to_vec())
        );
        assert_eq!(
            STANDARD.decode(LOGIN_PASSWORD_CHALLENGE).ok(),
            Some(b"Password:".to_vec())
        );
        assert_eq!(decode_login_user(&b64(b"alice")).as_deref(), Ok("alice"));
        assert_eq!(decode_login_user(b""), Err(SaslError::EmptyUser));
        assert_eq!(
            decode_login_user(&b64(b"\xff")),
            Err(SaslError::UserNotUtf8)
        );
        assert_eq!(
            &**decode_login_password(&b64(b"pw")).expect("password"),
            b"pw"
        );
        assert_eq!(decode_login_password(b"%%"), Err(SaslError::NotBase64));
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = Credentials::new("alice", b"hunter2".to_vec());
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
        assert!(shown.contains("alice"));
    }
}
