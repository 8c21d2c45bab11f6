//! Bad input on a bedrock listener, over real sockets from many loopback addresses
//! (127.0.0.2 to 127.0.0.101: Linux takes any 127/8 source): truncated and oversized RakNet
//! offline messages, random datagrams, 10,000 pings, and a flood of joins past
//! `max_sessions`. None of it wakes the server, crashes wakegate or makes it hold more than its
//! bounds, and real peers are served normally after it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use wakegate::bedrock::{MAGIC, MAX_OFFLINE, Pong, ping as raknet_ping};
use wakegate::event::State;

use super::*;

/// Source addresses of the flood.
const ADDRESSES: u8 = 100;

/// A first open-connection request, `len` bytes long (its MTU probe).
fn open_request(len: usize) -> Vec<u8> {
    let mut datagram = vec![0x05];
    datagram.extend_from_slice(&MAGIC);
    datagram.push(11);
    datagram.resize(len.max(18), 0);
    datagram
}

/// The resident memory of this test process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_ten_thousand_pings_wake_nothing_and_leave_it_serving() {
    let dir = temp_dir("bedrock-garbage");
    let gw = Bedrock::new(&dir, "").await;
    let sockets = udp_sources(ADDRESSES).await;
    let mut noise = Noise(0x5eed_1234_abcd_0001);

    // Truncated pings and requests, oversized ones (up to 60 KB: loopback carries them), and
    // random datagrams; sent in small bursts, each counted before the next goes, so that none
    // is lost in the socket's buffer and the counts can be exact.
    let mut garbage: Vec<Vec<u8>> = Vec::new();
    let full_ping = raknet_ping(7, 7);
    for _ in 0..200 {
        garbage.push(full_ping[..1 + noise.below(full_ping.len() - 1)].to_vec());
        garbage.push(open_request(18)[..1 + noise.below(17)].to_vec());
    }
    for _ in 0..20 {
        garbage.push(open_request(
            MAX_OFFLINE + 1 + noise.below(60_000 - MAX_OFFLINE),
        ));
        let mut big_ping = full_ping.clone();
        big_ping.resize(MAX_OFFLINE + 1 + noise.below(8_000), 0);
        garbage.push(big_ping);
    }
    let malformed_at_least = garbage.len() as u64;
    for _ in 0..1000 {
        let len = 1 + noise.below(1400);
        garbage.push(noise.bytes(len));
    }
    let (mut sent, mut burst, mut count) = (0u64, 0usize, 0usize);
    for (i, datagram) in garbage.iter().enumerate() {
        sockets[i % sockets.len()]
            .send_to(datagram, gw.addr)
            .await
            .unwrap();
        sent += 1;
        burst += datagram.len();
        count += 1;
        // Well within the listener's receive buffer (208 KiB; a small datagram takes about a
        // KiB of it).
        if burst > 32 * 1024 || count == 50 || i + 1 == garbage.len() {
            (burst, count) = (0, 0);
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                let counted = gw.refused("malformed").await + gw.refused("no_wake").await;
                if counted == sent {
                    break;
                }
                assert!(counted < sent, "{counted} refusals for {sent} datagrams");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{counted} refusals for {sent} datagrams"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert!(gw.refused("malformed").await >= malformed_at_least);
    assert_eq!(gw.mc().state(), State::Asleep);
    assert_eq!(gw.sessions().await, 0);

    // 10,000 pings: 100 from each address, each answered with the sleeping pong before the
    // next goes.
    let rss_before = rss_mib();
    let mut flood = JoinSet::new();
    let addr = gw.addr;
    for (i, socket) in sockets.into_iter().enumerate() {
        flood.spawn(async move {
            let mut answered = 0u32;
            let mut buf = vec![0u8; 2048];
            for n in 0..100u64 {
                let time = ((i as u64) << 32) | n;
                socket
                    .send_to(&raknet_ping(time, i as u64), addr)
                    .await
                    .unwrap();
                let got = tokio::time::timeout(Duration::from_secs(2), socket.recv(&mut buf)).await;
                if let Ok(Ok(len)) = got {
                    let pong = Pong::parse(&buf[..len]).unwrap();
                    assert_eq!(pong.time, time);
                    assert_eq!(pong.advert.motd, "zzz asleep");
                    assert_eq!(pong.advert.online, 0);
                    answered += 1;
                }
            }
            answered
        });
    }
    let mut answered = 0;
    while let Some(n) = flood.join_next().await {
        answered += n.unwrap();
    }
    let rss_after = rss_mib();
    // Loopback loses a datagram only when a buffer is full; one ping in flight per address
    // leaves them nearly empty.
    assert!(answered >= 9_900, "{answered} of 10000 pings answered");
    assert_eq!(gw.mc().state(), State::Asleep);
    assert_eq!(gw.sessions().await, 0, "pings started sessions");
    assert_eq!(starts_in_log(&dir, "mc"), 0, "the flood woke the server");
    // Pings while asleep keep nothing: whatever other tests in this process allocate
    // meanwhile, the growth stays far below what 10,000 kept pings would cost.
    assert!(
        rss_after - rss_before < 64.0,
        "RSS grew from {rss_before:.1} to {rss_after:.1} MiB"
    );

    // Real peers are served as before.
    assert_eq!(ping(gw.addr).await["motd"], "zzz asleep");
    assert_eq!(
        mcstatus_bedrock(gw.addr).await.unwrap()["motd"],
        "zzz asleep"
    );
    join(gw.addr, "after", 0).finish().await.assert_spawned();
    gw.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_joins_from_many_addresses_holds_at_most_max_sessions() {
    let dir = temp_dir("bedrock-join-flood");
    let gw = Bedrock::new(&dir, "max_sessions = 16").await;
    let sockets = udp_sources(ADDRESSES).await;
    // Five join requests from each address, each from a port of its own: 500 would-be
    // sessions. Sent in bursts, each counted before the next goes.
    let mut extra = Vec::new();
    for socket in &sockets {
        let ip = socket.local_addr().unwrap().ip();
        for _ in 0..4 {
            extra.push(UdpSocket::bind(SocketAddr::new(ip, 0)).await.unwrap());
        }
    }
    let all: Vec<&UdpSocket> = sockets.iter().chain(&extra).collect();
    let request = open_request(600);
    for (i, chunk) in all.chunks(25).enumerate() {
        for socket in chunk {
            socket.send_to(&request, gw.addr).await.unwrap();
        }
        let sent = (i * 25 + chunk.len()) as u64;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (live, refused) = (gw.sessions().await, gw.refused("max_sessions").await);
            assert!(live <= 16, "{live} sessions live");
            if live + refused == sent {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{live} sessions and {refused} refusals for {sent} requests"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(gw.sessions().await, 16);
    assert_eq!(gw.refused("max_sessions").await, all.len() as u64 - 16);
    // The joins woke the server; once the flood's sessions have gone idle (5 s), a real player
    // gets in.
    gw.until_state(State::Awake).await;
    let deadline = tokio::time::Instant::now() + PEER_DEADLINE;
    while gw.sessions().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sessions never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    join(gw.addr, "after", 0).finish().await.assert_spawned();
    gw.app.shutdown().await;
}
