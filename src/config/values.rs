//! Small value types of the schema that need their own parsing: ports,
//! socket addresses, the TLS version floor and secrets. Each comes with a
//! serde helper whose error message says what to write instead.

use std::fmt;
use std::net::SocketAddr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Accepts an integer port number 1-65535.
struct PortVisitor;

impl Visitor<'_> for PortVisitor {
    type Value = u16;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a port number from 1 to 65535")
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<u16, E> {
        match u16::try_from(number) {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(E::custom(format!(
                "{number} is not a port (expected a number from 1 to 65535)"
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<u16, E> {
        self.visit_i64(i64::try_from(number).unwrap_or(-1))
    }
}

/// Serde `deserialize_with` helper for a required port number.
pub(crate) fn deserialize_port<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<u16, D::Error> {
    deserializer.deserialize_i64(PortVisitor)
}

/// Serde `deserialize_with` helper for an optional (override) port number.
pub(crate) fn deserialize_port_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u16>, D::Error> {
    deserializer.deserialize_i64(PortVisitor).map(Some)
}

/// Accepts `"IP:PORT"`; `example` is shown in the error message.
struct SocketAddrVisitor {
    example: &'static str,
}

impl Visitor<'_> for SocketAddrVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an address IP:PORT such as {:?}", self.example)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<SocketAddr, E> {
        text.trim()
            .parse()
            .map_err(|_| E::custom(not_an_address(text, self.example)))
    }
}

/// The message for a string that is not `IP:PORT`.
pub(crate) fn not_an_address(text: &str, example: &str) -> String {
    format!("{text:?} is not an address (expected IP:PORT, e.g. {example:?})")
}

/// Serde `deserialize_with` helper for `listen.addr`.
pub(crate) fn deserialize_listen_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_str(SocketAddrVisitor {
        example: "0.0.0.0:993",
    })
}

/// Serde `deserialize_with` helper for `admin.listen`.
pub(crate) fn deserialize_admin_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SocketAddr, D::Error> {
    deserializer.deserialize_str(SocketAddrVisitor {
        example: "127.0.0.1:9120",
    })
}

/// The lowest TLS version a listener accepts (`tls.min_version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (`"1.2"`, the default).
    #[default]
    Tls12,
    /// TLS 1.3 only (`"1.3"`).
    Tls13,
}

impl TlsVersion {
    /// The spelling used in the config: `"1.2"` or `"1.3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tls12 => "1.2",
            Self::Tls13 => "1.3",
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Accepts `"1.2"`/`"1.3"`, and the float forms `1.2`/`1.3` people write by habit.
struct TlsVersionVisitor;

impl Visitor<'_> for TlsVersionVisitor {
    type Value = TlsVersion;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"1.2\" or \"1.3\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<TlsVersion, E> {
        match text.trim() {
            "1.2" => Ok(TlsVersion::Tls12),
            "1.3" => Ok(TlsVersion::Tls13),
            _ => Err(E::custom(format!(
                "{text:?} is not a TLS version (expected \"1.2\" or \"1.3\")"
            ))),
        }
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<TlsVersion, E> {
        self.visit_str(&number.to_string())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TlsVersionVisitor)
    }
}

/// A string that must never be logged, such as `health.login_password`.
/// `Debug` shows `"***"`; read the value with [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; only for sending it where it belongs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_hides_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "\"***\"");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn tls_version_spellings() {
        assert_eq!(TlsVersion::default(), TlsVersion::Tls12);
        assert_eq!(TlsVersion::Tls13.to_string(), "1.3");
        assert!(TlsVersion::Tls12 < TlsVersion::Tls13);
    }
}
