//! `wakegate demo`: a gateway in front of a tiny web server that wakegate runs itself (its own
//! binary in the hidden `demo-backend` mode), so the whole cycle can be seen with nothing
//! installed: asleep, a browser connects, waking, awake, idle, stopping, asleep.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::app::{self, App};
use crate::backend::config::{Backend, OnShutdown, Process, ProcessSleep, StopMethod};
use crate::config::{Config, Gateway};
use crate::event::{Kind, format_time};
use crate::listener::config::Listen;
use crate::listener::http::config::{
    DEFAULT_IGNORE_PATHS, DEFAULT_IGNORE_USER_AGENTS, Http, Strategy,
};
use crate::service::config::Service;

/// The API address the CLI reaches without `--api`.
const DEFAULT_API: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7070);

/// Runs the demo until Ctrl-C. `hourly_cost` is what an hour of the demo server pretends to
/// cost, so that the money sleeping saves shows.
pub async fn run(
    listen: SocketAddr,
    api: SocketAddr,
    idle: Duration,
    hourly_cost: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        hourly_cost.is_finite() && hourly_cost >= 0.0,
        "--hourly-cost must be a positive number, e.g. 0.17"
    );
    let exe = std::env::current_exe().context("cannot find wakegate's own binary")?;
    // The demo server gets a free port of its own next to the gateway.
    let backend = std::net::TcpListener::bind((listen.ip(), 0))
        .and_then(|l| l.local_addr())
        .context("cannot find a free port for the demo server")?;
    let data_dir = std::env::temp_dir().join("wakegate-demo");
    let config = Config {
        templates: Vec::new(),
        discovery: Default::default(),
        gateway: Gateway {
            data_dir: data_dir.clone(),
            store: crate::store::Location::Sqlite,
            member: Default::default(),
            api,
            shutdown_grace: Duration::from_secs(5),
            watch_config: false,
            tokens: Vec::new(),
            cors_origins: Vec::new(),
            agents: None,
        },
        services: vec![Service {
            name: "demo".into(),
            hourly_cost: Some(hourly_cost),
            idle_timeout: idle,
            min_awake: Duration::ZERO,
            wake_timeout: Duration::from_secs(30),
            max_held: 256,
            backend: Backend::Process(Process {
                command: vec![
                    exe.display().to_string(),
                    "demo-backend".into(),
                    "--listen".into(),
                    backend.to_string(),
                    "--boot-delay".into(),
                    "2s".into(),
                ],
                cwd: None,
                env: vec![],
                address: backend.to_string(),
                stop: StopMethod::Signal(15),
                stop_timeout: Duration::from_secs(10),
                on_shutdown: OnShutdown::Stop,
                save_all: false,
                sleep_mode: ProcessSleep::Stop,
                freeze_for: None,
            }),
            // The http listener: a browser sees the waiting page, which opens the demo
            // server's page by itself once it is up.
            listeners: vec![Listen::Http(Box::new(Http {
                bind: listen,
                hostnames: Vec::new(),
                default: false,
                strategy: Strategy::Auto,
                block_timeout: Duration::from_secs(30),
                tls: None,
                redirect_https: None,
                page: None,
                ignore_paths: DEFAULT_IGNORE_PATHS.iter().map(|p| p.to_string()).collect(),
                ignore_user_agents: DEFAULT_IGNORE_USER_AGENTS
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                head_timeout: crate::listener::http::config::DEFAULT_HEAD_TIMEOUT,
                keepalive_timeout: crate::listener::http::config::DEFAULT_KEEPALIVE_TIMEOUT,
                max_connections_per_address:
                    crate::listener::admission::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
                rules: Default::default(),
                trusted_proxies: Vec::new(),
            }))],
            readiness: Default::default(),
            health: Vec::new(),
            always_on: false,
            policy: Default::default(),
            agent: Default::default(),
        }],
        notify: Vec::new(),
        discord: None,
        file_warnings: Vec::new(),
        source: Default::default(),
    };
    let app = App::start(config).await?;
    let mut events = app.subscribe();
    println!("wakegate demo");
    println!();
    println!(
        "  open http://{} — a waiting page shows the demo server waking (it takes 2 s to boot)\n  and opens its page by itself once it is up;",
        app.listen_addr("demo").unwrap_or(listen)
    );
    println!(
        "  it goes back to sleep after {} without a request.",
        humantime::format_duration(idle)
    );
    let command = own_command();
    let api_arg = if app.api_addr() == DEFAULT_API {
        String::new()
    } else {
        format!(" --api {}", app.api_addr())
    };
    println!(
        "  an hour awake pretends to cost {hourly_cost:.2}: what sleeping saves shows on the dashboard\n  at http://{}/ and in `{command} status{api_arg}`, from another terminal;",
        app.api_addr()
    );
    println!(
        "  `{command} wake demo --wait{api_arg}` wakes it from there, and says how long it should take."
    );
    println!("  data: {}", data_dir.display());
    println!("  Ctrl-C stops the demo.");
    println!();
    if let Some(demo) = app.service("demo") {
        let status = demo.status();
        let time = format_time(status.since);
        println!(
            "{}  {:<8}  (now)",
            time.get(11..19).unwrap_or(&time),
            status.state
        );
    }
    let shown = async {
        while let Ok(event) = events.recv().await {
            let time = format_time(event.time);
            let clock = time.get(11..19).unwrap_or(&time);
            match event.kind {
                Kind::Transition => println!("{clock}  {:<8}  {}", event.state, event.reason),
                _ => println!("{clock}  {:<8}  … {}", "", event.reason),
            }
        }
    };
    tokio::select! {
        () = shown => {}
        signal = app::shutdown_signal() => signal?,
    }
    app.shutdown().await;
    Ok(())
}

/// How to run this very binary from the current directory, for the hints: `wakegate` when
/// that is the one on PATH, else its path (relative when it is under the current directory,
/// as `./target/debug/wakegate` after `cargo run`).
fn own_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "wakegate".into();
    };
    // The `wakegate` a shell runs is the first one on PATH.
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .find_map(|dir| std::fs::canonicalize(dir.join("wakegate")).ok())
            .is_some_and(|found| found == exe)
    });
    if on_path {
        return "wakegate".into();
    }
    let relative = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .ok()
        .and_then(|cwd| exe.strip_prefix(cwd).ok().map(|p| p.to_path_buf()));
    match relative {
        Some(path) => format!("./{}", path.display()),
        None => exe.display().to_string(),
    }
}

/// The demo's backend: after `boot_delay` it listens on `listen` and answers each connection
/// with a small web page, or echoes bytes back with `echo`. It stops on SIGTERM/SIGINT or when
/// `stop` is written to its stdin.
pub async fn backend(listen: SocketAddr, boot_delay: Duration, echo: bool) -> anyhow::Result<()> {
    // Booting is what the demo shows: a real server takes a while before its port opens.
    tokio::time::sleep(boot_delay).await;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let started = format_time(std::time::SystemTime::now());
    eprintln!("demo-backend: listening on {listen}");
    let connections = tokio_util::task::TaskTracker::new();
    let serve = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let started = started.clone();
            connections.spawn(async move {
                let _ = if echo {
                    echo_back(stream).await
                } else {
                    page(stream, &started).await
                };
            });
        }
    };
    let stdin_stop = async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "stop" {
                return;
            }
        }
        // No stdin (or it closed): only a signal stops us.
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = serve => {}
        () = stdin_stop => eprintln!("demo-backend: stop requested on stdin"),
        signal = app::shutdown_signal() => signal?,
    }
    eprintln!("demo-backend: stopped");
    Ok(())
}

async fn echo_back(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut read, mut write) = stream.split();
    tokio::io::copy(&mut read, &mut write).await?;
    write.shutdown().await
}

async fn page(mut stream: TcpStream, started: &str) -> std::io::Result<()> {
    // Read the request head; the page is the same for every path.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>wakegate demo</title>\
         <body style=\"font-family:system-ui;max-width:40em;margin:4em auto\">\
         <h1>Awake!</h1><p>This page comes from the demo server (pid {}), \
         which wakegate started at {started} because you connected.</p>\
         <p>Leave it alone and it goes back to sleep; reload to wake it again.</p>",
        std::process::id()
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
