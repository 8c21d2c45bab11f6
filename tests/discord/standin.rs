//! The Discord side of the tests: a stand-in for Discord's REST API on 127.0.0.1:0 that reads
//! every request body with twilight-model types (a malformed request is recorded and answered
//! 400, and the tests assert there is none), answers as Discord documents (message and command
//! objects with snowflake ids, a 429 with `retry_after` when asked) and records the calls; and
//! interactions built and signed as Discord sends them.

use super::common::*;
use axum::body::Bytes;
use axum::extract::{Path, State as Extract};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use twilight_model::application::command::Command;
use twilight_model::application::interaction::Interaction;
use twilight_model::channel::Message;
use twilight_model::http::interaction::{InteractionResponse, InteractionResponseData};

pub const APP_ID: u64 = 700_000_000_000_000_001;
pub const GUILD: u64 = 700_000_000_000_000_010;
pub const OTHER_GUILD: u64 = 700_000_000_000_000_011;
pub const CHANNEL: u64 = 700_000_000_000_000_020;
pub const ADMIN: u64 = 700_000_000_000_000_100;
/// May see and start `echo`, see everything.
pub const STARTER: u64 = 700_000_000_000_000_101;
/// May only see `echo`.
pub const VIEWER: u64 = 700_000_000_000_000_102;
pub const BOT_TOKEN: &str = "bot-token-that-must-never-show-0123456789";

/// A fresh key, as the developer portal makes one per application.
pub fn fresh_key() -> SigningKey {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .unwrap();
    SigningKey::from_bytes(&seed)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// The stand-in for Discord's REST API

/// One call as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub authorization: Option<String>,
    /// The body as Discord would read it (`content` of a message, the commands of a PUT).
    pub body: Value,
    pub status: u16,
}

#[derive(Debug, Default)]
pub struct Log {
    pub calls: Vec<Call>,
    /// Requests whose body twilight-model could not read.
    pub malformed: Vec<String>,
    /// Answer the next call with a 429 asking to wait this long.
    pub rate_limit_next: Option<f64>,
    /// The last snowflake handed out for a channel or a message.
    pub last_id: u64,
    /// Refuse this many channel creations as Discord does when the bot lacks Manage Channels.
    pub refuse_channels: usize,
}

impl Log {
    /// A new snowflake for a channel or message the stand-in creates.
    fn next_id(&mut self) -> u64 {
        self.last_id = self.last_id.max(700_000_000_000_009_000) + 1;
        self.last_id
    }
}

/// The body of `POST /guilds/{guild}/channels`, read with twilight-model's types; a field
/// Discord does not know is refused.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: twilight_model::channel::ChannelType,
    pub parent_id: Option<twilight_model::id::Id<twilight_model::id::marker::ChannelMarker>>,
    pub topic: Option<String>,
    #[serde(default)]
    pub permission_overwrites:
        Vec<twilight_model::channel::permission_overwrite::PermissionOverwrite>,
}

#[derive(Clone)]
pub struct Discord {
    pub log: Arc<Mutex<Log>>,
    pub changed: watch::Sender<usize>,
    pub url: String,
}

impl Discord {
    pub async fn start() -> Discord {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let discord = Discord {
            log: Arc::default(),
            changed: watch::channel(0).0,
            url: format!("http://{addr}/api/v10"),
        };
        let app = axum::Router::new()
            .route(
                "/api/v10/webhooks/{app}/{token}/messages/{message}",
                axum::routing::patch(message),
            )
            .route(
                "/api/v10/channels/{channel}/messages",
                axum::routing::post(message),
            )
            .route(
                "/api/v10/channels/{channel}/messages/{message}",
                axum::routing::patch(message),
            )
            .route(
                "/api/v10/guilds/{guild}/channels",
                axum::routing::post(create_channel),
            )
            .route(
                "/api/v10/channels/{channel}",
                axum::routing::delete(delete_channel).patch(modify_channel),
            )
            .route(
                "/api/v10/applications/{app}/guilds/{guild}/commands",
                axum::routing::put(commands),
            )
            .with_state(discord.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        discord
    }

    pub fn calls(&self) -> Vec<Call> {
        self.log.lock().unwrap().calls.clone()
    }

    /// Waits until a call matches `done`; returns every call so far.
    pub async fn until(&self, what: &str, done: impl Fn(&Call) -> bool) -> Vec<Call> {
        let mut changed = self.changed.subscribe();
        let wait = changed.wait_for(|_| self.calls().iter().any(&done));
        if tokio::time::timeout(DEADLINE, wait).await.is_err() {
            panic!("no call {what} within {DEADLINE:?}: {:#?}", self.calls());
        }
        self.calls()
    }

    /// Records a call; answers a 429 instead when one is asked for.
    fn record(
        &self,
        method: Method,
        path: String,
        headers: &HeaderMap,
        body: Value,
    ) -> Option<Response> {
        let mut log = self.log.lock().unwrap();
        let limited = log.rate_limit_next.take();
        log.calls.push(Call {
            at: Instant::now(),
            method,
            path,
            authorization: headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
            body,
            status: if limited.is_some() { 429 } else { 200 },
        });
        drop(log);
        self.changed.send_modify(|n| *n += 1);
        limited.map(|seconds| {
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", format!("{}", seconds.ceil() as u64))],
                axum::Json(json!({
                    "message": "You are being rate limited.",
                    "retry_after": seconds,
                    "global": false
                })),
            )
                .into_response()
        })
    }

    /// Records a channel creation refused for a missing permission, when one is asked for.
    fn refused(&self, path: &str, headers: &HeaderMap, body: &[u8]) -> bool {
        let mut log = self.log.lock().unwrap();
        if log.refuse_channels == 0 {
            return false;
        }
        log.refuse_channels -= 1;
        log.calls.push(Call {
            at: Instant::now(),
            method: Method::POST,
            path: path.to_string(),
            authorization: headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string()),
            body: serde_json::from_slice(body).unwrap(),
            status: 403,
        });
        drop(log);
        self.changed.send_modify(|n| *n += 1);
        true
    }

    fn malformed(&self, what: String) -> Response {
        self.log.lock().unwrap().malformed.push(what.clone());
        self.changed.send_modify(|n| *n += 1);
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": what, "code": 50035})),
        )
            .into_response()
    }
}

/// Edits of `@original` and new channel messages: the body must read as message data.
pub async fn message(
    Extract(discord): Extract<Discord>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let data: InteractionResponseData = match serde_json::from_slice(&body) {
        Ok(data) => data,
        Err(e) => return discord.malformed(format!("{method} {uri}: {e}")),
    };
    let content = data.content.clone().unwrap_or_default();
    if let Some(limited) = discord.record(
        method.clone(),
        uri.path().to_string(),
        &headers,
        json!(content),
    ) {
        return limited;
    }
    // A message object as Discord documents it; read back with twilight-model to be sure.
    // A new message gets a new id; an edit keeps the one in its path.
    let segments: Vec<&str> = uri.path().split('/').collect();
    let id = match (method_is_post(&segments), segments.last()) {
        (false, Some(id)) if id.parse::<u64>().is_ok() => id.to_string(),
        _ => discord.log.lock().unwrap().next_id().to_string(),
    };
    let channel = segments
        .iter()
        .position(|s| *s == "channels")
        .and_then(|i| segments.get(i + 1))
        .map_or(CHANNEL.to_string(), |c| c.to_string());
    let answer = json!({
        "id": id,
        "channel_id": channel,
        "author": {"id": APP_ID.to_string(), "username": "wakegate", "discriminator": "0000", "avatar": null, "bot": true},
        "content": content,
        "timestamp": "2026-01-01T00:00:00.000000+00:00",
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": false,
        "type": 0,
        "flags": 0
    });
    serde_json::from_value::<Message>(answer.clone()).expect("the stand-in answers a real message");
    axum::Json(answer).into_response()
}

/// Whether the path ends in `/messages` (a new message) rather than a message id (an edit).
fn method_is_post(segments: &[&str]) -> bool {
    segments.last() == Some(&"messages")
}

/// A guild text channel object as Discord documents it.
fn channel_object(id: u64, guild: u64, name: &str, parent: Option<String>) -> Value {
    let channel = json!({
        "id": id.to_string(),
        "type": 0,
        "guild_id": guild.to_string(),
        "name": name,
        "position": 0,
        "parent_id": parent,
        "permission_overwrites": [],
        "nsfw": false
    });
    serde_json::from_value::<twilight_model::channel::Channel>(channel.clone())
        .expect("the stand-in answers a real channel");
    channel
}

/// `POST /guilds/{guild}/channels`: the body must read as a channel to create.
pub async fn create_channel(
    Extract(discord): Extract<Discord>,
    Path(guild): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let new: NewChannel = match serde_json::from_slice(&body) {
        Ok(new) => new,
        Err(e) => return discord.malformed(format!("POST channels: {e}")),
    };
    let path = format!("/api/v10/guilds/{guild}/channels");
    if discord.refused(&path, &headers, &body) {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"message": "Missing Permissions", "code": 50013})),
        )
            .into_response();
    }
    if let Some(limited) = discord.record(
        Method::POST,
        path,
        &headers,
        serde_json::from_slice(&body).unwrap(),
    ) {
        return limited;
    }
    let id = discord.log.lock().unwrap().next_id();
    axum::Json(channel_object(
        id,
        guild,
        &new.name,
        new.parent_id.map(|p| p.to_string()),
    ))
    .into_response()
}

/// The body of `PATCH /channels/{id}`, read with twilight-model's types.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelChange {
    pub name: Option<String>,
    pub permission_overwrites:
        Option<Vec<twilight_model::channel::permission_overwrite::PermissionOverwrite>>,
}

/// `PATCH /channels/{id}`: answers the changed channel.
pub async fn modify_channel(
    Extract(discord): Extract<Discord>,
    Path(channel): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let change: ChannelChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(e) => return discord.malformed(format!("PATCH channel {channel}: {e}")),
    };
    let path = format!("/api/v10/channels/{channel}");
    if let Some(limited) = discord.record(
        Method::PATCH,
        path,
        &headers,
        serde_json::from_slice(&body).unwrap(),
    ) {
        return limited;
    }
    let name = change.name.unwrap_or_else(|| "unchanged".into());
    axum::Json(channel_object(channel, GUILD, &name, None)).into_response()
}

/// `DELETE /channels/{id}`: answers the deleted channel.
pub async fn delete_channel(
    Extract(discord): Extract<Discord>,
    Path(channel): Path<u64>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !body.is_empty() {
        return discord.malformed(format!("DELETE channel {channel} has a body"));
    }
    let path = format!("/api/v10/channels/{channel}");
    if let Some(limited) = discord.record(Method::DELETE, path, &headers, Value::Null) {
        return limited;
    }
    axum::Json(channel_object(channel, GUILD, "deleted", None)).into_response()
}

/// The bulk overwrite of a guild's commands: the body must read as commands.
pub async fn commands(
    Extract(discord): Extract<Discord>,
    Path((app, guild)): Path<(u64, u64)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let commands: Vec<Command> = match serde_json::from_slice(&body) {
        Ok(commands) => commands,
        Err(e) => return discord.malformed(format!("PUT commands: {e}")),
    };
    let path = format!("/api/v10/applications/{app}/guilds/{guild}/commands");
    if let Some(limited) = discord.record(
        Method::PUT,
        path,
        &headers,
        serde_json::from_slice(&body).unwrap(),
    ) {
        return limited;
    }
    // Discord answers with the commands it now has, ids and versions filled in.
    let answer: Vec<Value> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = serde_json::to_value(c).unwrap();
            c["id"] = json!((700_000_000_000_005_000u64 + i as u64).to_string());
            c["version"] = json!("700000000000006000");
            c["guild_id"] = json!(guild.to_string());
            c["application_id"] = json!(app.to_string());
            c
        })
        .collect();
    axum::Json(answer).into_response()
}

// ---------------------------------------------------------------------------------------------
// Interactions as Discord sends them

/// A `/wakegate SUB [server]` interaction (or its autocomplete) from a member with `roles`.
pub fn command(
    sub: &str,
    server: Option<&str>,
    roles: &[u64],
    guild: u64,
    autocomplete: bool,
) -> Value {
    let options: Vec<(&str, &str)> = server.map(|s| ("server", s)).into_iter().collect();
    command_as(
        sub,
        &options,
        roles,
        guild,
        MEMBER,
        autocomplete.then_some("server"),
    )
}

/// The member the interactions come from, unless a test names another.
pub const MEMBER: u64 = 700_000_000_000_000_500;

/// A `/wakegate SUB` interaction with string `options` from member `user` with `roles`; an
/// autocomplete when `focused` names the option being typed.
pub fn command_as(
    sub: &str,
    options: &[(&str, &str)],
    roles: &[u64],
    guild: u64,
    user: u64,
    focused: Option<&str>,
) -> Value {
    let autocomplete = focused.is_some();
    let options: Vec<Value> = options
        .iter()
        .map(|(name, value)| {
            let mut o = json!({"name": name, "type": 3, "value": value});
            if focused == Some(*name) {
                o["focused"] = json!(true);
            }
            o
        })
        .collect();
    let interaction = json!({
        "id": "700000000000001000",
        "application_id": APP_ID.to_string(),
        "type": if autocomplete { 4 } else { 2 },
        "token": "interaction-token-secret",
        "version": 1,
        "guild_id": guild.to_string(),
        "channel_id": CHANNEL.to_string(),
        "channel": {"id": CHANNEL.to_string(), "type": 0},
        "member": {
            "user": {"id": user.to_string(), "username": "alex", "discriminator": "0", "avatar": null},
            "roles": roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "joined_at": "2025-01-01T00:00:00.000000+00:00",
            "deaf": false, "mute": false, "flags": 0, "permissions": "0"
        },
        "data": {
            "id": "700000000000002000", "name": "wakegate", "type": 1,
            "options": [{"name": sub, "type": 1, "options": options}]
        },
        "app_permissions": "0",
        "locale": "en-US",
        "guild_locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": {"0": guild.to_string()},
        "context": 0,
        "attachment_size_limit": 8388608
    });
    serde_json::from_value::<Interaction>(interaction.clone())
        .expect("the test sends a real interaction");
    interaction
}

/// POSTs `body` to the interactions endpoint with these headers; returns status and body.
pub async fn post(api: SocketAddr, headers: &[(&str, String)], body: &str) -> (u16, String) {
    request(api, "POST /discord/interactions", headers, body).await
}

/// One HTTP/1.1 request over a fresh connection; returns status and body.
pub async fn request(
    api: SocketAddr,
    line: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    let stream = TcpStream::connect(api).await.unwrap();
    request_over(stream, &api.to_string(), line, headers, body).await
}

/// One HTTP/1.1 request over `stream` (plain or TLS), which it closes; returns status and body.
pub async fn request_over(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    host: &str,
    line: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    let mut head = format!(
        "{line} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    stream
        .write_all(format!("{head}\r\n{body}").as_bytes())
        .await
        .unwrap();
    let mut bytes = Vec::new();
    // A TLS peer may close without close_notify once it has answered.
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut bytes))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Signs as Discord does: Ed25519 over the timestamp followed by the body.
pub fn signed(key: &SigningKey, timestamp: u64, body: &str) -> Vec<(&'static str, String)> {
    let signature = key.sign(format!("{timestamp}{body}").as_bytes());
    vec![
        ("X-Signature-Ed25519", hex(&signature.to_bytes())),
        ("X-Signature-Timestamp", timestamp.to_string()),
    ]
}

/// Sends a signed interaction; returns Discord's view of the answer.
pub async fn interact(
    api: SocketAddr,
    key: &SigningKey,
    interaction: &Value,
) -> InteractionResponse {
    let body = interaction.to_string();
    let (status, answer) = post(api, &signed(key, now_secs(), &body), &body).await;
    assert_eq!(status, 200, "{answer}");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// The `[discord]` table for `key`, REST calls going to the stand-in.
pub fn discord_table(api_url: &str, public_key: &str, token: &str) -> String {
    format!(
        r#"[discord]
application_id = "{APP_ID}"
public_key = "{public_key}"
token = "{token}"
guilds = ["{GUILD}"]
admin_role = "{ADMIN}"
api_url = "{api_url}"

[[discord.role]]
id = "{STARTER}"
services = ["*"]
allow = ["view"]

[[discord.role]]
id = "{STARTER}"
services = ["echo"]
allow = ["start"]

[[discord.role]]
id = "{VIEWER}"
services = ["echo"]
allow = ["view"]
"#
    )
}

pub fn content(answer: &InteractionResponse) -> String {
    answer
        .data
        .as_ref()
        .and_then(|d| d.content.clone())
        .unwrap_or_default()
}

pub fn ephemeral(answer: &InteractionResponse) -> bool {
    answer
        .data
        .as_ref()
        .and_then(|d| d.flags)
        .is_some_and(|f| f.contains(twilight_model::channel::message::MessageFlags::EPHEMERAL))
}
