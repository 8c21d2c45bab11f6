//! The Minecraft codec on arbitrary bytes, both as packets handed to every parser and as a
//! client's connection read through `FrameReader` (a few bytes at a time) into the handshake
//! and whatever its intent leads to. It must never panic, whatever parses must encode and parse
//! back to the same value, and the reader's buffer must stay within the frame limit of each
//! stage plus one read-ahead.
#![no_main]

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::runtime::Runtime;
use wakegate::minecraft::{
    ConfigurationRequest, Frame, FrameReader, Handshake, Intent, LoginAcknowledged, LoginStart,
    MAX_FRAME, MAX_HANDSHAKE_FRAME, MAX_LOGIN_FRAME, Protocol, READ_AHEAD, StatusRequest,
    StatusResponse, frame_bounds, parse_transfer, read_handshake,
};

/// Protocols on both sides of every layout change, an unknown one and a snapshot.
const PROTOCOLS: &[i32] = &[
    -1,
    4,
    5,
    47,
    734,
    735,
    758,
    759,
    760,
    761,
    763,
    764,
    765,
    766,
    767,
    768,
    769,
    777,
    9999,
    0x4000_0100,
];

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

/// Hands its bytes out `step` at a time, like a slow connection.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(buf.remaining()).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

/// The body of the frame `bytes` holds, which must be one whole frame.
fn body_of(bytes: &[u8]) -> Vec<u8> {
    let frame = Frame::parse(bytes, MAX_FRAME)
        .expect("an encoded frame is well formed")
        .expect("an encoded frame is complete");
    assert_eq!(frame.raw().len(), bytes.len());
    frame.body().to_vec()
}

/// Every parser on `body`; whatever parses must survive a round trip.
fn parse_everything(body: &[u8]) {
    for max in [MAX_HANDSHAKE_FRAME, MAX_LOGIN_FRAME, MAX_FRAME] {
        if let Ok(Some((header, total))) = frame_bounds(body, max) {
            assert!(header <= 5 && total <= body.len() && total - header <= max);
        }
    }
    if let Ok(handshake) = Handshake::parse(body) {
        let again = body_of(&handshake.encode().expect("a parsed handshake encodes"));
        assert_eq!(Handshake::parse(&again).unwrap(), handshake);
    }
    if let Ok(request) = StatusRequest::parse(body) {
        assert_eq!(
            StatusRequest::parse(&body_of(&request.encode())).unwrap(),
            request
        );
    }
    let _ = StatusResponse::parse(body);
    for &number in PROTOCOLS {
        let protocol = Protocol(number);
        if let Ok(start) = LoginStart::parse(body, protocol) {
            let again = body_of(
                &start
                    .encode(protocol)
                    .expect("a parsed login start encodes"),
            );
            assert_eq!(LoginStart::parse(&again, protocol).unwrap(), start);
        }
        if let Ok(request) = ConfigurationRequest::parse(body, protocol) {
            let again = body_of(&request.encode(protocol).unwrap());
            assert_eq!(
                ConfigurationRequest::parse(&again, protocol).unwrap(),
                request
            );
        }
        let _ = LoginAcknowledged::parse(body, protocol);
        let _ = parse_transfer(body, protocol);
    }
}

fn check_buffer<R>(reader: &FrameReader<R>, max: usize) {
    assert!(
        reader.capacity() <= max + 5 + READ_AHEAD,
        "a buffer of {} bytes for a limit of {max}",
        reader.capacity()
    );
}

/// The bytes as a connection: a handshake, then status, or login start and (from 1.20.2)
/// login acknowledged and configuration packets.
async fn connection(data: &[u8], step: usize) {
    let mut reader = FrameReader::new(Trickle { data, step });
    let handshake = read_handshake(&mut reader, Duration::from_secs(1)).await;
    check_buffer(&reader, MAX_HANDSHAKE_FRAME);
    let Ok((handshake, frame)) = handshake else {
        return;
    };
    assert!(frame.body().len() <= MAX_HANDSHAKE_FRAME);
    let protocol = handshake.protocol;
    if handshake.intent == Intent::Status {
        while let Ok(frame) = reader.next_frame(MAX_LOGIN_FRAME).await {
            assert!(frame.body().len() <= MAX_LOGIN_FRAME);
            let _ = StatusRequest::parse(frame.body());
        }
        check_buffer(&reader, MAX_LOGIN_FRAME);
        return;
    }
    let Ok(frame) = reader.next_frame(MAX_LOGIN_FRAME).await else {
        check_buffer(&reader, MAX_LOGIN_FRAME);
        return;
    };
    if LoginStart::parse(frame.body(), protocol).is_err() || !protocol.has_configuration() {
        return;
    }
    let Ok(frame) = reader.next_frame(MAX_LOGIN_FRAME).await else {
        return;
    };
    if LoginAcknowledged::parse(frame.body(), protocol).is_err() {
        return;
    }
    while let Ok(frame) = reader.next_frame(MAX_FRAME).await {
        let _ = ConfigurationRequest::parse(frame.body(), protocol);
    }
    check_buffer(&reader, MAX_FRAME);
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    parse_everything(rest);
    let step = match first {
        0..=127 => usize::from(first % 8) + 1,
        _ => usize::from(first) * 64,
    };
    runtime().block_on(connection(rest, step));
});
