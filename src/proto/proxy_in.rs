//! Reading a PROXY protocol header (v1 text or v2 binary) from a load
//! balancer, per the HAProxy PROXY protocol specification.
//!
//! The parser is pure: [`parse`] looks at the bytes received so far and says
//! whether they hold a whole header (and how long it is), need more bytes,
//! or cannot be a valid header. It never asks for more than a bounded
//! number of bytes: a v1 header is at most [`V1_MAX`] bytes including CRLF,
//! a v2 header at most 16 + [`V2_MAX_PAYLOAD`]. "Incomplete" always means
//! every byte seen so far belongs to the header, which lets the caller
//! consume them without reading past the header's end.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest v1 header, `PROXY` to CRLF inclusive (specification §2.1).
pub const V1_MAX: usize = 107;

/// Largest v2 payload (addresses plus TLVs) accepted. The specification
/// allows 65535; real load balancers send a few hundred bytes at most.
pub const V2_MAX_PAYLOAD: usize = 1024;

/// The 12-byte v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const V1_PREFIX: &[u8] = b"PROXY ";

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client address; `None` for v1 `UNKNOWN`, v2 `LOCAL`
    /// (a health check from the balancer itself) and v2 families without
    /// IP addresses (UNIX sockets), where the connection's own peer counts.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when given.
    pub destination: Option<SocketAddr>,
    /// Which version of the protocol carried it.
    pub version: u8,
}

/// The state of a header being received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A whole header of `len` bytes; what follows belongs to the client.
    Complete {
        /// The header's contents.
        header: ProxyHeader,
        /// Its length in bytes.
        len: usize,
    },
    /// Every byte so far is header, but it is not finished.
    Incomplete,
}

/// Why bytes are not an acceptable PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The bytes start like neither a v1 nor a v2 header.
    NotProxy,
    /// A v1 header longer than [`V1_MAX`] or a v2 payload longer than
    /// [`V2_MAX_PAYLOAD`].
    TooLong,
    /// The header is broken; the text says where.
    Malformed(&'static str),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::NotProxy => f.write_str("no PROXY header"),
            ProxyError::TooLong => f.write_str("PROXY header too long"),
            ProxyError::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Parses the start of a connection's bytes as a PROXY header.
pub fn parse(buf: &[u8]) -> Result<Status, ProxyError> {
    if buf.is_empty() {
        return Ok(Status::Incomplete);
    }
    let v1 = is_prefix_of(buf, V1_PREFIX);
    let v2 = is_prefix_of(buf, &V2_SIGNATURE);
    if v1 {
        parse_v1(buf)
    } else if v2 {
        parse_v2(buf)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// True when `buf` and `pattern` agree on their common length.
fn is_prefix_of(buf: &[u8], pattern: &[u8]) -> bool {
    let n = buf.len().min(pattern.len());
    buf[..n] == pattern[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Status, ProxyError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::TooLong);
        }
        return Ok(Status::Incomplete);
    };
    let len = lf + 1;
    if len > V1_MAX {
        return Err(ProxyError::TooLong);
    }
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ProxyError::Malformed("v1 line must end with CRLF"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..lf - 1])
        .map_err(|_| ProxyError::Malformed("v1 header is not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = match fields.as_slice() {
        ["UNKNOWN", ..] => ProxyHeader {
            source: None,
            destination: None,
            version: 1,
        },
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let v6 = *family == "TCP6";
            let src = v1_addr(src, v6)?;
            let dst = v1_addr(dst, v6)?;
            ProxyHeader {
                source: Some(SocketAddr::new(src, v1_port(sport)?)),
                destination: Some(SocketAddr::new(dst, v1_port(dport)?)),
                version: 1,
            }
        }
        ["TCP4" | "TCP6", ..] => return Err(ProxyError::Malformed("v1 needs four fields")),
        _ => {
            return Err(ProxyError::Malformed(
                "v1 protocol must be TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(Status::Complete { header, len })
}

fn v1_addr(text: &str, v6: bool) -> Result<IpAddr, ProxyError> {
    if v6 {
        text.parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::Malformed("v1 bad IPv6 address"))
    } else {
        text.parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::Malformed("v1 bad IPv4 address"))
    }
}

/// A v1 port: 1 to 5 decimal digits, no sign, no leading zero, ≤ 65535.
fn v1_port(text: &str) -> Result<u16, ProxyError> {
    let ok = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !ok {
        return Err(ProxyError::Malformed("v1 bad port"));
    }
    text.parse()
        .map_err(|_| ProxyError::Malformed("v1 port out of range"))
}

fn parse_v2(buf: &[u8]) -> Result<Status, ProxyError> {
    if buf.len() < 16 {
        return Ok(Status::Incomplete);
    }
    let version = buf[12] >> 4;
    let command = buf[12] & 0x0f;
    if version != 2 {
        return Err(ProxyError::Malformed("v2 version nibble is not 2"));
    }
    let family = buf[13];
    let payload_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if payload_len > V2_MAX_PAYLOAD {
        return Err(ProxyError::TooLong);
    }
    let len = 16 + payload_len;
    if buf.len() < len {
        return Ok(Status::Incomplete);
    }
    let payload = &buf[16..len];
    let header = match command {
        // LOCAL: the balancer's own connection; addresses are ignored.
        0x0 => ProxyHeader {
            source: None,
            destination: None,
            version: 2,
        },
        0x1 => {
            let (source, destination) = v2_addresses(family, payload)?;
            ProxyHeader {
                source,
                destination,
                version: 2,
            }
        }
        _ => {
            return Err(ProxyError::Malformed(
                "v2 command is neither LOCAL nor PROXY",
            ))
        }
    };
    Ok(Status::Complete { header, len })
}

type AddrPair = (Option<SocketAddr>, Option<SocketAddr>);

fn v2_addresses(family: u8, payload: &[u8]) -> Result<AddrPair, ProxyError> {
    let transport = family & 0x0f;
    if transport > 2 {
        return Err(ProxyError::Malformed("v2 unknown transport"));
    }
    match family >> 4 {
        // AF_UNSPEC: addresses unknown, keep the connection's own.
        0x0 => Ok((None, None)),
        0x1 => {
            if payload.len() < 12 {
                return Err(ProxyError::Malformed("v2 IPv4 block too short"));
            }
            let src = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
            let dst = Ipv4Addr::new(payload[4], payload[5], payload[6], payload[7]);
            let sport = u16::from_be_bytes([payload[8], payload[9]]);
            let dport = u16::from_be_bytes([payload[10], payload[11]]);
            Ok((
                Some(SocketAddr::new(src.into(), sport)),
                Some(SocketAddr::new(dst.into(), dport)),
            ))
        }
        0x2 => {
            if payload.len() < 36 {
                return Err(ProxyError::Malformed("v2 IPv6 block too short"));
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&payload[..16]);
            dst.copy_from_slice(&payload[16..32]);
            let sport = u16::from_be_bytes([payload[32], payload[33]]);
            let dport = u16::from_be_bytes([payload[34], payload[35]]);
            Ok((
                Some(SocketAddr::new(Ipv6Addr::from(src).into(), sport)),
                Some(SocketAddr::new(Ipv6Addr::from(dst).into(), dport)),
            ))
        }
        // AF_UNIX: no IP address to report.
        0x3 => {
            if payload.len() < 216 {
                return Err(ProxyError::Malformed("v2 UNIX block too short"));
            }
            Ok((None, None))
        }
        _ => Err(ProxyError::Malformed("v2 unknown address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::proxy_v2;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Status::Complete { header, len }) => (header, len),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    #[test]
    fn v1_tcp4_and_trailing_client_bytes() {
        let buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\r\n+OK hello";
        let (h, len) = complete(buf);
        assert_eq!(len, buf.len() - b"+OK hello".len());
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(h.destination, Some("198.51.100.2:110".parse().unwrap()));
        assert_eq!(h.version, 1);
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let (h, _) = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
        assert_eq!(h.source, Some("[2001:db8::1]:1".parse().unwrap()));
        let (h, len) = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.source, None);
        assert_eq!(len, 35);
        let (h, _) = complete(b"PROXY UNKNOWN\r\n");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v1_every_prefix_is_incomplete() {
        let buf = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\r\n";
        for n in 0..buf.len() - 1 {
            assert_eq!(parse(&buf[..n]), Ok(Status::Incomplete), "prefix {n}");
        }
    }

    #[test]
    fn v1_hostile_inputs_are_refused() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110 7\r\n",
            b"PROXY TCP4 ::1 ::2 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 110\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 110\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 0110 110\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 300.0.0.1 198.51.100.2 1 2\r\n",
            b"PROXY \xff\r\n",
        ];
        for b in bad {
            assert!(
                matches!(parse(b), Err(ProxyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(200, b'x');
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
    }

    #[test]
    fn not_a_header() {
        assert_eq!(parse(b"USER bob\r\n"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\x16\x03\x01"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"P"), Ok(Status::Incomplete));
        assert_eq!(parse(b"\r\n\r"), Ok(Status::Incomplete));
    }

    #[test]
    fn v2_round_trips_with_our_encoder() {
        for (c, l) in [
            ("192.0.2.7:50000", "198.51.100.1:993"),
            ("[2001:db8::7]:4", "[2001:db8::1]:110"),
        ] {
            let (c, l): (SocketAddr, SocketAddr) = (c.parse().unwrap(), l.parse().unwrap());
            let mut buf = proxy_v2::encode(c, l);
            let n = buf.len();
            for k in 0..n {
                assert_eq!(parse(&buf[..k]), Ok(Status::Incomplete));
            }
            buf.extend_from_slice(b"A1 LOGIN");
            let (h, len) = complete(&buf);
            assert_eq!(len, n);
            assert_eq!(h.source, Some(c));
            assert_eq!(h.destination, Some(l));
            assert_eq!(h.version, 2);
        }
    }

    fn v2(cmd: u8, fam: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(cmd);
        b.push(fam);
        b.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn v2_local_tlvs_and_hostile_inputs() {
        let (h, len) = complete(&v2(0x20, 0x00, &[]));
        assert_eq!((h.source, len), (None, 16));
        // PROXY over IPv4 with a TLV after the address block.
        let mut p = vec![10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 0, 110];
        p.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
        let (h, len) = complete(&v2(0x21, 0x11, &p));
        assert_eq!(h.source, Some("10.0.0.1:80".parse().unwrap()));
        assert_eq!(len, 16 + p.len());
        assert_eq!(
            parse(&v2(0x21, 0x11, &[1, 2, 3])),
            Err(ProxyError::Malformed("v2 IPv4 block too short"))
        );
        assert!(matches!(
            parse(&v2(0x31, 0x11, &p)),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(0x22, 0x11, &p)),
            Err(ProxyError::Malformed(_))
        ));
        assert!(matches!(
            parse(&v2(0x21, 0x51, &p)),
            Err(ProxyError::Malformed(_))
        ));
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(ProxyError::TooLong));
    }

    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            let n = (x % 64) as usize;
            if x.is_multiple_of(3) {
                buf.extend_from_slice(&V2_SIGNATURE);
            } else if x % 3 == 1 {
                buf.extend_from_slice(b"PROXY ");
            }
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(x as u8);
            }
            let _ = parse(&buf);
        }
    }
}
