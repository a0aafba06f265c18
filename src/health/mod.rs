//! Backend health: the state machine (checks arrive with their own issue).

pub mod tracker;
