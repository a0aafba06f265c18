//! Backend health: active checks, the fall/rise state machine, and the
//! checker loop that feeds the control plane.

pub mod check;
pub mod checker;
pub mod tracker;
