//! The PROXY protocol header (HAProxy's binary version 2, or its text version 1) wakegate
//! writes first on a connection to the backend, so a server that understands it (Paper's
//! `proxy-protocol`, Velocity's `haproxy-protocol`, behind a `tcp` listener nginx, HAProxy,
//! Postfix…) sees the client's real address instead of wakegate's. The `ppp` crate writes the
//! bytes; here is only which addresses go in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ppp::v1;
use ppp::v2::{Addresses, Builder, Command, IPv4, IPv6, Protocol, Version};

/// The 12 bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The header for a connection from `client` that arrived at `local`. When one side is IPv4
/// and the other IPv6, both are written as IPv6 (IPv4 as `::ffff:a.b.c.d`): the header has one
/// family for both addresses, and `ppp` would write a mixed pair as "unspecified".
pub fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src_port, dst_port) = (client.port(), local.port());
    let addresses: Addresses = match pair(client, local) {
        Pair::V4(src, dst) => IPv4::new(src, dst, src_port, dst_port).into(),
        Pair::V6(src, dst) => IPv6::new(src, dst, src_port, dst_port).into(),
    };
    build(Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        addresses,
    ))
}

/// The version 1 line for a connection from `client` that arrived at `local`, with the
/// families written as for [`v2`] (`TCP4`, or `TCP6` for both when either is IPv6).
pub fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src_port, dst_port) = (client.port(), local.port());
    let addresses = match pair(client, local) {
        Pair::V4(src, dst) => v1::Addresses::new_tcp4(src, dst, src_port, dst_port),
        Pair::V6(src, dst) => v1::Addresses::new_tcp6(src, dst, src_port, dst_port),
    };
    addresses.to_string().into_bytes()
}

/// A header's two addresses, of one family.
enum Pair {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

/// Both addresses as IPv4 when both are (IPv4-mapped ones included), else both as IPv6.
fn pair(client: SocketAddr, local: SocketAddr) -> Pair {
    match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => Pair::V4(src, dst),
        (src, dst) => Pair::V6(as_v6(src), as_v6(dst)),
    }
}

/// The header of wakegate's own connections (its status pings): command LOCAL, family
/// unspecified, no addresses. The server keeps the connection's real endpoints.
pub fn v2_local() -> Vec<u8> {
    build(Builder::with_addresses(
        Version::Two | Command::Local,
        Protocol::Unspecified,
        Addresses::Unspecified,
    ))
}

/// Only a header whose addresses and TLVs pass 65,535 bytes fails to build; ours are at most
/// 36 bytes of addresses and no TLV.
fn build(builder: Builder) -> Vec<u8> {
    builder
        .build()
        .expect("a PROXY header without TLVs fits its length field")
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_has_the_spec_layout() {
        let header = v2(
            "192.0.2.10:51234".parse().unwrap(),
            "198.51.100.1:25565".parse().unwrap(),
        );
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 192, 0, 2, 10, 198, 51, 100, 1]);
        expected.extend_from_slice(&51234u16.to_be_bytes());
        expected.extend_from_slice(&25565u16.to_be_bytes());
        assert_eq!(header, expected);
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let header = v2(
            "192.0.2.10:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
        );
        assert_eq!(header.len(), 16 + 36);
        assert_eq!(header[13], 0x21);
        assert_eq!(
            &header[16..32],
            &"::ffff:192.0.2.10".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn a_v4_mapped_pair_is_written_as_ipv4() {
        let header = v2(
            "[::ffff:192.0.2.10]:1".parse().unwrap(),
            "[::ffff:198.51.100.1]:2".parse().unwrap(),
        );
        assert_eq!(header.len(), 16 + 12);
        assert_eq!(header[13], 0x11);
    }

    #[test]
    fn v1_lines_name_both_addresses_in_one_family() {
        let line = v1(
            "192.0.2.10:51234".parse().unwrap(),
            "[::ffff:198.51.100.1]:25565".parse().unwrap(),
        );
        assert_eq!(line, b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 25565\r\n");
        let line = v1(
            "192.0.2.10:1".parse().unwrap(),
            "[2001:db8::1]:2".parse().unwrap(),
        );
        assert_eq!(line, b"PROXY TCP6 ::ffff:192.0.2.10 2001:db8::1 1 2\r\n");
    }

    #[test]
    fn the_local_header_has_no_addresses() {
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(v2_local(), expected);
    }
}
