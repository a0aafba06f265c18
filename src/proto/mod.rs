//! Mail protocols as the director speaks them.

pub mod lines;
pub mod proxy_v2;
