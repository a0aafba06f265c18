//! mailpin-loadtest.
fn main() {}
