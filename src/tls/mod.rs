//! TLS termination: server configuration, the handshake, and a TLS session
//! that implements [`crate::io::Connection`] with no buffers of its own
//! while idle.
//!
//! * [`config`] builds the one `Arc<rustls::ServerConfig>` all cores share
//!   (stateless tickets, so resumption works on any core).
//! * [`accept`] runs the handshake under a timeout, for implicit TLS and
//!   STARTTLS alike.
//! * [`stream`] is the session: [`TlsStream`] and its split halves.
//! * [`records`] is the session's synchronous half: rustls' unbuffered
//!   connection and the buffers mailpin owns for it.
//! * [`devcert`] makes the self-signed certificate of `run --dev`.
//! * `driver` (tests and the `fuzzing` feature only) runs [`records`]
//!   over in-memory bytes, for the record-split property test and the
//!   `tls_records` fuzz target.

pub mod accept;
pub mod config;
pub mod devcert;
#[cfg(any(test, feature = "fuzzing"))]
pub mod driver;
pub mod records;
pub mod stream;

#[cfg(test)]
mod records_split;

pub use accept::{accept, HandshakeError};
pub use config::{
    server_config, server_config_from_pem, server_config_from_pem_files, MinVersion, Provider,
    TlsConfigError, TlsSettings,
};
pub use devcert::DevCert;
pub use stream::{TlsReadHalf, TlsStream, TlsWriteHalf};
