//! A private channel per created server whose owner is a Discord member (`discord:<user id>`),
//! when `[discord] category` is set: @everyone cannot see it, the owner and the admin role can.
//! One status message (address, state, owner, time left) is posted there and edited as the
//! server changes; its transitions and warnings are posted below it. The channel and message
//! ids are kept in the store with the server (as its values), so after a restart the same
//! message is edited. At the end the channel is deleted or archived (`on_end`). A Discord call
//! that fails is logged and skipped: it never holds the server back. Only the channel's creation
//! is tried again (3 s, doubling up to 5 min) while the server lives.

use hyper::Method;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tracing::{info, warn};
use twilight_model::channel::message::AllowedMentions;
use twilight_model::channel::permission_overwrite::{PermissionOverwrite, PermissionOverwriteType};
use twilight_model::guild::Permissions;
use twilight_model::http::interaction::InteractionResponseData;
use twilight_model::id::Id;

use super::Bot;
use super::config::OnEnd;
use super::rest::Call;
use crate::event::{Kind, State};
use crate::service::ServiceHandle;
use crate::store::{CreatedChannel, Store};

/// How long the event that says why a server ended is waited for once its record is gone.
const END_EVENT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after a refused channel creation it is asked for again, doubling up to the most.
const CHANNEL_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(3);
const CHANNEL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// The owner string of a server created by a Discord member.
pub(super) fn owner(user: u64) -> String {
    format!("discord:{user}")
}

/// The Discord member who owns a created server, if one does.
fn member(owner: &str) -> Option<u64> {
    owner.strip_prefix("discord:")?.parse().ok()
}

/// The permission overwrites of a created server's channel: nobody sees it but its owner and
/// the admin role (@everyone's role id is the guild's id).
pub(super) fn overwrites(guild: u64, owner: u64, admin_role: u64) -> Vec<PermissionOverwrite> {
    let member =
        Permissions::VIEW_CHANNEL | Permissions::SEND_MESSAGES | Permissions::READ_MESSAGE_HISTORY;
    vec![
        PermissionOverwrite {
            allow: Permissions::empty(),
            deny: Permissions::VIEW_CHANNEL,
            id: Id::new(guild),
            kind: PermissionOverwriteType::Role,
        },
        PermissionOverwrite {
            allow: member,
            deny: Permissions::empty(),
            id: Id::new(owner),
            kind: PermissionOverwriteType::Member,
        },
        PermissionOverwrite {
            allow: member,
            deny: Permissions::empty(),
            id: Id::new(admin_role),
            kind: PermissionOverwriteType::Role,
        },
    ]
}

/// Keeps the channel of created server `name` from now until it ends (or wakegate stops);
/// `guild` is where it was created (for one restored: the guild stored with it).
pub(super) fn spawn(bot: &Bot, name: &str, guild: Option<u64>) {
    let inner = &bot.inner;
    let (Some(category), Some(templates)) = (inner.config.category, &inner.templates) else {
        return;
    };
    let Some(view) = templates.view(name) else {
        return;
    };
    let Some(owner) = member(&view.owner) else {
        return;
    };
    let record = view.id;
    let Some(service) = inner.services.get(name) else {
        return;
    };
    let bot = bot.clone();
    let cancel = inner.cancel.clone();
    inner.tasks.spawn(async move {
        tokio::select! {
            () = keep(&bot, service, record, category, owner, guild) => {}
            () = cancel.cancelled() => {}
        }
    });
}

async fn keep(
    bot: &Bot,
    service: ServiceHandle,
    record: i64,
    category: u64,
    owner: u64,
    guild: Option<u64>,
) {
    let inner = &bot.inner;
    let Some(templates) = &inner.templates else {
        return;
    };
    let store = templates.store();
    let name = service.name().to_string();
    // Subscribed first: no event between the status message and the loop is missed.
    let mut events = service.subscribe();
    let kept = match store.created_channel(record) {
        Ok(kept) => kept,
        Err(e) => {
            warn!(service = %name, error = %e, "Cannot read the server's Discord channel from the store: another is opened.");
            None
        }
    };
    let mut kept = match kept {
        Some(kept) => kept,
        None => {
            let guild = guild.unwrap_or(inner.config.guilds[0]);
            let body = json!({
                "name": name,
                "type": 0,
                "parent_id": category.to_string(),
                "topic": format!("wakegate: the server {name}"),
                "permission_overwrites": overwrites(guild, owner, inner.config.admin_role),
            });
            let call = Call::bot(Method::POST, format!("/guilds/{guild}/channels"));
            // A refusal (a missing permission, Discord down) is tried again while the server
            // lives: fixing the bot's role is enough, with no restart.
            let mut retry = CHANNEL_RETRY_FIRST;
            let channel = loop {
                if let Some(channel) = id_of(bot, &call, &body, "create the server's channel").await
                {
                    break channel;
                }
                info!(service = %name, retry_in = ?retry, "The server's Discord channel will be asked for again.");
                tokio::time::sleep(retry).await;
                if templates.view(&name).is_none() {
                    return;
                }
                retry = (retry * 2).min(CHANNEL_RETRY_MAX);
            };
            info!(service = %name, channel, "Opened the server's Discord channel.");
            let kept = CreatedChannel {
                guild,
                channel,
                message: None,
            };
            keep_ids(&store, record, &name, Some(kept)).await;
            kept
        }
    };
    let (guild, channel) = (kept.guild, kept.channel);
    let mut ended: Option<String> = None;
    let mut gone: Option<tokio::time::Instant> = None;
    // What the message shows: an event that changes nothing in it costs no edit.
    let mut shown = String::new();
    loop {
        let status = status_text(bot, &service, owner, ended.as_deref());
        let changed = status != shown;
        shown = status;
        if changed
            && let Some(message) = post_status(bot, channel, kept.message, &shown, &name).await
            && kept.message != Some(message)
        {
            kept.message = Some(message);
            keep_ids(&store, record, &name, Some(kept)).await;
        }
        if ended.is_some() {
            break;
        }
        // Ended (its record is gone): the end's own event, which says why, follows within
        // moments, unless it was missed (before the subscription, or while lagging).
        if gone.is_none() && templates.view(&name).is_none() {
            gone = Some(tokio::time::Instant::now() + END_EVENT_WAIT);
        }
        let next = match gone {
            None => events.recv().await,
            Some(until) => match tokio::time::timeout_at(until, events.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    ended = Some("it ended".into());
                    continue;
                }
            },
        };
        let event = match next {
            Ok(event) if event.service == name => event,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if let Some(why) = event.detail.get("ended").and_then(|v| v.as_str()) {
            ended = Some(why.to_string());
        }
        let line = match event.kind {
            Kind::Transition => format!("· {}: {}", event.state, event.reason),
            Kind::Warning => format!("⚠ {}", event.reason),
            Kind::Action => format!("· {}", event.reason),
            _ => continue,
        };
        post(bot, channel, &line, &name).await;
    }
    keep_ids(&store, record, &name, None).await;
    let (call, body) = match inner.config.on_end {
        OnEnd::Delete => (
            Call::bot(Method::DELETE, format!("/channels/{channel}")),
            None,
        ),
        OnEnd::Archive => {
            // The owner keeps reading it; only the admin role may still write.
            let mut overwrites = overwrites(guild, owner, inner.config.admin_role);
            overwrites[1].allow = Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY;
            overwrites[1].deny = Permissions::SEND_MESSAGES;
            let body = json!({
                "name": format!("ended-{name}"),
                "permission_overwrites": overwrites,
            });
            (
                Call::bot(Method::PATCH, format!("/channels/{channel}")),
                Some(body),
            )
        }
    };
    match inner.rest.call(&call, body.as_ref()).await {
        Ok(_) => info!(service = %name, channel, "Closed the server's Discord channel."),
        Err(e) => warn!(service = %name, error = %e, "Cannot close the server's Discord channel."),
    }
}

/// The status message's text.
fn status_text(bot: &Bot, service: &ServiceHandle, owner: u64, ended: Option<&str>) -> String {
    let name = service.name();
    if let Some(why) = ended {
        return format!("**{name}** has ended: {why}.\nOwner: <@{owner}>");
    }
    let mut text = super::reply::status_line(service);
    text.push_str(&format!("\nOwner: <@{owner}>"));
    if let Some(view) = bot.inner.templates.as_ref().and_then(|t| t.view(name)) {
        let seconds = view
            .deadline
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        text.push_str(&format!(
            "\nEnds <t:{seconds}:R> (<t:{seconds}:f>); `/wakegate extend` keeps it longer"
        ));
    }
    if service.state() == State::Failed {
        text.push_str("\n`/wakegate destroy` removes it.");
    }
    text
}

/// Posts the status message, or edits it when it exists; returns its id.
async fn post_status(
    bot: &Bot,
    channel: u64,
    message: Option<u64>,
    text: &str,
    name: &str,
) -> Option<u64> {
    let body = message_body(text);
    if let Some(id) = message {
        let call = Call::bot(Method::PATCH, format!("/channels/{channel}/messages/{id}"));
        if let Err(e) = bot.inner.rest.call(&call, Some(&body)).await {
            warn!(service = %name, error = %e, "Cannot edit the server's status message.");
        }
        return Some(id);
    }
    let call = Call::bot(Method::POST, format!("/channels/{channel}/messages"));
    id_of(bot, &call, &body, "post the server's status message").await
}

/// Keeps (or forgets) the channel and message ids with the server's record.
async fn keep_ids(store: &Store, record: i64, name: &str, kept: Option<CreatedChannel>) {
    if let Err(e) = store.set_created_channel(record, kept).await {
        warn!(service = %name, error = %e, "Cannot keep the server's Discord channel in the store: after a restart another may be opened.");
    }
}

async fn post(bot: &Bot, channel: u64, text: &str, name: &str) {
    let call = Call::bot(Method::POST, format!("/channels/{channel}/messages"));
    if let Err(e) = bot.inner.rest.call(&call, Some(&message_body(text))).await {
        warn!(service = %name, error = %e, "Cannot post to the server's channel.");
    }
}

/// A message that mentions nobody (the owner's mention shows as a name).
fn message_body(text: &str) -> InteractionResponseData {
    InteractionResponseData {
        content: Some(text.to_string()),
        allowed_mentions: Some(AllowedMentions::default()),
        ..Default::default()
    }
}

/// Makes a call whose answer is an object with an id (a channel, a message).
async fn id_of(bot: &Bot, call: &Call, body: &impl serde::Serialize, what: &str) -> Option<u64> {
    match bot.inner.rest.call(call, Some(body)).await {
        Ok(answer) => {
            let id = answer
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| id.parse().ok());
            if id.is_none() {
                warn!(route = %call.route, "Discord's answer has no id.");
            }
            id
        }
        Err(e) => {
            warn!(error = %e, "Cannot {what} on Discord.");
            None
        }
    }
}
