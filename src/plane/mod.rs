//! The one module the control wing and the data path both depend on.
//!
//! `control/`, `health/`, `admin/` and the cluster client on one side,
//! `runtime/` and `session/` on the other, never import each other: they
//! exchange the [`messages`] defined here through mailboxes
//! ([`crate::mailbox`]), and the cores report their counters as
//! [`stats::CoreStats`]. [`handover`] holds what a binary upgrade's
//! machinery and the control plane share.

pub mod handover;
pub mod messages;
pub mod stats;

pub use messages::{ControlMsg, CoreMsg, KickReason, Shared, UpgradeMsg, CLOSE_LIMIT};
