//! The PROXY protocol reader (`listener::proxy_protocol::parse`) on arbitrary bytes, as a
//! load balancer or a client would send them. It must never panic; a header it reads must fit
//! in the input and its bounds, read the same alone as with data behind it, and be incomplete
//! at every shorter length; a v2 header must be rebuilt by `ppp` from the addresses read, its
//! two type bytes and its TLVs into the very same bytes, a v1 line written back from them
//! must read the same.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use ppp::v2::{self, Builder};
use wakegate::listener::proxy_protocol::{MAX_V1_LEN, MAX_V2_LEN, Parse, parse};

/// Rebuilds a v2 header from what was read: the addresses must land on the same bytes.
fn rebuild_v2(bytes: &[u8], source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let addresses = v2::Addresses::from((source, destination));
    let address_len = match addresses {
        v2::Addresses::IPv4(_) => 12,
        v2::Addresses::IPv6(_) => 36,
        other => panic!("{source} and {destination} read as {other:?}"),
    };
    Builder::new(bytes[12], bytes[13])
        .write_payload(addresses)
        .unwrap()
        .write_payload(&bytes[16 + address_len..])
        .unwrap()
        .build()
        .unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Parse::Parsed(header) = parse(data) else {
        return;
    };
    let len = header.len;
    assert!(
        len <= data.len(),
        "a header of {len} bytes in {}",
        data.len()
    );
    let v2 = data.starts_with(v2::PROTOCOL_PREFIX);
    if v2 {
        assert!((16..=MAX_V2_LEN).contains(&len));
    } else {
        assert!(data.starts_with(b"PROXY ") && len <= MAX_V1_LEN);
        assert_eq!(&data[len - 2..len], b"\r\n");
    }
    assert_eq!(parse(&data[..len]), Parse::Parsed(header));
    // Every shorter input asks for more (all cuts of a v1 line, some of a long v2 header).
    let step = (len / 64).max(1);
    for cut in (0..len).step_by(step).chain([len - 1]) {
        assert_eq!(
            parse(&data[..cut]),
            Parse::Incomplete,
            "cut at {cut} of {len}"
        );
    }
    assert_eq!(header.source.is_some(), header.destination.is_some());
    if let (Some(source), Some(destination)) = (header.source, header.destination) {
        assert_eq!(source.is_ipv4(), destination.is_ipv4());
        if v2 {
            assert_eq!(rebuild_v2(&data[..len], source, destination), &data[..len]);
        } else {
            // Written back as text, the line reads the same; IPv4 and ports have one spelling.
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            let (src, dst) = (source.ip(), destination.ip());
            let (sport, dport) = (source.port(), destination.port());
            let line = format!("PROXY {family} {src} {dst} {sport} {dport}\r\n");
            let Parse::Parsed(again) = parse(line.as_bytes()) else {
                panic!("{line:?} does not parse back");
            };
            assert_eq!(
                (again.source, again.destination),
                (header.source, header.destination)
            );
            if source.is_ipv4() {
                assert_eq!(line.as_bytes(), &data[..len]);
            }
        }
    }
});
