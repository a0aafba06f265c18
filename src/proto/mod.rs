//! Wire protocols the director speaks, and the codecs the embedded
//! development backends share with it.
//!
//! - [`imap`]: the IMAP command reader (tags, atoms, quoted strings,
//!   literals, lists) and the writer for IMAP strings.
//! - [`sasl`]: SASL PLAIN and LOGIN decoding and PLAIN encoding, for
//!   AUTHENTICATE in every protocol that carries SASL.
//! - [`sasl_passthrough`]: the mechanisms mailpin offers, and the user in
//!   the first message of the relayed ones (OAUTHBEARER, XOAUTH2, SCRAM).
//! - [`lines`]: bounded line reading from backends.
//! - [`client_input`]: bounded, deadline-bound reading of client commands
//!   before login (and of LMTP's whole dialogue).
//! - [`proxy_v2`]: the PROXY v2 header sent to backends.
//! - [`proxy_in`]: PROXY v1/v2 headers received from load balancers.
//! - [`pop3`]: POP3 command lines, reply statuses, XCLIENT.
//! - [`smtp`]: LMTP/SMTP command lines, paths, replies, the DATA end.
//! - [`sieve`]: ManageSieve command lines, strings and responses.

pub mod client_input;
pub mod imap;
pub mod lines;
pub mod pop3;
pub mod proxy_in;
pub mod proxy_v2;
pub mod sasl;
pub mod sasl_passthrough;
pub mod sieve;
pub mod smtp;
