//! Per-core pool of relay buffers.
//!
//! A session borrows a buffer only while bytes are moving and gives it back
//! right after, so idle sessions hold none and a core needs about as many
//! buffers as it has sessions *active at the same instant*. The pool lives in
//! a thread-local: each core has its own and no lock is ever taken.

use std::cell::RefCell;

/// Size of one relay buffer: 64 KiB, large enough to reach loopback line
/// rate (4 KiB chunks reached a seventh of it, see the stack notes).
pub const CHUNK: usize = 64 * 1024;

/// How many free buffers a core keeps (1 MiB); more are freed on return.
/// A buffer is out only while its bytes move, a few microseconds on
/// loopback, so a busy core rarely has more out at once; a burst beyond
/// this costs a malloc per buffer, not a resident pool that idle sessions
/// would pay for.
const KEEP: usize = 16;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Takes an empty buffer with [`CHUNK`] bytes of capacity.
pub fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(CHUNK))
}

/// Returns a buffer to this core's pool (or frees it when the pool is full
/// or the buffer is not a pool buffer).
pub fn give(mut buf: Vec<u8>) {
    if buf.capacity() != CHUNK {
        return;
    }
    buf.clear();
    FREE.with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_returned_buffers() {
        let mut a = take();
        a.extend_from_slice(b"hello");
        let ptr = a.as_ptr();
        give(a);
        let b = take();
        assert_eq!(b.as_ptr(), ptr);
        assert!(b.is_empty());
        assert_eq!(b.capacity(), CHUNK);
    }

    #[test]
    fn refuses_foreign_buffers() {
        give(Vec::with_capacity(10));
        assert_eq!(take().capacity(), CHUNK);
    }
}
