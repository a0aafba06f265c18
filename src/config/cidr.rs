//! IP networks in CIDR notation (`"10.0.0.0/8"`, `"fd00::/8"`), used by
//! `listen.proxy_trusted` to say who may send a PROXY protocol header.
//!
//! A bare address (`"192.0.2.7"`, `"::1"`) means that one host. Host bits
//! below the prefix must be zero (`"10.0.0.1/8"` is refused with a hint),
//! because such a value is nearly always a typo for something else.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

/// Why a CIDR string was rejected; its `Display` carries a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    BadAddress(String),
    /// The prefix length is not a number, or too long for the family.
    BadPrefix(String),
    /// Bits below the prefix are set; carries the network that was probably meant.
    HostBitsSet(String, Cidr),
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadAddress(s) => write!(
                f,
                "{s:?} is not a network (expected ADDRESS/PREFIX, e.g. \"10.0.0.0/8\" or \"fd00::/8\")"
            ),
            Self::BadPrefix(s) => write!(
                f,
                "{s:?} has a bad prefix length (0-32 for IPv4, 0-128 for IPv6)"
            ),
            Self::HostBitsSet(s, meant) => write!(
                f,
                "{s:?} has bits set below its prefix (did you mean \"{meant}\"?)"
            ),
        }
    }
}

impl std::error::Error for CidrError {}

impl Cidr {
    /// Builds a network from an address and prefix length, zeroing any host
    /// bits. Returns `None` if the prefix is too long for the address family.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let max = max_prefix(addr);
        if prefix_len > max {
            return None;
        }
        Some(Self {
            network: mask(addr, prefix_len),
            prefix_len,
        })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` lies in this network. An IPv4-mapped IPv6 address
    /// (`::ffff:10.1.2.3`, what a dual-stack socket reports for an IPv4 peer)
    /// is treated as the IPv4 address it carries.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        match (self.network, addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(addr, self.prefix_len) == self.network
            }
            _ => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with every bit below `prefix_len` cleared; `prefix_len` must be
/// valid for the family.
fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = bits.checked_shr(32 - u32::from(prefix_len)).unwrap_or(0);
            let masked = kept.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(masked))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = bits.checked_shr(128 - u32::from(prefix_len)).unwrap_or(0);
            let masked = kept.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(masked))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, CidrError> {
        let text = text.trim();
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| CidrError::BadAddress(text.to_owned()))?;
        let max = max_prefix(addr);
        let prefix_len = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(len) if len <= max && !p.starts_with('+') => len,
                _ => return Err(CidrError::BadPrefix(text.to_owned())),
            },
        };
        let cidr = Self {
            network: mask(addr, prefix_len),
            prefix_len,
        };
        if cidr.network != addr {
            return Err(CidrError::HostBitsSet(text.to_owned(), cidr));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Parses inside the deserializer, so that an error keeps the value's span.
struct CidrVisitor;

impl Visitor<'_> for CidrVisitor {
    type Value = Cidr;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a network such as \"10.0.0.0/8\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Cidr, E> {
        text.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(CidrVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn parses_v4_and_v6_networks() {
        let v4: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!(v4.network(), ip("10.0.0.0"));
        assert_eq!(v4.prefix_len(), 8);
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert_eq!(v6.network(), ip("fd00::"));
        assert_eq!(v6.prefix_len(), 8);
        assert_eq!(v6.to_string(), "fd00::/8");
    }

    #[test]
    fn a_bare_address_is_one_host() {
        let host: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains(ip("192.0.2.7")));
        assert!(!host.contains(ip("192.0.2.8")));
        let host6: Cidr = "::1".parse().unwrap();
        assert_eq!(host6.prefix_len(), 128);
        assert!(host6.contains(ip("::1")));
    }

    #[test]
    fn contains_v4() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.0.0")));
        assert!(net.contains(ip("10.1.255.255")));
        assert!(!net.contains(ip("10.2.0.0")));
        assert!(!net.contains(ip("fd00::1")));
    }

    #[test]
    fn contains_v6() {
        let net: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(net.contains(ip("2001:db8::1")));
        assert!(net.contains(ip("2001:db8:ffff::1")));
        assert!(!net.contains(ip("2001:db9::1")));
        assert!(!net.contains(ip("10.0.0.1")));
    }

    #[test]
    fn zero_prefix_matches_its_whole_family() {
        let all4: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all4.contains(ip("203.0.113.9")));
        assert!(!all4.contains(ip("::1")));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains(ip("2001:db8::1")));
    }

    #[test]
    fn ipv4_mapped_addresses_match_v4_networks() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("::ffff:10.9.8.7")));
        assert!(!net.contains(ip("::ffff:11.0.0.1")));
    }

    #[test]
    fn rejects_bad_input_with_hints() {
        assert_eq!(
            "nonsense/8".parse::<Cidr>(),
            Err(CidrError::BadAddress("nonsense/8".into()))
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::BadPrefix("10.0.0.0/33".into()))
        );
        assert_eq!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::BadPrefix("::/129".into()))
        );
        assert_eq!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::BadPrefix("10.0.0.0/x".into()))
        );
        assert_eq!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::BadPrefix("10.0.0.0/".into()))
        );
        let err = "10.0.0.1/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"10.0.0.1/8\" has bits set below its prefix (did you mean \"10.0.0.0/8\"?)"
        );
    }

    #[test]
    fn new_masks_host_bits_and_checks_the_prefix() {
        let net = Cidr::new(ip("10.1.2.3"), 8).unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert_eq!(Cidr::new(ip("10.1.2.3"), 33), None);
        assert_eq!(Cidr::new(ip("::1"), 128).unwrap().to_string(), "::1/128");
    }
}
