//! The signals that steer the director.
//!
//! SIGINT, SIGTERM and SIGHUP are blocked in every thread (call [`block`]
//! before starting any) and the main thread waits for them with `sigwait`,
//! so no signal handler ever runs on a core in the middle of its work.
//! SIGHUP asks for a reload and never ends the process; SIGUSR2 asks for
//! a binary upgrade (`crate::upgrade`), and never ends the process by
//! itself either.

/// The signals waited for.
const HANDLED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR2];

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM: stop accepting, drain, exit.
    Stop(&'static str),
    /// SIGHUP: re-read the configuration.
    Reload,
    /// SIGUSR2: a binary upgrade.
    Upgrade,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks the handled signals in this thread and every thread it starts
/// later.
pub fn block() {
    let set = handled_set();
    // SAFETY: set is initialised; a null old-set pointer is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits until a handled signal arrives.
pub fn wait() -> Signal {
    let set = handled_set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is initialised and blocked; sig is a valid out pointer.
        let rc = unsafe { libc::sigwait(&set, &mut sig) };
        match (rc, sig) {
            (0, libc::SIGINT) => return Signal::Stop("SIGINT"),
            (0, libc::SIGTERM) => return Signal::Stop("SIGTERM"),
            (0, libc::SIGHUP) => return Signal::Reload,
            (0, libc::SIGUSR2) => return Signal::Upgrade,
            _ => continue,
        }
    }
}
