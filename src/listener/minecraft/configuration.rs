//! What wakegate does with a client it has let into the configuration phase (1.20.2+), shared
//! by the `transfer` join and the handoff: finish the login into it, send the client elsewhere
//! with a Transfer packet (valid there from 1.20.5), or end it with a message.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::End;
use crate::minecraft::{
    Clientbound, CodecError, FrameReader, LoginAcknowledged, LoginStart, MAX_LOGIN_FRAME, Protocol,
};

/// How long the client has to acknowledge the login success.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client told to go elsewhere has to close its side.
const LINGER: Duration = Duration::from_secs(5);

/// Accepts the login (no encryption, no compression) and waits for the client to acknowledge
/// it: the client is then in the configuration phase, where a Transfer packet is valid.
pub(super) async fn finish_login(
    reader: &mut FrameReader<TcpStream>,
    protocol: Protocol,
    login: &LoginStart,
) -> Result<(), End> {
    // Clients that can be transferred (1.20.5+) always send their UUID.
    let uuid = login.uuid.unwrap_or_default();
    let name = login.name.as_str();
    let success = Clientbound::LoginSuccess { uuid, name }.encode(protocol)?;
    reader.get_mut().write_all(&success).await?;
    let ack = tokio::time::timeout(ACK_TIMEOUT, reader.next_frame(MAX_LOGIN_FRAME))
        .await
        .map_err(|_| CodecError::Timeout(ACK_TIMEOUT))??;
    LoginAcknowledged::parse(ack.body(), protocol)?;
    Ok(())
}

/// Sends the Transfer packet and ends wakegate's side of the connection.
pub(super) async fn send_away(
    reader: &mut FrameReader<TcpStream>,
    protocol: Protocol,
    host: &str,
    port: u16,
) -> Result<(), End> {
    let out = Clientbound::Transfer { host, port }.encode(protocol)?;
    let client = reader.get_mut();
    client.write_all(&out).await?;
    client.shutdown().await?;
    Ok(())
}

/// Reads what the client still sends until it closes (up to `LINGER`). Its client information
/// and brand follow the login acknowledgement unasked; closing with them unread would answer
/// with a reset, which may reach the client before it has read its Transfer packet.
pub(super) async fn linger(reader: &mut FrameReader<TcpStream>) {
    let mut sink = [0u8; 1024];
    let client = reader.get_mut();
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(1..) = client.read(&mut sink).await {}
    })
    .await;
}

/// Ends the configuration phase with `text`.
pub(super) async fn configuration_disconnect(
    reader: &mut FrameReader<TcpStream>,
    protocol: Protocol,
    text: &str,
) -> Result<(), End> {
    let reason = json!({ "text": text });
    let out = Clientbound::ConfigurationDisconnect { reason: &reason }.encode(protocol)?;
    let client = reader.get_mut();
    client.write_all(&out).await?;
    client.shutdown().await?;
    Ok(())
}
