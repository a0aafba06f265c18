//! A line-aware TCP forwarder in front of a backend, for live-move tests
//! (issue 12): armed with a [`Hold`], it freezes every connection through
//! it — nothing passes either way — at the first point of the dialogue
//! the hold names (before or after a line the director or the backend
//! sends), until the test releases it. A test can so act (change the
//! mailbox, have the client send `DONE`) between any two steps of a move.
//!
//! Lines are forwarded byte for byte (up to and including their LF); the
//! hold is one-shot: it fires once, then the gate forwards freely again
//! after the release. Every wait is bounded ([`HOLD_LIMIT`]).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a frozen gate waits for its release before it forwards
/// anyway (the test has failed by then).
pub const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// Who sent a line through the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The backend (lines going to the director).
    Backend,
    /// The director (lines going to the backend).
    Director,
}

/// Where the gate freezes: at the first line from `from` starting with
/// `prefix`, before passing it on or just after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Whose line.
    pub from: Side,
    /// How the line starts.
    pub prefix: &'static str,
    /// Freeze after passing the line on (else before).
    pub after: bool,
}

impl Hold {
    /// Freezes before passing on the first line of `from` starting with
    /// `prefix`.
    pub const fn before(from: Side, prefix: &'static str) -> Hold {
        Hold {
            from,
            prefix,
            after: false,
        }
    }

    /// Freezes just after passing on the first line of `from` starting
    /// with `prefix`.
    pub const fn after(from: Side, prefix: &'static str) -> Hold {
        Hold {
            from,
            prefix,
            after: true,
        }
    }

    fn matches(&self, from: Side, line: &[u8]) -> bool {
        self.from == from && line.starts_with(self.prefix.as_bytes())
    }
}

#[derive(Default)]
struct State {
    /// The hold waiting to fire.
    armed: Option<Hold>,
    /// Nothing passes while set.
    frozen: bool,
    /// Holds fired so far.
    fired: usize,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits (bounded) until the gate is not frozen.
    fn wait_thawed<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let until = Instant::now() + HOLD_LIMIT;
        while state.frozen {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state
    }

    /// Passes `line` from `from` on to `out`, freezing where the armed
    /// hold says.
    fn forward(&self, from: Side, line: &[u8], out: &mut TcpStream) -> io::Result<()> {
        let mut state = self.wait_thawed(self.lock());
        let hit = state.armed.filter(|h| h.matches(from, line));
        if let Some(hold) = hit {
            state.armed = None;
            state.frozen = true;
            state.fired += 1;
            self.changed.notify_all();
            if !hold.after {
                state = self.wait_thawed(state);
            }
        }
        drop(state);
        out.write_all(line)
    }
}

/// A forwarder in front of one backend (see the module documentation).
pub struct Gate {
    /// Where the director connects instead of the backend.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Gate {
    /// Listens on a fresh loopback port and forwards to `target`.
    pub fn new(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a gate");
        let shared = Arc::new(Shared::default());
        let gate = Gate {
            addr: listener.local_addr().expect("the gate's address"),
            shared: shared.clone(),
        };
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(director) = conn else { return };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let Ok(backend) = TcpStream::connect(target) else {
                        return;
                    };
                    let up = {
                        let (Ok(from), Ok(to)) = (director.try_clone(), backend.try_clone()) else {
                            return;
                        };
                        let shared = shared.clone();
                        std::thread::spawn(move || pump(&shared, Side::Director, from, to))
                    };
                    pump(&shared, Side::Backend, backend, director);
                    let _ = up.join();
                });
            }
        });
        gate
    }

    /// Arms `hold`: the next matching line, on any connection, freezes the
    /// gate.
    pub fn arm(&self, hold: Hold) {
        let mut state = self.shared.lock();
        state.armed = Some(hold);
    }

    /// Waits until the armed hold has fired and the gate is frozen; panics
    /// after `limit`.
    pub fn wait_held(&self, limit: Duration) {
        let until = Instant::now() + limit;
        let mut state = self.shared.lock();
        while state.armed.is_some() || !state.frozen {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the gate's hold did not fire");
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Disarms and lets everything pass again.
    pub fn release(&self) {
        let mut state = self.shared.lock();
        state.armed = None;
        state.frozen = false;
        self.shared.changed.notify_all();
    }

    /// Holds fired since the gate started.
    pub fn fired(&self) -> usize {
        self.shared.lock().fired
    }
}

/// Forwards lines from `from` to `to` until either side ends, then passes
/// the end on.
fn pump(shared: &Shared, who: Side, from: TcpStream, mut to: TcpStream) {
    let mut r = BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if shared.forward(who, &line, &mut to).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
