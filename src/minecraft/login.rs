//! The login stage as far as wakegate reads it: login start in each of its layouts (who is
//! joining), and the login acknowledged of 1.20.2 and later.

use super::error::{CodecError, Result};
use super::limits::{MAX_KEY_SIGNATURE, MAX_PLAYER_NAME, MAX_PUBLIC_KEY};
use super::version::{LOGIN_START, LoginStartLayout, Protocol};
use super::wire::{Decoder, Uuid, expect_id, packet, put_byte_array, put_string, put_uuid};

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
pub(super) fn check_player_name(name: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use crate::minecraft::version::RELEASES;
    use crate::minecraft::*;

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
}
