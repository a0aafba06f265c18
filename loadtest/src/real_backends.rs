//! Real Dovecot 2.3 backends for the scenarios that need them
//! (`live-move`): the integration tests' harness in `tests/support/`,
//! compiled in from there, so a load run starts, restarts and asks
//! `doveadm who` of its backends exactly as the tests do (own loopback
//! address each, one shared maildir, a master passdb, PIDs tracked and
//! killed on drop).
//!
//! Only the Dovecot part of the harness is taken; its helpers a load run
//! does not call are allowed to stay unused here.

#[allow(dead_code)]
#[path = "../../tests/support/dovecot.rs"]
pub mod dovecot;
#[allow(dead_code)]
#[path = "../../tests/support/dovecot_conf.rs"]
pub mod dovecot_conf;
#[allow(dead_code)]
#[path = "../../tests/support/loopback.rs"]
pub mod loopback;
#[allow(dead_code)]
#[path = "../../tests/support/procs.rs"]
pub mod procs;
#[allow(dead_code)]
#[path = "../../tests/support/tempdir.rs"]
pub mod tempdir;
#[allow(dead_code)]
#[path = "../../tests/support/tools.rs"]
pub mod tools;
