//! What can go wrong reading or writing the protocol: one error type for every packet, whose
//! messages say which field of which packet was wrong.

use std::time::Duration;

use super::version::Protocol;

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

pub(super) type Result<T, E = CodecError> = std::result::Result<T, E>;
