//! Helpers the fuzz targets share: turning the first bytes of a fuzz
//! input into the cut points of a byte stream, the way a socket delivers
//! it in arbitrary reads.

/// The longest pre-login command line a client can get to a parser: the
/// default of `server.max_line`, which bounds IMAP, POP3, ManageSieve and
/// LMTP lines alike.
pub const MAX_COMMAND_LINE: usize = 8192;

/// Cut sizes for feeding a stream in pieces, drawn from a seed so that
/// the fuzzer controls them (SplitMix64 over the seed).
pub struct Cuts {
    state: u64,
}

impl Cuts {
    /// Cuts drawn from `seed`.
    pub fn new(seed: u8) -> Cuts {
        Cuts {
            state: u64::from(seed),
        }
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next piece size: one to five bytes (inside a header or a line
    /// end), up to 64, or up to 4096, equally often.
    pub fn next_len(&mut self) -> usize {
        let max = [5u64, 64, 4096][(self.next_u64() % 3) as usize];
        (self.next_u64() % max) as usize + 1
    }

    /// `data` cut into pieces of [`Cuts::next_len`] bytes.
    pub fn split<'a>(&mut self, mut data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        while !data.is_empty() {
            let n = self.next_len().min(data.len());
            pieces.push(&data[..n]);
            data = &data[n..];
        }
        pieces
    }
}
