//! What wakegate sends a client: the status response and pong, login disconnect and success,
//! and in the configuration phase keep-alives, disconnects and the Transfer packet, each
//! encoded for the client's protocol.

use serde_json::Value;

use super::configuration::configuration_ids;
use super::error::{CodecError, Result};
use super::limits::{MAX_CHAT_JSON, MAX_PLAYER_NAME, MAX_STATUS_JSON, MAX_TRANSFER_HOST};
use super::login::check_player_name;
use super::nbt::put_text_nbt;
use super::version::{LOGIN_DISCONNECT, LOGIN_SUCCESS, PONG, Protocol, STATUS_RESPONSE, UuidForm};
use super::wire::{Decoder, Uuid, expect_id, packet, put_string, put_uuid, put_varint};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use crate::minecraft::*;
    use serde_json::json;

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
}
