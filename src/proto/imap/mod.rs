//! IMAP codec: reading client commands and writing IMAP strings.
//!
//! [`command`] turns the bytes a client sends into [`Command`]s (RFC 9051 /
//! RFC 3501 syntax with RFC 7888 LITERAL+ / LITERAL-), with hard limits on
//! line, literal and command sizes so hostile input costs little.
//! [`quote`] picks the right form (atom, quoted string or literal) for a
//! value written back on the wire. [`tracker`] follows a logged-in
//! session passively, for live moves between backends.

pub mod command;
pub mod quote;
pub mod tracker;

pub use command::{Arg, Command, CommandReader, Limits, ParseError, Step};
