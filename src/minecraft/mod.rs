//! The Minecraft Java edition protocol, as much of it as a gateway speaks before a backend is
//! up: frames, the handshake, status and ping, login start, and the few packets wakegate sends
//! (status response, pong, disconnects, and the login success, keep-alive and Transfer packets
//! of the `transfer` strategy), for every protocol from 1.7 (4) to the latest. Shared by the
//! `minecraft` listener, the status-ping probe and the player count of the health checks.
//!
//! Parsing is pure and strict: every packet is decoded from a byte slice, every length is
//! bounded, strings must be valid UTF-8 within their protocol maximum, and a packet with bytes
//! left over is refused, as vanilla servers do. The only I/O is [`FrameReader`], which reads
//! whole frames from a socket without ever buffering more than the frame limit it is given plus
//! one small read, and keeps what it read so the listener can replay it to the backend, and
//! [`ping`], the one client that asks a server for its status.
//!
//! Nothing here compresses or encrypts: wakegate only speaks the protocol before login
//! completes (compression and encryption start after it), and forwards everything else as
//! bytes.
//!
//! The codec is cut by section, each file below the ones it uses: `limits`, `error`,
//! `version`, `wire` (primitive types), `frame`, `handshake`, `status`, `login`,
//! `configuration`, `nbt` and `clientbound` (what wakegate sends). Users import from here.

mod clientbound;
mod configuration;
mod error;
mod frame;
mod handshake;
pub mod legacy;
mod limits;
mod login;
mod nbt;
pub mod ping;
pub mod proxy_header;
mod status;
mod version;
mod wire;

#[cfg(test)]
mod testing;

pub use self::clientbound::{Clientbound, parse_transfer};
pub use self::configuration::ConfigurationRequest;
pub use self::error::CodecError;
pub use self::frame::{Frame, FrameReader, frame_bounds, read_handshake};
pub use self::handshake::{Handshake, Intent, ServerAddress};
pub use self::limits::{
    MAX_CHAT_JSON, MAX_FRAME, MAX_HANDSHAKE_FRAME, MAX_KEY_SIGNATURE, MAX_LOGIN_FRAME,
    MAX_PLAYER_NAME, MAX_PUBLIC_KEY, MAX_SERVER_ADDRESS, MAX_STATUS_JSON, MAX_TRANSFER_HOST,
    READ_AHEAD,
};
pub use self::login::{LoginAcknowledged, LoginStart, SignatureData};
pub use self::status::{StatusRequest, StatusResponse};
pub use self::version::{LoginStartLayout, Protocol};
pub use self::wire::{BadUuid, Decoder, Uuid, put_byte_array, put_string, put_varint, put_varlong};
