//! The embedded development IMAP backends.
//!
//! `mailpin run --dev` starts the director with three of these on loopback,
//! all over one shared in-memory [`Store`], so a mail client can be pointed
//! at the director with no other setup: any user name, password `"dev"`.
//! The load test reuses the same implementation as cheap simulated
//! backends (one monoio task per session, no timers), and reads the
//! [`Registry`] to count breaches of the director's invariant: one user
//! live on two backends at once.
//!
//! * [`store`]: the shared mail store (users, mailboxes, messages).
//! * [`registry`]: which backend holds each user's live sessions.
//! * [`sessions`]: per-connection facts (peer, user, ID fields).
//! * [`server`]: the runtime thread, listeners, kill and restart.
//! * `imap`: the IMAP4rev1 session itself.
//! * [`format`]: IMAP response syntax (strings, dates, envelopes).
//! * [`fetch`] and [`search`]: the data items of FETCH and the keys of
//!   SEARCH.
//! * [`protocols`]: POP3, LMTP and ManageSieve dev servers over the same
//!   store (`pop3`, `lmtp`, `sieve`).
//! * `auth` and [`scram`]: the SASL mechanisms they accept (PLAIN,
//!   OAUTHBEARER/XOAUTH2 with any token, SCRAM with the dev password).

mod auth;
pub mod fetch;
pub mod format;
mod imap;
mod lmtp;
mod pop3;
pub mod protocols;
pub mod registry;
pub mod scram;
pub mod search;
pub mod server;
pub mod sessions;
mod sieve;
pub mod store;

pub use protocols::{
    spawn_protocol_servers, spawn_protocol_servers_at, DevProtocolServers, ProtocolAddrs,
};
pub use registry::{LiveSession, Registry, Violation};
pub use server::{spawn_backends, DevBackendConfig, DevBackends, DEV_PASSWORD};
pub use sessions::SessionInfo;
pub use store::{Store, StoreError};
