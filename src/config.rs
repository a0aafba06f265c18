//! TEMPORARY until the config module lands.
use serde::Deserialize;
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Protocol { Imap, Pop3, Lmtp, Sieve }
impl Protocol { pub const COUNT: usize = 4; pub fn index(self) -> usize { self as usize } }
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Forward { None, Id, Proxy }
