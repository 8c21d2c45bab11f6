//! `[service.backend]`: which backend runs a service, read into [`Backend`]. The `exec` and
//! `process` backends (with RCON) are read here; `ec2` and `ecs` by [`aws::config`], `docker`
//! by [`docker::config`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use super::{aws, docker};
use crate::config::de::{
    Secret, check_address, duration, expand_env, optional_spanned_duration, read, secret,
    split_type,
};
use crate::config::diag::Problems;

/// How a service is started, stopped and found.
#[derive(Debug, Clone)]
pub enum Backend {
    Exec(Exec),
    Process(Process),
    /// An EC2 instance (`aws` feature).
    Ec2(aws::config::Ec2),
    /// An ECS service or task (`aws` feature).
    Ecs(aws::config::Ecs),
    /// A Docker (or Podman) container.
    Docker(docker::config::Docker),
}

/// User hook commands run by `sh -c`.
#[derive(Debug, Clone)]
pub struct Exec {
    pub start: String,
    pub stop: String,
    pub status: Option<String>,
    pub timeout: Duration,
    pub address: String,
    pub env: Vec<(String, Secret)>,
}

/// A server that wakegate runs as its own child process.
#[derive(Debug, Clone)]
pub struct Process {
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(String, Secret)>,
    pub address: String,
    pub stop: StopMethod,
    pub stop_timeout: Duration,
    pub on_shutdown: OnShutdown,
    /// Ask the server to `save-all` before the stop (by stdin or RCON; never with a signal).
    pub save_all: bool,
    /// How the server sleeps when idle: stopped, or frozen with SIGSTOP.
    pub sleep_mode: ProcessSleep,
    /// How long it may stay frozen before it is stopped for real (`sleep_mode = "freeze"`).
    pub freeze_for: Option<Duration>,
}

/// `sleep_mode` of a `process` backend: what an idle stop does to the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessSleep {
    /// Stop it the configured way (`stop_command`, RCON or a signal): a wake starts it cold.
    #[default]
    Stop,
    /// SIGSTOP to its process group and family: it keeps its memory, costs no CPU, and a wake
    /// resumes it with SIGCONT.
    Freeze,
}

/// How a `process` backend is asked to stop before it is killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopMethod {
    /// Write this line to the child's stdin (e.g. `stop` for Minecraft).
    Stdin(String),
    /// Send this signal (by number).
    Signal(i32),
    /// Send a command over RCON (Minecraft's remote console): works for an adopted process too.
    Rcon(Rcon),
}

/// Where a server's RCON listens, and what to send there to stop it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcon {
    pub address: String,
    pub password: Secret,
    /// The stop command (`stop_command`, default `stop`).
    pub command: String,
}

/// What a graceful shutdown of wakegate does to a running `process` child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Stop the child the way an idle stop would (the default: nothing is left unwatched).
    Stop,
    /// Leave it running; the next `wakegate run` finds it again by its pid file and adopts it.
    Leave,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecConfig {
    start: String,
    stop: String,
    status: Option<String>,
    #[serde(default = "default_hook_timeout", deserialize_with = "duration")]
    timeout: Duration,
    address: Spanned<String>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProcessConfig {
    command: Spanned<Vec<String>>,
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, Spanned<String>>,
    address: Spanned<String>,
    stop_command: Option<String>,
    stop_signal: Option<Spanned<String>>,
    #[serde(default = "default_stop_timeout", deserialize_with = "duration")]
    stop_timeout: Duration,
    #[serde(default = "default_on_shutdown")]
    on_shutdown: OnShutdown,
    rcon: Option<Spanned<RconConfig>>,
    save_all: Option<Spanned<bool>>,
    #[serde(default)]
    sleep_mode: ProcessSleep,
    #[serde(default, deserialize_with = "optional_spanned_duration")]
    freeze_for: Option<Spanned<Duration>>,
}

/// `[service.backend.rcon]` of a `process` backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RconConfig {
    address: Spanned<String>,
    password: Spanned<String>,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_stop_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_on_shutdown() -> OnShutdown {
    OnShutdown::Stop
}

/// Reads `[service.backend]` and the `[service.dns]` record beside it (`dns`): only the AWS
/// backends know their addresses, so only they can keep a record.
pub(crate) fn read_backend(
    value: Spanned<DeValue<'_>>,
    dns: Option<Spanned<DeValue<'_>>>,
    problems: &mut Problems<'_>,
) -> Option<Backend> {
    let kinds = "exec, process, ec2, ecs, docker";
    let Some((kind, rest)) = split_type(value, "[service.backend]", kinds, problems) else {
        // The record's own mistakes show whatever the backend's.
        if let Some(table) = dns {
            aws::config::check_dns(table, problems);
        }
        return None;
    };
    let type_span = rest.span();
    let backend = match kind.as_str() {
        "ec2" => return aws::config::read_ec2(rest, dns, problems).map(Backend::Ec2),
        "ecs" => return aws::config::read_ecs(rest, dns, problems).map(Backend::Ecs),
        "exec" => read_exec(rest, problems).map(Backend::Exec),
        "process" => read_process(rest, problems).map(Backend::Process),
        "docker" => docker::config::read_docker(rest, problems).map(Backend::Docker),
        other => {
            problems.add(
                Some(type_span),
                format!("unknown backend type `{other}`"),
                &format!("use one of: {kinds}"),
            );
            None
        }
    };
    if let Some(table) = dns {
        let span = table.span();
        aws::config::check_dns(table, problems);
        if backend.is_some() {
            problems.add(
                Some(span),
                "[service.dns] needs an ec2 or ecs backend",
                "remove [service.dns]: only the AWS backends tell wakegate their addresses",
            );
            return None;
        }
    }
    backend
}

fn read_exec(rest: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Exec> {
    let c: ExecConfig = read(rest, problems)?;
    let env = expand_env(c.env, problems);
    let address = check_address(c.address, problems);
    Some(Exec {
        start: c.start,
        stop: c.stop,
        status: c.status,
        timeout: c.timeout,
        address: address?,
        env: env?,
    })
}

fn read_process(rest: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Process> {
    let c: ProcessConfig = read(rest, problems)?;
    let env = expand_env(c.env, problems);
    let address = check_address(c.address, problems);
    if c.command.get_ref().is_empty() {
        problems.add(
                    Some(c.command.span()),
                    "`command` is empty",
                    "give the program and its arguments, e.g. [\"java\", \"-jar\", \"server.jar\", \"nogui\"]",
                );
    }
    let rcon = c.rcon.map(|rcon| {
        let command = c.stop_command.clone().unwrap_or_else(|| "stop".into());
        (rcon.span(), read_rcon(rcon.into_inner(), command, problems))
    });
    if let (Some((span, _)), Some(_)) = (&rcon, &c.stop_signal) {
        problems.add(
            Some(span.clone()),
            "both `rcon` and `stop_signal` are set",
            "RCON sends `stop_command` (default \"stop\"); remove `stop_signal`",
        );
    }
    let save_all = c.save_all.map(|s| (s.span(), *s.get_ref()));
    if let Some((span, true)) = &save_all
        && rcon.is_none()
        && c.stop_command.is_none()
    {
        problems.add(
                    Some(span.clone()),
                    "`save_all` needs a way to send the server commands",
                    "add `stop_command = \"stop\"` (commands on its stdin) or a [service.backend.rcon] table; a signal cannot ask it to save",
                );
    }
    let stop = match (c.stop_command, c.stop_signal) {
        _ if rcon.is_some() => None,
        (Some(_), Some(signal)) => {
            problems.add(
                Some(signal.span()),
                "both `stop_command` and `stop_signal` are set",
                "choose one way to ask the process to stop",
            );
            None
        }
        (Some(line), None) => Some(StopMethod::Stdin(line)),
        (None, Some(signal)) => match signal_number(signal.get_ref()) {
            Some(n) => Some(StopMethod::Signal(n)),
            None => {
                problems.add(
                    Some(signal.span()),
                    format!("unknown signal `{}`", signal.get_ref()),
                    "use one of SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL",
                );
                None
            }
        },
        (None, None) => Some(StopMethod::Signal(SIGTERM)),
    };
    let stop = match rcon {
        Some((_, rcon)) => rcon.map(StopMethod::Rcon),
        None => stop,
    };
    let freeze_for = check_freeze_for(c.sleep_mode, c.freeze_for, problems);
    Some(Process {
        command: c.command.into_inner(),
        cwd: c.cwd,
        env: env?,
        address: address?,
        stop: stop?,
        stop_timeout: c.stop_timeout,
        on_shutdown: c.on_shutdown,
        save_all: save_all.is_some_and(|(_, on)| on),
        sleep_mode: c.sleep_mode,
        freeze_for: freeze_for?,
    })
}

/// `freeze_for` is for a frozen server only, and a zero limit would stop it at once.
fn check_freeze_for(
    mode: ProcessSleep,
    freeze_for: Option<Spanned<Duration>>,
    problems: &mut Problems<'_>,
) -> Option<Option<Duration>> {
    let Some(limit) = freeze_for else {
        return Some(None);
    };
    if mode != ProcessSleep::Freeze {
        problems.add(
            Some(limit.span()),
            "`freeze_for` needs `sleep_mode = \"freeze\"`",
            "add `sleep_mode = \"freeze\"`, or remove `freeze_for`: a stopped server has nothing to thaw",
        );
        return None;
    }
    if limit.get_ref().is_zero() {
        problems.add(
            Some(limit.span()),
            "`freeze_for` is zero",
            "give how long the frozen server may keep its memory, e.g. \"12h\", or remove it to keep it frozen until the next wake",
        );
        return None;
    }
    Some(Some(limit.into_inner()))
}

const SIGTERM: i32 = 15;

/// `[service.backend.rcon]`: a `host:port` and a password that must not be empty (Minecraft
/// refuses RCON without one). The password is a secret: it is never printed back.
fn read_rcon(c: RconConfig, command: String, problems: &mut Problems<'_>) -> Option<Rcon> {
    let text = c.address.get_ref();
    let address_ok = text
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !address_ok {
        problems.add(
            Some(c.address.span()),
            format!("RCON address `{text}` is not host:port"),
            "write where the server's RCON listens (`rcon.port` in server.properties), e.g. \"127.0.0.1:25575\"",
        );
    }
    let password = match secret(&c.password, "the RCON password", problems) {
        Some(password) if password.expose().is_empty() => {
            problems.add(
                Some(c.password.span()),
                "the RCON password is empty",
                "set `rcon.password` in server.properties and give it here as \"${MC_RCON_PASSWORD}\"; a Minecraft server refuses RCON without one",
            );
            None
        }
        password => password,
    };
    Some(Rcon {
        address: address_ok.then(|| c.address.into_inner())?,
        password: password?,
        command,
    })
}

fn signal_number(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => SIGTERM,
        _ => return None,
    })
}
