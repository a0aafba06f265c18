//! The simulated mail clients: a connection (plain, STARTTLS or TLS), the
//! buffered byte stream over it, and the protocol dialogues spoken over
//! that — one module per protocol.

pub mod admin;
pub mod conn;
pub mod held;
pub mod imap;
pub mod lmtp;
pub mod pop3;
pub mod sasl;
pub mod tls;
pub mod wire;
