//! The command line: parses arguments and calls the library. `main.rs` only calls [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde::Deserialize;

use crate::{app, config, demo};

/// Wake costly idle servers on demand, forward their traffic, and put them back to sleep.
#[derive(Debug, Parser)]
#[command(name = "wakegate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// The config file.
        #[arg(long, env = "WAKEGATE_CONFIG", default_value = "wakegate.toml")]
        config: PathBuf,
    },
    /// A self-contained demo: a gateway in front of a small built-in web server.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where its API listens.
        #[arg(long, default_value = "127.0.0.1:7070")]
        api: SocketAddr,
        /// How long the demo server may stay idle before it is stopped.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        idle: Duration,
    },
    /// Check or print a config file.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Show the state of the services of a running gateway.
    Status {
        /// Only this service.
        name: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The API address (default: `api` from the config, else 127.0.0.1:7070).
        #[arg(long)]
        api: Option<String>,
        /// The config file to read the API address from.
        #[arg(long, env = "WAKEGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The demo's backend: a tiny web (or echo) server. Used by `demo` and the tests.
    #[command(hide = true)]
    DemoBackend {
        #[arg(long)]
        listen: SocketAddr,
        /// Wait this long before listening, like a server that boots.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        boot_delay: Duration,
        /// Echo bytes back instead of answering HTTP.
        #[arg(long)]
        echo: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Validate a config file; prints every problem with file:line and a hint.
    Check { file: PathBuf },
    /// Print a fully commented example config.
    Example,
}

/// Parses the command line, runs it, and turns the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.command,
        Command::Demo { .. } | Command::DemoBackend { .. }
    );
    init_logs(if quiet { "warn" } else { "info" });
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in journald or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = config::load(&config)?;
            runtime()?.block_on(app::run(config))?;
        }
        Command::Demo { listen, api, idle } => {
            runtime()?.block_on(demo::run(listen, api, idle))?;
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let config = config::load(&file)?;
            println!(
                "{}: ok ({} service{})",
                file.display(),
                config.services.len(),
                if config.services.len() == 1 { "" } else { "s" }
            );
        }
        Command::Config {
            action: ConfigAction::Example,
        } => print!("{}", config::EXAMPLE),
        Command::Status {
            name,
            json,
            api,
            config,
        } => {
            let api = api_address(api, config)?;
            return runtime()?.block_on(status(&api, name.as_deref(), json));
        }
        Command::DemoBackend {
            listen,
            boot_delay,
            echo,
        } => runtime()?.block_on(demo::backend(listen, boot_delay, echo))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `--api`, else the config's `api`, else the default.
fn api_address(flag: Option<String>, config: Option<PathBuf>) -> anyhow::Result<String> {
    if let Some(api) = flag {
        return Ok(api
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string());
    }
    if let Some(path) = config {
        return Ok(config::load(&path)?.gateway.api.to_string());
    }
    Ok("127.0.0.1:7070".to_string())
}

/// GETs a path of the API; returns the status code and body.
async fn get(api: &str, path: &str) -> anyhow::Result<(u16, Bytes)> {
    let unreachable = || {
        format!(
            "cannot reach the wakegate API at {api}; is `wakegate run` running? Pass --api HOST:PORT if it listens elsewhere"
        )
    };
    let stream = tokio::net::TcpStream::connect(api)
        .await
        .with_context(unreachable)?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .with_context(unreachable)?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, api)
        .body(Empty::<Bytes>::new())?;
    let exchange = async move {
        let response = sender
            .send_request(request)
            .await
            .with_context(unreachable)?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((code, body))
        // `sender` is dropped here, which lets the connection below finish.
    };
    let (answer, _) = tokio::join!(exchange, conn);
    answer
}

#[derive(Debug, Deserialize)]
struct ServiceRow {
    name: String,
    state: String,
    since: String,
    address: Option<String>,
    connections: usize,
    held: usize,
    last_error: Option<String>,
}

async fn status(api: &str, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let path = match name {
        Some(name) => format!("/api/v1/services/{name}"),
        None => "/api/v1/services".to_string(),
    };
    let (code, body) = get(api, &path).await?;
    if code != 200 {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        bail!("the API answered {code}: {message}");
    }
    if json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<ServiceRow> = if name.is_some() {
        vec![serde_json::from_slice(&body)?]
    } else {
        serde_json::from_slice(&body)?
    };
    println!(
        "{:<20} {:<9} {:<12} {:>5} {:>5}  {:<22} LAST ERROR",
        "NAME", "STATE", "FOR", "CONNS", "HELD", "ADDRESS"
    );
    for row in rows {
        println!(
            "{:<20} {:<9} {:<12} {:>5} {:>5}  {:<22} {}",
            row.name,
            row.state,
            ago(&row.since).unwrap_or_else(|_| row.since.clone()),
            row.connections,
            row.held,
            row.address.as_deref().unwrap_or("-"),
            row.last_error
                .as_deref()
                .map(|e| e.lines().next().unwrap_or(""))
                .unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// "3m 12s" since an RFC 3339 time.
fn ago(since: &str) -> anyhow::Result<String> {
    let since = humantime::parse_rfc3339(since).map_err(|e| anyhow!("{e}"))?;
    let elapsed = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    Ok(humantime::format_duration(Duration::from_secs(elapsed)).to_string())
}
