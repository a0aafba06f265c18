//! mailpin: a high-availability mail director.
//!
//! A director sits in front of IMAP, POP3, LMTP and ManageSieve backends
//! that share one mail store, terminates TLS, learns the user at login and
//! sends every session of one user to one backend. See `DESIGN.md` in the
//! team's shared notes and the README for the whole picture.

pub mod admin;
pub mod alloc;
pub mod backend;
pub mod bufpool;
pub mod cluster;
pub mod cluster_link;
pub mod config;
pub mod control;
pub mod ctl;
pub mod dev;
pub mod devcluster;
pub mod devmode;
pub mod health;
pub mod io;
pub mod launch;
pub mod limits;
pub mod mailbox;
pub mod plane;
pub mod prepare;
pub mod proto;
pub mod relay;
pub mod route;
pub mod runtime;
pub mod sdnotify;
pub mod session;
pub mod signals;
pub mod sockopt;
pub mod startup;
pub mod supervise;
pub mod tls;
pub mod upgrade;
