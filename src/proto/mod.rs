//! Wire protocols the director speaks, and the codecs the embedded
//! development backends share with it.
//!
//! - [`imap`]: the IMAP command reader (tags, atoms, quoted strings,
//!   literals, lists) and the writer for IMAP strings.
//! - [`sasl`]: SASL PLAIN and LOGIN decoding and PLAIN encoding, for
//!   AUTHENTICATE in every protocol that carries SASL.
//! - [`lines`]: bounded line reading from backends.
//! - [`proxy_v2`]: the PROXY v2 header sent to backends.

pub mod imap;
pub mod lines;
pub mod proxy_v2;
pub mod sasl;
