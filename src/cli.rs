//! The command line: parses arguments and calls the library. `main.rs` only calls [`main`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::client::{self, Client};
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
        /// How long the demo server may stay idle before it is stopped ("30s", "2m", "1s").
        #[arg(long, default_value = "30s", value_parser = config::de::parse_duration)]
        idle: Duration,
        /// What an hour of the demo server pretends to cost, to show what sleeping saves.
        #[arg(long, default_value = "3.0")]
        hourly_cost: f64,
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
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Wake a service.
    Wake {
        name: String,
        /// Follow the wake until the service is awake (exit 0) or failed (exit 1).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Put a service to sleep (ending its leases).
    Sleep {
        name: String,
        /// Follow it until the service is asleep (exit 0) or failed (exit 1).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create a service from a [[template]].
    Create {
        template: String,
        /// Its name (default: the template's name and a number).
        #[arg(long)]
        name: Option<String>,
        /// Who it is for (default: the API token's name); max_per_owner counts by it.
        #[arg(long)]
        owner: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Stop and end a service created from a template (its record is kept).
    Destroy {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Move the deadline of a service created from a template later, e.g. `extend mc-1 1h`.
    Extend {
        name: String,
        duration: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Have a running gateway read its config file again and apply what changed (what SIGHUP
    /// does); needs an admin token when the API has tokens.
    Reload {
        /// Leave the servers of the services the file no longer has running (else they are
        /// stopped).
        #[arg(long)]
        keep_running: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show recent events; with --follow, every new one as it happens.
    Events {
        /// Keep printing new events.
        #[arg(long, short)]
        follow: bool,
        /// Only this service's events.
        #[arg(long)]
        service: Option<String>,
        /// Events after this id (default: the latest ones).
        #[arg(long)]
        after: Option<i64>,
        /// How many to show first.
        #[arg(long, default_value = "20")]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Print the least-privilege IAM policy (JSON) for the AWS backends and DNS records a
    /// config uses.
    IamPolicy {
        /// The config file.
        #[arg(long, env = "WAKEGATE_CONFIG", default_value = "wakegate.toml")]
        config: PathBuf,
    },
    /// Run on the server: report its activity to the gateway, run the pre-stop command the
    /// gateway asks for, and stop this host when the gateway is gone and nothing is in use.
    Agent {
        /// The agent's config file.
        #[arg(long, env = "WAKEGATE_AGENT_CONFIG", default_value = "agent.toml")]
        config: PathBuf,
        /// Measure once, print what was found and exit (nothing is sent): to check the config.
        #[arg(long)]
        measure: bool,
    },
    /// The Discord bot's setup.
    Discord {
        #[command(subcommand)]
        action: DiscordAction,
    },
    /// The demo's backend: a tiny web (or echo) server. Used by `demo` and the tests.
    #[command(hide = true)]
    DemoBackend {
        #[arg(long)]
        listen: SocketAddr,
        /// Wait this long before listening, like a server that boots.
        #[arg(long, default_value = "0s", value_parser = config::de::parse_duration)]
        boot_delay: Duration,
        /// Echo bytes back instead of answering HTTP.
        #[arg(long)]
        echo: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DiscordAction {
    /// Write the slash commands to every guild in [discord] `guilds` (a bulk overwrite: running
    /// it again changes nothing).
    Register {
        /// The config file.
        #[arg(long, env = "WAKEGATE_CONFIG", default_value = "wakegate.toml")]
        config: PathBuf,
    },
}

/// How to reach a running gateway's API.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The API address (default: `api` from the config, else 127.0.0.1:7070).
    #[arg(long)]
    api: Option<String>,
    /// The config file to read the API address from (only `[gateway] api` is read).
    #[arg(long, env = "WAKEGATE_CONFIG")]
    config: Option<PathBuf>,
    /// An API token (`[[gateway.token]]`).
    #[arg(long, env = "WAKEGATE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let api = match (&self.api, &self.config) {
            (Some(api), _) => api
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string(),
            // Only the address is read: the server's secrets need not be set for a client.
            (None, Some(path)) => config::api_address(path)?.to_string(),
            (None, None) => "127.0.0.1:7070".to_string(),
        };
        Ok(Client::new(api, self.token.clone()))
    }
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
            let loaded = config::load(&config)?;
            runtime()?.block_on(app::run(loaded, config))?;
        }
        Command::Demo {
            listen,
            api,
            idle,
            hourly_cost,
        } => {
            runtime()?.block_on(demo::run(listen, api, idle, hourly_cost))?;
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let config = config::load(&file)?;
            let warnings = config.warnings();
            for warning in &warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} service{}{}{}{})",
                file.display(),
                config.services.len(),
                if config.services.len() == 1 { "" } else { "s" },
                match config.templates.len() {
                    0 => String::new(),
                    1 => ", 1 template".to_string(),
                    n => format!(", {n} templates"),
                },
                if config.discovery.docker.is_some() {
                    ", services from container labels"
                } else {
                    ""
                },
                match warnings.len() {
                    0 => String::new(),
                    1 => ", 1 warning".to_string(),
                    n => format!(", {n} warnings"),
                }
            );
        }
        Command::Config {
            action: ConfigAction::Example,
        } => print!("{}", config::EXAMPLE),
        Command::Status { name, api } => {
            let client = api.client()?;
            return runtime()?.block_on(client::status(&client, name.as_deref(), api.json));
        }
        Command::Wake { name, wait, api } => {
            let client = api.client()?;
            return runtime()?.block_on(client::steer(
                &client, &name, "wake", "awake", wait, api.json,
            ));
        }
        Command::Sleep { name, wait, api } => {
            let client = api.client()?;
            return runtime()?.block_on(client::steer(
                &client, &name, "sleep", "asleep", wait, api.json,
            ));
        }
        Command::Create {
            template,
            name,
            owner,
            api,
        } => {
            let client = api.client()?;
            return runtime()?.block_on(client::create(
                &client,
                &template,
                name.as_deref(),
                owner.as_deref(),
                api.json,
            ));
        }
        Command::Reload { keep_running, api } => {
            let client = api.client()?;
            return runtime()?.block_on(client::reload(&client, keep_running, api.json));
        }
        Command::Destroy { name, api } => {
            let client = api.client()?;
            return runtime()?.block_on(client::destroy(&client, &name, api.json));
        }
        Command::Extend {
            name,
            duration,
            api,
        } => {
            let client = api.client()?;
            return runtime()?.block_on(client::extend(&client, &name, &duration, api.json));
        }
        Command::Events {
            follow,
            service,
            after,
            limit,
            api,
        } => {
            let client = api.client()?;
            return runtime()?.block_on(client::events(
                &client,
                service.as_deref(),
                after,
                limit,
                follow,
                api.json,
            ));
        }
        Command::IamPolicy { config } => {
            let path = config;
            let config = config::load(&path)?;
            let policy = crate::backend::aws::iam::policy(&config.services).with_context(|| {
                format!(
                    "{} uses no ec2 or ecs backend: wakegate needs no AWS permission for it",
                    path.display()
                )
            })?;
            println!("{}", serde_json::to_string_pretty(&policy)?);
        }
        Command::Agent { config, measure } => {
            let (agent, warnings) = crate::agent::config::load_with_warnings(&config)?;
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            let runtime = runtime()?;
            if measure {
                println!("{}", runtime.block_on(crate::agent::measure_once(&agent)));
            } else {
                runtime.block_on(crate::agent::run(agent, async {
                    if let Err(e) = app::shutdown_signal().await {
                        tracing::error!(error = %e, "Cannot watch for signals; stopping.");
                    }
                }))?;
            }
        }
        Command::Discord {
            action: DiscordAction::Register { config },
        } => {
            let path = config;
            let config = config::load(&path)?;
            let discord = config.discord.with_context(|| {
                format!(
                    "{} has no [discord] table; add one with application_id, public_key, token and guilds (see the README's Discord section)",
                    path.display()
                )
            })?;
            for line in runtime()?.block_on(crate::discord::command::register(&discord))? {
                println!("{line}");
            }
        }
        Command::DemoBackend {
            listen,
            boot_delay,
            echo,
        } => runtime()?.block_on(demo::backend(listen, boot_delay, echo))?,
    }
    Ok(ExitCode::SUCCESS)
}
