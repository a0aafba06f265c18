//! Wire protocols the director speaks before login, and the codecs the
//! embedded development backends share with it.
//!
//! - [`imap`]: the IMAP command reader (tags, atoms, quoted strings,
//!   literals, lists) and the writer for IMAP strings.
//! - [`sasl`]: SASL PLAIN and LOGIN decoding and PLAIN encoding, for
//!   AUTHENTICATE in every protocol that carries SASL.

pub mod imap;
pub mod sasl;
