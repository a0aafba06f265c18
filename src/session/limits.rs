//! What one client may send before it logs in, and the account of it.
//!
//! [`PreloginLimits`] gathers the bounds of `server.max_line` and
//! `[limits]`: a command line, a literal, a SASL response, all bytes and
//! all commands before login. Each protocol's pre-login phase keeps one
//! [`Budget`] per connection: it checks the bytes received and the commands
//! read against those bounds, and when a client passes one, counts it in
//! `mailpin_prelogin_limit_total{protocol,limit}` and logs it once (never
//! the payload). The protocol then says its goodbye and closes.
//!
//! LMTP has no login: its budget covers the envelope between two
//! transactions that reached their recipients ([`Budget::restart`] after
//! each), and [`Budget::skip_to`] leaves out message data, which is
//! streamed and never held.

use monoio::time::Instant;
use tracing::warn;

use crate::config::{Config, Protocol};
use crate::io::ReadSide;
use crate::plane::stats::{Counters, PreloginLimit};
use crate::proto::client_input::{ClientInput, InputError};

/// Why a bounded read gave no line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The client passed a pre-login bound.
    Limit(PreloginLimit),
    /// The client left or timed out.
    Input(InputError),
}

/// The pre-login bounds, from `server.max_line` and `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreloginLimits {
    /// Longest command line, bytes (`server.max_line`).
    pub line: usize,
    /// Largest literal, bytes (`limits.literal_max`).
    pub literal: usize,
    /// Largest SASL response, bytes (`limits.sasl_max`).
    pub sasl: usize,
    /// All bytes before login (`limits.prelogin_bytes`).
    pub bytes: usize,
    /// All commands before login (`limits.prelogin_commands`).
    pub commands: u32,
}

impl PreloginLimits {
    /// The bounds `config` sets.
    pub fn of(config: &Config) -> PreloginLimits {
        PreloginLimits {
            line: config.server.max_line,
            literal: config.limits.literal_max,
            sasl: config.limits.sasl_max,
            bytes: config.limits.prelogin_bytes,
            commands: config.limits.prelogin_commands,
        }
    }
}

/// One connection's account against its [`PreloginLimits`].
#[derive(Debug)]
pub struct Budget {
    limits: PreloginLimits,
    protocol: Protocol,
    /// Bytes received from the client when the account was last opened or
    /// moved past message data.
    base: u64,
    /// Commands counted since the account was opened.
    commands: u32,
    /// Whether a limit hit has been logged on this connection.
    logged: bool,
}

impl Budget {
    /// A fresh account for a `protocol` client.
    pub fn new(limits: PreloginLimits, protocol: Protocol) -> Budget {
        Budget {
            limits,
            protocol,
            base: 0,
            commands: 0,
            logged: false,
        }
    }

    /// The bounds this account enforces.
    pub fn limits(&self) -> &PreloginLimits {
        &self.limits
    }

    /// Checks the client's running byte count, `received` (every byte read
    /// from it so far): more than `limits.prelogin_bytes` since the account
    /// was opened is [`PreloginLimit::Bytes`].
    pub fn bytes(&self, received: u64) -> Result<(), PreloginLimit> {
        if received.saturating_sub(self.base) > self.limits.bytes as u64 {
            return Err(PreloginLimit::Bytes);
        }
        Ok(())
    }

    /// Counts one command: more than `limits.prelogin_commands` is
    /// [`PreloginLimit::Commands`].
    pub fn command(&mut self) -> Result<(), PreloginLimit> {
        self.commands = self.commands.saturating_add(1);
        if self.commands > self.limits.commands {
            return Err(PreloginLimit::Commands);
        }
        Ok(())
    }

    /// Checks a SASL response's size against `limits.sasl_max`.
    pub fn sasl(&self, len: usize) -> Result<(), PreloginLimit> {
        if len > self.limits.sasl {
            return Err(PreloginLimit::Sasl);
        }
        Ok(())
    }

    /// Reads one line from `input` within its bound — a command line
    /// (`limit` [`PreloginLimit::Line`]) or a SASL answer
    /// ([`PreloginLimit::Sasl`]) — and within the byte budget.
    pub async fn line<R: ReadSide>(
        &self,
        input: &mut ClientInput,
        r: &mut R,
        limit: PreloginLimit,
        deadline: Instant,
    ) -> Result<Vec<u8>, Stopped> {
        let max = match limit {
            PreloginLimit::Sasl => self.limits.sasl,
            _ => self.limits.line,
        };
        match input.line(r, max, deadline).await {
            Ok(line) => {
                self.bytes(input.received()).map_err(Stopped::Limit)?;
                Ok(line)
            }
            Err(InputError::TooLong) => Err(Stopped::Limit(limit)),
            Err(e) => Err(Stopped::Input(e)),
        }
    }

    /// Leaves every byte received so far out of the account (LMTP, after
    /// message data); commands stay counted.
    pub fn skip_to(&mut self, received: u64) {
        self.base = received;
    }

    /// Opens the account afresh at `received` bytes (LMTP, after a
    /// transaction that reached its recipients).
    pub fn restart(&mut self, received: u64) {
        self.base = received;
        self.commands = 0;
    }

    /// The client ran into `limit`: counts it, and logs it the first time
    /// on this connection.
    pub fn reached(&mut self, counters: &Counters, limit: PreloginLimit) {
        counters.prelogin_limit(self.protocol, limit);
        if !self.logged {
            self.logged = true;
            warn!(limit = limit.as_str(), "client ran into a pre-login limit");
        }
    }
}

/// What the client is told when it runs into `limit`, without the
/// protocol's framing or final full stop (each protocol says goodbye in
/// its own form: IMAP `* BYE`, POP3 `-ERR`, ManageSieve `BYE`, LMTP 421).
pub fn limit_text(limit: PreloginLimit, protocol: Protocol) -> &'static str {
    match (limit, protocol) {
        (PreloginLimit::Line, _) => "Line too long",
        (PreloginLimit::Literal, _) => "Literal too large",
        (PreloginLimit::Sasl, _) => "SASL response too long",
        (PreloginLimit::Bytes, Protocol::Lmtp) => "Too much data between messages",
        (PreloginLimit::Bytes, _) => "Too much data before login",
        (PreloginLimit::Commands, Protocol::Lmtp) => "Too many commands between messages",
        (PreloginLimit::Commands, _) => "Too many commands before login",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PreloginLimits {
        PreloginLimits {
            line: 100,
            literal: 200,
            sasl: 300,
            bytes: 1000,
            commands: 3,
        }
    }

    #[test]
    fn defaults_come_from_the_config() {
        let l = PreloginLimits::of(&Config::default());
        assert_eq!((l.line, l.literal, l.sasl), (8192, 16384, 32768));
        assert_eq!((l.bytes, l.commands), (262144, 50));
    }

    #[test]
    fn bytes_past_the_budget_are_refused() {
        let b = Budget::new(limits(), Protocol::Imap);
        assert_eq!(b.bytes(1000), Ok(()));
        assert_eq!(b.bytes(1001), Err(PreloginLimit::Bytes));
    }

    #[test]
    fn commands_past_the_budget_are_refused() {
        let mut b = Budget::new(limits(), Protocol::Pop3);
        for _ in 0..3 {
            assert_eq!(b.command(), Ok(()));
        }
        assert_eq!(b.command(), Err(PreloginLimit::Commands));
    }

    #[test]
    fn sasl_responses_past_the_limit_are_refused() {
        let b = Budget::new(limits(), Protocol::Sieve);
        assert_eq!(b.sasl(300), Ok(()));
        assert_eq!(b.sasl(301), Err(PreloginLimit::Sasl));
    }

    #[test]
    fn message_data_is_left_out_and_a_message_reopens_the_account() {
        let mut b = Budget::new(limits(), Protocol::Lmtp);
        b.command().unwrap();
        b.command().unwrap();
        b.skip_to(50_000);
        assert_eq!(b.bytes(51_000), Ok(()), "data before 50000 is not counted");
        assert_eq!(b.bytes(51_001), Err(PreloginLimit::Bytes));
        b.command().unwrap();
        assert_eq!(
            b.command(),
            Err(PreloginLimit::Commands),
            "skip keeps commands"
        );
        b.restart(60_000);
        assert_eq!(b.command(), Ok(()));
        assert_eq!(b.bytes(61_000), Ok(()));
    }

    #[test]
    fn lines_are_read_within_their_bound_and_the_budget() {
        use crate::io::testing::{block_on, Script};
        let later = || Instant::now() + std::time::Duration::from_secs(5);
        block_on(async {
            let b = Budget::new(limits(), Protocol::Pop3);
            let mut input = ClientInput::new();
            const LONG: &[u8] = &[b'a'; 150];
            let mut s = Script(vec![b"CAPA\r\n", LONG, b"\r\n"]);
            let line = b
                .line(&mut input, &mut s, PreloginLimit::Line, later())
                .await;
            assert_eq!(line, Ok(b"CAPA".to_vec()));
            // 150 bytes: too long for a command line, fine for SASL.
            let line = b
                .line(&mut input, &mut s, PreloginLimit::Sasl, later())
                .await;
            assert_eq!(line, Ok(LONG.to_vec()));
            let mut input = ClientInput::new();
            let mut s = Script(vec![LONG, b"\r\n"]);
            let line = b
                .line(&mut input, &mut s, PreloginLimit::Line, later())
                .await;
            assert_eq!(line, Err(Stopped::Limit(PreloginLimit::Line)));
            // Ten lines of 99 bytes fit the 1000-byte budget, the 11th not.
            const LINE: &[u8] = b"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\r\n";
            assert_eq!(LINE.len(), 99);
            let mut input = ClientInput::new();
            let mut s = Script(vec![LINE; 11]);
            for _ in 0..10 {
                let line = b
                    .line(&mut input, &mut s, PreloginLimit::Line, later())
                    .await;
                assert!(line.is_ok(), "{line:?}");
            }
            let line = b
                .line(&mut input, &mut s, PreloginLimit::Line, later())
                .await;
            assert_eq!(line, Err(Stopped::Limit(PreloginLimit::Bytes)));
            let mut s = Script(vec![]);
            let line = b
                .line(
                    &mut ClientInput::new(),
                    &mut s,
                    PreloginLimit::Line,
                    later(),
                )
                .await;
            assert_eq!(line, Err(Stopped::Input(InputError::Closed)));
        });
    }

    #[test]
    fn each_hit_is_counted() {
        let counters = Counters::default();
        let mut b = Budget::new(limits(), Protocol::Sieve);
        b.reached(&counters, PreloginLimit::Bytes);
        b.reached(&counters, PreloginLimit::Literal);
        let s = counters.snapshot();
        assert_eq!(
            s.prelogin_limits[Protocol::Sieve.index()][PreloginLimit::Bytes.index()],
            1
        );
        assert_eq!(
            s.prelogin_limits[Protocol::Sieve.index()][PreloginLimit::Literal.index()],
            1
        );
    }
}
