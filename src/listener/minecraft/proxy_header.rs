//! The PROXY protocol version 2 header (HAProxy's binary form) wakegate writes first on a
//! connection to the backend, so a server that understands it (Paper's `proxy-protocol`,
//! Velocity's `haproxy-protocol`) sees the player's real address instead of wakegate's.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// The 12 bytes every version 2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2, command PROXY: the connection was relayed for the addresses that follow.
const PROXY: u8 = 0x21;
/// Version 2, command LOCAL: the proxy's own connection (a health check), no addresses.
const LOCAL: u8 = 0x20;
/// TCP over IPv4, and over IPv6.
const TCP4: u8 = 0x11;
const TCP6: u8 = 0x21;

/// The header for a connection from `client` that arrived at `local`. When one side is IPv4
/// and the other IPv6, both are written as IPv6 (IPv4 as `::ffff:a.b.c.d`).
pub fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(PROXY);
    match (client.ip().to_canonical(), local.ip().to_canonical()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(TCP4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            out.push(TCP6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&as_v6(src).octets());
            out.extend_from_slice(&as_v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

/// The header of wakegate's own connections (its status pings): command LOCAL, family
/// unspecified, no addresses. The server keeps the connection's real endpoints.
pub fn v2_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[LOCAL, 0x00, 0, 0]);
    out
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
}
