//! The configuration phase (1.20.2 and later), where the `transfer` strategy keeps a client
//! waiting: what the client sends there, and where each version keeps its packet ids.

use super::error::{CodecError, Result};
use super::version::{ConfigurationIds, Protocol};
use super::wire::{Decoder, packet};

/// Where the configuration packets of `protocol` are, or which version `packet` needs.
pub(super) fn configuration_ids(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use crate::minecraft::*;
    use serde_json::json;

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
}
