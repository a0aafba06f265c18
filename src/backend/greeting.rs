//! What a backend's greeting says: ready, refusing for load, or broken.
//!
//! A backend at its process or connection limit still answers, with a
//! refusal instead of its ready greeting (Dovecot: IMAP `* BYE`, POP3
//! `-ERR [SYS/TEMP]`, ManageSieve `NO`/`BYE`, LMTP `421`). That is a load
//! signal, not a death: the login that met it may go elsewhere, but the
//! backend is not marked down and its sessions stay. Client logins and
//! active health checks read greetings through the same classification.

use crate::config::Protocol;

/// The meaning of one greeting line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreetingKind {
    /// The backend is ready for a login.
    Ready,
    /// The backend is alive but refuses new sessions now (load).
    Refused,
    /// Not a greeting of this protocol.
    Unexpected,
}

/// Whether `line` starts with `prefix`, ASCII case-insensitively.
fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Classifies one line of a `protocol` greeting; `None` when more lines
/// of the greeting follow (a ManageSieve capability line, an LMTP `220-`
/// continuation).
pub fn classify(protocol: Protocol, line: &[u8]) -> Option<GreetingKind> {
    let kind = match protocol {
        Protocol::Imap if starts_with_ci(line, b"* OK") => GreetingKind::Ready,
        Protocol::Imap if starts_with_ci(line, b"* BYE") => GreetingKind::Refused,
        Protocol::Pop3 if line.starts_with(b"+OK") => GreetingKind::Ready,
        Protocol::Pop3 if line.starts_with(b"-ERR") => GreetingKind::Refused,
        Protocol::Lmtp if line.get(3) == Some(&b'-') => return None,
        Protocol::Lmtp if line.starts_with(b"220") => GreetingKind::Ready,
        Protocol::Lmtp if line.starts_with(b"4") => GreetingKind::Refused,
        Protocol::Sieve if line.starts_with(b"\"") => return None,
        Protocol::Sieve if starts_with_ci(line, b"OK") => GreetingKind::Ready,
        Protocol::Sieve if starts_with_ci(line, b"NO") || starts_with_ci(line, b"BYE") => {
            GreetingKind::Refused
        }
        _ => GreetingKind::Unexpected,
    };
    Some(kind)
}

/// The start of a greeting line, for error messages.
pub fn shown(line: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(&line[..line.len().min(80)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_refusals_are_told_from_ready_and_broken_greetings() {
        use GreetingKind::*;
        let cases: [(Protocol, &[u8], Option<GreetingKind>); 12] = [
            (
                Protocol::Imap,
                b"* OK [CAPABILITY IMAP4rev1] ready",
                Some(Ready),
            ),
            (Protocol::Imap, b"* BYE Server is busy", Some(Refused)),
            (Protocol::Imap, b"* bye busy", Some(Refused)),
            (Protocol::Imap, b"HTTP/1.1 400", Some(Unexpected)),
            (Protocol::Pop3, b"+OK Dovecot ready.", Some(Ready)),
            (Protocol::Pop3, b"-ERR [SYS/TEMP] busy", Some(Refused)),
            (Protocol::Lmtp, b"220-first", None),
            (Protocol::Lmtp, b"220 ready", Some(Ready)),
            (Protocol::Lmtp, b"421 4.3.2 busy", Some(Refused)),
            (Protocol::Sieve, b"\"IMPLEMENTATION\" \"Dovecot\"", None),
            (Protocol::Sieve, b"OK \"ready\"", Some(Ready)),
            (Protocol::Sieve, b"BYE (TRYLATER) \"busy\"", Some(Refused)),
        ];
        for (protocol, line, want) in cases {
            assert_eq!(classify(protocol, line), want, "{protocol:?} {line:?}");
        }
    }
}
