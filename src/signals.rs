//! Waiting for the signals that stop the director.
//!
//! SIGINT and SIGTERM are blocked in every thread (call [`block`] before
//! starting any) and the main thread waits for them with `sigwait`, so no
//! signal handler ever runs on a core in the middle of its work.

/// The signals that stop the director.
const STOP: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the stop signals in this thread and every thread it starts later.
pub fn block() {
    let set = stop_set();
    // SAFETY: set is initialised; a null old-set pointer is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits until a stop signal arrives; returns its name.
pub fn wait() -> &'static str {
    let set = stop_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: set is initialised and blocked; sig is a valid out pointer.
    let rc = unsafe { libc::sigwait(&set, &mut sig) };
    match (rc, sig) {
        (0, libc::SIGINT) => "SIGINT",
        (0, libc::SIGTERM) => "SIGTERM",
        _ => "signal",
    }
}
