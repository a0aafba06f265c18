//! Backend health per protocol port: active checks, the fall/rise state
//! machine, and the checker loops that feed the control plane.

pub mod check;
pub mod checker;
pub mod tracker;
