//! The memory allocator the binaries install (`#[global_allocator]` in
//! `main.rs` and in the load test's director).
//!
//! mimalloc, not glibc malloc: a director holds thousands of small,
//! long-lived allocations per core (session tasks, registrations) among
//! short-lived login buffers, and glibc's heap keeps more of the holes the
//! short-lived ones leave. Measured with `mailpin-loadtest idle --sessions
//! 5000`: 2.6 KiB per idle plain session with glibc, 2.0 with mimalloc (see
//! PERF.md).

/// The allocator type to install as `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;
