//! Shared support for mailpin's integration tests: finding external tools,
//! running several real Dovecot backends on loopback, and driving the
//! Python mail clients in `tests/clients/`.
//!
//! - [`tools`]: is a program installed; skip locally, fail on CI (`CI=true`).
//! - [`dovecot`] (+ [`dovecot_conf`], [`loopback`], [`procs`], [`tempdir`]):
//!   `DovecotCluster`, N real Dovecot 2.3 backends on their own 127.a.b.c.
//! - [`etcd`]: a real N-member etcd cluster on loopback (cluster mode);
//!   [`cluster`]: cluster-mode director configs and admin API calls.
//! - [`netns`]: etcd in a network namespace behind a veth link to cut.
//! - [`dev_director`]: a director in front of the embedded dev backends.
//! - [`python`]: run `tests/clients/*.py`, once or interactively.
//! - [`oauth2_server`]: a token introspection endpoint for Dovecot's oauth2 passdb.
//! - [`wire`]: a tiny line client for raw IMAP/POP3/LMTP/ManageSieve talk.
//!
//! Every integration test file that needs it says `mod support;`. Not every
//! file uses every helper, hence the `dead_code` and `unused_imports`
//! allowances below.

#![allow(dead_code, unused_imports)]

pub mod cluster;
pub mod dev_director;
pub mod director;
pub mod dovecot;
pub mod dovecot_conf;
pub mod etcd;
pub mod gate;
pub mod loopback;
pub mod mailpin;
pub mod netns;
pub mod oauth2_server;
pub mod procs;
pub mod python;
pub mod tempdir;
pub mod tools;
pub mod wire;

pub use dovecot::{DovecotCluster, DovecotInstance, DovecotOptions, WhoEntry};
pub use dovecot_conf::TlsFiles;
pub use python::{run_client, ClientOutput, InteractiveClient};
pub use tools::{require_dovecot, require_tool};
pub use wire::{ImapReply, LineClient};
