//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms) a load balancer in front
//! of a listener may write first on each connection, naming the client it accepted. [`parse`]
//! frames and bounds the header and leaves the parsing to the `ppp` crate; [`read_header`]
//! reads one from a connection with a deadline. (`minecraft::proxy_header` is the other
//! direction: the v2 header wakegate writes to a backend.)

use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::{self, Command, Protocol};
use ppp::{PartialResult, v1};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The longest v1 header, `\r\n` included (the specification's limit).
pub const MAX_V1_LEN: usize = 107;

/// The longest v2 header accepted, its 16 fixed bytes included. The length field allows 64 KiB;
/// addresses take at most 216 bytes, and 4 KiB leaves room for the TLVs cloud load balancers
/// add (an AWS VPC endpoint id, TLS details) while bounding what a client can make us buffer.
pub const MAX_V2_LEN: usize = 4096;

/// The 12 bytes every v2 header starts with.
const V2_SIGNATURE: &[u8] = v2::PROTOCOL_PREFIX;
const V1_PREFIX: &[u8] = b"PROXY ";

/// A complete, valid header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client the load balancer accepted. `None` for a v2 LOCAL header (the load
    /// balancer's own connection, e.g. a health check), a v1 `UNKNOWN` one, and a v2 header
    /// of another family or transport than TCP over IP: then the connection's own peer is the
    /// client.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when `source` is given.
    pub destination: Option<SocketAddr>,
    /// The header's length in bytes: what follows it is the client's own data.
    pub len: usize,
}

/// What the bytes read so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    /// A header may still come: read more.
    Incomplete,
    /// No valid header can start with these bytes.
    Invalid(Invalid),
    Parsed(ProxyHeader),
}

/// Why bytes are not a PROXY header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the connection does not start with a PROXY protocol header")]
    NoHeader,
    #[error("the PROXY v1 header has no line end within {MAX_V1_LEN} bytes")]
    V1TooLong,
    #[error("the PROXY v1 header is malformed: {0}")]
    V1(String),
    #[error("the PROXY v2 header announces {0} bytes, more than the {MAX_V2_LEN} accepted")]
    V2TooLong(usize),
    #[error("the PROXY v2 header is malformed: {0}")]
    V2(String),
}

/// Reads the header at the start of `bytes`, the bytes received so far on a connection.
pub fn parse(bytes: &[u8]) -> Parse {
    if is_prefix_of_or_starts_with(bytes, V2_SIGNATURE) {
        parse_v2(bytes)
    } else if is_prefix_of_or_starts_with(bytes, V1_PREFIX) {
        parse_v1(bytes)
    } else {
        Parse::Invalid(Invalid::NoHeader)
    }
}

/// Whether the bytes a client sent start with a PROXY header (or a broken one), as far as
/// they tell: `None` while they are a strict beginning of one of the two signatures (`PROXY `,
/// or v2's 12 bytes), which a few more bytes decide.
pub fn starts_header(bytes: &[u8]) -> Option<bool> {
    if bytes.starts_with(V1_PREFIX) || bytes.starts_with(V2_SIGNATURE) {
        Some(true)
    } else if is_prefix_of_or_starts_with(bytes, V1_PREFIX)
        || is_prefix_of_or_starts_with(bytes, V2_SIGNATURE)
    {
        None
    } else {
        Some(false)
    }
}

/// Whether `bytes` are the start of `prefix`, or start with it.
fn is_prefix_of_or_starts_with(bytes: &[u8], prefix: &[u8]) -> bool {
    let n = bytes.len().min(prefix.len());
    bytes[..n] == prefix[..n]
}

/// A v1 header is one line. It is framed here, at its first `\r`, and only the whole line is
/// handed to `ppp`: `ppp` judges a partial line by its last field, and would refuse one cut
/// right after a port's space.
fn parse_v1(bytes: &[u8]) -> Parse {
    let window = &bytes[..bytes.len().min(MAX_V1_LEN)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if bytes.len() >= MAX_V1_LEN {
            Parse::Invalid(Invalid::V1TooLong)
        } else {
            Parse::Incomplete
        };
    };
    let len = cr + 2;
    if len > MAX_V1_LEN {
        return Parse::Invalid(Invalid::V1TooLong);
    }
    match bytes.get(cr + 1) {
        None => return Parse::Incomplete,
        Some(b'\n') => {}
        Some(_) => return Parse::Invalid(Invalid::V1("a `\\r` not followed by `\\n`".into())),
    }
    let header = match v1::Header::try_from(&bytes[..len]) {
        Ok(header) => header,
        Err(e) => return Parse::Invalid(Invalid::V1(e.to_string())),
    };
    let (source, destination) = match header.addresses {
        v1::Addresses::Tcp4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        v1::Addresses::Tcp6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        v1::Addresses::Unknown => return Parse::Parsed(unknown(len)),
    };
    // `ppp` reads ports as Rust does, which lets `+1` and `+01` through; the specification
    // has plain decimal digits. (The line is `PROXY TCPn SRC DST SPORT DPORT\r\n`.)
    let ports = bytes[..cr].rsplit(|&b| b == b' ').take(2);
    if !ports.into_iter().all(|p| p.iter().all(u8::is_ascii_digit)) {
        return Parse::Invalid(Invalid::V1("a port is not a decimal number".into()));
    }
    Parse::Parsed(ProxyHeader {
        source: Some(source),
        destination: Some(destination),
        len,
    })
}

/// A v2 header says its length in its 15th and 16th bytes; `ppp` checks the fixed part first,
/// so a bad version or family is refused before its announced length is read.
fn parse_v2(bytes: &[u8]) -> Parse {
    let total = match bytes.get(14..16) {
        Some(length) => 16 + usize::from(u16::from_be_bytes([length[0], length[1]])),
        None => bytes.len(),
    };
    let result = v2::Header::try_from(&bytes[..bytes.len().min(total)]);
    let header = match result {
        Err(e) if !e.is_incomplete() => return Parse::Invalid(Invalid::V2(e.to_string())),
        _ if total > MAX_V2_LEN => return Parse::Invalid(Invalid::V2TooLong(total)),
        Err(_) => return Parse::Incomplete,
        Ok(header) => header,
    };
    let len = header.len();
    if header.command != Command::Proxy || header.protocol != Protocol::Stream {
        return Parse::Parsed(unknown(len));
    }
    let (source, destination) = match header.addresses {
        v2::Addresses::IPv4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        v2::Addresses::IPv6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        v2::Addresses::Unix(_) | v2::Addresses::Unspecified => return Parse::Parsed(unknown(len)),
    };
    Parse::Parsed(ProxyHeader {
        source: Some(source),
        destination: Some(destination),
        len,
    })
}

fn unknown(len: usize) -> ProxyHeader {
    ProxyHeader {
        source: None,
        destination: None,
        len,
    }
}

/// Why [`read_header`] found no header.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed after {0} bytes, before its PROXY protocol header ended")]
    Closed(usize),
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the header a connection starts with, within `deadline`. Returns it and the bytes read
/// past it (at most a few KiB: the client's first data, to be handled before reading on).
pub async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
    deadline: Duration,
) -> Result<(ProxyHeader, Vec<u8>), ReadError> {
    let read = async {
        let mut buf = vec![0; MAX_V2_LEN];
        let mut filled = 0;
        loop {
            // `parse` ends with Invalid before the buffer is full: the longest header fits.
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(ReadError::Closed(filled));
            }
            filled += n;
            match parse(&buf[..filled]) {
                Parse::Incomplete => {}
                Parse::Invalid(e) => return Err(e.into()),
                Parse::Parsed(header) => {
                    buf.truncate(filled);
                    let rest = buf.split_off(header.len);
                    return Ok((header, rest));
                }
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .unwrap_or(Err(ReadError::Timeout(deadline)))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    fn parsed(bytes: &[u8]) -> ProxyHeader {
        match parse(bytes) {
            Parse::Parsed(header) => header,
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    fn invalid(bytes: &[u8]) -> Invalid {
        match parse(bytes) {
            Parse::Invalid(e) => e,
            other => panic!("{:?} gave {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    /// Every strict prefix of a header must ask for more, and the header followed by data must
    /// give the same result as the header alone.
    fn assert_framed(header: &[u8]) -> ProxyHeader {
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Parse::Incomplete, "cut at {cut}");
        }
        let mut with_data = header.to_vec();
        with_data.extend_from_slice(b"\x10\x00GET / HTTP/1.1\r\n");
        let alone = parsed(header);
        assert_eq!(parsed(&with_data), alone);
        assert_eq!(alone.len, header.len());
        alone
    }

    fn v2_header(command: Command, protocol: Protocol, addresses: v2::Addresses) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, protocol, addresses)
            .build()
            .unwrap()
    }

    #[test]
    fn v1_tcp4_gives_both_addresses() {
        let header = assert_framed(b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 25565\r\n");
        assert_eq!(header.source, Some("192.0.2.10:51234".parse().unwrap()));
        assert_eq!(
            header.destination,
            Some("198.51.100.1:25565".parse().unwrap())
        );
    }

    #[test]
    fn v1_tcp6_gives_both_addresses() {
        let header = assert_framed(b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8443\r\n");
        assert_eq!(header.source, Some("[2001:db8::7]:443".parse().unwrap()));
        assert_eq!(
            header.destination,
            Some("[2001:db8::1]:8443".parse().unwrap())
        );
    }

    #[test]
    fn v1_unknown_gives_no_address() {
        assert_eq!(assert_framed(b"PROXY UNKNOWN\r\n"), unknown(15));
        // The specification lets a sender add addresses after UNKNOWN, to be ignored.
        let line = b"PROXY UNKNOWN ffff:f::ffff ffff:f::ffff 65535 65535\r\n";
        assert_eq!(assert_framed(line), unknown(line.len()));
    }

    #[test]
    fn v1_of_the_longest_length_is_read_and_one_byte_more_is_refused() {
        // The specification's own worst case.
        let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(longest.len(), MAX_V1_LEN);
        assert_framed(longest);
        let tcp6 = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(assert_framed(tcp6).source.map(|s| s.port()), Some(65535));
        let mut padded = b"PROXY UNKNOWN ".to_vec();
        padded.resize(MAX_V1_LEN - 1, b'x');
        padded.extend_from_slice(b"\r\n");
        assert_eq!(invalid(&padded), Invalid::V1TooLong);
        assert_eq!(invalid(&padded[..MAX_V1_LEN]), Invalid::V1TooLong);
        assert_eq!(parse(&padded[..MAX_V1_LEN - 1]), Parse::Incomplete);
    }

    #[test]
    fn malformed_v1_lines_are_refused_with_the_reason() {
        for line in [
            &b"PROXY TCP4 192.0.2.10 198.51.100.1 51234\r\n"[..],
            b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 65536\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 01 2\r\n",
            b"PROXY UDP4 192.0.2.10 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\rX",
            b"PROXY \xff\r\n",
            // Found by the proxy_header fuzz target: ppp takes a `+` before a port.
            b"PROXY TCP4 192.0.2.10 198.51.100.1 +1 2\r\n",
            b"PROXY TCP4 192.0.2.10 198.51.100.1 1 +01\r\n",
        ] {
            let e = invalid(line);
            assert!(matches!(e, Invalid::V1(_)), "{line:?}: {e}");
        }
        assert!(
            invalid(b"PROXY TCP4 1 2 3 4\rX")
                .to_string()
                .contains("\\r")
        );
    }

    #[test]
    fn v2_proxy_over_tcp_gives_both_addresses() {
        let ipv4 = v2::IPv4::new(
            Ipv4Addr::new(192, 0, 2, 10),
            Ipv4Addr::new(198, 51, 100, 1),
            51234,
            25565,
        );
        let header = assert_framed(&v2_header(Command::Proxy, Protocol::Stream, ipv4.into()));
        assert_eq!(header.source, Some("192.0.2.10:51234".parse().unwrap()));
        assert_eq!(
            header.destination,
            Some("198.51.100.1:25565".parse().unwrap())
        );
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::7".parse().unwrap(),
            "2001:db8::1".parse().unwrap(),
        );
        let ipv6 = v2::IPv6::new(src, dst, 443, 8443);
        let header = assert_framed(&v2_header(Command::Proxy, Protocol::Stream, ipv6.into()));
        assert_eq!(header.source, Some("[2001:db8::7]:443".parse().unwrap()));
        assert_eq!(
            header.destination,
            Some("[2001:db8::1]:8443".parse().unwrap())
        );
    }

    #[test]
    fn the_header_wakegate_writes_to_backends_reads_back() {
        let client = "[2001:db8::7]:443".parse().unwrap();
        let local = "[2001:db8::1]:25565".parse().unwrap();
        let header = assert_framed(&crate::minecraft::proxy_header::v2(client, local));
        assert_eq!(
            (header.source, header.destination),
            (Some(client), Some(local))
        );
        let local = assert_framed(&crate::minecraft::proxy_header::v2_local());
        assert_eq!(local, unknown(16));
    }

    #[test]
    fn v2_tlvs_are_part_of_the_header() {
        let ipv4 = v2::IPv4::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2);
        let bytes =
            v2::Builder::with_addresses(v2::Version::Two | Command::Proxy, Protocol::Stream, ipv4)
                .write_tlv(v2::Type::Authority, b"app.example.com")
                .unwrap()
                .build()
                .unwrap();
        assert_eq!(assert_framed(&bytes).len, 16 + 12 + 3 + 15);
    }

    #[test]
    fn v2_local_unix_and_udp_give_no_address() {
        let ipv4 = v2::IPv4::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2);
        for bytes in [
            v2_header(Command::Local, Protocol::Stream, ipv4.into()),
            v2_header(Command::Proxy, Protocol::Datagram, ipv4.into()),
            v2_header(
                Command::Proxy,
                Protocol::Unspecified,
                v2::Addresses::Unspecified,
            ),
            v2_header(
                Command::Proxy,
                Protocol::Stream,
                v2::Unix::new([1; 108], [2; 108]).into(),
            ),
        ] {
            assert_eq!(assert_framed(&bytes), unknown(bytes.len()));
        }
    }

    #[test]
    fn malformed_v2_headers_are_refused_as_soon_as_the_fixed_part_is_in() {
        let good = v2_header(
            Command::Proxy,
            Protocol::Stream,
            v2::IPv4::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2).into(),
        );
        let broken = |at: usize, byte: u8| {
            let mut bytes = good[..16].to_vec();
            bytes[at] = byte;
            invalid(&bytes)
        };
        assert!(matches!(broken(12, 0x11), Invalid::V2(_)), "version 1");
        assert!(matches!(broken(12, 0x22), Invalid::V2(_)), "command 2");
        assert!(matches!(broken(13, 0x41), Invalid::V2(_)), "family 4");
        assert!(
            matches!(broken(15, 4), Invalid::V2(_)),
            "4 bytes cannot hold two IPv4 addresses"
        );
    }

    #[test]
    fn an_oversize_v2_header_is_refused_from_its_length_field() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11]);
        let too_long = u16::try_from(MAX_V2_LEN - 16 + 1).unwrap();
        bytes.extend_from_slice(&too_long.to_be_bytes());
        assert_eq!(invalid(&bytes), Invalid::V2TooLong(MAX_V2_LEN + 1));
        bytes.truncate(14);
        bytes.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(invalid(&bytes), Invalid::V2TooLong(16 + 65535));
        // The largest accepted one is read.
        let tlv = vec![b'a'; MAX_V2_LEN - 16 - 12 - 3];
        let largest = v2::Builder::with_addresses(
            v2::Version::Two | Command::Proxy,
            Protocol::Stream,
            v2::IPv4::new(Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, 1, 2),
        )
        .write_tlv(v2::Type::NoOp, &tlv)
        .unwrap()
        .build()
        .unwrap();
        assert_eq!(parsed(&largest).len, MAX_V2_LEN);
    }

    #[test]
    fn other_protocols_are_refused_at_their_first_byte() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x10\x00",
            b"\x16\x03\x01",
            b"\r\n\r\nX",
            b"PROXX",
            b"proxy ",
        ] {
            assert_eq!(invalid(bytes), Invalid::NoHeader, "{bytes:?}");
        }
        assert_eq!(parse(b""), Parse::Incomplete);
        assert_eq!(parse(b"PROX"), Parse::Incomplete);
        assert_eq!(parse(b"\r\n\r\n\0"), Parse::Incomplete);
    }

    #[test]
    fn a_header_is_told_from_other_bytes_by_its_signature() {
        let v2 = crate::minecraft::proxy_header::v2_local();
        let cases: [(&[u8], Option<bool>); 14] = [
            (b"PROXY TCP4 1.2.3.4", Some(true)),
            (b"PROXY garbage\r\n", Some(true)),
            (&v2, Some(true)),
            (&v2[..12], Some(true)),
            (b"GET /", Some(false)),
            // HTTP/2 with prior knowledge shares `PR` with a v1 header.
            (b"PRI * HTTP/2.0", Some(false)),
            (b"\x16\x03\x01", Some(false)),
            (b"\r\n\r\nX", Some(false)),
            (b"PROXX", Some(false)),
            (b"", None),
            (b"P", None),
            (b"PROXY", None),
            (b"\r\n", None),
            (&v2[..11], None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(starts_header(bytes), expected, "{bytes:?}");
        }
    }

    /// A connected pair of real sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn read_header_returns_the_bytes_after_it() {
        let (mut client, mut server) = pair().await;
        let mut sent = b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 80\r\n".to_vec();
        sent.extend_from_slice(b"GET / HTTP/1.1\r\n");
        client.write_all(&sent).await.unwrap();
        let (header, rest) = read_header(&mut server, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(header.source, Some("192.0.2.10:51234".parse().unwrap()));
        // What was read past the header is returned, what was not is still in the socket.
        client.write_all(b"Host: a\r\n").await.unwrap();
        drop(client);
        let mut after = rest;
        server.read_to_end(&mut after).await.unwrap();
        assert_eq!(after, b"GET / HTTP/1.1\r\nHost: a\r\n");
    }

    #[tokio::test]
    async fn read_header_waits_for_a_header_sent_in_pieces() {
        let (mut client, mut server) = pair().await;
        let bytes = crate::minecraft::proxy_header::v2(
            "192.0.2.10:1".parse().unwrap(),
            "198.51.100.1:2".parse().unwrap(),
        );
        let write = async {
            for piece in bytes.chunks(5) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
        };
        let ((), read) = tokio::join!(write, read_header(&mut server, Duration::from_secs(10)));
        let (header, rest) = read.unwrap();
        assert_eq!(header.len, bytes.len());
        assert_eq!(header.destination, Some("198.51.100.1:2".parse().unwrap()));
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn read_header_refuses_a_connection_without_one() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let e = read_header(&mut server, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, ReadError::Invalid(Invalid::NoHeader)), "{e}");
    }

    #[tokio::test]
    async fn read_header_reports_a_connection_closed_midway() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 192.0.2.10").await.unwrap();
        drop(client);
        let e = read_header(&mut server, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(e, ReadError::Closed(21)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn read_header_gives_up_at_the_deadline() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"PROXY TCP4 ").await.unwrap();
        let e = read_header(&mut server, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(e, ReadError::Timeout(_)), "{e}");
        assert_eq!(e.to_string(), "no complete PROXY protocol header within 3s");
        drop(client);
    }
}
