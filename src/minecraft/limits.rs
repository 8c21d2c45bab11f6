//! The size limits of the protocol: frames per stage of a connection and strings per field,
//! as vanilla enforces them. Every read is bounded by one of these before any byte of what it
//! bounds is looked at.

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

/// How much [`FrameReader`](super::FrameReader) asks the socket for when it does not yet know how long the next
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
