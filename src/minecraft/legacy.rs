//! The server-list ping of clients before 1.7, which vanilla servers still answer: it opens
//! with 0xFE instead of a frame. Three revisions exist:
//!
//! - beta 1.8 to 1.3: `FE` alone; the answer is `<motd>§<online>§<max>`;
//! - 1.4 and 1.5: `FE 01`; the answer is `§1\0<protocol>\0<version>\0<motd>\0<online>\0<max>`;
//! - 1.6: `FE 01 FA` and a plugin message on the channel `MC|PingHost` with the client's
//!   protocol, the hostname and port it connects to; the same answer as 1.4.
//!
//! Each answer is a kick packet: `FF`, the length of the text in UTF-16 code units (a
//! big-endian u16), and the text in UTF-16BE.

/// The longest 1.6 ping: the fixed part and a hostname of 255 characters.
pub const MAX_LEGACY_PING: usize = 3 + 2 + 22 + 2 + 1 + 2 + 2 * 255 + 4;

/// The protocol number vanilla 1.7+ servers give legacy clients (1.6.4's is 78): the list shows
/// the server's version name, marked incompatible.
pub const LEGACY_PROTOCOL: i32 = 127;

/// Which revision of the legacy ping a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyPing {
    /// Beta 1.8 to 1.3: `FE` alone.
    Beta,
    /// 1.4 and 1.5: `FE 01` (and a 1.6 ping whose plugin message could not be read).
    V1_4,
    /// 1.6: `FE 01 FA` + `MC|PingHost`.
    V1_6 {
        protocol: u8,
        hostname: String,
        port: u16,
    },
}

/// Reads a legacy ping from the bytes received so far (the first is 0xFE). `None`: more bytes
/// may be coming, which a client that sent a lone `FE` (beta), `FE 01` (1.4) or only part of
/// the 1.6 plugin message never sends: past a short wait, [`fallback`] says what it sent.
/// A 1.6 plugin message that does not parse is answered as a 1.4 ping.
pub fn parse(buf: &[u8]) -> Option<LegacyPing> {
    match buf {
        [] | [0xfe] | [0xfe, 0x01] => None,
        [0xfe, 0x01, 0xfa, rest @ ..] => match ping_host(rest) {
            Host::Incomplete => None,
            Host::Bad => Some(LegacyPing::V1_4),
            Host::Ping(ping) => Some(ping),
        },
        [0xfe, 0x01, ..] => Some(LegacyPing::V1_4),
        _ => Some(LegacyPing::Beta),
    }
}

/// The ping of a client that sent `buf` and nothing more: `FE` alone is a beta client's, `FE 01`
/// and anything after it (a 1.6 ping cut short, as some tools send it) a 1.4 one.
pub fn fallback(buf: &[u8]) -> LegacyPing {
    match buf {
        [0xfe, 0x01, ..] => LegacyPing::V1_4,
        _ => LegacyPing::Beta,
    }
}

enum Host {
    Incomplete,
    Bad,
    Ping(LegacyPing),
}

/// The plugin message after `FA`: channel `MC|PingHost`, then the length of the rest, the
/// protocol, the hostname and the port.
fn ping_host(rest: &[u8]) -> Host {
    let mut at = 0;
    let mut take = |n: usize| -> Option<&[u8]> {
        let bytes = rest.get(at..at + n)?;
        at += n;
        Some(bytes)
    };
    let u16_at = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let Some(channel_len) = take(2).map(u16_at) else {
        return Host::Incomplete;
    };
    if channel_len != 11 {
        return Host::Bad;
    }
    let Some(channel) = take(22) else {
        return Host::Incomplete;
    };
    if utf16(channel).as_deref() != Some("MC|PingHost") {
        return Host::Bad;
    }
    let Some(data_len) = take(2).map(u16_at) else {
        return Host::Incomplete;
    };
    let Some(protocol) = take(1).map(|b| b[0]) else {
        return Host::Incomplete;
    };
    let Some(host_len) = take(2).map(u16_at) else {
        return Host::Incomplete;
    };
    if host_len > 255 || usize::from(data_len) != 7 + 2 * usize::from(host_len) {
        return Host::Bad;
    }
    let Some(host) = take(2 * usize::from(host_len)) else {
        return Host::Incomplete;
    };
    let Some(port) = take(4) else {
        return Host::Incomplete;
    };
    let port = i32::from_be_bytes([port[0], port[1], port[2], port[3]]);
    match (utf16(host), u16::try_from(port)) {
        (Some(hostname), Ok(port)) => Host::Ping(LegacyPing::V1_6 {
            protocol,
            hostname,
            port,
        }),
        _ => Host::Bad,
    }
}

fn utf16(bytes: &[u8]) -> Option<String> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

/// What a legacy answer shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyStatus<'a> {
    pub version: &'a str,
    /// One line of plain text (§ codes allowed, except in the beta answer).
    pub motd: &'a str,
    pub online: u32,
    pub max: u32,
}

/// The kick packet that answers `ping`.
pub fn answer(ping: &LegacyPing, status: &LegacyStatus<'_>) -> Vec<u8> {
    let text = match ping {
        // `§` separates the fields: none may stay in the MOTD.
        LegacyPing::Beta => format!(
            "{}§{}§{}",
            strip_codes(status.motd),
            status.online,
            status.max
        ),
        LegacyPing::V1_4 | LegacyPing::V1_6 { .. } => format!(
            "§1\0{LEGACY_PROTOCOL}\0{}\0{}\0{}\0{}",
            status.version.replace('\0', ""),
            status.motd.replace('\0', ""),
            status.online,
            status.max
        ),
    };
    kick(&text)
}

/// `FF`, the length in UTF-16 code units, the text in UTF-16BE (cut to what a u16 counts).
fn kick(text: &str) -> Vec<u8> {
    let units: Vec<u16> = text.encode_utf16().take(usize::from(u16::MAX)).collect();
    let mut out = Vec::with_capacity(3 + 2 * units.len());
    out.push(0xff);
    out.extend_from_slice(&(units.len() as u16).to_be_bytes());
    for unit in units {
        out.extend_from_slice(&unit.to_be_bytes());
    }
    out
}

/// The text without its § formatting codes.
fn strip_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '§' {
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1.6.4 client's ping of `host:port`, as wiki.vg shows it.
    fn ping_1_6(host: &str, port: i32) -> Vec<u8> {
        let mut out = vec![0xfe, 0x01, 0xfa, 0x00, 0x0b];
        for unit in "MC|PingHost".encode_utf16() {
            out.extend_from_slice(&unit.to_be_bytes());
        }
        let host16: Vec<u16> = host.encode_utf16().collect();
        out.extend_from_slice(&(7 + 2 * host16.len() as u16).to_be_bytes());
        out.push(78);
        out.extend_from_slice(&(host16.len() as u16).to_be_bytes());
        for unit in host16 {
            out.extend_from_slice(&unit.to_be_bytes());
        }
        out.extend_from_slice(&port.to_be_bytes());
        out
    }

    #[test]
    fn the_three_revisions_are_told_apart() {
        assert_eq!(parse(&[0xfe]), None);
        assert_eq!(fallback(&[0xfe]), LegacyPing::Beta);
        assert_eq!(parse(&[0xfe, 0x01]), None);
        assert_eq!(fallback(&[0xfe, 0x01]), LegacyPing::V1_4);
        // mcstatus sends `FE 01 FA` alone.
        assert_eq!(parse(&[0xfe, 0x01, 0xfa]), None);
        assert_eq!(fallback(&[0xfe, 0x01, 0xfa]), LegacyPing::V1_4);
        assert_eq!(parse(&[0xfe, 0x00]), Some(LegacyPing::Beta));
        let full = ping_1_6("mc.example.com", 25565);
        assert_eq!(
            parse(&full),
            Some(LegacyPing::V1_6 {
                protocol: 78,
                hostname: "mc.example.com".into(),
                port: 25565
            })
        );
        // Cut anywhere after FA, it waits for the rest.
        for cut in 3..full.len() {
            assert_eq!(parse(&full[..cut]), None, "cut at {cut}");
        }
        // A plugin message on another channel is still a ping.
        let mut other = full.clone();
        other[6] = b'X';
        assert_eq!(parse(&other), Some(LegacyPing::V1_4));
        assert!(full.len() <= MAX_LEGACY_PING);
    }

    #[test]
    fn answers_are_kick_packets_in_utf16() {
        let status = LegacyStatus {
            version: "wakegate",
            motd: "§7sleeping",
            online: 0,
            max: 20,
        };
        let out = answer(&LegacyPing::V1_4, &status);
        assert_eq!(out[0], 0xff);
        let len = u16::from_be_bytes([out[1], out[2]]) as usize;
        assert_eq!(out.len(), 3 + 2 * len);
        let text = utf16(&out[3..]).unwrap();
        let fields: Vec<&str> = text.split('\0').collect();
        assert_eq!(fields, ["§1", "127", "wakegate", "§7sleeping", "0", "20"]);
        // The first bytes wiki.vg shows: FF, length, then § 1 NUL.
        assert_eq!(&out[3..9], &[0x00, 0xa7, 0x00, 0x31, 0x00, 0x00]);
        let beta = answer(&LegacyPing::Beta, &status);
        assert_eq!(utf16(&beta[3..]).unwrap(), "sleeping§0§20");
    }
}
