//! Fuzzes the PROXY protocol v1/v2 header parser (`proto::proxy_in`) and
//! the v2 encoder (`proto::proxy_v2`).
//!
//! A complete header never claims more bytes than it was given nor more
//! than the protocol's bound, and every shorter prefix of it reads as
//! incomplete (what lets the session take header bytes off the socket
//! before the end arrives). "Incomplete" only for fewer bytes than the
//! longest header. The input's first 36 bytes also make two addresses
//! that `proxy_v2::encode` writes and the parser must read back.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use mailpin::proto::proxy_in::{self, Status, V1_MAX, V2_MAX_PAYLOAD};
use mailpin::proto::proxy_v2;

/// Two socket addresses from 36 bytes: IPv4 or IPv6 by one bit each.
fn addresses(bytes: &[u8; 36]) -> (SocketAddr, SocketAddr) {
    let address = |b: &[u8], v6: bool| -> IpAddr {
        if v6 {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            Ipv6Addr::from(octets).into()
        } else {
            Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
        }
    };
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let flags = bytes[35];
    (
        SocketAddr::new(address(&bytes[0..16], flags & 1 != 0), port(&bytes[32..34])),
        SocketAddr::new(
            address(&bytes[16..32], flags & 2 != 0),
            port(&bytes[34..36]),
        ),
    )
}

/// The address as the v2 header carries it when the families differ.
fn as_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(a) => SocketAddr::new(a.ip().to_ipv6_mapped().into(), a.port()),
        v6 => v6,
    }
}

fuzz_target!(|data: &[u8]| {
    match proxy_in::parse(data) {
        Ok(Status::Complete { header, len }) => {
            assert!(len <= data.len(), "claims more bytes than given");
            let bound = if header.version == 1 {
                V1_MAX
            } else {
                16 + V2_MAX_PAYLOAD
            };
            assert!(len <= bound, "header longer than the protocol allows");
            assert_eq!(
                proxy_in::parse(&data[..len]),
                Ok(Status::Complete { header, len }),
                "the header alone reads differently"
            );
            for end in 0..len {
                assert_eq!(
                    proxy_in::parse(&data[..end]),
                    Ok(Status::Incomplete),
                    "a prefix of a complete header is not incomplete"
                );
            }
        }
        Ok(Status::Incomplete) => {
            assert!(
                data.len() < (16 + V2_MAX_PAYLOAD).max(V1_MAX),
                "incomplete forever"
            );
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }

    if let Some(bytes) = data.get(..36) {
        let (client, local) = addresses(bytes.try_into().expect("36 bytes"));
        let wire = proxy_v2::encode(client, local);
        let Ok(Status::Complete { header, len }) = proxy_in::parse(&wire) else {
            panic!("an encoded header does not parse");
        };
        assert_eq!(len, wire.len());
        assert_eq!(header.version, 2);
        let same_family = client.is_ipv4() == local.is_ipv4();
        let (want_client, want_local) = if same_family {
            (client, local)
        } else {
            (as_v6(client), as_v6(local))
        };
        assert_eq!(header.source, Some(want_client));
        assert_eq!(header.destination, Some(want_local));
    }
});
