//! Clients of the gateway from chosen addresses (loopback takes any 127/8 source, so a test
//! can be several clients, or a load balancer and its clients), and the refusals the gateway
//! counted, read from its `/metrics`.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use super::DEADLINE;

/// A connection to `to` from the loopback address `from`.
pub async fn connect_from(from: impl Into<IpAddr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.into(), 0))?;
    socket.connect(to).await
}

/// Reads until the other side closes the connection (a reset counts as closed); panics if it
/// does not within [`DEADLINE`].
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the gateway did not close the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `request` on a new connection from `from` and returns everything read until the
/// other side closes it.
pub async fn exchange_from(from: impl Into<IpAddr>, to: SocketAddr, request: &[u8]) -> String {
    let mut stream = connect_from(from, to).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

/// The gateway's metrics, from its API at `api`.
pub async fn metrics(api: SocketAddr) -> String {
    let request = b"GET /metrics HTTP/1.0\r\nHost: wakegate\r\n\r\n";
    let text = exchange_from([127, 0, 0, 1], api, request).await;
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The value of `wakegate_listener_refused_total` for `reason` on the listener bound to
/// `listener`, or (`None`) summed over every listener.
pub fn refused(metrics: &str, listener: Option<SocketAddr>, reason: &str) -> u64 {
    let prefix = match listener {
        Some(listener) => format!("wakegate_listener_refused_total{{listener=\"{listener}\","),
        None => "wakegate_listener_refused_total{".to_string(),
    };
    let label = format!("reason=\"{reason}\"}} ");
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .collect();
    assert!(
        !lines.is_empty(),
        "no {label} line for {listener:?}:\n{metrics}"
    );
    lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// One UDP socket on each of 127.0.0.2 ..= 127.0.0.(1 + `n`): `n` clients of their own.
pub async fn udp_sources(n: u8) -> Vec<UdpSocket> {
    let mut sockets = Vec::new();
    for i in 0..n {
        let ip = std::net::Ipv4Addr::new(127, 0, 0, 2 + i);
        sockets.push(UdpSocket::bind((ip, 0)).await.unwrap());
    }
    sockets
}

/// A small deterministic generator of noise (xorshift64*): the same bytes on every run.
pub struct Noise(pub u64);

impl Noise {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}
