//! The commands that talk to a running gateway through its API: `status`, `wake`, `sleep` and
//! `events`. A small HTTP/1.1 client of our own (hyper), with the token from WAKEGATE_TOKEN.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper::body::{Bytes, Incoming};
use serde::Deserialize;
use tokio::task::JoinHandle;

/// A connection-per-request client of the API.
pub struct Client {
    api: String,
    token: Option<String>,
}

/// An open Server-Sent Events stream.
struct Stream {
    body: Incoming,
    buffer: String,
    /// Drives the connection; ended with the stream.
    driver: JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Stream {
    /// The data of the next event (comments and keep-alives skipped).
    async fn next(&mut self) -> anyhow::Result<Option<(String, String)>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let message: String = self.buffer.drain(..end + 2).collect();
                let mut kind = "message".to_string();
                let mut data = String::new();
                for line in message.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if !data.is_empty() {
                    return Ok(Some((kind, data)));
                }
                continue;
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Some(data) = frame?.data_ref() {
                        self.buffer.push_str(&String::from_utf8_lossy(data));
                    }
                }
            }
        }
    }
}

impl Client {
    pub fn new(api: String, token: Option<String>) -> Client {
        Client { api, token }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<(hyper::Response<Incoming>, JoinHandle<()>)> {
        self.send_body(method, path, None).await
    }

    /// Sends a request with a JSON body, if given.
    async fn send_body(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<(hyper::Response<Incoming>, JoinHandle<()>)> {
        let unreachable = || {
            format!(
                "cannot reach the wakegate API at {}; is `wakegate run` running? Pass --api HOST:PORT if it listens elsewhere",
                self.api
            )
        };
        let stream = tokio::net::TcpStream::connect(&self.api)
            .await
            .with_context(unreachable)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .with_context(unreachable)?;
        // The connection of one CLI request: it ends with the request, and the CLI exits after.
        #[allow(clippy::disallowed_methods)]
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.api);
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(body) => {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(body.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let response = sender
            .send_request(request.body(body)?)
            .await
            .with_context(unreachable)?;
        Ok((response, driver))
    }

    /// A JSON answer, or the API's error message.
    async fn json(&self, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
        self.json_with(method, path, None).await
    }

    /// [`json`](Self::json), sending a JSON body.
    async fn json_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (response, driver) = self.send_body(method, path, body).await?;
        let code = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
        });
        if !code.is_success() {
            let message = value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_string);
            bail!("the API answered {}: {message}", code.as_u16());
        }
        Ok(value)
    }

    async fn stream(&self, path: &str) -> anyhow::Result<Stream> {
        let (response, driver) = self.send(Method::GET, path).await?;
        if !response.status().is_success() {
            let code = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            driver.abort();
            bail!(
                "the API answered {code}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(Stream {
            body: response.into_body(),
            buffer: String::new(),
            driver,
        })
    }

    /// The id of the newest event of a service.
    async fn last_event_id(&self, service: Option<&str>) -> anyhow::Result<i64> {
        let path = match service {
            Some(name) => format!("/api/v1/events?limit=1&service={name}"),
            None => "/api/v1/events?limit=1".to_string(),
        };
        Ok(self.json(Method::GET, &path).await?["last_id"]
            .as_i64()
            .unwrap_or(0))
    }
}

#[derive(Debug, Deserialize)]
struct ServiceRow {
    name: String,
    state: String,
    /// How it sleeps (`stopped`, `paused`, `frozen`); shown with `asleep`.
    #[serde(default)]
    sleep_mode: Option<String>,
    since: String,
    address: Option<String>,
    connections: usize,
    held: usize,
    /// Players online, for a service behind a `minecraft` listener while awake.
    players: Option<u32>,
    last_error: Option<String>,
    #[serde(default)]
    awake_seconds_day: f64,
    #[serde(default)]
    awake_seconds_30d: f64,
    cost_saved_30d: Option<f64>,
    /// The last report of its agent (`wakegate agent` on the server).
    #[serde(default)]
    agent: Option<AgentRow>,
}

impl ServiceRow {
    /// "asleep (frozen)": the state, with how it sleeps while asleep.
    fn state_text(&self) -> String {
        match &self.sleep_mode {
            Some(mode) if self.state == "asleep" => format!("asleep ({mode})"),
            _ => self.state.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct AgentRow {
    host: String,
    last_report: String,
    connections: Option<u32>,
    players: Option<u32>,
    count: Option<u64>,
    active: bool,
    state: String,
}

impl AgentRow {
    /// "agent on mc-1: 3 connections, 2 players (active), last report 4s ago".
    fn line(&self) -> String {
        let mut figures = Vec::new();
        let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        if let Some(n) = self.connections {
            figures.push(plural(n.into(), "connection"));
        }
        if let Some(n) = self.players {
            figures.push(plural(n.into(), "player"));
        }
        if let Some(n) = self.count {
            figures.push(format!("count {n}"));
        }
        let figures = if figures.is_empty() {
            "nothing measured".to_string()
        } else {
            figures.join(", ")
        };
        let how = match self.state.as_str() {
            "reporting" if self.active => "keeps it awake".to_string(),
            "reporting" => "idle".to_string(),
            other => other.to_string(),
        };
        format!(
            "agent on {}: {figures} ({how}), last report {} ago",
            self.host,
            ago(&self.last_report).unwrap_or_else(|_| self.last_report.clone())
        )
    }
}

/// `wakegate status [NAME]`.
pub async fn status(client: &Client, name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let path = match name {
        Some(name) => format!("/api/v1/services/{name}"),
        None => "/api/v1/services".to_string(),
    };
    let value = client.json(Method::GET, &path).await?;
    if json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<ServiceRow> = if name.is_some() {
        vec![serde_json::from_value(value)?]
    } else {
        serde_json::from_value(value)?
    };
    let header = [
        "NAME",
        "STATE",
        "FOR",
        "CONNS",
        "HELD",
        "PLAYERS",
        "ADDRESS",
        "AWAKE 24H",
        "AWAKE 30D",
        "SAVED 30D",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.name.clone(),
                row.state_text(),
                ago(&row.since).unwrap_or_else(|_| row.since.clone()),
                row.connections.to_string(),
                row.held.to_string(),
                row.players
                    .map_or_else(|| "-".to_string(), |p| p.to_string()),
                row.address.clone().unwrap_or_else(|| "-".into()),
                hours(row.awake_seconds_day),
                hours(row.awake_seconds_30d),
                row.cost_saved_30d
                    .map_or_else(|| "-".to_string(), |saved| format!("{saved:.2}")),
            ]
        })
        .collect();
    // Text columns to the left, figures to the right.
    let right = [
        false, false, false, true, true, true, false, true, true, true,
    ];
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(right)
            .map(|((cell, width), right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    println!("{}", line(&header));
    let indent = " ".repeat(widths[0] + 2);
    for (row, cells) in rows.iter().zip(&cells) {
        println!("{}", line(cells));
        if let Some(error) = &row.last_error {
            for text in error_lines(error) {
                println!("{indent}{text}");
            }
        }
        if let Some(agent) = &row.agent {
            println!("{indent}{}", agent.line());
        }
    }
    if name.is_none() {
        // Older gateways have no such route: nothing more to say then.
        if let Ok(gateways) = client.json(Method::GET, "/api/v1/gateways").await {
            for text in gateway_lines(&gateways) {
                println!("{text}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The gateways sharing a PostgreSQL store and the owner of each service, with the time
/// left on their leases; nothing for a gateway with a store of its own.
fn gateway_lines(gateways: &serde_json::Value) -> Vec<String> {
    let Some(this) = gateways["this"].as_str() else {
        return Vec::new();
    };
    let left = |v: &serde_json::Value| match v["expires_in_ms"].as_i64() {
        Some(ms) if ms >= 0 => format!("lease {:.1}s left", ms as f64 / 1000.0),
        _ => "lease expired".to_string(),
    };
    let mut lines = vec![String::new(), "GATEWAYS SHARING THE STORE".to_string()];
    for g in gateways["gateways"].as_array().into_iter().flatten() {
        let id = g["id"].as_str().unwrap_or("?");
        let me = if id == this { " (this one)" } else { "" };
        lines.push(format!("  {id}{me}: {}", left(g)));
    }
    lines.push("OWNERS".to_string());
    for o in gateways["owners"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  {}: {}, {}",
            o["service"].as_str().unwrap_or("?"),
            o["owner"].as_str().unwrap_or("?"),
            left(o)
        ));
    }
    lines
}

/// Lines of output a `last error` shows at most below its summary: the last ones, where a
/// server says why it stopped.
const ERROR_TAIL_LINES: usize = 8;

/// A service's last error under its row: the first line (what happened), then the last lines
/// of the output it quotes, indented.
fn error_lines(error: &str) -> Vec<String> {
    let mut lines = error.lines().filter(|l| !l.trim().is_empty());
    let Some(first) = lines.next() else {
        return Vec::new();
    };
    let mut out = vec![format!("last error: {first}")];
    let rest: Vec<&str> = lines.collect();
    let skipped = rest.len().saturating_sub(ERROR_TAIL_LINES);
    if skipped > 0 {
        out.push(format!(
            "  … {skipped} earlier line{}",
            if skipped == 1 { "" } else { "s" }
        ));
    }
    out.extend(
        rest[skipped..]
            .iter()
            .map(|l| format!("  {}", l.trim_end())),
    );
    out
}

/// Awake time in hours, e.g. "1.25h".
fn hours(seconds: f64) -> String {
    format!("{:.2}h", seconds / 3600.0)
}

/// "3m 12s" since an RFC 3339 time.
fn ago(since: &str) -> anyhow::Result<String> {
    let since = humantime::parse_rfc3339(since).map_err(|e| anyhow!("{e}"))?;
    let elapsed = SystemTime::now()
        .duration_since(since)
        .unwrap_or_default()
        .as_secs();
    Ok(match elapsed {
        0 => "0s".to_string(),
        n => crate::human::duration(Duration::from_secs(n)),
    })
}

/// "is awake", "has failed": a state on the wire as said of a service.
fn phrase(state: &serde_json::Value) -> String {
    let text = state.as_str().unwrap_or("");
    crate::event::State::parse(text).map_or_else(|| format!("is {text}"), |s| s.phrase().into())
}

/// `wakegate wake NAME [--wait]` and `wakegate sleep NAME [--wait]`: asks, then with `wait`
/// follows the service's events until it reaches `goal` (exit 0) or `failed` (exit 1).
pub async fn steer(
    client: &Client,
    name: &str,
    action: &str,
    goal: &str,
    wait: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Where the event log stands first, so no event of this action can be missed.
    let after = client.last_event_id(Some(name)).await?;
    let before = client
        .json(Method::GET, &format!("/api/v1/services/{name}"))
        .await?;
    let view = client
        .json(Method::POST, &format!("/api/v1/services/{name}/{action}"))
        .await?;
    if !wait || before["state"] == goal {
        if json {
            println!("{view}");
        } else {
            println!("{name} {}", phrase(&view["state"]));
        }
        return Ok(ExitCode::SUCCESS);
    }
    // What the recent wakes took: the wait is told against it.
    let eta = (goal == "awake")
        .then(|| view["eta_ms"].as_u64().or(before["eta_ms"].as_u64()))
        .flatten()
        .map(Duration::from_millis);
    let mut stream = client
        .stream(&format!(
            "/api/v1/events/stream?service={name}&after={after}"
        ))
        .await?;
    let spinner = !json && std::io::stdout().is_terminal();
    let frames = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut line = format!("{action} requested");
    // The spinner counts against it; a log of lines says it once.
    if let (Some(eta), false, false) = (eta, json, spinner) {
        println!(
            "{name}: expected to be awake in about {} (the recent wakes)",
            crate::human::duration(eta)
        );
    }
    let mut frame = 0;
    loop {
        let next = tokio::select! {
            next = stream.next() => next?,
            _ = tick.tick(), if spinner => {
                frame = (frame + 1) % frames.len();
                let waited = started.elapsed().as_secs();
                let progress = match eta {
                    Some(eta) => format!("{waited}s of about {}", crate::human::duration(eta)),
                    None => format!("{waited}s"),
                };
                print!("\r\x1b[2K{} {name}: {line} ({progress})", frames[frame]);
                let _ = std::io::stdout().flush();
                continue;
            }
        };
        let Some((_, data)) = next else {
            bail!("the event stream ended before {name} was {goal}");
        };
        let event: serde_json::Value = serde_json::from_str(&data)?;
        if json {
            println!("{event}");
        } else if !spinner {
            println!("{}", event_line(&event, id_width(after)));
        }
        let reason = event["reason"].as_str().unwrap_or("").to_string();
        let reached = event["kind"] == "transition" && event["state"] == goal;
        let failed = event["kind"] == "transition" && event["state"] == "failed";
        if spinner {
            // The spinner's line holds one line: a quoted output shows once it ends.
            line = reason.lines().next().unwrap_or("").to_string();
            if reached || failed {
                print!("\r\x1b[2K");
                let mark = if reached { '✓' } else { '✗' };
                println!("{mark} {name} {}: {reason}", phrase(&event["state"]));
            }
        }
        if reached {
            return Ok(ExitCode::SUCCESS);
        }
        if failed {
            return Ok(ExitCode::FAILURE);
        }
    }
}

/// One event as a line of text, its id right-aligned in `id_width` columns.
fn event_line(event: &serde_json::Value, id_width: usize) -> String {
    let time = event["time"].as_str().unwrap_or("");
    let state = event["state"].as_str().unwrap_or("");
    let state = if event["kind"] == "transition" {
        state.to_string()
    } else {
        format!("…{}", event["kind"].as_str().unwrap_or(""))
    };
    let head = format!(
        "{:>id_width$}  {}  {:<16} {:<10} ",
        event["id"].as_i64().unwrap_or(0),
        time.get(..19).unwrap_or(time).replace('T', " "),
        event["service"].as_str().unwrap_or(""),
        state,
    );
    // A reason that quotes a server's output goes on below, under the reason's column.
    let indent = " ".repeat(head.chars().count() + 2);
    let mut lines = event["reason"].as_str().unwrap_or("").lines();
    let mut text = format!("{head}{}", lines.next().unwrap_or(""));
    for line in lines {
        text.push('\n');
        text.push_str(&indent);
        text.push_str(line.trim_end());
    }
    text
}

/// The columns event ids up to `last` take: at least 6, so that the ids that follow keep to
/// the same column for long.
fn id_width(last: i64) -> usize {
    last.max(0).to_string().len().max(6)
}

/// `wakegate events [--follow]`: the latest events (or those after an id), then with `follow`
/// each new one as it happens.
pub async fn events(
    client: &Client,
    service: Option<&str>,
    after: Option<i64>,
    limit: usize,
    follow: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut query = format!("limit={limit}");
    if let Some(name) = service {
        query.push_str(&format!("&service={name}"));
    }
    if let Some(after) = after {
        query.push_str(&format!("&after={after}"));
    }
    let page = client
        .json(Method::GET, &format!("/api/v1/events?{query}"))
        .await?;
    // Wide enough for the ids to come, so that a followed stream stays in its columns.
    let width = id_width(page["last_id"].as_i64().unwrap_or(0));
    let print = |event: &serde_json::Value| {
        if json {
            println!("{event}");
        } else {
            println!("{}", event_line(event, width));
        }
    };
    for event in page["events"].as_array().into_iter().flatten() {
        print(event);
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let last = page["last_id"].as_i64().unwrap_or(0);
    let mut path = format!("/api/v1/events/stream?after={last}");
    if let Some(name) = service {
        path.push_str(&format!("&service={name}"));
    }
    let mut stream = client.stream(&path).await?;
    while let Some((kind, data)) = stream.next().await? {
        if kind == "lagged" {
            continue;
        }
        print(&serde_json::from_str(&data)?);
    }
    bail!("the event stream ended: wakegate stopped")
}

/// `wakegate create TEMPLATE [--name N] [--owner O]`: prints the new service's name, where it
/// listens and its deadline.
pub async fn create(
    client: &Client,
    template: &str,
    name: Option<&str>,
    owner: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "name": name, "owner": owner });
    let value = client
        .json_with(
            Method::POST,
            &format!("/api/v1/templates/{template}/create"),
            Some(&body),
        )
        .await?;
    if json {
        println!("{value}");
        return Ok(ExitCode::SUCCESS);
    }
    let created = &value["created"];
    let listen: Vec<&str> = created["listen"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    println!(
        "created {} from template {} for {}: listening on {}, ends at {}",
        value["name"].as_str().unwrap_or("?"),
        created["template"].as_str().unwrap_or(template),
        created["owner"].as_str().unwrap_or("?"),
        if listen.is_empty() {
            "-".to_string()
        } else {
            listen.join(", ")
        },
        created["deadline"].as_str().unwrap_or("?"),
    );
    Ok(ExitCode::SUCCESS)
}

/// `wakegate destroy NAME`: stops a created service and ends it.
pub async fn destroy(client: &Client, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let value = client
        .json(Method::DELETE, &format!("/api/v1/services/{name}"))
        .await?;
    if json {
        println!("{value}");
    } else {
        println!("destroyed {name}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `wakegate extend NAME DURATION`: moves a created service's deadline later.
pub async fn extend(
    client: &Client,
    name: &str,
    duration: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "duration": duration });
    let value = client
        .json_with(
            Method::POST,
            &format!("/api/v1/services/{name}/extend"),
            Some(&body),
        )
        .await?;
    if json {
        println!("{value}");
    } else {
        println!(
            "{name} now ends at {}",
            value["created"]["deadline"].as_str().unwrap_or("?")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `wakegate reload [--keep-running]`: has the gateway read its config file again; prints what
/// changed, or (exit 1) why nothing did, with every problem of the file and its line.
pub async fn reload(client: &Client, keep_running: bool, json: bool) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "keep_running": keep_running });
    let (response, driver) = client
        .send_body(Method::POST, "/api/v1/reload", Some(&body))
        .await?;
    let code = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    driver.abort();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    if json {
        println!("{value}");
    }
    if code == hyper::StatusCode::UNPROCESSABLE_ENTITY {
        if !json {
            eprintln!(
                "wakegate did not reload; nothing was changed:\n{}",
                value["error"].as_str().unwrap_or("?")
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    if !code.is_success() {
        let message = value["error"]
            .as_str()
            .map_or_else(|| value.to_string(), str::to_string);
        bail!("the API answered {}: {message}", code.as_u16());
    }
    if json {
        return Ok(ExitCode::SUCCESS);
    }
    let names = |key: &str| -> Vec<String> {
        value[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    println!(
        "reloaded: {} added, {} removed, {} changed, {} unchanged",
        names("added").len(),
        value["removed"].as_array().map_or(0, Vec::len),
        value["changed"].as_array().map_or(0, Vec::len),
        value["unchanged"].as_u64().unwrap_or(0)
    );
    for name in names("added") {
        println!("  added    {name}");
    }
    for removed in value["removed"].as_array().into_iter().flatten() {
        let name = removed["name"].as_str().unwrap_or("?");
        if removed["kept_running"].as_bool() == Some(true) {
            println!("  removed  {name} (its backend is left running)");
        } else {
            println!("  removed  {name} (its backend is stopped)");
        }
    }
    for changed in value["changed"].as_array().into_iter().flatten() {
        let parts: Vec<&str> = ["policy", "backend", "listeners"]
            .into_iter()
            .filter(|p| changed[*p].as_bool() == Some(true))
            .collect();
        println!(
            "  changed  {} ({})",
            changed["name"].as_str().unwrap_or("?"),
            parts.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
