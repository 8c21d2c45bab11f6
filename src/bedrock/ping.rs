//! The client side of a Bedrock unconnected ping: what the player poll, the `bedrock` probe
//! and the `bedrock` listener's pong cache ask a server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::{Pong, ping};

/// wakegate's GUID in its pings (any fixed value does: servers only echo it).
const CLIENT_GUID: u64 = 0x7761_6b65_6761_7465;

/// Pings `address` until a pong comes back (a ping is sent again every `every`, as UDP may
/// lose one); the caller bounds the whole with a timeout.
pub async fn status(address: SocketAddr, every: Duration) -> std::io::Result<Pong> {
    let any: IpAddr = if address.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(address).await?;
    let mut buf = vec![0u8; 2048];
    let mut time: u64 = 1;
    loop {
        socket.send(&ping(time, CLIENT_GUID)).await?;
        let deadline = tokio::time::Instant::now() + every;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(received) => {
                    let n = received?;
                    // A late pong of an earlier ping is as good.
                    if let Ok(pong) = Pong::parse(&buf[..n])
                        && pong.time <= time
                    {
                        return Ok(pong);
                    }
                }
            }
        }
        time += 1;
    }
}
