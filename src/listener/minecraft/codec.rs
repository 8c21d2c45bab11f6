//! The Minecraft Java edition protocol, as much of it as a gateway speaks before a backend is
//! up: frames, the handshake, status and ping, login start, and the few packets wakegate sends
//! (status response, pong, disconnects, and the login success, keep-alive and Transfer packets
//! of the `transfer` strategy), for every protocol from 1.7 (4) to the latest.
//!
//! Parsing is pure and strict: every packet is decoded from a byte slice, every length is
//! bounded, strings must be valid UTF-8 within their protocol maximum, and a packet with bytes
//! left over is refused, as vanilla servers do. The only I/O is [`FrameReader`], which reads
//! whole frames from a socket without ever buffering more than the frame limit it is given plus
//! one small read, and keeps what it read so the listener can replay it to the backend.
//!
//! Nothing here compresses or encrypts: wakegate only speaks the protocol before login
//! completes (compression and encryption start after it), and forwards everything else as
//! bytes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};

// ---------------------------------------------------------------------------------------------
// Limits

/// The largest frame vanilla accepts: a length prefix of at most 3 VarInt bytes, so
/// 2 MiB − 1. The limit for login and configuration traffic wakegate reads, and the default.
pub const MAX_FRAME: usize = 2_097_151;

/// The largest handshake a vanilla server accepts: packet id (1), protocol VarInt (5), server
/// address (a 2-byte length and up to 255 characters of 3 UTF-8 bytes each), port (2) and next
/// state VarInt (5). A client that announces a longer first frame is not a Minecraft client.
pub const MAX_HANDSHAKE_FRAME: usize = 1 + 5 + 2 + MAX_SERVER_ADDRESS * 3 + 2 + 5;

/// The limit for frames of the status stage and for login start. The largest of them is the
/// 1.19 login start with signature data, about 4.7 KB (a 512-byte key and a 4096-byte
/// signature); a status request is 1 byte and a ping 9.
pub const MAX_LOGIN_FRAME: usize = 8 * 1024;

/// How much [`FrameReader`] asks the socket for when it does not yet know how long the next
/// frame is. Large enough for a handshake and a login start sent together.
pub const READ_AHEAD: usize = 512;

/// The server address in a handshake, in characters (UTF-16 units, as Java counts them).
pub const MAX_SERVER_ADDRESS: usize = 255;
/// A player name, in characters.
pub const MAX_PLAYER_NAME: usize = 16;
/// The JSON of a status response, in characters.
pub const MAX_STATUS_JSON: usize = 32_767;
/// The JSON text component of a login disconnect (and of a 1.20.2 configuration disconnect).
pub const MAX_CHAT_JSON: usize = 262_144;
/// The host of a Transfer packet, in characters.
pub const MAX_TRANSFER_HOST: usize = 32_767;
/// The public key in 1.19 login start signature data, in bytes (vanilla's limit).
pub const MAX_PUBLIC_KEY: usize = 512;
/// The key signature in 1.19 login start signature data, in bytes (vanilla's limit).
pub const MAX_KEY_SIGNATURE: usize = 4096;

/// Text components deeper than this are refused when they are converted to NBT.
const MAX_TEXT_DEPTH: usize = 64;

// ---------------------------------------------------------------------------------------------
// Errors

/// What was wrong with what a client sent, or with what wakegate was asked to send.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("a frame of {size} bytes, over the {max}-byte limit at this stage of the connection")]
    FrameTooLarge { size: u64, max: usize },
    #[error("an empty frame (every packet starts with its id)")]
    EmptyFrame,
    #[error("the {field} is a VarInt longer than 5 bytes")]
    BadVarInt { field: &'static str },
    #[error("the {field} is a VarLong longer than 10 bytes")]
    BadVarLong { field: &'static str },
    #[error("the {field} is not valid UTF-8")]
    BadUtf8 { field: &'static str },
    #[error("the {field} is {length} {unit} long, over its limit of {max} characters")]
    StringTooLong {
        field: &'static str,
        length: usize,
        unit: &'static str,
        max: usize,
    },
    #[error("the {field} is {length} bytes long, over its limit of {max} bytes")]
    BytesTooLong {
        field: &'static str,
        length: usize,
        max: usize,
    },
    #[error("the {field} has a negative length ({length})")]
    NegativeLength { field: &'static str, length: i32 },
    #[error("the packet ends in the middle of its {field}")]
    Truncated { field: &'static str },
    #[error("{extra} unexpected bytes after the end of the {packet} packet")]
    TrailingBytes { packet: &'static str, extra: usize },
    #[error("packet id {id:#04x} where {expected} was expected")]
    UnexpectedPacket { id: i32, expected: &'static str },
    #[error(
        "the handshake asks for next state {0}; only 1 (status), 2 (login) and 3 (transfer) exist"
    )]
    BadIntent(i32),
    #[error("the {field} is the byte {value}, but a boolean is 0 or 1")]
    BadBool { field: &'static str, value: u8 },
    #[error("the {field} is {value}, not a port (0 to 65535)")]
    BadPort { field: &'static str, value: i32 },
    #[error("the player name {0:?} is not 1 to 16 characters without control characters")]
    BadPlayerName(String),
    #[error("protocol {protocol} needs a {field} in its {packet} packet")]
    MissingField {
        packet: &'static str,
        field: &'static str,
        protocol: Protocol,
    },
    #[error("{packet} does not exist in {protocol}; it needs {needs} or later")]
    Unsupported {
        packet: &'static str,
        protocol: Protocol,
        needs: &'static str,
    },
    #[error("the text component cannot be sent as NBT: {0}")]
    BadText(&'static str),
    #[error(
        "a pre-1.7 (legacy) server list ping; wakegate speaks the protocol of Minecraft 1.7 and later"
    )]
    LegacyPing,
    #[error("the client sent no complete handshake within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("the connection closed{}", closed_suffix(*buffered))]
    Closed { buffered: usize },
    #[error("reading from the connection failed: {0}")]
    Io(#[from] std::io::Error),
}

fn closed_suffix(buffered: usize) -> String {
    match buffered {
        0 => String::new(),
        n => format!(" in the middle of a frame ({n} bytes of it were read)"),
    }
}

type Result<T, E = CodecError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Protocol versions

/// A protocol version number as a client announces it in its handshake.
///
/// Numbers wakegate does not know are treated as newer than every release it knows, with the
/// packet layouts of the latest one; so are snapshots (numbers from `0x4000_0000`), which in
/// practice are recent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Protocol(pub i32);

/// Release protocol numbers and the versions that speak them (minecraft-data's
/// `protocolVersions.json`), for messages and logs.
const RELEASES: &[(i32, &str)] = &[
    (4, "1.7.2–1.7.5"),
    (5, "1.7.6–1.7.10"),
    (47, "1.8–1.8.9"),
    (107, "1.9"),
    (108, "1.9.1"),
    (109, "1.9.2"),
    (110, "1.9.3–1.9.4"),
    (210, "1.10–1.10.2"),
    (315, "1.11"),
    (316, "1.11.1–1.11.2"),
    (335, "1.12"),
    (338, "1.12.1"),
    (340, "1.12.2"),
    (393, "1.13"),
    (401, "1.13.1"),
    (404, "1.13.2"),
    (477, "1.14"),
    (480, "1.14.1"),
    (485, "1.14.2"),
    (490, "1.14.3"),
    (498, "1.14.4"),
    (573, "1.15"),
    (575, "1.15.1"),
    (578, "1.15.2"),
    (735, "1.16"),
    (736, "1.16.1"),
    (751, "1.16.2"),
    (753, "1.16.3"),
    (754, "1.16.4–1.16.5"),
    (755, "1.17"),
    (756, "1.17.1"),
    (757, "1.18–1.18.1"),
    (758, "1.18.2"),
    (759, "1.19"),
    (760, "1.19.1–1.19.2"),
    (761, "1.19.3"),
    (762, "1.19.4"),
    (763, "1.20–1.20.1"),
    (764, "1.20.2"),
    (765, "1.20.3–1.20.4"),
    (766, "1.20.5–1.20.6"),
    (767, "1.21–1.21.1"),
    (768, "1.21.2–1.21.3"),
    (769, "1.21.4"),
    (770, "1.21.5"),
    (771, "1.21.6"),
    (772, "1.21.7–1.21.8"),
    (773, "1.21.9–1.21.10"),
    (774, "1.21.11"),
    (775, "26.1–26.1.2"),
    (776, "26.2"),
    (777, "26.3"),
];

impl Protocol {
    /// 1.20.2: the first with a configuration phase between login and play.
    pub const CONFIGURATION: Protocol = Protocol(764);
    /// 1.20.5: the first with the Transfer packet and the "transfer" handshake intent.
    pub const TRANSFER: Protocol = Protocol(766);
    /// The newest release this table knows.
    pub const LATEST_KNOWN: Protocol = Protocol(RELEASES[RELEASES.len() - 1].0);

    /// The release versions that speak this protocol, e.g. `1.20.3–1.20.4`.
    pub fn version_name(self) -> Option<&'static str> {
        RELEASES
            .binary_search_by_key(&self.0, |&(number, _)| number)
            .ok()
            .map(|i| RELEASES[i].1)
    }

    /// Snapshot and pre-release numbers have bit 30 set.
    pub fn is_snapshot(self) -> bool {
        self.0 >= 0x4000_0000
    }

    /// Whether the client can be sent elsewhere with a Transfer packet (1.20.5 and later).
    pub fn supports_transfer(self) -> bool {
        self >= Self::TRANSFER
    }

    /// Whether login leads to a configuration phase (1.20.2 and later) instead of play.
    pub fn has_configuration(self) -> bool {
        self >= Self::CONFIGURATION
    }

    fn era(self) -> &'static Era {
        ERAS.iter()
            .rev()
            .find(|era| self.0 >= era.since)
            .unwrap_or(&ERAS[0])
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version_name() {
            Some(name) => write!(f, "Minecraft {name} (protocol {})", self.0),
            None if self.is_snapshot() => write!(f, "a snapshot (protocol {:#x})", self.0),
            None => write!(f, "protocol {} (an unknown version)", self.0),
        }
    }
}

/// How the packets wakegate reads or writes after the handshake look in a range of versions.
/// Status, login disconnect and login success kept their ids from 1.7 to 26.x; the rest moved.
#[derive(Debug)]
struct Era {
    /// The first protocol number of the range.
    since: i32,
    login_start: LoginStartLayout,
    success_uuid: UuidForm,
    /// Login success carries the profile's properties (1.19 and later).
    success_properties: bool,
    /// Login success ends with a "strict error handling" bool (1.20.5 to 1.21.1 only).
    success_strict_errors: bool,
    /// Serverbound login acknowledged (1.20.2 and later).
    login_acknowledged: Option<i32>,
    configuration: Option<ConfigurationIds>,
}

#[derive(Debug)]
struct ConfigurationIds {
    /// Clientbound.
    disconnect: i32,
    /// Clientbound; the client answers with `keep_alive_response`.
    keep_alive: i32,
    /// Serverbound.
    keep_alive_response: i32,
    /// Serverbound, after the server's finish configuration.
    finish_acknowledged: i32,
    /// Clientbound (1.20.5 and later).
    transfer: Option<i32>,
    /// How the disconnect reason is written: JSON text until 1.20.2, NBT from 1.20.3.
    text_as_nbt: bool,
}

/// The layouts of login start over the versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStartLayout {
    /// Until 1.18.2 (758): the name only.
    Name,
    /// 1.19 (759): the name, then optional signature data (expiry, public key, signature).
    NameSignature,
    /// 1.19.1–1.19.2 (760): as 1.19, then an optional UUID.
    NameSignatureUuid,
    /// 1.19.3–1.20.1 (761–763): the name, then an optional UUID.
    NameOptionalUuid,
    /// 1.20.2 (764) and later: the name, then the UUID.
    NameUuid,
}

/// How login success writes the player's UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UuidForm {
    /// 1.7.2–1.7.5: 32 hexadecimal digits.
    Simple,
    /// 1.7.6–1.15.2: the hyphenated form.
    Hyphenated,
    /// 1.16 and later: 16 bytes.
    Binary,
}

const ERAS: &[Era] = &[
    ERAS_BASE,
    Era {
        since: 5,
        success_uuid: UuidForm::Hyphenated,
        ..ERAS_BASE
    },
    Era {
        since: 735,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 759,
        login_start: LoginStartLayout::NameSignature,
        success_properties: true,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 760,
        login_start: LoginStartLayout::NameSignatureUuid,
        success_properties: true,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 761,
        login_start: LoginStartLayout::NameOptionalUuid,
        success_properties: true,
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 764,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        login_acknowledged: Some(0x03),
        configuration: Some(ConfigurationIds {
            disconnect: 0x01,
            keep_alive: 0x03,
            keep_alive_response: 0x03,
            finish_acknowledged: 0x02,
            transfer: None,
            text_as_nbt: false,
        }),
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 765,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        login_acknowledged: Some(0x03),
        configuration: Some(ConfigurationIds {
            disconnect: 0x01,
            keep_alive: 0x03,
            keep_alive_response: 0x03,
            finish_acknowledged: 0x02,
            transfer: None,
            text_as_nbt: true,
        }),
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 766,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        success_strict_errors: true,
        login_acknowledged: Some(0x03),
        configuration: Some(CONFIGURATION_1_20_5),
        ..ERAS_BINARY_UUID
    },
    Era {
        since: 768,
        login_start: LoginStartLayout::NameUuid,
        success_properties: true,
        success_strict_errors: false,
        login_acknowledged: Some(0x03),
        configuration: Some(CONFIGURATION_1_20_5),
        ..ERAS_BINARY_UUID
    },
];

const ERAS_BASE: Era = Era {
    since: i32::MIN,
    login_start: LoginStartLayout::Name,
    success_uuid: UuidForm::Simple,
    success_properties: false,
    success_strict_errors: false,
    login_acknowledged: None,
    configuration: None,
};

const ERAS_BINARY_UUID: Era = Era {
    success_uuid: UuidForm::Binary,
    ..ERAS_BASE
};

const CONFIGURATION_1_20_5: ConfigurationIds = ConfigurationIds {
    disconnect: 0x02,
    keep_alive: 0x04,
    keep_alive_response: 0x04,
    finish_acknowledged: 0x03,
    transfer: Some(0x0b),
    text_as_nbt: true,
};

// Packet ids that are the same in every version wakegate speaks.
const HANDSHAKE: i32 = 0x00;
const STATUS_REQUEST: i32 = 0x00;
const STATUS_RESPONSE: i32 = 0x00;
const PING: i32 = 0x01;
const PONG: i32 = 0x01;
const LOGIN_START: i32 = 0x00;
const LOGIN_DISCONNECT: i32 = 0x00;
const LOGIN_SUCCESS: i32 = 0x02;

// ---------------------------------------------------------------------------------------------
// Primitive types

/// A player's UUID, sent as 16 big-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Uuid(pub u128);

impl Uuid {
    /// The 32 hexadecimal digits without hyphens, as Mojang's APIs write it.
    pub fn simple(self) -> String {
        format!("{:032x}", self.0)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            v >> 96,
            (v >> 80) & 0xffff,
            (v >> 64) & 0xffff,
            (v >> 48) & 0xffff,
            v & 0xffff_ffff_ffff
        )
    }
}

/// The error of [`Uuid::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a UUID; write it as 32 hexadecimal digits, with or without hyphens")]
pub struct BadUuid(String);

impl FromStr for Uuid {
    type Err = BadUuid;

    /// Reads the hyphenated form (8-4-4-4-12) or 32 digits without hyphens.
    fn from_str(s: &str) -> Result<Self, BadUuid> {
        let bad = || BadUuid(s.to_owned());
        let hyphenated = s.len() == 36
            && s.char_indices()
                .all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23));
        let digits: String = if hyphenated {
            s.chars().filter(|&c| c != '-').collect()
        } else {
            s.to_owned()
        };
        if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        u128::from_str_radix(&digits, 16)
            .map(Uuid)
            .map_err(|_| bad())
    }
}

/// A cursor over the bytes of one packet. Every read is bounded by what is left.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Decoder { rest: bytes }
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.rest
    }

    /// Succeeds only if every byte was read: vanilla refuses a packet with bytes left over.
    pub fn finish(self, packet: &'static str) -> Result<()> {
        match self.rest.len() {
            0 => Ok(()),
            extra => Err(CodecError::TrailingBytes { packet, extra }),
        }
    }

    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(CodecError::Truncated { field });
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N]> {
        let bytes = self.bytes(N, field)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn bool(&mut self, field: &'static str) -> Result<bool> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::BadBool { field, value }),
        }
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub fn i64(&mut self, field: &'static str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    pub fn uuid(&mut self, field: &'static str) -> Result<Uuid> {
        Ok(Uuid(u128::from_be_bytes(self.array(field)?)))
    }

    /// At most 5 bytes, 7 bits each, least significant group first. Like vanilla, bits beyond
    /// the 32nd in the fifth byte are dropped.
    pub fn varint(&mut self, field: &'static str) -> Result<i32> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let byte = self.u8(field)?;
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value as i32);
            }
        }
        Err(CodecError::BadVarInt { field })
    }

    /// At most 10 bytes.
    pub fn varlong(&mut self, field: &'static str) -> Result<i64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = self.u8(field)?;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value as i64);
            }
        }
        Err(CodecError::BadVarLong { field })
    }

    /// A VarInt length and that many bytes of UTF-8, at most `max` characters. Java counts
    /// characters in UTF-16 units, so a character outside the Basic Multilingual Plane (an
    /// emoji) counts twice, as it does for the client.
    pub fn string(&mut self, field: &'static str, max: usize) -> Result<&'a str> {
        let length = self.length(field)?;
        // No character takes more than 3 UTF-8 bytes per UTF-16 unit.
        if length > max.saturating_mul(3) {
            return Err(CodecError::StringTooLong {
                field,
                length,
                unit: "bytes",
                max,
            });
        }
        let bytes = self.bytes(length, field)?;
        let text = std::str::from_utf8(bytes).map_err(|_| CodecError::BadUtf8 { field })?;
        check_chars(text, field, max)?;
        Ok(text)
    }

    /// A VarInt length and that many bytes, at most `max`.
    pub fn byte_array(&mut self, field: &'static str, max: usize) -> Result<&'a [u8]> {
        let length = self.length(field)?;
        if length > max {
            return Err(CodecError::BytesTooLong { field, length, max });
        }
        self.bytes(length, field)
    }

    fn length(&mut self, field: &'static str) -> Result<usize> {
        let length = self.varint(field)?;
        usize::try_from(length).map_err(|_| CodecError::NegativeLength { field, length })
    }
}

fn check_chars(text: &str, field: &'static str, max: usize) -> Result<()> {
    let length = text.encode_utf16().count();
    if length > max {
        return Err(CodecError::StringTooLong {
            field,
            length,
            unit: "characters",
            max,
        });
    }
    Ok(())
}

/// Appends a VarInt (1 to 5 bytes; negative numbers take 5).
pub fn put_varint(out: &mut Vec<u8>, value: i32) {
    let mut v = value as u32;
    loop {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
}

/// Appends a VarLong (1 to 10 bytes).
pub fn put_varlong(out: &mut Vec<u8>, value: i64) {
    let mut v = value as u64;
    loop {
        if v < 0x80 {
            out.push(v as u8);
            return;
        }
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
}

/// Appends a string with its VarInt length, refusing one over `max` characters.
pub fn put_string(out: &mut Vec<u8>, text: &str, field: &'static str, max: usize) -> Result<()> {
    check_chars(text, field, max)?;
    put_varint(out, text.len() as i32);
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Appends a byte array with its VarInt length, refusing one over `max` bytes.
pub fn put_byte_array(
    out: &mut Vec<u8>,
    bytes: &[u8],
    field: &'static str,
    max: usize,
) -> Result<()> {
    if bytes.len() > max {
        return Err(CodecError::BytesTooLong {
            field,
            length: bytes.len(),
            max,
        });
    }
    put_varint(out, bytes.len() as i32);
    out.extend_from_slice(bytes);
    Ok(())
}

fn put_uuid(out: &mut Vec<u8>, uuid: Uuid) {
    out.extend_from_slice(&uuid.0.to_be_bytes());
}

/// Builds a whole frame: the length prefix, the packet id, then what `write` appends.
fn packet(id: i32, write: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity(64);
    put_varint(&mut body, id);
    write(&mut body)?;
    if body.len() > MAX_FRAME {
        return Err(CodecError::FrameTooLarge {
            size: body.len() as u64,
            max: MAX_FRAME,
        });
    }
    let mut frame = Vec::with_capacity(body.len() + 3);
    put_varint(&mut frame, body.len() as i32);
    frame.extend_from_slice(&body);
    Ok(frame)
}

// ---------------------------------------------------------------------------------------------
// Frames

/// Where the next frame in `buf` ends, if all of it is there: `Some((header, total))` with the
/// length of the length prefix and of the whole frame. `None` means more bytes are needed.
/// Fails as soon as the prefix is malformed or announces more than `max` bytes, before any of
/// the body is read.
pub fn frame_bounds(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>> {
    let mut length: u32 = 0;
    for (i, &byte) in buf.iter().take(5).enumerate() {
        length |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let size = u64::from(length);
            if size > max as u64 {
                return Err(CodecError::FrameTooLarge { size, max });
            }
            if length == 0 {
                return Err(CodecError::EmptyFrame);
            }
            let header = i + 1;
            let total = header + length as usize;
            return Ok((buf.len() >= total).then_some((header, total)));
        }
    }
    if buf.len() >= 5 {
        return Err(CodecError::BadVarInt {
            field: "frame length",
        });
    }
    Ok(None)
}

/// One frame as it arrived: its length prefix, packet id and payload, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    raw: Vec<u8>,
    header: usize,
}

impl Frame {
    /// Splits the first frame off `buf` if it is complete.
    pub fn parse(buf: &[u8], max: usize) -> Result<Option<Frame>> {
        Ok(frame_bounds(buf, max)?.map(|(header, total)| Frame {
            raw: buf[..total].to_vec(),
            header,
        }))
    }

    /// The whole frame as read, length prefix included: what to replay to a backend.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The packet: its id and payload, without the length prefix.
    pub fn body(&self) -> &[u8] {
        &self.raw[self.header..]
    }

    /// The packet id.
    pub fn id(&self) -> Result<i32> {
        Decoder::new(self.body()).varint("packet id")
    }

    pub fn into_raw(self) -> Vec<u8> {
        self.raw
    }
}

/// Reads whole frames from a connection. Bytes read past the frames returned so far stay in
/// its buffer ([`FrameReader::buffered`]), so a listener that forwards the connection replays
/// the frames it parsed and then these bytes, and the backend sees exactly what the client
/// sent.
///
/// It never holds more than the frame limit of the current call plus the length prefix and
/// one [`READ_AHEAD`]: a frame's length is checked before any of its body is read, and the
/// buffer grows with the bytes that arrive, not with the length a client announces.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// Bytes read from the connection and not yet returned in a frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// How many bytes the buffer holds allocated (for tests of the memory bound).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The connection and the bytes read past the last frame returned.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        (self.inner, self.buf)
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// The next frame, at most `max` bytes long (without its length prefix).
    pub async fn next_frame(&mut self, max: usize) -> Result<Frame> {
        loop {
            let (want, capacity) = match frame_bounds(&self.buf, max)? {
                Some((header, total)) => {
                    let raw = if self.buf.len() == total {
                        std::mem::take(&mut self.buf)
                    } else {
                        let rest = self.buf.split_off(total);
                        std::mem::replace(&mut self.buf, rest)
                    };
                    return Ok(Frame { raw, header });
                }
                None => match self.expected_total(max) {
                    // The frame's length is known: read the rest of it and no more, into a
                    // buffer that doubles as bytes arrive, so a client that announces a large
                    // frame and sends little of it costs little.
                    Some(total) => {
                        let grown = (self.buf.len() + READ_AHEAD).max(self.buf.capacity() * 2);
                        (total - self.buf.len(), grown.min(total))
                    }
                    None => (READ_AHEAD, self.buf.len() + READ_AHEAD),
                },
            };
            self.fill(want, capacity).await?;
        }
    }

    /// The total length of the incomplete frame at the start of the buffer, once its length
    /// prefix is complete (`frame_bounds` already checked it against `max`).
    fn expected_total(&self, max: usize) -> Option<usize> {
        let mut decoder = Decoder::new(&self.buf);
        let length = decoder.varint("frame length").ok()? as u32 as usize;
        let header = self.buf.len() - decoder.remaining().len();
        (length <= max).then_some(header + length)
    }

    /// Reads at most `want` more bytes, into a buffer of at least `capacity` bytes (which is
    /// more than it holds). The read never grows the buffer past that.
    async fn fill(&mut self, want: usize, capacity: usize) -> Result<()> {
        if capacity > self.buf.capacity() {
            self.buf.reserve_exact(capacity - self.buf.len());
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = (&mut self.inner)
            .take(want.min(room) as u64)
            .read_buf(&mut self.buf)
            .await?;
        if read == 0 {
            return Err(CodecError::Closed {
                buffered: self.buf.len(),
            });
        }
        Ok(())
    }
}

/// Reads and parses the first frame of a connection, which must be a handshake, within
/// `timeout` (a client that connects and sends nothing, or sends it byte by byte, is dropped
/// when it passes). Returns the frame too, to replay it to the backend.
pub async fn read_handshake<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    timeout: Duration,
) -> Result<(Handshake, Frame)> {
    let read = async {
        if reader.buf.is_empty() {
            reader.fill(READ_AHEAD, READ_AHEAD).await?;
        }
        // Pre-1.7 clients open with 0xFE; vanilla answers those with its legacy handler too.
        if reader.buf.first() == Some(&0xfe) {
            return Err(CodecError::LegacyPing);
        }
        let frame = reader.next_frame(MAX_HANDSHAKE_FRAME).await?;
        let handshake = Handshake::parse(frame.body())?;
        Ok((handshake, frame))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(CodecError::Timeout(timeout)))
}

fn expect_id(decoder: &mut Decoder<'_>, id: i32, expected: &'static str) -> Result<()> {
    match decoder.varint("packet id")? {
        found if found == id => Ok(()),
        found => Err(CodecError::UnexpectedPacket {
            id: found,
            expected,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake

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

// ---------------------------------------------------------------------------------------------
// Status

/// What a client sends in the status stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRequest {
    /// Asks for the status response.
    Status,
    /// Asks for a pong with the same payload, to measure latency.
    Ping(i64),
}

impl StatusRequest {
    pub fn parse(body: &[u8]) -> Result<StatusRequest> {
        let mut d = Decoder::new(body);
        let request = match d.varint("packet id")? {
            STATUS_REQUEST => StatusRequest::Status,
            PING => StatusRequest::Ping(d.i64("ping payload")?),
            id => {
                return Err(CodecError::UnexpectedPacket {
                    id,
                    expected: "a status request or a ping",
                });
            }
        };
        d.finish("status request")?;
        Ok(request)
    }

    pub fn encode(&self) -> Vec<u8> {
        let built = match *self {
            StatusRequest::Status => packet(STATUS_REQUEST, |_| Ok(())),
            StatusRequest::Ping(payload) => packet(PING, |out| {
                out.extend_from_slice(&payload.to_be_bytes());
                Ok(())
            }),
        };
        built.expect("a status request is a few bytes")
    }
}

/// What a server answers in the status stage (to read a backend's status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusResponse {
    /// The status as JSON text.
    Status(String),
    Pong(i64),
}

impl StatusResponse {
    pub fn parse(body: &[u8]) -> Result<StatusResponse> {
        let mut d = Decoder::new(body);
        let response = match d.varint("packet id")? {
            STATUS_RESPONSE => {
                StatusResponse::Status(d.string("status JSON", MAX_STATUS_JSON)?.to_owned())
            }
            PONG => StatusResponse::Pong(d.i64("pong payload")?),
            id => {
                return Err(CodecError::UnexpectedPacket {
                    id,
                    expected: "a status response or a pong",
                });
            }
        };
        d.finish("status response")?;
        Ok(response)
    }
}

// ---------------------------------------------------------------------------------------------
// Login

/// The 1.19 and 1.19.1–1.19.2 chat-signing key a client may send with login start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureData {
    /// When the key expires, in milliseconds since the Unix epoch.
    pub expires_at: i64,
    pub public_key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The packet a client sends to start logging in, in whichever of its layouts the protocol
/// uses ([`LoginStartLayout`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginStart {
    /// 1 to 16 characters, no control characters.
    pub name: String,
    /// Sent by 1.19.1 and later (always from 1.20.2).
    pub uuid: Option<Uuid>,
    /// Sent by 1.19 to 1.19.2 clients that have a chat-signing key.
    pub signature: Option<SignatureData>,
}

impl LoginStart {
    pub fn layout(protocol: Protocol) -> LoginStartLayout {
        protocol.era().login_start
    }

    pub fn parse(body: &[u8], protocol: Protocol) -> Result<LoginStart> {
        let mut d = Decoder::new(body);
        expect_id(&mut d, LOGIN_START, "a login start")?;
        let name = d.string("player name", MAX_PLAYER_NAME)?;
        check_player_name(name)?;
        let layout = Self::layout(protocol);
        let signature = match layout {
            LoginStartLayout::NameSignature | LoginStartLayout::NameSignatureUuid
                if d.bool("has-signature flag")? =>
            {
                Some(SignatureData {
                    expires_at: d.i64("key expiry")?,
                    public_key: d.byte_array("public key", MAX_PUBLIC_KEY)?.to_vec(),
                    signature: d.byte_array("key signature", MAX_KEY_SIGNATURE)?.to_vec(),
                })
            }
            _ => None,
        };
        let uuid = match layout {
            LoginStartLayout::NameSignatureUuid | LoginStartLayout::NameOptionalUuid => d
                .bool("has-UUID flag")?
                .then(|| d.uuid("player UUID"))
                .transpose()?,
            LoginStartLayout::NameUuid => Some(d.uuid("player UUID")?),
            LoginStartLayout::Name | LoginStartLayout::NameSignature => None,
        };
        d.finish("login start")?;
        Ok(LoginStart {
            name: name.to_owned(),
            uuid,
            signature,
        })
    }

    /// The frame a client of `protocol` would send. Fields its layout has no room for are left
    /// out; a UUID is required from 1.20.2.
    pub fn encode(&self, protocol: Protocol) -> Result<Vec<u8>> {
        check_player_name(&self.name)?;
        let layout = Self::layout(protocol);
        packet(LOGIN_START, |out| {
            put_string(out, &self.name, "player name", MAX_PLAYER_NAME)?;
            if matches!(
                layout,
                LoginStartLayout::NameSignature | LoginStartLayout::NameSignatureUuid
            ) {
                out.push(u8::from(self.signature.is_some()));
                if let Some(sig) = &self.signature {
                    out.extend_from_slice(&sig.expires_at.to_be_bytes());
                    put_byte_array(out, &sig.public_key, "public key", MAX_PUBLIC_KEY)?;
                    put_byte_array(out, &sig.signature, "key signature", MAX_KEY_SIGNATURE)?;
                }
            }
            match (layout, self.uuid) {
                (LoginStartLayout::NameSignatureUuid | LoginStartLayout::NameOptionalUuid, _) => {
                    out.push(u8::from(self.uuid.is_some()));
                    if let Some(uuid) = self.uuid {
                        put_uuid(out, uuid);
                    }
                }
                (LoginStartLayout::NameUuid, Some(uuid)) => put_uuid(out, uuid),
                (LoginStartLayout::NameUuid, None) => {
                    return Err(CodecError::MissingField {
                        packet: "login start",
                        field: "player UUID",
                        protocol,
                    });
                }
                (LoginStartLayout::Name | LoginStartLayout::NameSignature, _) => {}
            }
            Ok(())
        })
    }
}

/// A player name has 1 to 16 characters. Vanilla servers further restrict online-mode names
/// to `[A-Za-z0-9_]`, but offline servers let others through, so only control characters are
/// refused here (they would reach logs and messages).
fn check_player_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(CodecError::BadPlayerName(name.to_owned()));
    }
    Ok(())
}

/// The client's answer to login success from 1.20.2, which moves it to configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginAcknowledged;

impl LoginAcknowledged {
    pub fn parse(body: &[u8], protocol: Protocol) -> Result<LoginAcknowledged> {
        let id = protocol
            .era()
            .login_acknowledged
            .ok_or(CodecError::Unsupported {
                packet: "login acknowledged",
                protocol,
                needs: "1.20.2",
            })?;
        let mut d = Decoder::new(body);
        expect_id(&mut d, id, "login acknowledged")?;
        d.finish("login acknowledged")?;
        Ok(LoginAcknowledged)
    }

    pub fn encode(protocol: Protocol) -> Result<Vec<u8>> {
        let id = protocol
            .era()
            .login_acknowledged
            .ok_or(CodecError::Unsupported {
                packet: "login acknowledged",
                protocol,
                needs: "1.20.2",
            })?;
        packet(id, |_| Ok(()))
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration (1.20.2 and later)

fn configuration_ids(
    packet: &'static str,
    protocol: Protocol,
) -> Result<&'static ConfigurationIds> {
    protocol
        .era()
        .configuration
        .as_ref()
        .ok_or(CodecError::Unsupported {
            packet,
            protocol,
            needs: "1.20.2",
        })
}

/// What a client sends in the configuration phase, as far as a gateway that keeps it waiting
/// cares: answers to keep-alives; everything else (client information, plugin messages,
/// known packs) is read and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigurationRequest {
    KeepAlive(i64),
    FinishAcknowledged,
    Other { id: i32 },
}

impl ConfigurationRequest {
    pub fn parse(body: &[u8], protocol: Protocol) -> Result<ConfigurationRequest> {
        let ids = configuration_ids("a configuration packet", protocol)?;
        let mut d = Decoder::new(body);
        let id = d.varint("packet id")?;
        let request = if id == ids.keep_alive_response {
            ConfigurationRequest::KeepAlive(d.i64("keep-alive id")?)
        } else if id == ids.finish_acknowledged {
            ConfigurationRequest::FinishAcknowledged
        } else {
            return Ok(ConfigurationRequest::Other { id });
        };
        d.finish("configuration")?;
        Ok(request)
    }

    pub fn encode(&self, protocol: Protocol) -> Result<Vec<u8>> {
        let ids = configuration_ids("a configuration packet", protocol)?;
        match *self {
            ConfigurationRequest::KeepAlive(id) => packet(ids.keep_alive_response, |out| {
                out.extend_from_slice(&id.to_be_bytes());
                Ok(())
            }),
            ConfigurationRequest::FinishAcknowledged => packet(ids.finish_acknowledged, |_| Ok(())),
            ConfigurationRequest::Other { id } => packet(id, |_| Ok(())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What wakegate sends

/// A packet wakegate sends a client, encoded for the client's protocol by [`Clientbound::encode`].
#[derive(Debug, Clone, Copy)]
pub enum Clientbound<'a> {
    /// The answer to a status request: the status JSON (version, players, description,
    /// favicon), already serialized.
    StatusResponse { json: &'a str },
    /// The answer to a ping, with its payload.
    Pong(i64),
    /// Ends a login with a message (a JSON text component, e.g. `{"text": "…"}`).
    LoginDisconnect { reason: &'a Value },
    /// Accepts a login (no encryption, no compression, no profile properties).
    LoginSuccess { uuid: Uuid, name: &'a str },
    /// Keeps a client in the configuration phase alive; it answers with the same id.
    ConfigurationKeepAlive(i64),
    /// Ends the configuration phase with a message.
    ConfigurationDisconnect { reason: &'a Value },
    /// Sends the client to another server (1.20.5 and later); it reconnects with intent
    /// transfer.
    Transfer { host: &'a str, port: u16 },
}

impl Clientbound<'_> {
    /// The whole frame for a client speaking `protocol`.
    pub fn encode(&self, protocol: Protocol) -> Result<Vec<u8>> {
        let era = protocol.era();
        match *self {
            Clientbound::StatusResponse { json } => packet(STATUS_RESPONSE, |out| {
                put_string(out, json, "status JSON", MAX_STATUS_JSON)
            }),
            Clientbound::Pong(payload) => packet(PONG, |out| {
                out.extend_from_slice(&payload.to_be_bytes());
                Ok(())
            }),
            Clientbound::LoginDisconnect { reason } => packet(LOGIN_DISCONNECT, |out| {
                put_string(out, &reason.to_string(), "disconnect reason", MAX_CHAT_JSON)
            }),
            Clientbound::LoginSuccess { uuid, name } => {
                check_player_name(name)?;
                packet(LOGIN_SUCCESS, |out| {
                    match era.success_uuid {
                        UuidForm::Simple => put_string(out, &uuid.simple(), "player UUID", 36)?,
                        UuidForm::Hyphenated => {
                            put_string(out, &uuid.to_string(), "player UUID", 36)?;
                        }
                        UuidForm::Binary => put_uuid(out, uuid),
                    }
                    put_string(out, name, "player name", MAX_PLAYER_NAME)?;
                    if era.success_properties {
                        put_varint(out, 0);
                    }
                    if era.success_strict_errors {
                        out.push(0);
                    }
                    Ok(())
                })
            }
            Clientbound::ConfigurationKeepAlive(id) => {
                let ids = configuration_ids("configuration keep-alive", protocol)?;
                packet(ids.keep_alive, |out| {
                    out.extend_from_slice(&id.to_be_bytes());
                    Ok(())
                })
            }
            Clientbound::ConfigurationDisconnect { reason } => {
                let ids = configuration_ids("configuration disconnect", protocol)?;
                packet(ids.disconnect, |out| {
                    if ids.text_as_nbt {
                        put_text_nbt(out, reason)
                    } else {
                        put_string(out, &reason.to_string(), "disconnect reason", MAX_CHAT_JSON)
                    }
                })
            }
            Clientbound::Transfer { host, port } => {
                let ids = configuration_ids("the Transfer packet", protocol)?;
                let id = ids.transfer.ok_or(CodecError::Unsupported {
                    packet: "the Transfer packet",
                    protocol,
                    needs: "1.20.5",
                })?;
                packet(id, |out| {
                    put_string(out, host, "transfer host", MAX_TRANSFER_HOST)?;
                    put_varint(out, i32::from(port));
                    Ok(())
                })
            }
        }
    }
}

/// Reads a Transfer packet's host and port (what a client is told to connect to).
pub fn parse_transfer(body: &[u8], protocol: Protocol) -> Result<(String, u16)> {
    let ids = configuration_ids("the Transfer packet", protocol)?;
    let id = ids.transfer.ok_or(CodecError::Unsupported {
        packet: "the Transfer packet",
        protocol,
        needs: "1.20.5",
    })?;
    let mut d = Decoder::new(body);
    expect_id(&mut d, id, "a Transfer packet")?;
    let host = d.string("transfer host", MAX_TRANSFER_HOST)?.to_owned();
    let value = d.varint("transfer port")?;
    let port = u16::try_from(value).map_err(|_| CodecError::BadPort {
        field: "transfer port",
        value,
    })?;
    d.finish("transfer")?;
    Ok((host, port))
}

// ---------------------------------------------------------------------------------------------
// Text components as NBT (1.20.3 and later)

// NBT tag types.
const TAG_END: u8 = 0;
const TAG_BYTE: u8 = 1;
const TAG_INT: u8 = 3;
const TAG_LONG: u8 = 4;
const TAG_DOUBLE: u8 = 6;
const TAG_STRING: u8 = 8;
const TAG_LIST: u8 = 9;
const TAG_COMPOUND: u8 = 10;

/// Writes a JSON text component as network NBT (a root tag without a name): objects become
/// compounds, strings strings, booleans bytes, numbers ints, longs or doubles. NBT lists hold
/// one type, so in a list that mixes them every element becomes a compound component
/// (`"a"` → `{"text": "a"}`), which means the same to the client.
fn put_text_nbt(out: &mut Vec<u8>, text: &Value) -> Result<()> {
    out.push(nbt_tag(text));
    put_nbt_payload(out, text, 0)
}

fn nbt_tag(value: &Value) -> u8 {
    match value {
        Value::Null | Value::String(_) => TAG_STRING,
        Value::Bool(_) => TAG_BYTE,
        Value::Number(n) => match n.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => TAG_INT,
            Some(_) => TAG_LONG,
            None => TAG_DOUBLE,
        },
        Value::Array(_) => TAG_LIST,
        Value::Object(_) => TAG_COMPOUND,
    }
}

fn put_nbt_payload(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<()> {
    if depth > MAX_TEXT_DEPTH {
        return Err(CodecError::BadText("it is nested too deeply"));
    }
    match value {
        Value::Null => put_nbt_string(out, ""),
        Value::String(s) => put_nbt_string(out, s),
        Value::Bool(b) => {
            out.push(u8::from(*b));
            Ok(())
        }
        Value::Number(n) => {
            match (nbt_tag(value), n.as_i64()) {
                (TAG_INT, Some(i)) => out.extend_from_slice(&(i as i32).to_be_bytes()),
                (TAG_LONG, Some(i)) => out.extend_from_slice(&i.to_be_bytes()),
                _ => out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_be_bytes()),
            }
            Ok(())
        }
        Value::Array(items) => {
            let tag = items.first().map_or(TAG_END, nbt_tag);
            let mixed = items.iter().any(|item| nbt_tag(item) != tag);
            out.push(if mixed { TAG_COMPOUND } else { tag });
            out.extend_from_slice(&(items.len() as i32).to_be_bytes());
            for item in items {
                if mixed && !item.is_object() {
                    put_nbt_payload(out, &as_component(item), depth + 1)?;
                } else {
                    put_nbt_payload(out, item, depth + 1)?;
                }
            }
            Ok(())
        }
        Value::Object(fields) => {
            for (key, field) in fields {
                if field.is_null() {
                    continue;
                }
                out.push(nbt_tag(field));
                put_nbt_string(out, key)?;
                put_nbt_payload(out, field, depth + 1)?;
            }
            out.push(TAG_END);
            Ok(())
        }
    }
}

/// A list element that is not a compound, as the compound component that means the same.
fn as_component(item: &Value) -> Value {
    match item {
        Value::Array(_) => serde_json::json!({ "text": "", "extra": item }),
        Value::String(s) => serde_json::json!({ "text": s }),
        Value::Null => serde_json::json!({ "text": "" }),
        other => serde_json::json!({ "text": other.to_string() }),
    }
}

/// NBT strings are Java's "modified UTF-8": a u16 byte length, NUL as two bytes, and
/// characters beyond the Basic Multilingual Plane as two 3-byte surrogates.
fn put_nbt_string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    for c in s.chars() {
        match c {
            '\0' => out.extend_from_slice(&[0xc0, 0x80]),
            c if (c as u32) < 0x80 => out.push(c as u8),
            c if (c as u32) < 0x10000 => {
                let mut utf8 = [0; 3];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
            c => {
                let mut units = [0; 2];
                for unit in c.encode_utf16(&mut units) {
                    let unit = *unit;
                    out.extend_from_slice(&[
                        0xe0 | (unit >> 12) as u8,
                        0x80 | ((unit >> 6) & 0x3f) as u8,
                        0x80 | (unit & 0x3f) as u8,
                    ]);
                }
            }
        }
    }
    let length = u16::try_from(out.len() - start - 2)
        .map_err(|_| CodecError::BadText("a string is longer than 65,535 bytes"))?;
    out[start..start + 2].copy_from_slice(&length.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn one_frame(bytes: &[u8], max: usize) -> Frame {
        let frame = Frame::parse(bytes, max).unwrap().unwrap();
        assert_eq!(
            frame.raw().len(),
            bytes.len(),
            "one frame, nothing after it"
        );
        frame
    }

    /// A small xorshift generator: the property loops need varied input, not good randomness.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn varints_round_trip_and_match_the_documented_examples() {
        // The examples of the protocol documentation's VarInt table.
        let examples: &[(i32, &str)] = &[
            (0, "00"),
            (1, "01"),
            (2, "02"),
            (127, "7f"),
            (128, "8001"),
            (255, "ff01"),
            (25565, "ddc701"),
            (2_097_151, "ffff7f"),
            (i32::MAX, "ffffffff07"),
            (-1, "ffffffff0f"),
            (i32::MIN, "8080808008"),
        ];
        for &(value, bytes) in examples {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, hex(bytes), "{value}");
            let mut d = Decoder::new(&out);
            assert_eq!(d.varint("test").unwrap(), value);
            d.finish("test").unwrap();
        }
        let longs: &[(i64, &str)] = &[
            (0, "00"),
            (2_147_483_648, "8080808008"),
            (i64::MAX, "ffffffffffffffff7f"),
            (-1, "ffffffffffffffffff01"),
            (i64::MIN, "80808080808080808001"),
        ];
        for &(value, bytes) in longs {
            let mut out = Vec::new();
            put_varlong(&mut out, value);
            assert_eq!(out, hex(bytes), "{value}");
            assert_eq!(Decoder::new(&out).varlong("test").unwrap(), value);
        }
        // Vanilla accepts over-long encodings within 5 bytes; so do we.
        assert_eq!(Decoder::new(&hex("8000")).varint("x").unwrap(), 0);
    }

    #[test]
    fn a_varint_of_six_bytes_and_a_varlong_of_eleven_are_refused() {
        let err = Decoder::new(&hex("ffffffffff01")).varint("protocol version");
        assert!(
            matches!(
                err,
                Err(CodecError::BadVarInt {
                    field: "protocol version"
                })
            ),
            "{err:?}"
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "the protocol version is a VarInt longer than 5 bytes"
        );
        let err = Decoder::new(&hex("ffffffffffffffffffff01")).varlong("x");
        assert!(matches!(err, Err(CodecError::BadVarLong { .. })), "{err:?}");
        // And a frame whose length prefix does not end within 5 bytes.
        let err = frame_bounds(&hex("8080808080"), MAX_FRAME).unwrap_err();
        assert!(matches!(
            err,
            CodecError::BadVarInt {
                field: "frame length"
            }
        ));
        // Four continuation bytes are not an error yet: the fifth may end it.
        assert!(frame_bounds(&hex("80808080"), MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn primitives_read_big_endian_and_bounded() {
        let bytes = hex("63dd 01 00 ffffffffffffff85 069a79f444e94726a5befca90e38aaf5");
        let mut d = Decoder::new(&bytes);
        assert_eq!(d.u16("port").unwrap(), 25565);
        assert!(d.bool("b").unwrap());
        assert!(!d.bool("b").unwrap());
        assert_eq!(d.i64("n").unwrap(), -123);
        assert_eq!(
            d.uuid("u").unwrap().to_string(),
            "069a79f4-44e9-4726-a5be-fca90e38aaf5"
        );
        d.finish("test").unwrap();
        assert!(matches!(
            Decoder::new(&[2]).bool("online flag"),
            Err(CodecError::BadBool { value: 2, .. })
        ));
        assert!(matches!(
            Decoder::new(&[0; 7]).i64("ping payload"),
            Err(CodecError::Truncated {
                field: "ping payload"
            })
        ));
    }

    #[test]
    fn uuids_read_and_print_both_forms() {
        let uuid: Uuid = "069a79f4-44e9-4726-a5be-fca90e38aaf5".parse().unwrap();
        assert_eq!(uuid, "069a79f444e94726a5befca90e38aaf5".parse().unwrap());
        assert_eq!(uuid.simple(), "069a79f444e94726a5befca90e38aaf5");
        assert_eq!(uuid.to_string(), "069a79f4-44e9-4726-a5be-fca90e38aaf5");
        assert_eq!(Uuid(0).to_string(), "00000000-0000-0000-0000-000000000000");
        for bad in [
            "",
            "069a79f4-44e9-4726-a5be-fca90e38aaf",
            "069a79f4444e9-4726-a5be-fca90e38aaf5",
            "+69a79f444e94726a5befca90e38aaf5",
            "z69a79f444e94726a5befca90e38aaf5",
        ] {
            assert!(bad.parse::<Uuid>().is_err(), "{bad}");
        }
    }

    #[test]
    fn strings_are_strict_utf8_within_their_maximum_in_java_characters() {
        let mut out = Vec::new();
        put_string(&mut out, "héllo", "test", 5).unwrap();
        assert_eq!(out, hex("06 68c3a96c6c6f"));
        assert_eq!(Decoder::new(&out).string("test", 5).unwrap(), "héllo");
        // One character too many.
        let err = Decoder::new(&out).string("server address", 4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server address is 5 characters long, over its limit of 4 characters"
        );
        // An emoji counts as two characters, as it does in Java.
        let mut out = Vec::new();
        put_string(&mut out, "a😀", "test", 3).unwrap();
        assert!(Decoder::new(&out).string("test", 3).is_ok());
        assert!(Decoder::new(&out).string("test", 2).is_err());
        assert!(put_string(&mut Vec::new(), "a😀", "test", 2).is_err());
        // A length past what the maximum can take is refused before the bytes are looked at.
        let err = Decoder::new(&hex("31"))
            .string("player name", 16)
            .unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::StringTooLong {
                    length: 49,
                    unit: "bytes",
                    ..
                }
            ),
            "{err:?}"
        );
        // Invalid UTF-8: a lone continuation byte, an overlong NUL, a surrogate.
        for bad in ["0180", "02c080", "03eda080"] {
            let err = Decoder::new(&hex(bad))
                .string("player name", 16)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    CodecError::BadUtf8 {
                        field: "player name"
                    }
                ),
                "{bad}: {err:?}"
            );
            assert_eq!(err.to_string(), "the player name is not valid UTF-8");
        }
        // A negative length and a length past the end.
        let err = Decoder::new(&hex("ffffffff0f"))
            .string("status JSON", 10)
            .unwrap_err();
        assert!(
            matches!(err, CodecError::NegativeLength { length: -1, .. }),
            "{err:?}"
        );
        let err = Decoder::new(&hex("05 6162"))
            .string("status JSON", 10)
            .unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Truncated {
                    field: "status JSON"
                }
            ),
            "{err:?}"
        );
    }

    /// The server list ping of a 1.8 client to localhost:25565, byte for byte as the
    /// protocol documentation shows it: the handshake, then the status request.
    #[test]
    fn a_captured_1_8_server_list_ping_parses() {
        let bytes = hex("0f00 2f 09 6c6f63616c686f7374 63dd 01   0100");
        let frame = Frame::parse(&bytes, MAX_HANDSHAKE_FRAME).unwrap().unwrap();
        assert_eq!(frame.raw(), &bytes[..16]);
        assert_eq!(frame.id().unwrap(), 0);
        let handshake = Handshake::parse(frame.body()).unwrap();
        assert_eq!(handshake.protocol, Protocol(47));
        assert_eq!(handshake.protocol.version_name(), Some("1.8–1.8.9"));
        assert_eq!(handshake.address.hostname(), "localhost");
        assert_eq!(handshake.address.marker(), None);
        assert_eq!(handshake.port, 25565);
        assert_eq!(handshake.intent, Intent::Status);
        assert_eq!(handshake.encode().unwrap(), frame.raw());
        let request = one_frame(&bytes[16..], MAX_LOGIN_FRAME);
        assert_eq!(
            StatusRequest::parse(request.body()).unwrap(),
            StatusRequest::Status
        );
        assert_eq!(StatusRequest::Status.encode(), request.raw());
        let ping = hex("09 01 000000000000d431");
        let parsed = StatusRequest::parse(one_frame(&ping, MAX_LOGIN_FRAME).body()).unwrap();
        assert_eq!(parsed, StatusRequest::Ping(54321));
        assert_eq!(parsed.encode(), ping);
    }

    #[test]
    fn a_captured_1_7_login_start_is_the_name_alone() {
        // 1.7.10 (protocol 5): handshake for mc.example.com:25565, next state login; then
        // login start for "Notch".
        let bytes = hex("14 00 05 0e 6d632e6578616d706c652e636f6d 63dd 02  07 00 05 4e6f746368");
        let handshake_frame = Frame::parse(&bytes, MAX_HANDSHAKE_FRAME).unwrap().unwrap();
        let handshake = Handshake::parse(handshake_frame.body()).unwrap();
        assert_eq!(handshake.protocol, Protocol(5));
        assert_eq!(handshake.intent, Intent::Login);
        let login = one_frame(&bytes[handshake_frame.raw().len()..], MAX_LOGIN_FRAME);
        let start = LoginStart::parse(login.body(), handshake.protocol).unwrap();
        assert_eq!(start.name, "Notch");
        assert_eq!(start.uuid, None);
        assert_eq!(start.encode(Protocol(5)).unwrap(), login.raw());
        // The same bytes read as a 1.20.4 login start lack the UUID.
        let err = LoginStart::parse(login.body(), Protocol(765)).unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Truncated {
                    field: "player UUID"
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn a_captured_1_20_4_login_start_carries_the_uuid() {
        let bytes = hex("17 00 05 4e6f746368 069a79f444e94726a5befca90e38aaf5");
        let frame = one_frame(&bytes, MAX_LOGIN_FRAME);
        let start = LoginStart::parse(frame.body(), Protocol(765)).unwrap();
        assert_eq!(start.name, "Notch");
        assert_eq!(
            start.uuid.unwrap().to_string(),
            "069a79f4-44e9-4726-a5be-fca90e38aaf5"
        );
        assert_eq!(start.encode(Protocol(765)).unwrap(), bytes);
        // Read as 1.18.2, the UUID is 16 bytes too many.
        let err = LoginStart::parse(frame.body(), Protocol(758)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "16 unexpected bytes after the end of the login start packet"
        );
    }

    #[test]
    fn login_start_of_1_19_with_signature_data() {
        let start = LoginStart {
            name: "Alex".into(),
            uuid: None,
            signature: Some(SignatureData {
                expires_at: 1_700_000_000_000,
                public_key: vec![0x30; 294],
                signature: vec![0xab; 512],
            }),
        };
        let bytes = start.encode(Protocol(759)).unwrap();
        let frame = one_frame(&bytes, MAX_LOGIN_FRAME);
        assert_eq!(
            LoginStart::parse(frame.body(), Protocol(759)).unwrap(),
            start
        );
        // name, has-signature, expiry, key length (2 bytes) and key, signature length and it.
        assert_eq!(frame.body().len(), 1 + 5 + 1 + 8 + 2 + 294 + 2 + 512);
        // 1.19.1 adds the optional UUID after it.
        let with_uuid = LoginStart {
            uuid: Some(Uuid(0x1234)),
            ..start.clone()
        };
        let bytes = with_uuid.encode(Protocol(760)).unwrap();
        // A 2-byte length prefix, then the 1.19 fields and has-UUID and the UUID.
        assert_eq!(bytes.len(), 2 + 1 + 5 + 1 + 8 + 2 + 294 + 2 + 512 + 1 + 16);
        let frame = one_frame(&bytes, MAX_LOGIN_FRAME);
        assert_eq!(
            LoginStart::parse(frame.body(), Protocol(760)).unwrap(),
            with_uuid
        );
        // A key over vanilla's 512-byte limit.
        let mut big = start.clone();
        big.signature.as_mut().unwrap().public_key = vec![0; 513];
        assert!(matches!(
            big.encode(Protocol(759)),
            Err(CodecError::BytesTooLong {
                field: "public key",
                ..
            })
        ));
        let mut body = hex("00 04 416c6578 01 0000018bcfe56800 8104");
        body.extend(vec![0; 513]);
        body.extend(hex("00"));
        assert!(matches!(
            LoginStart::parse(&body, Protocol(759)),
            Err(CodecError::BytesTooLong {
                field: "public key",
                length: 513,
                max: 512
            })
        ));
    }

    /// Every layout from 1.7 to today, and numbers around the changes, round trip with names
    /// and UUIDs of every length; a layout read with another version's rules fails or differs.
    #[test]
    fn login_start_round_trips_for_every_protocol() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut protocols: Vec<i32> = RELEASES.iter().map(|&(p, _)| p).collect();
        protocols.extend([
            -1,
            0,
            1,
            3,
            6,
            700,
            734,
            757,
            778,
            800,
            1000,
            0x4000_0001,
            0x4000_00ff,
        ]);
        let alphabet: Vec<char> = "abcXYZ_019éß字".chars().collect();
        for &number in &protocols {
            let protocol = Protocol(number);
            let layout = LoginStart::layout(protocol);
            for _ in 0..50 {
                let len = 1 + rng.below(MAX_PLAYER_NAME);
                let name: String = (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect();
                let uuid = Uuid(u128::from(rng.next()) << 64 | u128::from(rng.next()));
                let start = LoginStart {
                    name,
                    uuid: match layout {
                        LoginStartLayout::NameUuid => Some(uuid),
                        LoginStartLayout::NameSignatureUuid
                        | LoginStartLayout::NameOptionalUuid => {
                            rng.next().is_multiple_of(2).then_some(uuid)
                        }
                        _ => None,
                    },
                    signature: match layout {
                        LoginStartLayout::NameSignature | LoginStartLayout::NameSignatureUuid
                            if rng.next().is_multiple_of(2) =>
                        {
                            Some(SignatureData {
                                expires_at: rng.next() as i64,
                                public_key: vec![1; rng.below(MAX_PUBLIC_KEY + 1)],
                                signature: vec![2; rng.below(MAX_KEY_SIGNATURE + 1)],
                            })
                        }
                        _ => None,
                    },
                };
                let bytes = start.encode(protocol).unwrap();
                assert!(
                    bytes.len() <= MAX_LOGIN_FRAME,
                    "{number}: {} bytes",
                    bytes.len()
                );
                let frame = one_frame(&bytes, MAX_LOGIN_FRAME);
                assert_eq!(
                    LoginStart::parse(frame.body(), protocol).unwrap(),
                    start,
                    "{number}"
                );
                // Every proper prefix of the packet is truncated, never accepted.
                for cut in 1..frame.body().len() {
                    assert!(LoginStart::parse(&frame.body()[..cut], protocol).is_err());
                }
            }
        }
        for (protocol, layout) in [
            (4, LoginStartLayout::Name),
            (758, LoginStartLayout::Name),
            (759, LoginStartLayout::NameSignature),
            (760, LoginStartLayout::NameSignatureUuid),
            (761, LoginStartLayout::NameOptionalUuid),
            (763, LoginStartLayout::NameOptionalUuid),
            (764, LoginStartLayout::NameUuid),
            (777, LoginStartLayout::NameUuid),
        ] {
            assert_eq!(
                LoginStart::layout(Protocol(protocol)),
                layout,
                "protocol {protocol}"
            );
        }
    }

    #[test]
    fn player_names_are_1_to_16_characters_without_control_characters() {
        for bad in ["", "a\nb", "\u{7f}"] {
            let body = [&[0u8][..], &{
                let mut s = Vec::new();
                put_varint(&mut s, bad.len() as i32);
                s.extend_from_slice(bad.as_bytes());
                s
            }]
            .concat();
            let err = LoginStart::parse(&body, Protocol(47)).unwrap_err();
            assert!(
                matches!(err, CodecError::BadPlayerName(_)),
                "{bad:?}: {err:?}"
            );
        }
        let long = LoginStart {
            name: "a".repeat(17),
            uuid: None,
            signature: None,
        };
        assert!(long.encode(Protocol(47)).is_err());
        let mut body = hex("00 11");
        body.extend(b"aaaaaaaaaaaaaaaaa");
        let err = LoginStart::parse(&body, Protocol(47)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the player name is 17 characters long, over its limit of 16 characters"
        );
        assert!(matches!(
            LoginStart {
                name: "Steve".into(),
                uuid: None,
                signature: None
            }
            .encode(Protocol(766)),
            Err(CodecError::MissingField { .. })
        ));
    }

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

    #[test]
    fn frames_are_bounded_before_their_body_is_read() {
        // A 1 MiB frame announced during the handshake.
        let mut prefix = Vec::new();
        put_varint(&mut prefix, 1 << 20);
        let err = frame_bounds(&prefix, MAX_HANDSHAKE_FRAME).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a frame of 1048576 bytes, over the 780-byte limit at this stage of the connection"
        );
        // A negative length is a huge one.
        assert!(matches!(
            frame_bounds(&hex("ffffffff0f"), MAX_FRAME),
            Err(CodecError::FrameTooLarge {
                size: 4_294_967_295,
                ..
            })
        ));
        assert!(matches!(
            frame_bounds(&hex("00"), MAX_FRAME),
            Err(CodecError::EmptyFrame)
        ));
        assert_eq!(frame_bounds(&hex(""), 10).unwrap(), None);
        assert_eq!(frame_bounds(&hex("03 0001"), 10).unwrap(), None);
        assert_eq!(
            frame_bounds(&hex("03 000102 ff"), 10).unwrap(),
            Some((1, 4))
        );
        assert_eq!(frame_bounds(&hex("0a"), 10).unwrap(), None);
        assert!(frame_bounds(&hex("0b"), 10).is_err());
    }

    #[test]
    fn status_and_pong_encode_for_every_version() {
        let json = r#"{"version":{"name":"1.21.4","protocol":769},"players":{"max":20,"online":0},"description":{"text":"Sleeping"}}"#;
        for protocol in [Protocol(4), Protocol(47), Protocol(765), Protocol(777)] {
            let bytes = Clientbound::StatusResponse { json }
                .encode(protocol)
                .unwrap();
            let frame = one_frame(&bytes, MAX_FRAME);
            assert_eq!(
                StatusResponse::parse(frame.body()).unwrap(),
                StatusResponse::Status(json.into())
            );
            let bytes = Clientbound::Pong(-7).encode(protocol).unwrap();
            assert_eq!(bytes, hex("09 01 fffffffffffffff9"));
            assert_eq!(
                StatusResponse::parse(one_frame(&bytes, MAX_FRAME).body()).unwrap(),
                StatusResponse::Pong(-7)
            );
        }
        let long = "x".repeat(MAX_STATUS_JSON + 1);
        assert!(matches!(
            Clientbound::StatusResponse { json: &long }.encode(Protocol(47)),
            Err(CodecError::StringTooLong { .. })
        ));
    }

    #[test]
    fn login_disconnect_is_json_text_in_every_version() {
        let reason =
            json!({"text": "The server is starting; join again in 40 s.", "color": "gold"});
        for protocol in [Protocol(4), Protocol(340), Protocol(765), Protocol(777)] {
            let bytes = Clientbound::LoginDisconnect { reason: &reason }
                .encode(protocol)
                .unwrap();
            let frame = one_frame(&bytes, MAX_FRAME);
            let mut d = Decoder::new(frame.body());
            assert_eq!(d.varint("id").unwrap(), 0);
            let text: Value =
                serde_json::from_str(d.string("reason", MAX_CHAT_JSON).unwrap()).unwrap();
            assert_eq!(text, reason);
            d.finish("disconnect").unwrap();
        }
    }

    #[test]
    fn login_success_follows_the_layout_of_each_era() {
        let uuid: Uuid = "069a79f4-44e9-4726-a5be-fca90e38aaf5".parse().unwrap();
        let success = |p| {
            Clientbound::LoginSuccess {
                uuid,
                name: "Notch",
            }
            .encode(Protocol(p))
            .unwrap()
        };
        let body = |p| one_frame(&success(p), MAX_FRAME).body().to_vec();
        let name = hex("05 4e6f746368");
        let binary = uuid.0.to_be_bytes().to_vec();
        let concat = |parts: &[&[u8]]| parts.concat();
        assert_eq!(
            body(4),
            concat(&[&[2, 32], uuid.simple().as_bytes(), &name])
        );
        assert_eq!(
            body(5),
            concat(&[&[2, 36], uuid.to_string().as_bytes(), &name])
        );
        assert_eq!(body(578), body(5));
        assert_eq!(body(735), concat(&[&[2], &binary, &name]));
        assert_eq!(body(758), body(735));
        assert_eq!(body(759), concat(&[&[2], &binary, &name, &[0]]));
        assert_eq!(body(765), body(759));
        assert_eq!(body(766), concat(&[&[2], &binary, &name, &[0, 0]]));
        assert_eq!(body(767), body(766));
        assert_eq!(body(768), body(759));
        assert_eq!(body(777), body(759));
    }

    #[test]
    fn configuration_packets_use_the_ids_of_each_version() {
        // (protocol, keep-alive, disconnect, transfer, keep-alive answer, finish ack)
        type Row = (i32, i32, i32, Option<i32>, i32, i32);
        let table: &[Row] = &[
            (764, 0x03, 0x01, None, 0x03, 0x02),
            (765, 0x03, 0x01, None, 0x03, 0x02),
            (766, 0x04, 0x02, Some(0x0b), 0x04, 0x03),
            (767, 0x04, 0x02, Some(0x0b), 0x04, 0x03),
            (768, 0x04, 0x02, Some(0x0b), 0x04, 0x03),
            (769, 0x04, 0x02, Some(0x0b), 0x04, 0x03),
            (774, 0x04, 0x02, Some(0x0b), 0x04, 0x03),
            (777, 0x04, 0x02, Some(0x0b), 0x04, 0x03),
        ];
        let reason = json!({"text": "bye"});
        for &(p, keep_alive, disconnect, transfer, answer, finish) in table {
            let protocol = Protocol(p);
            let frame = |bytes: Vec<u8>| one_frame(&bytes, MAX_FRAME);
            let ka = frame(
                Clientbound::ConfigurationKeepAlive(42)
                    .encode(protocol)
                    .unwrap(),
            );
            assert_eq!(ka.id().unwrap(), keep_alive, "{p}");
            assert_eq!(&ka.body()[1..], &42i64.to_be_bytes());
            let dc = frame(
                Clientbound::ConfigurationDisconnect { reason: &reason }
                    .encode(protocol)
                    .unwrap(),
            );
            assert_eq!(dc.id().unwrap(), disconnect, "{p}");
            let tr = Clientbound::Transfer {
                host: "play.example.com",
                port: 25565,
            }
            .encode(protocol);
            match transfer {
                Some(id) => {
                    let tr = frame(tr.unwrap());
                    assert_eq!(tr.id().unwrap(), id, "{p}");
                    assert_eq!(
                        parse_transfer(tr.body(), protocol).unwrap(),
                        ("play.example.com".into(), 25565)
                    );
                    assert_eq!(
                        tr.body(),
                        [&[id as u8, 16][..], b"play.example.com", &hex("dd c7 01")].concat()
                    );
                    assert!(protocol.supports_transfer());
                }
                None => {
                    let err = tr.unwrap_err();
                    assert!(err.to_string().contains("needs 1.20.5 or later"), "{err}");
                    assert!(!protocol.supports_transfer());
                }
            }
            let reply = ConfigurationRequest::KeepAlive(42)
                .encode(protocol)
                .unwrap();
            assert_eq!(frame(reply.clone()).id().unwrap(), answer);
            assert_eq!(
                ConfigurationRequest::parse(frame(reply).body(), protocol).unwrap(),
                ConfigurationRequest::KeepAlive(42)
            );
            let ack = ConfigurationRequest::FinishAcknowledged
                .encode(protocol)
                .unwrap();
            assert_eq!(frame(ack).id().unwrap(), finish);
            assert_eq!(
                ConfigurationRequest::parse(&[0x00, 1, 2, 3], protocol).unwrap(),
                ConfigurationRequest::Other { id: 0 }
            );
            let ack = LoginAcknowledged::encode(protocol).unwrap();
            assert_eq!(ack, [1, 3]);
            LoginAcknowledged::parse(&ack[1..], protocol).unwrap();
            assert!(matches!(
                LoginAcknowledged::parse(&[3, 0], protocol),
                Err(CodecError::TrailingBytes { .. })
            ));
            assert!(matches!(
                LoginAcknowledged::parse(&[0], protocol),
                Err(CodecError::UnexpectedPacket { id: 0, .. })
            ));
        }
        // Before 1.20.2 there is no configuration phase to speak of.
        for p in [5, 758, 763] {
            let protocol = Protocol(p);
            assert!(!protocol.has_configuration());
            let err = Clientbound::ConfigurationKeepAlive(1)
                .encode(protocol)
                .unwrap_err();
            assert!(err.to_string().contains("needs 1.20.2 or later"), "{err}");
            assert!(LoginAcknowledged::parse(&[3], protocol).is_err());
        }
    }

    #[test]
    fn configuration_disconnect_is_json_until_1_20_2_and_nbt_after() {
        let reason = json!({"text": "bye"});
        let bytes = Clientbound::ConfigurationDisconnect { reason: &reason }
            .encode(Protocol(764))
            .unwrap();
        assert_eq!(
            one_frame(&bytes, MAX_FRAME).body(),
            [&[0x01, 14][..], br#"{"text":"bye"}"#].concat()
        );
        let bytes = Clientbound::ConfigurationDisconnect { reason: &reason }
            .encode(Protocol(766))
            .unwrap();
        // A compound holding the string "text": "bye", then its end.
        assert_eq!(
            one_frame(&bytes, MAX_FRAME).body(),
            hex("02 0a 08 0004 74657874 0003 627965 00")
        );
    }

    #[test]
    fn text_components_become_nbt_with_modified_utf8_and_uniform_lists() {
        let mut out = Vec::new();
        put_text_nbt(&mut out, &json!("a\u{0}😀")).unwrap();
        // NUL as c0 80 and the emoji as two 3-byte surrogates.
        assert_eq!(out, hex("08 0009 61 c080 eda0bd edb880"));
        let mut out = Vec::new();
        // Keys in order, so the output is the same whether serde_json keeps order or sorts.
        put_text_nbt(
            &mut out,
            &json!({"big": 5_000_000_000i64, "bold": true, "extra": ["x", {"text": "y"}], "f": 0.5, "gone": null, "n": 300}),
        )
        .unwrap();
        let expected = [
            hex("0a"),
            hex("04 0003 626967 000000012a05f200"),
            hex("01 0004 626f6c64 01"),
            // A mixed list: both elements as compounds.
            hex("09 0005 6578747261 0a 00000002"),
            hex("08 0004 74657874 0001 78 00"),
            hex("08 0004 74657874 0001 79 00"),
            hex("06 0001 66 3fe0000000000000"),
            hex("03 0001 6e 0000012c"),
            hex("00"),
        ]
        .concat();
        assert_eq!(out, expected);
        let mut out = Vec::new();
        put_text_nbt(&mut out, &json!({"extra": []})).unwrap();
        assert_eq!(out, hex("0a 09 0005 6578747261 00 00000000 00"));
        let mut deep = json!("x");
        for _ in 0..100 {
            deep = json!({ "extra": [deep] });
        }
        assert!(matches!(
            put_text_nbt(&mut Vec::new(), &deep),
            Err(CodecError::BadText(_))
        ));
        assert!(put_text_nbt(&mut Vec::new(), &json!("x".repeat(70_000))).is_err());
    }

    #[test]
    fn protocol_names_and_transfer_support() {
        assert_eq!(Protocol(765).version_name(), Some("1.20.3–1.20.4"));
        assert_eq!(Protocol(769).to_string(), "Minecraft 1.21.4 (protocol 769)");
        assert_eq!(
            Protocol(100).to_string(),
            "protocol 100 (an unknown version)"
        );
        assert_eq!(
            Protocol(0x4000_0105).to_string(),
            "a snapshot (protocol 0x40000105)"
        );
        assert!(!Protocol(765).supports_transfer());
        assert!(Protocol(766).supports_transfer());
        assert!(Protocol(9999).supports_transfer());
        assert!(!Protocol(-1).supports_transfer());
        assert_eq!(Protocol::LATEST_KNOWN, Protocol(777));
        assert!(
            RELEASES.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted for binary search"
        );
        assert!(ERAS.windows(2).all(|w| w[0].since < w[1].since));
    }

    /// A reader that hands out its bytes a few at a time, like a slow connection.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(buf.remaining())
                .min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_reader_returns_frames_and_keeps_what_follows_for_replay() {
        let mut wire = Handshake {
            protocol: Protocol(769),
            address: ServerAddress::new("mc.example.com.\0FML3\0"),
            port: 25565,
            intent: Intent::Login,
        }
        .encode()
        .unwrap();
        let login = LoginStart {
            name: "Steve".into(),
            uuid: Some(Uuid(7)),
            signature: None,
        }
        .encode(Protocol(769))
        .unwrap();
        wire.extend(&login);
        wire.extend(b"play bytes");
        for step in [1, 2, 3, 7, 64, 4096] {
            let mut reader = FrameReader::new(Trickle {
                data: wire.clone(),
                at: 0,
                step,
            });
            let (handshake, frame) = read_handshake(&mut reader, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(handshake.address.hostname(), "mc.example.com");
            let start = reader.next_frame(MAX_LOGIN_FRAME).await.unwrap();
            assert_eq!(start.raw(), login);
            assert_eq!(
                LoginStart::parse(start.body(), handshake.protocol)
                    .unwrap()
                    .name,
                "Steve"
            );
            // Replaying the frames and the rest gives back exactly what was sent so far.
            let (_, rest) = reader.into_parts();
            let replay = [frame.raw(), start.raw(), &rest].concat();
            assert!(wire.starts_with(&replay), "step {step}");
        }
    }

    #[tokio::test]
    async fn the_reader_refuses_oversized_frames_without_allocating_them() {
        // A 1 MiB garbage frame announced as the first thing.
        let mut wire = Vec::new();
        put_varint(&mut wire, 1 << 20);
        wire.extend(vec![0x41; 1 << 20]);
        let mut reader = FrameReader::new(&wire[..]);
        let err = read_handshake(&mut reader, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::FrameTooLarge {
                    size: 1_048_576,
                    max: MAX_HANDSHAKE_FRAME
                }
            ),
            "{err:?}"
        );
        assert!(reader.capacity() <= READ_AHEAD, "{}", reader.capacity());
        // With the 2 MiB limit the same frame is read whole.
        let mut reader = FrameReader::new(&wire[..]);
        let frame = reader.next_frame(MAX_FRAME).await.unwrap();
        assert_eq!(frame.body().len(), 1 << 20);
        assert!(
            reader.capacity() <= READ_AHEAD,
            "the frame's buffer went with it"
        );
    }

    #[tokio::test]
    async fn the_reader_reports_a_closed_or_truncated_connection() {
        let mut reader = FrameReader::new(&[][..]);
        let err = reader.next_frame(MAX_FRAME).await.unwrap_err();
        assert_eq!(err.to_string(), "the connection closed");
        let bytes = hex("10 00 2f");
        let mut reader = FrameReader::new(&bytes[..]);
        let err = reader.next_frame(MAX_FRAME).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the connection closed in the middle of a frame (3 bytes of it were read)"
        );
        // A 6-byte VarInt length prefix.
        let bytes = hex("ffffffffff01 00");
        let mut reader = FrameReader::new(&bytes[..]);
        assert!(matches!(
            reader.next_frame(MAX_FRAME).await,
            Err(CodecError::BadVarInt { .. })
        ));
        // A legacy (1.6) server list ping.
        let bytes = hex("fe01fa");
        let mut reader = FrameReader::new(&bytes[..]);
        let err = read_handshake(&mut reader, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::LegacyPing));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_or_too_slowly_times_out() {
        let (client, server) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(server);
        let err = read_handshake(&mut reader, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client sent no complete handshake within 5s"
        );
        // Half a handshake, then silence.
        let (mut client2, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client2, &hex("0f00 2f 09 6c6f63"))
            .await
            .unwrap();
        let mut reader = FrameReader::new(server);
        let err = read_handshake(&mut reader, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, CodecError::Timeout(_)));
        drop((client, client2));
    }
}
