//! What a client is told when the director ends its session (a kick, a
//! backend gone, a drain, a fence): the ordinary relay and a live move's
//! failure say the same words.

use crate::config::Protocol;
use crate::plane::KickReason;

/// What a client is told when the director ends its session: IMAP and
/// ManageSieve have a BYE for it; POP3 has no unsolicited reply, so the
/// connection just closes.
pub fn goodbye(protocol: Protocol, reason: KickReason) -> Vec<u8> {
    let text = match reason {
        KickReason::BackendDown => "Mail server unavailable, please reconnect.",
        KickReason::Admin | KickReason::Move => {
            "Session closed by the administrator, please reconnect."
        }
        KickReason::Shutdown => "Director shutting down, please reconnect.",
        KickReason::Fenced => "Director cut off from its cluster, please reconnect.",
    };
    match protocol {
        Protocol::Imap if matches!(reason, KickReason::Admin | KickReason::Move) => {
            format!("* BYE {text}\r\n").into_bytes()
        }
        Protocol::Imap => format!("* BYE [UNAVAILABLE] {text}\r\n").into_bytes(),
        Protocol::Sieve => format!("BYE (TRYLATER) \"{text}\"\r\n").into_bytes(),
        Protocol::Pop3 | Protocol::Lmtp => Vec::new(),
    }
}
