//! Shared helpers for the integration tests: temp dirs, free ports, configs, waiting on states.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wakegate::event::{Event, Kind, State};
use wakegate::service::ServiceHandle;

/// The wakegate binary built for these tests.
pub const WAKEGATE: &str = env!("CARGO_BIN_EXE_wakegate");

/// Generous: the machine may be busy; a passing test never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Logs of the gateway go to the test's output (shown when a test fails).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wakegate-test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nobody listens on right now, for a backend that opens it later.
///
/// It is taken below the kernel's ephemeral range: a port picked there could be handed to
/// another test's bind to port 0 before our backend opens it, and that test's gateway would
/// then answer in its place. Ports are taken in turn from a start that differs per run.
pub fn free_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, span) = (10_000, ephemeral_low.saturating_sub(10_000).max(1000));
    let start = std::process::id() * 7919;
    loop {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let addr = SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// TOML for a gateway with its data in `dir`, an API on a free port, and `services`.
pub fn gateway_toml(dir: &std::path::Path, services: &str) -> String {
    format!(
        "[gateway]\ndata_dir = {:?}\napi = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\n{services}",
        dir.display().to_string()
    )
}

/// The demo backend as an echo server command (TOML array), opening its port after `delay`.
pub fn echo_command(listen: SocketAddr, delay: &str) -> String {
    format!(
        "[{:?}, \"demo-backend\", \"--echo\", \"--listen\", \"{listen}\", \"--boot-delay\", \"{delay}\"]",
        WAKEGATE
    )
}

/// Waits until the service is in `state`.
pub async fn wait_state(service: &ServiceHandle, state: State) {
    let mut watch = service.watch();
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not become {state}; it is {:?}",
                service.name(),
                service.status()
            )
        })
        .unwrap();
}

/// Collects transitions from `events` until one reaches `state`.
pub async fn transitions_until(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    state: State,
) -> Vec<Event> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.recv().await.unwrap();
            if event.kind == Kind::Transition {
                let done = event.state == state;
                seen.push(event);
                if done {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no transition to {state}; saw {seen:#?}"));
    seen
}

/// Sends `payload`, half-closes, and returns everything read back until EOF.
pub async fn round_trip(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await?;
    Ok(back)
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        }
        Err(_) => false,
    }
}

/// Collects every event of a service until one matches `done`.
pub async fn events_until(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    done: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.recv().await.unwrap();
            let stop = done(&event);
            seen.push(event);
            if stop {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the awaited event never came; saw {seen:#?}");
    seen
}

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

/// Starts a gateway in this process with `services` under a `[gateway]` in `dir`.
pub async fn start_app(dir: &std::path::Path, services: &str) -> wakegate::app::App {
    init_logs();
    let config = wakegate::config::parse(&gateway_toml(dir, services), "test.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    wakegate::app::App::start(config).await.unwrap()
}

/// Reads until the gateway closes the connection; what it sent before doesn't matter.
pub async fn closed_by_gateway(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the gateway did not close a malformed client");
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
