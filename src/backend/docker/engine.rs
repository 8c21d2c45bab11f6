//! Reaching the Docker Engine API (Docker's own, or Podman's Docker-compatible socket) through
//! `bollard`, and what the `docker` backend and `[discovery.docker]` both ask of it: where the
//! socket is, errors in words, a container's state, its exit and the last lines of its log,
//! and the event stream.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error;
use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, ContainerSummary, EventMessage,
};
use bollard::query_parameters::{EventsOptions, ListContainersOptions, LogsOptions};
use futures_util::{Stream, StreamExt};

/// A connection to the Docker API, and where it is (for messages).
#[derive(Debug, Clone)]
pub struct Engine {
    pub client: Docker,
    /// `unix:///var/run/docker.sock`, `tcp://…`: what was tried.
    pub at: String,
}

/// Container events, as the API streams them.
pub type Events = Pin<Box<dyn Stream<Item = Result<EventMessage, Error>> + Send>>;

/// The sockets tried, in order, when neither `socket` nor `DOCKER_HOST` says where the API is:
/// Docker's, rootless Podman's, then rootful Podman's.
pub fn usual_sockets() -> Vec<String> {
    let mut sockets = vec!["/var/run/docker.sock".to_string()];
    if let Ok(runtime) = std::env::var("XDG_RUNTIME_DIR")
        && !runtime.is_empty()
    {
        sockets.push(format!("{runtime}/podman/podman.sock"));
    }
    sockets.push("/run/podman/podman.sock".to_string());
    sockets
}

/// Where the API is: the `socket` key, else `DOCKER_HOST`, else the first of the
/// [`usual_sockets`] that exists. The error names every place tried.
pub fn locate(socket: Option<&str>) -> Result<String, String> {
    let host = std::env::var("DOCKER_HOST").ok();
    choose(socket, host.as_deref(), &usual_sockets(), |p| {
        Path::new(p).exists()
    })
}

fn choose(
    socket: Option<&str>,
    docker_host: Option<&str>,
    usual: &[String],
    exists: impl Fn(&str) -> bool,
) -> Result<String, String> {
    if let Some(socket) = socket {
        return Ok(socket.to_string());
    }
    if let Some(host) = docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        return Ok(host.to_string());
    }
    usual.iter().find(|path| exists(path)).cloned().ok_or_else(|| {
        format!(
            "no Docker API socket found (tried {}, and DOCKER_HOST is not set); start Docker or `podman system service`, or set `socket` to where the API listens",
            usual.join(", ")
        )
    })
}

/// Connects to the API and agrees on a version with it (older engines refuse a newer one);
/// the error says where it tried. `timeout` bounds every request until its answer's head.
pub async fn connect(socket: Option<&str>, timeout: Duration) -> Result<Engine, String> {
    let at = locate(socket)?;
    let secs = timeout.as_secs().max(1);
    let client = match at.strip_prefix("unix://") {
        Some(path) => Docker::connect_with_unix(path, secs, bollard::API_DEFAULT_VERSION),
        None if at.starts_with('/') => {
            Docker::connect_with_unix(&at, secs, bollard::API_DEFAULT_VERSION)
        }
        None => Docker::connect_with_http(&at, secs, bollard::API_DEFAULT_VERSION),
    }
    .map_err(|e| unreachable(&at, &e))?;
    let client = client
        .negotiate_version()
        .await
        .map_err(|e| unreachable(&at, &e))?;
    let at = if at.starts_with('/') {
        format!("unix://{at}")
    } else {
        at
    };
    Ok(Engine { client, at })
}

/// The API could not be reached at `at`, and what to do.
pub fn unreachable(at: &str, e: &Error) -> String {
    format!(
        "cannot reach the Docker API at {at}: {}; start Docker (or `podman system service`), or set `socket` to where it listens",
        describe(e)
    )
}

/// An API error in words: the engine's own message when it answered.
pub fn describe(e: &Error) -> String {
    match e {
        Error::DockerResponseServerError {
            status_code,
            message,
        } => format!("{} (HTTP {status_code})", message.trim()),
        Error::SocketNotFoundError(path) => format!("{path} does not exist"),
        other => other.to_string(),
    }
}

/// Whether the engine answered 404 (no such container, image or network).
pub fn not_found(e: &Error) -> bool {
    matches!(
        e,
        Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// How long an answer naming a state Docker does not have is asked again.
const SETTLE: Duration = Duration::from_secs(5);

/// Runs `call` until its answer can be read. Podman names a state Docker does not have for a
/// moment after a container exits (`stopped`: exited, not cleaned up yet), which bollard's
/// types refuse; such an answer is asked again (for up to 5 s) until the state settles.
async fn settled<T, F, Fut>(mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = tokio::time::Instant::now() + SETTLE;
    let mut pause = Duration::from_millis(20);
    loop {
        match call().await {
            Err(Error::JsonDataError { message, .. })
                if message.contains("unknown variant")
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            answer => return answer,
        }
    }
}

/// Inspects a container (by id or name), its state settled.
pub async fn inspect(client: &Docker, container: &str) -> Result<ContainerInspectResponse, Error> {
    settled(|| client.inspect_container(container, None)).await
}

/// Lists containers, every state included, matching `filters`; their states settled.
pub async fn list(
    client: &Docker,
    filters: HashMap<String, Vec<String>>,
) -> Result<Vec<ContainerSummary>, Error> {
    settled(|| {
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        };
        client.list_containers(Some(options))
    })
    .await
}

/// What a container is doing, in the terms wakegate acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Run {
    Running,
    Paused,
    /// Created, exited or dead: it can be started.
    Stopped,
    /// Being removed: it cannot be started.
    Removing,
}

/// The state of an inspected container.
pub fn run_state(info: &ContainerInspectResponse) -> Run {
    let state = info.state.as_ref();
    let status = state.and_then(|s| s.status);
    let flag = |f: fn(&bollard::models::ContainerState) -> Option<bool>| {
        state.and_then(f).unwrap_or(false)
    };
    match status {
        Some(ContainerStateStatusEnum::PAUSED) => Run::Paused,
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING) => {
            if flag(|s| s.paused) {
                Run::Paused
            } else {
                Run::Running
            }
        }
        Some(ContainerStateStatusEnum::REMOVING) => Run::Removing,
        Some(_) => Run::Stopped,
        None if flag(|s| s.paused) => Run::Paused,
        None if flag(|s| s.running) => Run::Running,
        None => Run::Stopped,
    }
}

/// A container's name without the leading `/` the API gives it.
pub fn name_of(info: &ContainerInspectResponse) -> String {
    info.name
        .as_deref()
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| info.id.as_ref().map(|id| short(id).to_string()))
        .unwrap_or_else(|| "?".into())
}

/// The first 12 characters of an id, as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A container's status in words (`running`, `exited`, …).
pub fn status_word(info: &ContainerInspectResponse) -> String {
    info.state
        .as_ref()
        .and_then(|s| s.status)
        .map_or_else(|| "unknown".to_string(), |s| s.to_string())
}

/// How a stopped container ended: "exit code 3", with an out-of-memory kill said.
pub fn describe_exit(info: &ContainerInspectResponse) -> String {
    let state = info.state.as_ref();
    let code = state.and_then(|s| s.exit_code).unwrap_or(0);
    let mut text = format!("exit code {code}");
    if state.and_then(|s| s.oom_killed).unwrap_or(false) {
        text.push_str(" (killed: out of memory)");
    }
    if let Some(error) = state
        .and_then(|s| s.error.as_deref())
        .filter(|e| !e.is_empty())
    {
        text.push_str(&format!(" ({error})"));
    }
    text
}

/// When the container last started, in nanoseconds since the epoch (none if it never did).
pub fn started_at(info: &ContainerInspectResponse) -> Option<i128> {
    let text = info.state.as_ref()?.started_at.as_deref()?;
    let at: jiff::Timestamp = text.parse().ok()?;
    // The engine's "never" is year 1.
    (at.as_second() > 0).then_some(at.as_nanosecond())
}

/// When an event happened, in nanoseconds since the epoch.
pub fn event_time(event: &EventMessage) -> i128 {
    match (event.time_nano, event.time) {
        (Some(nanos), _) => i128::from(nanos),
        (None, Some(secs)) => i128::from(secs) * 1_000_000_000,
        (None, None) => 0,
    }
}

/// The last `lines` lines of a container's output (stdout and stderr), oldest first; empty
/// when the engine keeps no log it can give.
pub async fn log_tail(client: &Docker, id: &str, lines: usize) -> String {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: lines.to_string(),
        ..Default::default()
    };
    let mut stream = client.logs(id, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.push_str(&chunk.to_string());
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The container events matching `filters` (`type=container` is added), from `since` (seconds
/// since the epoch: the engine replays what happened since, then streams what happens).
pub fn events(client: &Docker, since: Option<i64>, filters: &[(&str, String)]) -> Events {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    map.insert("type".into(), vec!["container".into()]);
    for (key, value) in filters {
        map.entry((*key).to_string())
            .or_default()
            .push(value.clone());
    }
    let options = EventsOptions {
        since: since.map(|s| s.to_string()),
        until: None,
        filters: Some(map),
    };
    Box::pin(client.events(Some(options)))
}

/// The container an event is about, and what happened to it (`create`, `die`, …). Podman says
/// `remove` where Docker says `destroy`: both come back as `destroy`.
pub fn event_of(event: &EventMessage) -> Option<(String, String)> {
    let id = event.actor.as_ref()?.id.clone()?;
    let action = event.action.clone()?;
    // Docker may add details after a colon ("exec_start: sh").
    let action = action
        .split(':')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let action = if action == "remove" {
        "destroy".to_string()
    } else {
        action
    };
    Some((id, action))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerState;

    fn inspect(state: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(serde_json::json!({ "Name": "/mc", "State": state })).unwrap()
    }

    #[test]
    fn states_are_read_as_docker_and_podman_write_them() {
        let running = inspect(serde_json::json!({"Status": "running", "Running": true}));
        assert_eq!(run_state(&running), Run::Running);
        // Podman keeps Status "running" with Paused set on some versions.
        let paused =
            inspect(serde_json::json!({"Status": "running", "Running": true, "Paused": true}));
        assert_eq!(run_state(&paused), Run::Paused);
        let paused = inspect(serde_json::json!({"Status": "paused", "Paused": true}));
        assert_eq!(run_state(&paused), Run::Paused);
        for status in ["created", "exited", "dead"] {
            assert_eq!(
                run_state(&inspect(serde_json::json!({"Status": status}))),
                Run::Stopped
            );
        }
        assert_eq!(name_of(&running), "mc");
    }

    #[test]
    fn an_exit_is_said_with_its_code_and_an_out_of_memory_kill() {
        let info =
            inspect(serde_json::json!({"Status": "exited", "ExitCode": 137, "OOMKilled": true}));
        assert_eq!(
            describe_exit(&info),
            "exit code 137 (killed: out of memory)"
        );
        let info = ContainerInspectResponse {
            state: Some(ContainerState {
                exit_code: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(describe_exit(&info), "exit code 3");
    }

    #[test]
    fn the_start_time_is_read_and_never_is_none() {
        let info = inspect(serde_json::json!({"StartedAt": "2026-01-02T03:04:05.123456789Z"}));
        assert_eq!(started_at(&info), Some(1_767_323_045_123_456_789));
        let info = inspect(serde_json::json!({"StartedAt": "0001-01-01T00:00:00Z"}));
        assert_eq!(started_at(&info), None);
    }

    #[test]
    fn the_socket_key_then_docker_host_then_the_first_usual_socket_that_exists() {
        let usual: Vec<String> = ["/a.sock", "/b.sock"].map(String::from).to_vec();
        let only_b = |p: &str| p == "/b.sock";
        let pick = |socket, host| choose(socket, host, &usual, only_b);
        assert_eq!(
            pick(Some("/x.sock"), Some("tcp://h:2375")).unwrap(),
            "/x.sock"
        );
        assert_eq!(pick(None, Some("tcp://h:2375")).unwrap(), "tcp://h:2375");
        assert_eq!(pick(None, Some(" ")).unwrap(), "/b.sock");
        let err = choose(None, None, &usual, |_| false).unwrap_err();
        assert!(err.contains("/a.sock, /b.sock"), "{err}");
        assert!(err.contains("DOCKER_HOST"), "{err}");
    }

    #[test]
    fn podman_remove_reads_as_destroy() {
        let event: EventMessage = serde_json::from_value(serde_json::json!({
            "Type": "container", "Action": "remove", "Actor": {"ID": "abc", "Attributes": {}}
        }))
        .unwrap();
        assert_eq!(event_of(&event), Some(("abc".into(), "destroy".into())));
    }
}
