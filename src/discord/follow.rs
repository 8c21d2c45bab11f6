//! What follows a deferred start or stop: the service is asked, its events are followed, and the
//! answer is edited with each step until the service is up, asleep or failed. The follower
//! writes the whole text into a `watch`; the editor sends the newest text whenever it can, so a
//! burst of steps (or a rate limit) costs one edit, and the last text is always sent. Past the
//! interaction token's 15 minutes, the text goes to a message of the bot's own in the channel.

use std::time::Duration;

use hyper::Method;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{info, warn};
use twilight_model::channel::message::AllowedMentions;
use twilight_model::http::interaction::InteractionResponseData;

use super::Bot;
use super::config::Permission;
use super::rest::Call;
use crate::event::{Kind, State};
use crate::service::ServiceHandle;

/// An interaction token can edit its answer for 15 minutes; a little is kept in hand.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60 + 30);

/// Discord's limit on a message's content, in characters.
const MAX_CONTENT: usize = 2000;

/// How often an edit of the answer is tried before that text is given up (the next one is
/// still sent).
const EDIT_TRIES: u32 = 3;

/// Starts following `action` (start or stop) of `service` for an interaction just deferred.
pub(super) fn spawn(
    bot: &Bot,
    service: ServiceHandle,
    action: Permission,
    token: String,
    channel: Option<u64>,
    who: String,
) {
    let received = Instant::now();
    let bot = bot.clone();
    let tasks = bot.inner.tasks.clone();
    tasks.spawn(async move {
        let cancel = bot.inner.cancel.clone();
        let (text, texts) = watch::channel(String::new());
        let edits = edit(&bot, &token, channel, received, texts);
        let follow = follow(service, action, who, text);
        tokio::select! {
            _ = async { tokio::join!(follow, edits) } => {}
            () = cancel.cancelled() => {}
        }
    });
}

/// Asks the service and writes the answer's text as it goes; returns once the action is done.
async fn follow(
    service: ServiceHandle,
    action: Permission,
    who: String,
    text: watch::Sender<String>,
) {
    let name = service.name().to_string();
    // Subscribed before asking, so no step is missed.
    let mut events = service.subscribe();
    let (verb, goal) = match action {
        Permission::Stop => ("Stopping", State::Asleep),
        _ => ("Starting", State::Awake),
    };
    info!(service = %name, by = %who, action = action.as_str(), "Discord asked.");
    let asked = match action {
        Permission::Stop => service.sleep(&who).await,
        _ => service.wake(&who).await,
    };
    let mut lines = vec![format!("{verb} **{name}**…")];
    match asked {
        Err(gone) => {
            text.send_replace(format!("Cannot {} **{name}**: {gone}.", action.as_str()));
            return;
        }
        Ok(Err(denied)) => {
            text.send_replace(format!("Cannot {} **{name}**: {denied}", action.as_str()));
            return;
        }
        Ok(Ok(before)) if before == goal => {
            text.send_replace(done(&service, goal, true));
            return;
        }
        Ok(Ok(_)) => {}
    }
    text.send_replace(lines.join("\n"));
    loop {
        let event = match events.recv().await {
            Ok(event) if event.service == name => event,
            Ok(_) => continue,
            // Steps were missed: the state itself still says where it stands.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let state = service.state();
                if state == goal || state == State::Failed {
                    break;
                }
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match event.kind {
            Kind::Progress => lines.push(format!("· {}", event.reason)),
            Kind::Transition if event.state == goal || event.state == State::Failed => break,
            Kind::Transition => lines.push(format!("· {}: {}", event.state, event.reason)),
            _ => continue,
        }
        text.send_replace(fit(&lines));
    }
    let state = service.state();
    lines.push(if state == State::Failed {
        let why = service
            .status()
            .last_error
            .unwrap_or_else(|| "no reason was given".into());
        format!("**{name}** failed: {why}")
    } else {
        done(&service, goal, false)
    });
    text.send_replace(fit(&lines));
}

/// The last line: up at an address, or asleep.
fn done(service: &ServiceHandle, goal: State, already: bool) -> String {
    let name = service.name();
    let already = if already { "already " } else { "" };
    match (goal, service.status().address) {
        (State::Awake, Some(address)) => format!("**{name}** is {already}up at `{address}`"),
        (State::Awake, None) => format!("**{name}** is {already}up"),
        _ => format!("**{name}** is {already}asleep"),
    }
}

/// The lines, the oldest steps left out when they would not fit in a message.
fn fit(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    let mut skip = 1;
    while text.chars().count() > MAX_CONTENT && skip < lines.len() {
        text = format!("{}\n…\n{}", lines[0], lines[skip + 1..].join("\n"));
        skip += 1;
    }
    text.chars().take(MAX_CONTENT).collect()
}

/// Sends each newest text: as an edit of the deferred answer while the token of an interaction
/// `received` then lives, then to a message of the bot's own in the channel.
async fn edit(
    bot: &Bot,
    token: &str,
    channel: Option<u64>,
    received: Instant,
    mut texts: watch::Receiver<String>,
) {
    let application = bot.inner.config.application_id;
    let rest = &bot.inner.rest;
    let mut own: Option<u64> = None;
    // Ends once the follower is done and its last text was sent.
    while texts.changed().await.is_ok() {
        let content = texts.borrow_and_update().clone();
        let body = InteractionResponseData {
            content: Some(content),
            allowed_mentions: Some(AllowedMentions::default()),
            ..Default::default()
        };
        if received.elapsed() < TOKEN_LIFETIME {
            let call = Call::interaction(Method::PATCH, application, token, "/messages/@original");
            for attempt in 1..=EDIT_TRIES {
                match rest.call(&call, Some(&body)).await {
                    Ok(_) => break,
                    Err(e) if attempt == EDIT_TRIES => {
                        warn!(error = %e, "Could not edit the answer on Discord.");
                    }
                    // The deferral may still be on its way to Discord.
                    Err(_) => tokio::time::sleep(Duration::from_millis(500) * attempt).await,
                }
            }
            continue;
        }
        let Some(channel) = channel else {
            warn!(
                "The interaction token expired and the interaction named no channel: an update is not shown."
            );
            continue;
        };
        let call = match own {
            None => Call::bot(Method::POST, format!("/channels/{channel}/messages")),
            Some(id) => Call::bot(Method::PATCH, format!("/channels/{channel}/messages/{id}")),
        };
        match rest.call(&call, Some(&body)).await {
            Ok(message) => {
                if own.is_none() {
                    own = message
                        .get("id")
                        .and_then(|id| id.as_str())
                        .and_then(|id| id.parse().ok());
                }
            }
            Err(e) => warn!(error = %e, "Could not post the update to the channel."),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::State as Extract;
    use axum::http::{HeaderMap, Method as AxumMethod, Uri};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::config::de::Secret;
    use crate::discord::config::{DEFAULT_API_URL, Discord, PublicKey};

    type Seen = Arc<Mutex<Vec<(String, String, Option<String>, String)>>>;

    /// Records each call and answers with a message whose id is 42.
    async fn record(
        Extract((seen, changed)): Extract<(Seen, Arc<tokio::sync::Notify>)>,
        method: AxumMethod,
        uri: Uri,
        headers: HeaderMap,
        body: String,
    ) -> axum::Json<serde_json::Value> {
        let content: InteractionResponseData = serde_json::from_str(&body).unwrap();
        let auth = headers
            .get("authorization")
            .map(|a| a.to_str().unwrap().to_string());
        seen.lock().unwrap().push((
            method.to_string(),
            uri.path().to_string(),
            auth,
            content.content.unwrap(),
        ));
        changed.notify_one();
        axum::Json(serde_json::json!({ "id": "42", "channel_id": "7" }))
    }

    #[tokio::test]
    async fn past_the_token_lifetime_updates_go_to_one_message_in_the_channel() {
        let seen: Seen = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(record)
            .with_state((seen.clone(), changed.clone()));
        let tracker = TaskTracker::new();
        tracker.spawn(async move { axum::serve(listener, app).await });
        let mut config = Discord {
            application_id: 1,
            public_key: PublicKey(ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key()),
            token: Secret::new("bot-token"),
            guilds: vec![2],
            admin_role: 3,
            api_url: DEFAULT_API_URL.into(),
            roles: Vec::new(),
            category: None,
            on_end: crate::discord::config::OnEnd::Delete,
            listen: None,
        };
        config.api_url = format!("http://{addr}/api/v10");
        let bot = Bot::new(
            config,
            crate::service::Registry::default(),
            tracker.clone(),
            CancellationToken::new(),
        );
        // An interaction received 15 minutes ago: the clock is moved on, then runs again for the
        // real sockets.
        tokio::time::pause();
        let received = Instant::now();
        tokio::time::advance(TOKEN_LIFETIME + Duration::from_secs(1)).await;
        tokio::time::resume();
        let (text, texts) = watch::channel(String::new());
        let editor = edit(&bot, "interaction-token", Some(7), received, texts);
        let steps = async {
            for step in ["Starting **x**…", "**x** is up at `127.0.0.1:1`"] {
                let before = seen.lock().unwrap().len();
                text.send_replace(step.to_string());
                while seen.lock().unwrap().len() == before {
                    changed.notified().await;
                }
            }
            drop(text);
        };
        tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(editor, steps)
        })
        .await
        .unwrap();
        let seen = seen.lock().unwrap().clone();
        let bot_auth = Some("Bot bot-token".to_string());
        assert_eq!(
            seen,
            [
                (
                    "POST".into(),
                    "/api/v10/channels/7/messages".into(),
                    bot_auth.clone(),
                    "Starting **x**…".into()
                ),
                (
                    "PATCH".into(),
                    "/api/v10/channels/7/messages/42".into(),
                    bot_auth,
                    "**x** is up at `127.0.0.1:1`".into()
                ),
            ]
        );
    }
}
