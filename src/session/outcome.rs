//! How the pre-login phase of any protocol ends, and what a login that the
//! backend accepted hands to the relay (and, for an IMAP session that may
//! move live, to the move).

use monoio::net::TcpStream;

use crate::backend::client_info::ClientInfo;
use crate::route::backends::BackendId;
use crate::route::shard::SessionOrigin;

/// How the pre-login phase ended.
pub enum Outcome {
    /// The client left, misbehaved or timed out; the connection is done.
    Closed,
    /// The client asked for TLS and was told to begin: upgrade, then call
    /// the protocol's pre-login `run` again on the TLS stream.
    StartTls,
    /// The backend accepted the login.
    LoggedIn(LoggedIn),
}

/// A session the backend accepted, ready to relay.
pub struct LoggedIn {
    /// The backend connection, logged in.
    pub backend: TcpStream,
    /// Which backend.
    pub backend_id: BackendId,
    /// The user key the session counts under.
    pub key: String,
    /// Where the session comes from, as counted by the user's owner core.
    pub origin: SessionOrigin,
    /// Bytes the client pipelined after its login command.
    pub to_backend: Vec<u8>,
    /// Bytes the backend sent after its tagged OK.
    pub to_client: Vec<u8>,
    /// An IMAP session that may move live (issue 12): what the move needs.
    pub live: Option<Box<LiveLogin>>,
}

/// What a live move needs of the login, kept for the session's life: the
/// client's details (forwarded again with ID) and the user name the
/// backend knows (the master login's authorization id). Never a password.
#[derive(Debug, Clone)]
pub struct LiveLogin {
    /// The client, as forwarded at login.
    pub client: ClientInfo,
    /// The authorization identity of the login (the user logged in as).
    pub user: String,
}
