//! Minecraft Bedrock's RakNet offline messages: what a client sends before it has a
//! connection (the unconnected ping, the first open-connection request) and the server's
//! unconnected pong with its `;`-separated advertisement. Parsing never panics and never
//! trusts a length (fuzzed by `fuzz/fuzz_targets/raknet.rs`). Connected datagrams are not
//! decoded: once a join is under way, wakegate only relays them.

pub mod ping;

use std::fmt;

/// The bytes every offline message carries, which tell them apart from connected datagrams.
pub const MAGIC: [u8; 16] = [
    0x00, 0xff, 0xff, 0x00, 0xfe, 0xfe, 0xfe, 0xfe, 0xfd, 0xfd, 0xfd, 0xfd, 0x12, 0x34, 0x56, 0x78,
];

pub const UNCONNECTED_PING: u8 = 0x01;
/// Sent by clients that only want servers with free slots; answered the same way.
pub const UNCONNECTED_PING_OPEN: u8 = 0x02;
pub const OPEN_CONNECTION_REQUEST_1: u8 = 0x05;
pub const UNCONNECTED_PONG: u8 = 0x1c;

/// The longest offline message a client sends: its first open-connection request is padded to
/// its MTU, and RakNet's largest (1492, less the IP and UDP headers) fits an Ethernet frame.
/// Anything longer is no join a server would take (RakNet's own receive buffer is 1492 bytes).
pub const MAX_OFFLINE: usize = 1500;

/// The longest advertisement string read or written (servers send ~100 bytes).
pub const MAX_ADVERT: usize = 1024;

/// An offline message a client sent, as far as wakegate needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offline {
    /// An unconnected ping: the client's time (echoed in the pong) and its GUID.
    Ping { time: u64, client: u64 },
    /// The first open-connection request of a join: the client's RakNet protocol version and
    /// the size of the datagram (its MTU probe).
    OpenRequest1 { raknet: u8, mtu: usize },
}

/// Why a datagram is not an offline message wakegate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the datagram is empty")]
    Empty,
    #[error("packet 0x{0:02x} is not an offline message wakegate reads")]
    Other(u8),
    #[error("packet 0x{id:02x} is {len} bytes, shorter than its fields")]
    Truncated { id: u8, len: usize },
    #[error("packet 0x{id:02x} is {len} bytes, over RakNet's largest ({MAX_OFFLINE})")]
    Oversized { id: u8, len: usize },
    #[error("packet 0x{0:02x} lacks RakNet's offline magic")]
    NoMagic(u8),
    #[error("the pong's advertisement is {0} bytes, over {MAX_ADVERT}")]
    TooLong(usize),
    #[error("the pong's advertisement is not UTF-8")]
    NotText,
}

fn u64_at(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

/// Reads a client's offline message.
pub fn parse(datagram: &[u8]) -> Result<Offline, Error> {
    let (&id, _) = datagram.split_first().ok_or(Error::Empty)?;
    let truncated = Error::Truncated {
        id,
        len: datagram.len(),
    };
    let offline = matches!(
        id,
        UNCONNECTED_PING | UNCONNECTED_PING_OPEN | OPEN_CONNECTION_REQUEST_1
    );
    if offline && datagram.len() > MAX_OFFLINE {
        return Err(Error::Oversized {
            id,
            len: datagram.len(),
        });
    }
    match id {
        UNCONNECTED_PING | UNCONNECTED_PING_OPEN => {
            // id, time, magic, client GUID
            let time = u64_at(datagram, 1).ok_or(truncated)?;
            let magic = datagram.get(9..25).ok_or(truncated)?;
            if magic != MAGIC {
                return Err(Error::NoMagic(id));
            }
            let client = u64_at(datagram, 25).ok_or(truncated)?;
            Ok(Offline::Ping { time, client })
        }
        OPEN_CONNECTION_REQUEST_1 => {
            // id, magic, RakNet protocol, zero padding up to the MTU
            let magic = datagram.get(1..17).ok_or(truncated)?;
            if magic != MAGIC {
                return Err(Error::NoMagic(id));
            }
            let raknet = *datagram.get(17).ok_or(truncated)?;
            Ok(Offline::OpenRequest1 {
                raknet,
                mtu: datagram.len(),
            })
        }
        other => Err(Error::Other(other)),
    }
}

/// An unconnected ping, as a client sends it.
pub fn ping(time: u64, client: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(UNCONNECTED_PING);
    out.extend_from_slice(&time.to_be_bytes());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&client.to_be_bytes());
    out
}

/// A server's unconnected pong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The time of the ping it answers.
    pub time: u64,
    pub server: u64,
    pub advert: Advert,
}

impl Pong {
    pub fn encode(&self) -> Vec<u8> {
        let text = self.advert.to_string();
        // Cut at a character, so that what is sent stays UTF-8.
        let end = (0..=text.len().min(MAX_ADVERT))
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let text = &text.as_bytes()[..end];
        let mut out = Vec::with_capacity(35 + text.len());
        out.push(UNCONNECTED_PONG);
        out.extend_from_slice(&self.time.to_be_bytes());
        out.extend_from_slice(&self.server.to_be_bytes());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text);
        out
    }

    /// Reads a server's pong.
    pub fn parse(datagram: &[u8]) -> Result<Pong, Error> {
        let (&id, _) = datagram.split_first().ok_or(Error::Empty)?;
        if id != UNCONNECTED_PONG {
            return Err(Error::Other(id));
        }
        let truncated = Error::Truncated {
            id,
            len: datagram.len(),
        };
        let time = u64_at(datagram, 1).ok_or(truncated)?;
        let server = u64_at(datagram, 9).ok_or(truncated)?;
        if datagram.get(17..33).ok_or(truncated)? != MAGIC {
            return Err(Error::NoMagic(id));
        }
        let len = datagram.get(33..35).ok_or(truncated)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        if len > MAX_ADVERT {
            return Err(Error::TooLong(len));
        }
        let text = datagram.get(35..35 + len).ok_or(truncated)?;
        let text = std::str::from_utf8(text).map_err(|_| Error::NotText)?;
        Ok(Pong {
            time,
            server,
            advert: Advert::parse(text),
        })
    }

    /// The same pong answering another ping (`time`): a cached one is echoed this way.
    pub fn for_ping(&self, time: u64) -> Pong {
        Pong {
            time,
            ..self.clone()
        }
    }
}

/// The `;`-separated advertisement of a pong: `MCPE;MOTD;protocol;version;online;max;
/// server id;level name;game mode;game mode number;port v4;port v6;`. Fields a server left
/// out read as empty, numbers that do not parse as 0; fields past the known ones are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advert {
    pub edition: String,
    pub motd: String,
    pub protocol: u32,
    pub version: String,
    pub online: u32,
    pub max: u32,
    pub server_id: String,
    /// Shown as the second line of the entry in the client's server list.
    pub level: String,
    pub game_mode: String,
    pub game_mode_number: String,
    pub port_v4: String,
    pub port_v6: String,
    pub rest: Vec<String>,
}

impl Advert {
    pub fn parse(text: &str) -> Advert {
        let mut fields = text.split(';').map(str::to_string);
        let mut next = || fields.next().unwrap_or_default();
        let number = |s: String| s.trim().parse().unwrap_or(0);
        let mut advert = Advert {
            edition: next(),
            motd: next(),
            protocol: number(next()),
            version: next(),
            online: number(next()),
            max: number(next()),
            server_id: next(),
            level: next(),
            game_mode: next(),
            game_mode_number: next(),
            port_v4: next(),
            port_v6: next(),
            rest: Vec::new(),
        };
        advert.rest = fields.filter(|f| !f.is_empty()).collect();
        advert
    }
}

/// Strips what would break the `;`-separated string.
fn field(text: &str) -> String {
    text.replace(';', ",")
}

impl fmt::Display for Advert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{};{};{};{};{};{};{};{};{};{};{};{};",
            field(&self.edition),
            field(&self.motd),
            self.protocol,
            field(&self.version),
            self.online,
            self.max,
            field(&self.server_id),
            field(&self.level),
            field(&self.game_mode),
            field(&self.game_mode_number),
            field(&self.port_v4),
            field(&self.port_v6),
        )?;
        for extra in &self.rest {
            write!(f, "{};", field(extra))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_reads_back() {
        let datagram = ping(12345, 0xdead_beef);
        assert_eq!(
            parse(&datagram),
            Ok(Offline::Ping {
                time: 12345,
                client: 0xdead_beef
            })
        );
        for cut in 0..datagram.len() {
            assert!(parse(&datagram[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = datagram.clone();
        bad[10] ^= 1;
        assert_eq!(parse(&bad), Err(Error::NoMagic(1)));
    }

    #[test]
    fn an_open_connection_request_reads_its_mtu() {
        let mut datagram = vec![OPEN_CONNECTION_REQUEST_1];
        datagram.extend_from_slice(&MAGIC);
        datagram.push(11);
        datagram.resize(1464, 0);
        assert_eq!(
            parse(&datagram),
            Ok(Offline::OpenRequest1 {
                raknet: 11,
                mtu: 1464
            })
        );
        // A request padded past any MTU RakNet uses is no join.
        datagram.resize(MAX_OFFLINE + 1, 0);
        assert_eq!(
            parse(&datagram),
            Err(Error::Oversized {
                id: OPEN_CONNECTION_REQUEST_1,
                len: MAX_OFFLINE + 1
            })
        );
        assert_eq!(parse(&[0x84, 0, 0, 0]), Err(Error::Other(0x84)));
        assert_eq!(parse(&[]), Err(Error::Empty));
    }

    #[test]
    fn a_pong_round_trips_with_its_advertisement() {
        let text = "MCPE;Dedicated Server;766;1.21.50;2;10;13253860892328930865;Bedrock level;Survival;1;19132;19133;";
        let advert = Advert::parse(text);
        assert_eq!((advert.protocol, advert.online, advert.max), (766, 2, 10));
        assert_eq!(advert.level, "Bedrock level");
        assert_eq!(advert.to_string(), text);
        let pong = Pong {
            time: 7,
            server: 99,
            advert,
        };
        let bytes = pong.encode();
        assert_eq!(Pong::parse(&bytes), Ok(pong.clone()));
        assert_eq!(Pong::parse(&pong.for_ping(8).encode()).unwrap().time, 8);
        for cut in 0..bytes.len() {
            assert!(Pong::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_short_advertisement_reads_as_empty_fields() {
        let advert = Advert::parse("MCPE;hi");
        assert_eq!(advert.motd, "hi");
        assert_eq!((advert.protocol, advert.online), (0, 0));
        let semicolons = Advert {
            motd: "a;b".into(),
            ..Advert::default()
        };
        assert_eq!(Advert::parse(&semicolons.to_string()).motd, "a,b");
    }
}
