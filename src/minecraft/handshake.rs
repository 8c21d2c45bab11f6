//! The handshake, the first packet of every connection: the client's protocol, the server
//! address it was told to join (what wakegate routes on) and what it wants next.

use super::error::{CodecError, Result};
use super::limits::MAX_SERVER_ADDRESS;
use super::version::{HANDSHAKE, Protocol};
use super::wire::{Decoder, expect_id, packet, put_string, put_varint};

/// What the client wants after its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    /// A server-list ping.
    Status,
    /// A player joining.
    Login,
    /// A player joining after a Transfer packet (1.20.5 and later).
    Transfer,
}

impl Intent {
    pub fn id(self) -> i32 {
        match self {
            Intent::Status => 1,
            Intent::Login => 2,
            Intent::Transfer => 3,
        }
    }

    /// Login and transfer both lead to a login start.
    pub fn is_login(self) -> bool {
        matches!(self, Intent::Login | Intent::Transfer)
    }
}

/// The server address of a handshake, as the client sent it and as wakegate routes on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    raw: String,
    hostname: String,
    marker: Option<usize>,
}

impl ServerAddress {
    /// Splits what a client sends: the hostname, then, after the first NUL, a marker that mods
    /// add (Forge writes `\0FML\0`, `\0FML2\0` or `\0FML3\0`; proxies in BungeeCord's
    /// forwarding mode write the player's IP and UUID). The hostname loses trailing dots (a
    /// fully qualified name such as `mc.example.com.`) and is lower-cased, for routing.
    pub fn new(raw: &str) -> Self {
        let (host, marker) = match raw.find('\0') {
            Some(nul) => (&raw[..nul], Some(nul + 1)),
            None => (raw, None),
        };
        ServerAddress {
            raw: raw.to_owned(),
            hostname: host.trim_end_matches('.').to_lowercase(),
            marker,
        }
    }

    /// The address exactly as sent, marker included.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// The lower-case hostname without trailing dot and marker: what routing compares.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// What follows the first NUL, e.g. `FML2\0` for a Forge 1.13–1.17 client.
    pub fn marker(&self) -> Option<&str> {
        self.marker.map(|start| &self.raw[start..])
    }

    /// The Forge handshake version the marker announces: 1 (`FML`), 2 (`FML2`), 3 (`FML3`).
    pub fn forge(&self) -> Option<u8> {
        match self.marker()?.split('\0').next()? {
            "FML" => Some(1),
            "FML2" => Some(2),
            "FML3" => Some(3),
            _ => None,
        }
    }
}

/// The first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub protocol: Protocol,
    pub address: ServerAddress,
    pub port: u16,
    pub intent: Intent,
}

impl Handshake {
    /// Parses a handshake packet (id and payload).
    pub fn parse(body: &[u8]) -> Result<Handshake> {
        let mut d = Decoder::new(body);
        expect_id(&mut d, HANDSHAKE, "a handshake")?;
        let protocol = Protocol(d.varint("protocol version")?);
        let address = ServerAddress::new(d.string("server address", MAX_SERVER_ADDRESS)?);
        let port = d.u16("port")?;
        let intent = match d.varint("next state")? {
            1 => Intent::Status,
            2 => Intent::Login,
            3 => Intent::Transfer,
            other => return Err(CodecError::BadIntent(other)),
        };
        d.finish("handshake")?;
        Ok(Handshake {
            protocol,
            address,
            port,
            intent,
        })
    }

    /// The whole frame, with the address exactly as it was received. With a changed intent
    /// (transfer → login), this is the handshake to send a backend that does not accept
    /// transfers.
    pub fn encode(&self) -> Result<Vec<u8>> {
        packet(HANDSHAKE, |out| {
            put_varint(out, self.protocol.0);
            put_string(
                out,
                self.address.raw(),
                "server address",
                MAX_SERVER_ADDRESS,
            )?;
            out.extend_from_slice(&self.port.to_be_bytes());
            put_varint(out, self.intent.id());
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use crate::minecraft::*;

    #[test]
    fn hostnames_lose_trailing_dots_case_and_forge_markers_but_keep_the_raw_bytes() {
        let cases: &[(&str, &str, Option<&str>, Option<u8>)] = &[
            ("mc.example.com", "mc.example.com", None, None),
            ("MC.Example.COM.", "mc.example.com", None, None),
            (
                "mc.example.com.\0FML\0",
                "mc.example.com",
                Some("FML\0"),
                Some(1),
            ),
            (
                "Play.Example.com\0FML2\0",
                "play.example.com",
                Some("FML2\0"),
                Some(2),
            ),
            (
                "mc.example.com.\0FML3\0",
                "mc.example.com",
                Some("FML3\0"),
                Some(3),
            ),
            // BungeeCord forwarding: host, client IP, UUID after NULs.
            (
                "mc.example.com\u{0}10.0.0.7\u{0}069a79f444e94726a5befca90e38aaf5",
                "mc.example.com",
                Some("10.0.0.7\u{0}069a79f444e94726a5befca90e38aaf5"),
                None,
            ),
            ("\0FML2\0", "", Some("FML2\0"), Some(2)),
            ("127.0.0.1", "127.0.0.1", None, None),
            ("ÉTÉ.example", "été.example", None, None),
        ];
        for &(raw, hostname, marker, forge) in cases {
            let address = ServerAddress::new(raw);
            assert_eq!(address.raw(), raw);
            assert_eq!(address.hostname(), hostname, "{raw:?}");
            assert_eq!(address.marker(), marker, "{raw:?}");
            assert_eq!(address.forge(), forge, "{raw:?}");
        }
        // In a handshake, with the frame replayed exactly and re-encoded to the same bytes.
        let handshake = Handshake {
            protocol: Protocol(763),
            address: ServerAddress::new("Survival.Example.org.\0FML3\0"),
            port: 25565,
            intent: Intent::Login,
        };
        let bytes = handshake.encode().unwrap();
        let frame = one_frame(&bytes, MAX_HANDSHAKE_FRAME);
        let parsed = Handshake::parse(frame.body()).unwrap();
        assert_eq!(parsed, handshake);
        assert_eq!(parsed.address.hostname(), "survival.example.org");
        assert_eq!(parsed.address.forge(), Some(3));
        assert_eq!(parsed.encode().unwrap(), bytes);
    }

    #[test]
    fn a_transfer_handshake_rewritten_to_login_keeps_everything_else() {
        let transfer = Handshake {
            protocol: Protocol(769),
            address: ServerAddress::new("play.example.com"),
            port: 25565,
            intent: Intent::Transfer,
        };
        let bytes = transfer.encode().unwrap();
        assert_eq!(*bytes.last().unwrap(), 3);
        let login = Handshake {
            intent: Intent::Login,
            ..Handshake::parse(one_frame(&bytes, MAX_HANDSHAKE_FRAME).body()).unwrap()
        };
        let rewritten = login.encode().unwrap();
        assert_eq!(rewritten[..rewritten.len() - 1], bytes[..bytes.len() - 1]);
        assert_eq!(*rewritten.last().unwrap(), 2);
    }

    #[test]
    fn malformed_handshakes_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("00 2f 09 6c6f63616c686f7374 63dd 04", "next state 4"),
            (
                "00 2f 09 6c6f63616c686f7374 63dd",
                "ends in the middle of its next state",
            ),
            (
                "00 2f 09 6c6f63616c686f7374 63",
                "ends in the middle of its port",
            ),
            (
                "00 2f 09 6c6f63616c",
                "ends in the middle of its server address",
            ),
            (
                "00 2f 09 6c6f63616c686f7374 63dd 01 00",
                "1 unexpected bytes after the end of the handshake",
            ),
            (
                "01 2f 09 6c6f63616c686f7374 63dd 01",
                "packet id 0x01 where a handshake was expected",
            ),
            (
                "00 ffffffffff01",
                "protocol version is a VarInt longer than 5 bytes",
            ),
            ("00 2f 02 c328 63dd 01", "server address is not valid UTF-8"),
            ("00 2f ffffffff0f", "server address has a negative length"),
        ];
        for &(bytes, expected) in cases {
            let err = Handshake::parse(&hex(bytes)).unwrap_err().to_string();
            assert!(err.contains(expected), "{bytes}: {err}");
        }
        // A server address of 256 characters.
        let mut body = hex("00 2f 8002");
        body.extend(vec![b'a'; 256]);
        body.extend(hex("63dd 02"));
        let err = Handshake::parse(&body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server address is 256 characters long, over its limit of 255 characters"
        );
        // 255 characters of 3 bytes each is the largest legal handshake, and it fits the limit.
        let handshake = Handshake {
            protocol: Protocol(-1),
            address: ServerAddress::new(&"字".repeat(255)),
            port: 65535,
            intent: Intent::Transfer,
        };
        let bytes = handshake.encode().unwrap();
        // id, a 5-byte protocol, 2 + 765 address bytes, port, next state; MAX_HANDSHAKE_FRAME
        // also leaves room for an over-long next state VarInt.
        assert_eq!(bytes.len(), 2 + 1 + 5 + 2 + 765 + 2 + 1);
        assert_eq!(
            Handshake::parse(one_frame(&bytes, MAX_HANDSHAKE_FRAME).body()).unwrap(),
            handshake
        );
    }
}
