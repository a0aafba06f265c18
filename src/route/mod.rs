//! Routing: which backend a user's sessions go to.
//!
//! [`user_key`] turns a login name into the key routing works on, [`hrw`]
//! ranks backends for a key, [`backends`] is the versioned backend state the
//! cores share, and [`shard`] is one core's part of the user table.

pub mod backends;
pub mod hrw;
pub mod router;
pub mod shard;
pub mod user_key;
