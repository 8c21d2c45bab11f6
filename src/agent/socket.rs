//! Established TCP connections on the local ports the agent watches, read from the kernel's
//! socket tables (`/proc/net/tcp` and `/proc/net/tcp6`). The lines are parsed by
//! `procfs-core` (addresses in the kernel's byte order, IPv6 included); what counts is decided
//! here: a connection in state ESTABLISHED whose *local* port is watched, i.e. a client of a
//! server on this host. Listening sockets, connections being opened or closed (SYN, FIN,
//! TIME_WAIT, …) and this host's own outgoing connections are not counted.

use std::io::BufRead;

use procfs_core::FromBufReadSI;
use procfs_core::net::{TcpNetEntries, TcpState};

/// The kernel's tables, IPv4 then IPv6.
const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

/// What the parser needs to know of this machine: only its byte order matters for these files.
const SYSTEM: procfs_core::ExplicitSystemInfo = procfs_core::ExplicitSystemInfo {
    boot_time_secs: 0,
    ticks_per_second: 100,
    page_size: 4096,
    is_little_endian: cfg!(target_endian = "little"),
};

/// Counts the established connections on `ports` in one socket table.
pub fn count_in(table: impl BufRead, ports: &[u16]) -> Result<u32, String> {
    let entries = TcpNetEntries::from_buf_read(table, &SYSTEM)
        .map_err(|e| format!("cannot parse the socket table: {e}"))?;
    Ok(entries
        .0
        .iter()
        .filter(|e| e.state == TcpState::Established && ports.contains(&e.local_address.port()))
        .count() as u32)
}

/// Counts the established connections on `ports`, IPv4 and IPv6. A host without IPv6 has no
/// `tcp6` table; that is no error.
pub fn established(ports: &[u16]) -> Result<u32, String> {
    let mut total = 0;
    for path in TABLES {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.ends_with('6') => continue,
            Err(e) => return Err(format!("cannot read {path}: {e}")),
        };
        total +=
            count_in(std::io::BufReader::new(file), ports).map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";

    /// A `/proc/net/tcp` line: addresses as the kernel writes them, `state` in hex.
    fn line(local: &str, remote: &str, state: &str) -> String {
        format!(
            "   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1\n"
        )
    }

    #[test]
    fn ipv4_established_connections_on_watched_ports_count() {
        // 127.0.0.1 is 0100007F in the kernel's (little-endian) order; 0x63DD = 25565.
        let table = [
            HEADER.to_string(),
            // The server listening: not a connection.
            line("00000000:63DD", "00000000:0000", "0A"),
            // Two players connected to the server.
            line("0100007F:63DD", "0100007F:C350", "01"),
            line("0F02000A:63DD", "6400A8C0:D431", "01"),
            // The client side of the first one, on this host: its local port is not watched.
            line("0100007F:C350", "0100007F:63DD", "01"),
            // A player leaving, one arriving, one just gone: not established.
            line("0100007F:63DD", "0100007F:C351", "08"),
            line("0100007F:63DD", "0100007F:C352", "03"),
            line("0100007F:63DD", "0100007F:C353", "06"),
            // Someone on another port.
            line("0100007F:0016", "0100007F:C354", "01"),
        ]
        .concat();
        assert_eq!(count_in(table.as_bytes(), &[25565]).unwrap(), 2);
        assert_eq!(count_in(table.as_bytes(), &[25565, 22]).unwrap(), 3);
        assert_eq!(count_in(table.as_bytes(), &[80]).unwrap(), 0);
    }

    #[test]
    fn ipv6_lines_count_alike() {
        let table = [
            HEADER.to_string(),
            // [::]:25565 listening.
            line(
                "00000000000000000000000000000000:63DD",
                "00000000000000000000000000000000:0000",
                "0A",
            ),
            // [::1]:25565 ← [::1]:50000, established.
            line(
                "00000000000000000000000001000000:63DD",
                "00000000000000000000000001000000:C350",
                "01",
            ),
            // An IPv4 client on a dual-stack socket: ::ffff:127.0.0.1.
            line(
                "0000000000000000FFFF00000100007F:63DD",
                "0000000000000000FFFF00000100007F:C351",
                "01",
            ),
            // A FIN_WAIT2 one.
            line(
                "00000000000000000000000001000000:63DD",
                "00000000000000000000000001000000:C352",
                "05",
            ),
        ]
        .concat();
        assert_eq!(count_in(table.as_bytes(), &[25565]).unwrap(), 2);
    }

    #[test]
    fn an_empty_table_counts_nothing_and_garbage_is_an_error() {
        assert_eq!(count_in(HEADER.as_bytes(), &[25565]).unwrap(), 0);
        let broken = format!("{HEADER}   0: nonsense\n");
        assert!(count_in(broken.as_bytes(), &[25565]).is_err());
    }

    #[test]
    fn the_real_tables_see_a_connection_of_this_test() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let before = established(&[port]).unwrap();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = server.accept().unwrap();
        assert_eq!(established(&[port]).unwrap(), before + 1);
    }
}
