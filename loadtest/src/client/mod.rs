//! The simulated mail clients: a connection (plain or TLS) and the
//! protocol dialogues spoken over it. One module per protocol, so POP3,
//! LMTP and ManageSieve clients sit beside [`imap`] when the director
//! speaks them.

pub mod conn;
pub mod imap;
pub mod tls;
