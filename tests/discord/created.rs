//! `/wakegate create|destroy|extend` on a `process` template (the demo echo server), each
//! created server with its private channel in the configured category, against the stand-in.

use super::common::*;
use super::standin::*;
use axum::http::Method;
use ed25519_dalek::SigningKey;
use twilight_model::channel::permission_overwrite::{PermissionOverwrite, PermissionOverwriteType};
use twilight_model::guild::Permissions;
use twilight_model::http::interaction::InteractionResponseType;
use twilight_model::id::Id;

/// The category the servers' channels are opened in.
const CATEGORY: u64 = 700_000_000_000_000_030;
/// May create servers from template `game` (and nothing else).
const CREATOR: u64 = 700_000_000_000_000_103;
/// Another member, with the viewer role only.
const OTHER: u64 = 700_000_000_000_000_501;

/// A gateway with the bot, channels in `CATEGORY`, and template `game` (one server per member).
async fn gateway_with_templates(
    name: &str,
    key: &SigningKey,
    discord: &Discord,
) -> wakegate::app::App {
    config_with_templates(&temp_dir(name), key, discord)
        .start()
        .await
}

/// The config of [`gateway_with_templates`], its store in `dir`.
fn config_with_templates(dir: &std::path::Path, key: &SigningKey, discord: &Discord) -> Config {
    config_ending(dir, key, discord, "delete", "lifetime = \"1h\"")
}

/// The config of [`gateway_with_templates`] with `on_end`.
fn config_ending(
    dir: &std::path::Path,
    key: &SigningKey,
    discord: &Discord,
    on_end: &str,
    template_keys: &str,
) -> Config {
    let template = echo_template(
        "game",
        "10m",
        &format!("max_per_owner = 1\n{template_keys}"),
    );
    let table = discord_table(
        &discord.url,
        &hex(key.verifying_key().as_bytes()),
        BOT_TOKEN,
    )
    .replace(
        "[discord]\n",
        &format!("[discord]\ncategory = \"{CATEGORY}\"\non_end = \"{on_end}\"\n"),
    );
    gateway(dir)
        .service(svc("echo").exec_true(free_addr()).tcp(ANY_PORT))
        .raw(&template)
        .raw(&table)
        .raw(&format!(
            "\n[[discord.role]]\nid = \"{CREATOR}\"\ntemplates = [\"game\"]\nallow = [\"create\"]\n"
        ))
}

fn choice_names(answer: &twilight_model::http::interaction::InteractionResponse) -> Vec<String> {
    answer
        .data
        .as_ref()
        .and_then(|d| d.choices.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect()
}

fn is_status(c: &Call) -> bool {
    c.path.contains("/channels/") && c.body.as_str().is_some_and(|t| t.contains("Owner: <@"))
}

#[tokio::test]
async fn create_opens_a_private_channel_with_one_edited_status_message_and_destroy_deletes_it() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let app = gateway_with_templates("discord-create", &key, &discord).await;
    let api = app.api_addr();

    // Autocomplete lists what the member may use.
    let answer = interact(
        api,
        &key,
        &command_as(
            "create",
            &[("template", "")],
            &[CREATOR],
            GUILD,
            MEMBER,
            Some("template"),
        ),
    )
    .await;
    assert_eq!(choice_names(&answer), ["game"]);
    let answer = interact(
        api,
        &key,
        &command_as(
            "create",
            &[("template", "")],
            &[VIEWER],
            GUILD,
            OTHER,
            Some("template"),
        ),
    )
    .await;
    assert!(choice_names(&answer).is_empty());

    // A member without the role is refused, the role named.
    let answer = interact(
        api,
        &key,
        &command_as(
            "create",
            &[("template", "game")],
            &[VIEWER],
            GUILD,
            OTHER,
            None,
        ),
    )
    .await;
    assert!(ephemeral(&answer), "{answer:?}");
    let text = content(&answer);
    assert!(
        text.contains(&format!("<@&{CREATOR}>")) && text.contains(&format!("<@&{ADMIN}>")),
        "{text}"
    );

    // Create: deferred, then edited until the new server is up.
    let answer = interact(
        api,
        &key,
        &command_as(
            "create",
            &[("template", "game")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert_eq!(
        answer.kind,
        InteractionResponseType::DeferredChannelMessageWithSource
    );
    discord
        .until("saying game-1 is up", |c| {
            c.path.contains("/webhooks/")
                && c.body
                    .as_str()
                    .is_some_and(|t| t.contains("**game-1** is up at"))
        })
        .await;
    let service = app.running("game-1").expect("game-1 was created");
    let address = service.status().address.unwrap();
    // The status message follows the server to awake, by edits.
    let calls = discord
        .until("editing the status to awake", |c| {
            c.method == Method::PATCH
                && is_status(c)
                && c.body.as_str().unwrap().contains("**game-1** is awake")
        })
        .await;

    // The channel: in the category, hidden from @everyone, open to the owner and the admins.
    let created: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.method == Method::POST && c.path == format!("/api/v10/guilds/{GUILD}/channels")
        })
        .collect();
    assert_eq!(created.len(), 1, "{calls:#?}");
    let body = &created[0].body;
    let new: NewChannel = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(new.kind, twilight_model::channel::ChannelType::GuildText);
    assert!(new.topic.unwrap().contains("game-1"));
    assert_eq!(new.permission_overwrites.len(), 3);
    assert_eq!(body["name"], "game-1");
    assert_eq!(body["parent_id"], CATEGORY.to_string());
    let mut overwrites: Vec<PermissionOverwrite> =
        serde_json::from_value(body["permission_overwrites"].clone()).unwrap();
    overwrites.sort_by_key(|o| o.id);
    let open =
        Permissions::VIEW_CHANNEL | Permissions::SEND_MESSAGES | Permissions::READ_MESSAGE_HISTORY;
    let mut expected = vec![
        PermissionOverwrite {
            allow: Permissions::empty(),
            deny: Permissions::VIEW_CHANNEL,
            id: Id::new(GUILD),
            kind: PermissionOverwriteType::Role,
        },
        PermissionOverwrite {
            allow: open,
            deny: Permissions::empty(),
            id: Id::new(MEMBER),
            kind: PermissionOverwriteType::Member,
        },
        PermissionOverwrite {
            allow: open,
            deny: Permissions::empty(),
            id: Id::new(ADMIN),
            kind: PermissionOverwriteType::Role,
        },
    ];
    expected.sort_by_key(|o| o.id);
    assert_eq!(overwrites, expected);

    // One status message, posted once, then only edited.
    let statuses: Vec<&Call> = calls.iter().filter(|c| is_status(c)).collect();
    let posted: Vec<&&Call> = statuses
        .iter()
        .filter(|c| c.method == Method::POST)
        .collect();
    assert_eq!(posted.len(), 1, "{statuses:#?}");
    let channel = posted[0].path.split('/').nth(4).unwrap().to_string();
    assert!(statuses.len() >= 2, "{statuses:#?}");
    let edited: std::collections::BTreeSet<&str> = statuses[1..]
        .iter()
        .map(|c| {
            assert_eq!(c.method, Method::PATCH);
            c.path.rsplit('/').next().unwrap()
        })
        .collect();
    assert_eq!(
        edited.len(),
        1,
        "every edit is of the same message: {statuses:#?}"
    );
    let last = statuses.last().unwrap().body.as_str().unwrap();
    assert!(last.contains(&format!("at `{address}`")), "{last}");
    assert!(last.contains(&format!("Owner: <@{MEMBER}>")), "{last}");
    assert!(last.contains("Ends <t:"), "{last}");
    // The transitions are posted in the channel too (the status may show awake first).
    discord
        .until("posting the transition to awake in the channel", |c| {
            c.method == Method::POST
                && c.path == format!("/api/v10/channels/{channel}/messages")
                && c.body.as_str().is_some_and(|t| t.starts_with("· awake"))
        })
        .await;

    // One server per member: the second is refused, privately, and nothing is created.
    let answer = interact(
        api,
        &key,
        &command_as(
            "create",
            &[("template", "game")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert!(ephemeral(&answer), "{answer:?}");
    assert!(content(&answer).contains("already"), "{answer:?}");
    assert!(app.running("game-2").is_none());

    // Extend: the owner may; the answer gives the new deadline, and the channel hears of it.
    let answer = interact(
        api,
        &key,
        &command_as(
            "extend",
            &[("server", "game-1"), ("duration", "30m")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert_eq!(
        answer.kind,
        InteractionResponseType::DeferredChannelMessageWithSource
    );
    discord
        .until("answering the extend", |c| {
            c.path.contains("/webhooks/")
                && c.body
                    .as_str()
                    .is_some_and(|t| t.contains("**game-1** now ends at"))
        })
        .await;
    discord
        .until("posting the extend in the channel", |c| {
            c.method == Method::POST
                && c.path == format!("/api/v10/channels/{channel}/messages")
                && c.body
                    .as_str()
                    .is_some_and(|t| t.contains("deadline extended by 30m"))
        })
        .await;
    let answer = interact(
        api,
        &key,
        &command_as(
            "extend",
            &[("server", "game-1"), ("duration", "soon")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert!(
        ephemeral(&answer) && content(&answer).contains("not a duration"),
        "{answer:?}"
    );

    // Destroy: the owner may, another member may not (and is not offered it).
    let answer = interact(
        api,
        &key,
        &command_as(
            "destroy",
            &[("server", "")],
            &[VIEWER],
            GUILD,
            OTHER,
            Some("server"),
        ),
    )
    .await;
    assert!(choice_names(&answer).is_empty());
    let answer = interact(
        api,
        &key,
        &command_as(
            "destroy",
            &[("server", "game-1")],
            &[VIEWER],
            GUILD,
            OTHER,
            None,
        ),
    )
    .await;
    assert!(
        ephemeral(&answer) && content(&answer).contains("not yours"),
        "{answer:?}"
    );
    let answer = interact(
        api,
        &key,
        &command_as(
            "destroy",
            &[("server", "")],
            &[CREATOR],
            GUILD,
            MEMBER,
            Some("server"),
        ),
    )
    .await;
    assert_eq!(choice_names(&answer), ["game-1"]);
    let answer = interact(
        api,
        &key,
        &command_as(
            "destroy",
            &[("server", "game-1")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert_eq!(
        answer.kind,
        InteractionResponseType::DeferredChannelMessageWithSource
    );
    let calls = discord
        .until("deleting the channel", |c| {
            c.method == Method::DELETE && c.path == format!("/api/v10/channels/{channel}")
        })
        .await;
    assert!(app.running("game-1").is_none());
    let statuses: Vec<&Call> = calls.iter().filter(|c| is_status(c)).collect();
    assert_eq!(
        statuses.iter().filter(|c| c.method == Method::POST).count(),
        1,
        "{statuses:#?}"
    );
    assert!(
        statuses
            .last()
            .unwrap()
            .body
            .as_str()
            .unwrap()
            .contains("has ended"),
        "{statuses:#?}"
    );
    discord
        .until("saying game-1 is destroyed", |c| {
            c.body
                .as_str()
                .is_some_and(|t| t.contains("**game-1** is destroyed"))
        })
        .await;
    assert!(discord.log.lock().unwrap().malformed.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn after_a_restart_the_same_status_message_is_edited_in_the_same_channel() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let config = config_with_templates(&temp_dir("discord-restart"), &key, &discord);
    let app = config.start().await;
    let answer = interact(
        app.api_addr(),
        &key,
        &command_as(
            "create",
            &[("template", "game")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert_eq!(
        answer.kind,
        InteractionResponseType::DeferredChannelMessageWithSource
    );
    let calls = discord
        .until("editing the status to awake", |c| {
            c.method == Method::PATCH
                && is_status(c)
                && c.body.as_str().unwrap().contains("**game-1** is awake")
        })
        .await;
    let status = calls.iter().find(|c| is_status(c)).unwrap();
    assert_eq!(status.method, Method::POST);
    let edit = calls.iter().rev().find(|c| is_status(c)).unwrap();
    let message_path = edit.path.clone();
    let channel = message_path.split('/').nth(4).unwrap().to_string();
    app.shutdown().await;

    let before = discord.calls().len();
    let app = config.start().await;
    let calls = discord
        .until("editing the same status message after the restart", |c| {
            c.method == Method::PATCH && c.path == message_path && c.at > edit.at
        })
        .await;
    let after = &calls[before..];
    assert!(
        after
            .iter()
            .all(|c| c.method != Method::POST || !(is_status(c) || c.path.contains("/guilds/"))),
        "no second channel or status message: {after:#?}"
    );

    // Destroyed after the restart: the same channel is deleted.
    let answer = interact(
        app.api_addr(),
        &key,
        &command_as(
            "destroy",
            &[("server", "game-1")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert_eq!(
        answer.kind,
        InteractionResponseType::DeferredChannelMessageWithSource
    );
    discord
        .until("deleting the channel", |c| {
            c.method == Method::DELETE && c.path == format!("/api/v10/channels/{channel}")
        })
        .await;
    assert!(discord.log.lock().unwrap().malformed.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn with_on_end_archive_the_channel_is_renamed_and_read_only_for_the_owner() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let app = config_ending(
        &temp_dir("discord-archive"),
        &key,
        &discord,
        "archive",
        "lifetime = \"1h\"",
    )
    .start()
    .await;
    let api = app.api_addr();
    interact(
        api,
        &key,
        &command_as(
            "create",
            &[("template", "game")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    let calls = discord
        .until("posting the status message", |c| {
            c.method == Method::POST && is_status(c)
        })
        .await;
    let channel = calls
        .iter()
        .find(|c| is_status(c))
        .unwrap()
        .path
        .split('/')
        .nth(4)
        .unwrap()
        .to_string();
    // The admin role may destroy any server.
    interact(
        api,
        &key,
        &command_as(
            "destroy",
            &[("server", "game-1")],
            &[ADMIN],
            GUILD,
            OTHER,
            None,
        ),
    )
    .await;
    let calls = discord
        .until("archiving the channel", |c| {
            c.method == Method::PATCH && c.path == format!("/api/v10/channels/{channel}")
        })
        .await;
    let archive = calls
        .iter()
        .find(|c| c.path == format!("/api/v10/channels/{channel}"))
        .unwrap();
    let change: ChannelChange = serde_json::from_value(archive.body.clone()).unwrap();
    assert_eq!(change.name.as_deref(), Some("ended-game-1"));
    let overwrites = change.permission_overwrites.unwrap();
    let owner = overwrites.iter().find(|o| o.id == Id::new(MEMBER)).unwrap();
    assert_eq!(
        owner.allow,
        Permissions::VIEW_CHANNEL | Permissions::READ_MESSAGE_HISTORY
    );
    assert_eq!(owner.deny, Permissions::SEND_MESSAGES);
    let everyone = overwrites.iter().find(|o| o.id == Id::new(GUILD)).unwrap();
    assert_eq!(everyone.deny, Permissions::VIEW_CHANNEL);
    assert!(!calls.iter().any(|c| c.method == Method::DELETE));
    assert!(discord.log.lock().unwrap().malformed.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_deadline_warning_goes_to_the_channel_and_at_the_deadline_the_channel_is_deleted() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let app = config_ending(
        &temp_dir("discord-deadline"),
        &key,
        &discord,
        "delete",
        "lifetime = \"3s\"\nwarnings = [\"2s\"]",
    )
    .start()
    .await;
    interact(
        app.api_addr(),
        &key,
        &command_as(
            "create",
            &[("template", "game")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    let calls = discord
        .until("posting the status message", |c| {
            c.method == Method::POST && is_status(c)
        })
        .await;
    let channel = calls
        .iter()
        .find(|c| is_status(c))
        .unwrap()
        .path
        .split('/')
        .nth(4)
        .unwrap()
        .to_string();
    discord
        .until("posting the warning in the channel", |c| {
            c.method == Method::POST
                && c.path == format!("/api/v10/channels/{channel}/messages")
                && c.body
                    .as_str()
                    .is_some_and(|t| t.starts_with("⚠") && t.contains("ends in"))
        })
        .await;
    let calls = discord
        .until("deleting the channel at the deadline", |c| {
            c.method == Method::DELETE && c.path == format!("/api/v10/channels/{channel}")
        })
        .await;
    let last = calls.iter().rev().find(|c| is_status(c)).unwrap();
    assert!(
        last.body
            .as_str()
            .unwrap()
            .contains("has ended: its deadline passed"),
        "{last:#?}"
    );
    assert!(app.running("game-1").is_none());
    assert!(discord.log.lock().unwrap().malformed.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_refused_channel_creation_is_tried_again_while_the_server_lives() {
    let key = fresh_key();
    let discord = Discord::start().await;
    // The bot lacks Manage Channels at first; an admin fixes its role in the meantime.
    discord.log.lock().unwrap().refuse_channels = 1;
    let app = config_ending(&temp_dir("discord-refused"), &key, &discord, "delete", "")
        .start()
        .await;
    interact(
        app.api_addr(),
        &key,
        &command_as(
            "create",
            &[("template", "game")],
            &[CREATOR],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    let calls = discord
        .until(
            "posting the status message in the channel made at last",
            |c| c.method == Method::POST && is_status(c),
        )
        .await;
    let creations: Vec<u16> = calls
        .iter()
        .filter(|c| c.path == format!("/api/v10/guilds/{GUILD}/channels"))
        .map(|c| c.status)
        .collect();
    assert_eq!(creations, [403, 200], "refused once, then made: {calls:#?}");
    assert!(discord.log.lock().unwrap().malformed.is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_ends_its_answer_and_its_status_with_the_reason() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let app = config_with_templates(&temp_dir("discord-broken"), &key, &discord)
        .raw(&format!(
            r#"
[[template]]
name = "broken"

[template.service.backend]
type = "process"
command = ["{WAKEGATE}-not-installed"]
address = "{}"

[[template.service.listen]]
type = "tcp"
bind = "127.0.0.1:0"
"#,
            free_addr()
        ))
        .start()
        .await;
    // The admin role may create from every template.
    let answer = interact(
        app.api_addr(),
        &key,
        &command_as(
            "create",
            &[("template", "broken")],
            &[ADMIN],
            GUILD,
            MEMBER,
            None,
        ),
    )
    .await;
    assert_eq!(
        answer.kind,
        InteractionResponseType::DeferredChannelMessageWithSource
    );
    let calls = discord
        .until("saying broken-1 failed", |c| {
            c.path.contains("/webhooks/")
                && c.body
                    .as_str()
                    .is_some_and(|t| t.contains("**broken-1** failed: "))
        })
        .await;
    let answer = calls
        .iter()
        .rev()
        .find(|c| c.path.contains("/webhooks/"))
        .unwrap();
    assert!(
        answer.body.as_str().unwrap().contains("not-installed"),
        "the reason names the command: {answer:#?}"
    );
    discord
        .until("showing the failure in the status message", |c| {
            is_status(c)
                && c.body.as_str().is_some_and(|t| {
                    t.contains("**broken-1** has failed") && t.contains("`/wakegate destroy`")
                })
        })
        .await;
    assert!(discord.log.lock().unwrap().malformed.is_empty());
    app.shutdown().await;
}
