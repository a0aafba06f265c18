//! mailpin: a high-availability mail director.
//!
//! A director sits in front of IMAP, POP3, LMTP and ManageSieve backends
//! that share one mail store, terminates TLS, learns the user at login and
//! sends every session of one user to one backend. See `DESIGN.md` in the
//! team's shared notes and the README for the whole picture.

pub mod bufpool;
pub mod dev;
pub mod io;
pub mod proto;
