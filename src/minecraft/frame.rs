//! Frames, the length-prefixed envelope of every packet: [`frame_bounds`] checks a frame's
//! length before any of its body is read, and [`FrameReader`] reads whole frames from a
//! connection and keeps the bytes it read so the listener can replay them to the backend.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{CodecError, Result};
use super::handshake::Handshake;
use super::limits::{MAX_HANDSHAKE_FRAME, READ_AHEAD};
use super::wire::Decoder;

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

    /// A reader of a connection whose first bytes were read already (past a PROXY header):
    /// they come first.
    pub fn with_buffered(inner: R, buf: Vec<u8>) -> Self {
        FrameReader { inner, buf }
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

    /// Reads some more bytes, keeping at most `limit` buffered in all: for what is not framed
    /// (the legacy ping). Fails when the buffer is full already or the connection closed.
    pub async fn read_raw(&mut self, limit: usize) -> Result<()> {
        let want = limit.saturating_sub(self.buf.len());
        if want == 0 {
            return Err(CodecError::FrameTooLarge {
                size: self.buf.len() as u64,
                max: limit,
            });
        }
        self.fill(want, limit).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minecraft::testing::*;
    use crate::minecraft::*;

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
