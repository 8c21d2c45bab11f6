//! The RakNet offline-message reader of the `bedrock` listener (`bedrock::parse`) and the
//! pong reader of the player poll (`bedrock::Pong::parse`) on arbitrary datagrams, as any
//! host on the internet may send them. They must never panic; a ping read must encode back
//! to the very same bytes; a pong read, encoded again, must read back (a long advertisement may be cut).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wakegate::bedrock::{self, Offline, Pong};

fuzz_target!(|data: &[u8]| {
    if let Ok(offline) = bedrock::parse(data) {
        match offline {
            Offline::Ping { time, client } => {
                assert_eq!(&bedrock::ping(time, client)[1..], &data[1..33]);
            }
            Offline::OpenRequest1 { mtu, .. } => assert_eq!(mtu, data.len()),
        }
    }
    if let Ok(pong) = Pong::parse(data) {
        let again = Pong::parse(&pong.encode()).expect("an encoded pong reads back");
        assert_eq!((again.time, again.server), (pong.time, pong.server));
    }
});
