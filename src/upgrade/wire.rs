//! The upgrade link's messages: length-prefixed JSON frames on the Unix
//! socketpair between the old and the new process.
//!
//! Each frame is a 4-byte big-endian length and that many bytes of JSON.
//! Listening sockets travel beside the frames as SCM_RIGHTS batches
//! ([`crate::upgrade::fds`]), announced by a [`Frame::Sockets`] frame.
//! The conversation:
//!
//! ```text
//! new → old  Hello        configuration loaded and checked
//! old → new  Sockets      + the descriptors (the old process stopped accepting)
//! old → new  Routes       every assignment, with the sessions still open
//! new → old  Ready        the new process accepts       (or Failed, then exit)
//! old → new  Released     one of those sessions ended      (until Bye)
//! new → old  Request      an admin action for the old process's sessions
//! old → new  Answer       its outcome
//! old → new  Bye          the old process's last session ended; it exits
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use crate::plane::handover::{PeerAnswer, PeerRequest};

/// The largest frame accepted (a routing state of millions of users fits).
const MAX_FRAME: usize = 256 << 20;

/// One message on the link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Frame {
    /// The new process loaded and checked its configuration.
    Hello {
        /// Its process id.
        pid: u32,
        /// Its version.
        version: String,
    },
    /// The new process cannot go on; it exits after this.
    Failed {
        /// Why.
        error: String,
    },
    /// The listening sockets that follow, in this order.
    Sockets {
        /// What each descriptor is.
        sockets: Vec<SocketInfo>,
    },
    /// The routing state.
    Routes {
        /// Every assignment of the old process.
        assignments: Vec<RouteEntry>,
    },
    /// The new process accepts on every socket.
    Ready {
        /// Its process id.
        pid: u32,
    },
    /// A session of the old process that was counted in [`Frame::Routes`]
    /// ended (its backend connection is closed).
    Released {
        /// The user key.
        key: String,
        /// The backend's name.
        backend: String,
    },
    /// An admin action for the old process's sessions.
    Request {
        /// Matches the answer.
        id: u64,
        /// What to do.
        request: PeerRequest,
    },
    /// The outcome of [`Frame::Request`] `id`.
    Answer {
        /// The request's id.
        id: u64,
        /// The outcome.
        answer: PeerAnswer,
    },
    /// The old process's sessions have all ended.
    Bye,
}

/// What a passed descriptor is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocketKind {
    /// A `[[listen]]` socket of one core.
    Listen {
        /// Its `[[listen]]` index in the old process's start-up order, if
        /// known (a listener added by a reload has none).
        index: Option<usize>,
        /// The old process's core that accepted on it.
        core: usize,
        /// `imap`, `pop3`, `lmtp` or `sieve`.
        protocol: String,
    },
    /// The admin API's TCP listener.
    AdminTcp,
    /// The admin API's Unix socket, bound at this path.
    AdminUnix {
        /// The socket file.
        path: String,
    },
}

/// One passed descriptor: what it is and where it is bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    /// What it is.
    pub kind: SocketKind,
    /// The bound address (`getsockname`); empty for a Unix socket.
    pub bound: String,
}

/// One assignment of the old process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// The user key.
    pub key: String,
    /// The backend's name.
    pub backend: String,
    /// When the assignment was made, in milliseconds since the epoch.
    pub since_ms: u64,
    /// Its sessions still open in the old process.
    pub sessions: u32,
}

/// Writes one frame.
pub fn write_frame(stream: &mut UnixStream, frame: &Frame) -> std::io::Result<()> {
    let body = serde_json::to_vec(frame).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    stream.write_all(&buf)
}

/// Reads one frame (exactly its bytes, never a byte of what follows, so
/// descriptors sent after it are left for [`crate::upgrade::fds`]).
pub fn read_frame(stream: &mut UnixStream) -> std::io::Result<Frame> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("upgrade frame of {len} bytes is over the bound"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_an_oversized_length_is_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let frames = [
            Frame::Hello {
                pid: 7,
                version: "1".into(),
            },
            Frame::Released {
                key: "alice".into(),
                backend: "mail1".into(),
            },
            Frame::Request {
                id: 3,
                request: PeerRequest::Kick("bob".into()),
            },
            Frame::Bye,
        ];
        for f in &frames {
            write_frame(&mut a, f).unwrap();
        }
        for f in &frames {
            assert_eq!(&read_frame(&mut b).unwrap(), f);
        }
        a.write_all(&u32::MAX.to_be_bytes()).unwrap();
        assert_eq!(
            read_frame(&mut b).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
    }
}
