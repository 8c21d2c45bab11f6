//! The Minecraft peers of the tests (tests/peers/minecraft): the real `minecraft-protocol`
//! client driven by `peer.js`, run with node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::DEADLINE;

/// The folder of the Minecraft peers (tests/peers/minecraft), once `packages` are installed
/// there.
pub fn minecraft_peers(packages: &[&str]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers/minecraft");
    for package in packages {
        assert!(
            dir.join("node_modules").join(package).exists(),
            "{package} is not installed; run `npm ci --prefix tests/peers/minecraft` \
             (scripts/test does)"
        );
    }
    dir
}

/// Runs `node peer.js ARGS…` (tests/peers/minecraft) with `env` and returns the JSON line it
/// prints last.
pub async fn minecraft_peer(
    args: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
) -> serde_json::Value {
    let run = tokio::process::Command::new("node")
        .arg("peer.js")
        .args(args)
        .envs(env.iter().copied())
        .current_dir(minecraft_peers(&["minecraft-protocol"]))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(deadline, run)
        .await
        .unwrap_or_else(|_| panic!("node peer.js {args:?} did not finish"))
        .expect("cannot run node; scripts/test installs it");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "node peer.js {args:?} printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(line).unwrap()
}

/// A Minecraft player (peer.js, 1.16.5) that joins `address` as `name` and stays until killed;
/// returned once it is in.
pub async fn minecraft_player_stays(address: SocketAddr, name: &str) -> tokio::process::Child {
    let mut player = tokio::process::Command::new("node")
        .args([
            "peer.js",
            "login",
            &address.port().to_string(),
            "127.0.0.1",
            name,
            "1.16.5",
            "stay",
        ])
        .current_dir(minecraft_peers(&["minecraft-protocol"]))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(player.stdout.take().unwrap()));
    let joined = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(joined.as_deref(), Some(r#"{"joined":true}"#));
    player
}
