//! The primitive types of the protocol: VarInt and VarLong, strings bounded in Java
//! characters, byte arrays, UUIDs and big-endian numbers, read through a bounded [`Decoder`]
//! and written by the `put_*` functions; and [`packet`], which frames one packet.

use std::fmt;
use std::str::FromStr;

use super::error::{CodecError, Result};
use super::limits::MAX_FRAME;

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

pub(super) fn put_uuid(out: &mut Vec<u8>, uuid: Uuid) {
    out.extend_from_slice(&uuid.0.to_be_bytes());
}

/// Builds a whole frame: the length prefix, the packet id, then what `write` appends.
pub(super) fn packet(id: i32, write: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<Vec<u8>> {
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

/// Reads the packet id and fails unless it is `id`.
pub(super) fn expect_id(decoder: &mut Decoder<'_>, id: i32, expected: &'static str) -> Result<()> {
    match decoder.varint("packet id")? {
        found if found == id => Ok(()),
        found => Err(CodecError::UnexpectedPacket {
            id: found,
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use crate::minecraft::*;

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
}
