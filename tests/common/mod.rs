//! The shared language of the integration tests: temp dirs and free ports here; the config
//! builder (`config`), the real binary as a child process (`binary`), waiting on states and
//! typed events (`events`), the Minecraft peers (`minecraft`), the Prometheus exposition
//! checked by promtool (`prometheus`), clients from chosen addresses with the refusals the
//! gateway counted (`sockets`), and a web backend that says who it was told the client is
//! (`web`).
// Each test file uses a part of it.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod config;
pub mod events;
pub mod minecraft;
pub mod postgres;
pub mod prometheus;
pub mod sockets;
pub mod web;

pub use binary::*;
pub use config::*;
pub use events::*;
pub use minecraft::*;
pub use prometheus::*;
pub use sockets::*;
pub use web::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// Live processes (no zombies) whose command line holds `needle`, this test's own excepted.
pub fn running_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| {
                    String::from_utf8_lossy(&raw)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// The demo echo servers (`echo`) listening on `backend`, however they were started.
pub fn echo_servers(backend: SocketAddr) -> Vec<u32> {
    running_with(&format!(
        "{WAKEGATE} demo-backend --echo --listen {backend}"
    ))
}

/// Writes `message` and reads as many bytes back (through an echo server).
pub fn echo_back(stream: &mut std::net::TcpStream, message: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    stream.write_all(message).unwrap();
    let mut back = vec![0; message.len()];
    stream.read_exact(&mut back).unwrap();
    back
}

/// How often a `process` backend of `service` was started, from its log in `dir`.
pub fn starts_in_log(dir: &std::path::Path, service: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{service}.log")))
        .unwrap_or_default()
        .matches("--- wakegate starts")
        .count()
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

/// What a browser script of tests/browser (run by node) said, once it passed: fails with its
/// whole output, and how to install what it needs, when it did not.
pub fn browser_passed(output: std::io::Result<std::process::Output>) -> String {
    let output =
        output.expect("cannot run node; scripts/test installs it, Chromium and playwright-core");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}); run `npm ci --prefix tests/browser` if playwright-core is missing\n{stdout}{stderr}",
        output.status
    );
    println!("{stdout}");
    stdout.into_owned()
}
