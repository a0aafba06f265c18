//! SASL mechanisms the director names and passes through: which ones exist
//! ([`Mechanism`]), which ones cannot work behind a proxy and why
//! ([`not_routable`]), and how the user is read from the client's first
//! message of OAUTHBEARER, XOAUTH2 and SCRAM ([`first_message_identity`]),
//! so the login can be routed before the exchange is relayed to the
//! backend unchanged.
//!
//! - OAUTHBEARER (RFC 7628 §3.1): `gs2-header 0x01 *(key=value 0x01) 0x01`,
//!   the user is the GS2 authzid `a=`; without it the login cannot be
//!   routed.
//! - XOAUTH2 (Google's): `user=NAME 0x01 auth=Bearer TOKEN 0x01 0x01`.
//! - SCRAM (RFC 5802 §7): `gs2-header n=saslname,r=nonce[,ext]`; the user
//!   is the authzid when given, else `n=` (`=2C` is `,`, `=3D` is `=`).
//!   Channel binding (`p=`) cannot pass a TLS-terminating proxy: the client
//!   binds to the director's TLS channel, the backend sees another one.
//!
//! Nothing here logs, and errors never carry the payload.

use std::fmt;

/// A SASL mechanism mailpin can take from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// RFC 4616: decoded by the director, replayed as PLAIN.
    Plain,
    /// draft-murchison-sasl-login: decoded, replayed as PLAIN.
    Login,
    /// RFC 7628 OAuth 2.0 bearer token: relayed.
    OAuthBearer,
    /// Google's XOAUTH2 bearer token: relayed.
    XOAuth2,
    /// RFC 5802 SCRAM-SHA-1: relayed round by round.
    ScramSha1,
    /// RFC 7677 SCRAM-SHA-256: relayed round by round.
    ScramSha256,
}

impl Mechanism {
    /// Every mechanism, in the order they are advertised by default.
    pub const ALL: [Mechanism; 6] = [
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
        Mechanism::ScramSha1,
        Mechanism::ScramSha256,
    ];

    /// The registered name, upper case.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// The mechanism named `name` (any case), if mailpin knows it.
    pub fn parse(name: &[u8]) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().as_bytes().eq_ignore_ascii_case(name))
    }

    /// True for the mechanisms whose exchange is relayed to the backend
    /// as the client sent it (all but PLAIN and LOGIN, whose credentials
    /// the director decodes and replays).
    pub fn is_relayed(self) -> bool {
        !matches!(self, Mechanism::Plain | Mechanism::Login)
    }

    /// True for SCRAM, whose exchange needs the client's proof after the
    /// backend's challenge.
    pub fn is_scram(self) -> bool {
        matches!(self, Mechanism::ScramSha1 | Mechanism::ScramSha256)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a known SASL mechanism cannot be offered by a proxy that routes by
/// user; `None` when mailpin offers it or does not know it at all.
pub fn not_routable(name: &str) -> Option<&'static str> {
    let upper = name.to_ascii_uppercase();
    if upper.ends_with("-PLUS") {
        return Some(
            "channel binding cannot pass through a TLS-terminating proxy: the client binds to \
             mailpin's TLS channel, the backend sees another one",
        );
    }
    match upper.as_str() {
        "CRAM-MD5" | "DIGEST-MD5" => Some(
            "the server speaks first, so the user is not known before a backend's challenge \
             and the login cannot be routed",
        ),
        _ => None,
    }
}

/// The identities a first message names: the user to route by is
/// [`SaslIdentity::routing_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslIdentity {
    /// The authenticating user (SCRAM `n=`, XOAUTH2 `user=`, OAUTHBEARER `a=`).
    pub user: String,
    /// The GS2 authorization identity `a=`, when given.
    pub authzid: Option<String>,
}

impl SaslIdentity {
    /// The name the login is routed by: the authorization identity when
    /// given (as PLAIN's authzid), else the user.
    pub fn routing_name(&self) -> &str {
        self.authzid
            .as_deref()
            .filter(|z| !z.is_empty())
            .unwrap_or(&self.user)
    }
}

/// Why a first message cannot be routed. Never carries the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityError {
    /// The message is not the mechanism's syntax.
    Malformed(&'static str),
    /// An OAUTHBEARER message without the `a=` user: nothing to route by.
    NoUser,
    /// A name is not UTF-8.
    NotUtf8,
    /// The client asked for channel binding (`p=`), which cannot pass
    /// through a TLS-terminating proxy.
    ChannelBinding,
    /// The message names two different users.
    Mismatch,
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Malformed(what) => write!(f, "malformed first message: {what}"),
            IdentityError::NoUser => f.write_str(
                "OAUTHBEARER needs the user name in the GS2 header (a=user) for routing",
            ),
            IdentityError::NotUtf8 => f.write_str("user name is not UTF-8"),
            IdentityError::ChannelBinding => {
                f.write_str("channel binding is not available through this proxy (TLS ends here)")
            }
            IdentityError::Mismatch => {
                f.write_str("the user name disagrees with the authorization identity")
            }
        }
    }
}

impl std::error::Error for IdentityError {}

/// Reads the identities from the decoded first client message of a
/// relayed `mech`.
pub fn first_message_identity(
    mech: Mechanism,
    message: &[u8],
) -> Result<SaslIdentity, IdentityError> {
    match mech {
        Mechanism::OAuthBearer => oauthbearer_identity(message),
        Mechanism::XOAuth2 => xoauth2_identity(message),
        Mechanism::ScramSha1 | Mechanism::ScramSha256 => scram_identity(message),
        Mechanism::Plain | Mechanism::Login => {
            Err(IdentityError::Malformed("not a relayed mechanism"))
        }
    }
}

/// Splits a GS2 header `cbind-flag "," [a=authzid] ","` off `message`:
/// the authzid (decoded) and the rest.
fn gs2_header(message: &[u8]) -> Result<(Option<String>, &[u8]), IdentityError> {
    let mut parts = message.splitn(3, |&b| b == b',');
    let (Some(flag), Some(authzid), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(IdentityError::Malformed("no GS2 header"));
    };
    match flag {
        b"n" | b"y" => {}
        f if f.starts_with(b"p=") => return Err(IdentityError::ChannelBinding),
        _ => return Err(IdentityError::Malformed("bad GS2 channel binding flag")),
    }
    let authzid = match authzid {
        [] => None,
        a => match a.strip_prefix(b"a=") {
            Some(name) if !name.is_empty() => Some(saslname(name)?),
            _ => return Err(IdentityError::Malformed("bad GS2 authzid")),
        },
    };
    Ok((authzid, rest))
}

/// Decodes an RFC 5802 saslname: `=2C` is `,`, `=3D` is `=`, any other
/// `=` is an error.
fn saslname(raw: &[u8]) -> Result<String, IdentityError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'=' {
            match raw.get(i + 1..i + 3) {
                Some(b"2C") | Some(b"2c") => out.push(b','),
                Some(b"3D") | Some(b"3d") => out.push(b'='),
                _ => return Err(IdentityError::Malformed("bad saslname escape")),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| IdentityError::NotUtf8)
}

fn utf8(raw: &[u8]) -> Result<String, IdentityError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| IdentityError::NotUtf8)
}

/// One `key=value` pair of an OAuth message.
type KvPair<'m> = (&'m [u8], &'m [u8]);

/// The `key=value` pairs of an OAuth message, each ended by 0x01, the list
/// ended by one more 0x01.
fn kvpairs(rest: &[u8]) -> Result<Vec<KvPair<'_>>, IdentityError> {
    let Some(body) = rest.strip_suffix(b"\x01\x01") else {
        return Err(IdentityError::Malformed("no final 0x01 0x01"));
    };
    let body = body.strip_prefix(b"\x01").unwrap_or(body);
    let mut pairs = Vec::new();
    for pair in body.split(|&b| b == 0x01) {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return Err(IdentityError::Malformed("key without value"));
        };
        pairs.push((&pair[..eq], &pair[eq + 1..]));
    }
    if !pairs
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(b"auth") && !v.is_empty())
    {
        return Err(IdentityError::Malformed("no auth= value"));
    }
    Ok(pairs)
}

fn oauthbearer_identity(message: &[u8]) -> Result<SaslIdentity, IdentityError> {
    let (authzid, rest) = gs2_header(message)?;
    if !rest.starts_with(b"\x01") {
        return Err(IdentityError::Malformed("no 0x01 after the GS2 header"));
    }
    let pairs = kvpairs(rest)?;
    let Some(user) = authzid else {
        return Err(IdentityError::NoUser);
    };
    // Some clients add XOAUTH2's `user=`: it must name the same user.
    for (key, value) in pairs {
        if key.eq_ignore_ascii_case(b"user") && utf8(value)? != user {
            return Err(IdentityError::Mismatch);
        }
    }
    Ok(SaslIdentity {
        user: user.clone(),
        authzid: Some(user),
    })
}

fn xoauth2_identity(message: &[u8]) -> Result<SaslIdentity, IdentityError> {
    let pairs = kvpairs(message)?;
    let mut users = pairs
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(b"user"))
        .map(|(_, v)| utf8(v));
    let user = match users.next() {
        Some(user) => user?,
        None => return Err(IdentityError::Malformed("no user= value")),
    };
    if user.is_empty() {
        return Err(IdentityError::Malformed("empty user= value"));
    }
    for other in users {
        if other? != user {
            return Err(IdentityError::Mismatch);
        }
    }
    Ok(SaslIdentity {
        user,
        authzid: None,
    })
}

fn scram_identity(message: &[u8]) -> Result<SaslIdentity, IdentityError> {
    let (authzid, bare) = gs2_header(message)?;
    let mut fields = bare.split(|&b| b == b',');
    let mut first = fields.next().unwrap_or_default();
    if first.starts_with(b"m=") {
        return Err(IdentityError::Malformed(
            "mandatory extension not supported",
        ));
    }
    let Some(name) = first.strip_prefix(b"n=") else {
        return Err(IdentityError::Malformed("no n= user name"));
    };
    first = name;
    if first.is_empty() {
        return Err(IdentityError::Malformed("empty n= user name"));
    }
    if !fields.next().is_some_and(|f| f.starts_with(b"r=")) {
        return Err(IdentityError::Malformed("no r= nonce"));
    }
    Ok(SaslIdentity {
        user: saslname(first)?,
        authzid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(user: &str, authzid: Option<&str>) -> SaslIdentity {
        SaslIdentity {
            user: user.into(),
            authzid: authzid.map(Into::into),
        }
    }

    #[test]
    fn names_parse_in_any_case() {
        assert_eq!(
            Mechanism::parse(b"oauthbearer"),
            Some(Mechanism::OAuthBearer)
        );
        assert_eq!(
            Mechanism::parse(b"SCRAM-SHA-256"),
            Some(Mechanism::ScramSha256)
        );
        assert_eq!(Mechanism::parse(b"CRAM-MD5"), None);
        assert!(!Mechanism::Plain.is_relayed());
        assert!(Mechanism::XOAuth2.is_relayed());
    }

    #[test]
    fn unroutable_mechanisms_say_why() {
        assert!(not_routable("cram-md5").is_some_and(|w| w.contains("not known")));
        assert!(not_routable("DIGEST-MD5").is_some());
        assert!(not_routable("SCRAM-SHA-256-PLUS").is_some_and(|w| w.contains("channel")));
        assert_eq!(not_routable("SCRAM-SHA-256"), None);
    }

    #[test]
    fn oauthbearer_routes_by_gs2_authzid() {
        let m = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        let got = first_message_identity(Mechanism::OAuthBearer, m).expect("valid");
        assert_eq!(got, id("user@example.com", Some("user@example.com")));
        assert_eq!(got.routing_name(), "user@example.com");
    }

    #[test]
    fn oauthbearer_without_user_or_token_is_refused() {
        let m = b"n,,\x01auth=Bearer abc\x01\x01";
        assert_eq!(
            first_message_identity(Mechanism::OAuthBearer, m),
            Err(IdentityError::NoUser)
        );
        let m = b"n,a=u,\x01host=x\x01\x01";
        assert!(matches!(
            first_message_identity(Mechanism::OAuthBearer, m),
            Err(IdentityError::Malformed(_))
        ));
        let m = b"p=tls-unique,a=u,\x01auth=Bearer t\x01\x01";
        assert_eq!(
            first_message_identity(Mechanism::OAuthBearer, m),
            Err(IdentityError::ChannelBinding)
        );
    }

    #[test]
    fn oauthbearer_user_field_must_agree() {
        let m = b"n,a=alice,\x01user=bob\x01auth=Bearer t\x01\x01";
        assert_eq!(
            first_message_identity(Mechanism::OAuthBearer, m),
            Err(IdentityError::Mismatch)
        );
        let m = b"n,a=alice,\x01user=alice\x01auth=Bearer t\x01\x01";
        assert!(first_message_identity(Mechanism::OAuthBearer, m).is_ok());
    }

    #[test]
    fn xoauth2_routes_by_user() {
        let m = b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01";
        assert_eq!(
            first_message_identity(Mechanism::XOAuth2, m),
            Ok(id("someuser@example.com", None))
        );
        assert!(first_message_identity(Mechanism::XOAuth2, b"auth=Bearer t\x01\x01").is_err());
        assert_eq!(
            first_message_identity(
                Mechanism::XOAuth2,
                b"user=a\x01user=b\x01auth=Bearer t\x01\x01"
            ),
            Err(IdentityError::Mismatch)
        );
    }

    #[test]
    fn control_characters_reach_the_name_check() {
        let m = b"user=ali\x00ce\x01auth=Bearer t\x01\x01";
        let got = first_message_identity(Mechanism::XOAuth2, m).expect("parsed");
        assert!(got.user.contains('\0'), "left for check_login_name");
    }

    #[test]
    fn scram_client_first() {
        let m = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL";
        assert_eq!(
            first_message_identity(Mechanism::ScramSha1, m),
            Ok(id("user", None))
        );
        let m = b"y,a=admin=2Cx,n=us=3Der,r=abc";
        let got = first_message_identity(Mechanism::ScramSha256, m).expect("valid");
        assert_eq!(got, id("us=er", Some("admin,x")));
        assert_eq!(got.routing_name(), "admin,x");
        assert_eq!(
            first_message_identity(Mechanism::ScramSha256, b"p=tls-exporter,,n=u,r=a"),
            Err(IdentityError::ChannelBinding)
        );
        for bad in [
            &b"n,,r=abc"[..],
            b"n,,n=,r=a",
            b"n,,n=u",
            b"n,,m=x,n=u,r=a",
            b"n,,n=a=b,r=x",
            b"x,,n=u,r=a",
        ] {
            assert!(
                matches!(
                    first_message_identity(Mechanism::ScramSha256, bad),
                    Err(IdentityError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }
}
