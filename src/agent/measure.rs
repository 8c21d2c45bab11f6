//! One measurement of the host's activity: established connections on the watched ports,
//! Minecraft players from a status ping of the local server, and the count a command prints.
//! A figure that cannot be measured is reported as unknown (and said why), not as zero; for
//! the agent's own idle time it counts as no activity (a server that does not answer its
//! status ping has nobody on it).

use std::net::SocketAddr;
use std::time::Duration;

use super::command;
use super::config::Agent;
use super::socket;
use crate::minecraft::ping;

/// A status ping or a count command may take at most this long.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one measurement found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub connections: Option<u32>,
    pub players: Option<u32>,
    pub count: Option<u64>,
    /// What could not be measured, one sentence each.
    pub problems: Vec<String>,
}

impl Figures {
    /// Whether anything shows use of the host.
    pub fn active(&self) -> bool {
        self.connections.unwrap_or(0) > 0
            || self.players.unwrap_or(0) > 0
            || self.count.unwrap_or(0) > 0
    }

    /// The figures in words: "3 connections, 2 players".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.connections {
            parts.push(plural(u64::from(n), "connection"));
        }
        if let Some(n) = self.players {
            parts.push(plural(u64::from(n), "player"));
        }
        if let Some(n) = self.count {
            parts.push(format!("count {n}"));
        }
        if parts.is_empty() {
            "nothing measured".to_string()
        } else {
            parts.join(", ")
        }
    }
}

fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// Measures everything the agent is configured to watch.
pub async fn measure(agent: &Agent) -> Figures {
    let mut figures = Figures::default();
    // The sockets first, then the ping: the ping's own connection is never counted.
    if !agent.ports.is_empty() {
        match socket::established(&agent.ports) {
            Ok(n) => figures.connections = Some(n),
            Err(e) => figures.problems.push(e),
        }
    }
    if let Some(server) = agent.minecraft {
        match players(server).await {
            Ok(n) => figures.players = Some(n),
            Err(e) => figures
                .problems
                .push(format!("no player count from {server}: {e}")),
        }
    }
    if let Some(command) = &agent.count_command {
        match count(command).await {
            Ok(n) => figures.count = Some(n),
            Err(e) => figures.problems.push(format!("count_command: {e}")),
        }
    }
    figures
}

/// The players a Minecraft server says are online.
async fn players(server: SocketAddr) -> Result<u32, String> {
    let handshake = ping::own_handshake(server);
    let json = tokio::time::timeout(MEASURE_TIMEOUT, ping::status(server, &handshake, &[]))
        .await
        .map_err(|_| ping::PingError::Timeout(MEASURE_TIMEOUT).to_string())?
        .map_err(|e| e.to_string())?;
    ping::players(&json)
        .map_err(|e| e.to_string())?
        .online
        .ok_or_else(|| "its status has no players.online".to_string())
}

/// Runs the count command and reads the number it prints.
async fn count(command: &str) -> Result<u64, String> {
    let ran = command::run(command, MEASURE_TIMEOUT).await?;
    if !ran.ok {
        return Err(format!("it ended with {}: {}", ran.exit, ran.tail(3)));
    }
    let text = ran.stdout.trim();
    text.parse().map_err(|_| {
        format!("it printed `{text}`, not a number; make it print only a count, e.g. `… | wc -l`")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(count_command: &str, ports: Vec<u16>) -> Agent {
        let mut agent = super::super::config::parse(
            "gateway = \"http://127.0.0.1:9\"\nservice = \"a\"\ntoken = \"t\"\nports = [1]\n",
            "agent.toml",
        )
        .unwrap();
        agent.ports = ports;
        agent.count_command = Some(count_command.to_string());
        agent
    }

    #[tokio::test]
    async fn players_come_from_a_status_ping_of_the_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = server.local_addr().unwrap();
        let json = r#"{"players":{"max":20,"online":2}}"#;
        let answer = crate::minecraft::Clientbound::StatusResponse { json }
            .encode(crate::minecraft::Protocol(765))
            .unwrap();
        let serve = async {
            let (mut socket, _) = server.accept().await.unwrap();
            let mut request = [0u8; 64];
            let _ = socket.read(&mut request).await.unwrap();
            socket.write_all(&answer).await.unwrap();
        };
        let mut agent = agent("echo 0", vec![]);
        agent.count_command = None;
        agent.minecraft = Some(address);
        let ((), figures) = tokio::join!(serve, measure(&agent));
        assert_eq!(figures.players, Some(2));
        assert_eq!(figures.describe(), "2 players");
        assert!(figures.problems.is_empty(), "{:?}", figures.problems);

        // A server that is down has no players: said, and counted as no activity.
        drop(server);
        let figures = measure(&agent).await;
        assert_eq!(figures.players, None);
        assert!(!figures.active());
        assert!(
            figures.problems[0].starts_with(&format!("no player count from {address}: ")),
            "{:?}",
            figures.problems
        );
    }

    #[tokio::test]
    async fn a_count_and_connections_are_measured_and_failures_said() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let figures = measure(&agent("echo ' 4 '", vec![port])).await;
        assert_eq!(figures.connections, Some(1));
        assert_eq!(figures.count, Some(4));
        assert!(figures.active());
        assert_eq!(figures.describe(), "1 connection, count 4");

        let figures = measure(&agent("echo lots", vec![])).await;
        assert_eq!(figures.count, None);
        assert!(!figures.active());
        assert_eq!(
            figures.problems,
            [
                "count_command: it printed `lots`, not a number; make it print only a count, e.g. `… | wc -l`"
            ]
        );
    }
}
