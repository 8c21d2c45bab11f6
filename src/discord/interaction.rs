//! Answers one verified interaction: PING, the `/wakegate` subcommands and their autocomplete.
//! Refusals and `status` are ephemeral (only the member sees them); a start or a stop is public,
//! so the channel sees who woke what and when it is up.

use std::time::{SystemTime, UNIX_EPOCH};

use twilight_model::application::command::{CommandOptionChoice, CommandOptionChoiceValue};
use twilight_model::application::interaction::application_command::{
    CommandDataOption, CommandOptionValue,
};
use twilight_model::application::interaction::{Interaction, InteractionData, InteractionType};
use twilight_model::channel::message::{AllowedMentions, MessageFlags};
use twilight_model::http::interaction::{
    InteractionResponse, InteractionResponseData, InteractionResponseType,
};

use super::config::Permission;
use super::{Bot, command, follow};
use crate::event::State;
use crate::service::ServiceHandle;

/// Discord shows at most this many autocomplete choices.
const MAX_CHOICES: usize = 25;

pub(super) async fn answer(bot: &Bot, interaction: Interaction) -> InteractionResponse {
    let autocomplete = match interaction.kind {
        InteractionType::Ping => {
            return InteractionResponse {
                kind: InteractionResponseType::Pong,
                data: None,
            };
        }
        InteractionType::ApplicationCommand => false,
        InteractionType::ApplicationCommandAutocomplete => true,
        _ => return private("wakegate answers only its `/wakegate` command."),
    };
    let config = &bot.inner.config;
    let configured = interaction
        .guild_id
        .is_some_and(|g| config.guilds.contains(&g.get()));
    if !configured {
        return if autocomplete {
            choices(Vec::new())
        } else {
            private(
                "wakegate is not set up for this Discord server: an admin of wakegate can add its id to `guilds` in [discord].",
            )
        };
    }
    let roles: Vec<u64> = interaction
        .member
        .as_ref()
        .map(|m| m.roles.iter().map(|r| r.get()).collect())
        .unwrap_or_default();
    let who = interaction
        .member
        .as_ref()
        .and_then(|m| m.user.as_ref())
        .or(interaction.user.as_ref())
        .map_or_else(
            || "a Discord member".to_string(),
            |u| format!("Discord user {} ({})", u.name, u.id),
        );
    let Some(InteractionData::ApplicationCommand(data)) = &interaction.data else {
        return private("This interaction carries no command.");
    };
    if data.name != command::NAME {
        return private(
            "wakegate does not know this command: an admin can run `wakegate discord register` to bring the commands up to date.",
        );
    }
    let Some((sub, options)) = data.options.first().and_then(|o| match &o.value {
        CommandOptionValue::SubCommand(options) => Some((o.name.as_str(), options)),
        _ => None,
    }) else {
        return private("Use `/wakegate status`, `/wakegate start` or `/wakegate stop`.");
    };
    let permission = match sub {
        "status" => Permission::View,
        "start" => Permission::Start,
        "stop" => Permission::Stop,
        _ => {
            return private(
                "wakegate does not know this subcommand: an admin can run `wakegate discord register` to bring the commands up to date.",
            );
        }
    };
    let server = server_option(options);
    if autocomplete {
        let typed = server.unwrap_or_default().to_lowercase();
        let names = bot
            .inner
            .services
            .iter()
            .map(ServiceHandle::name)
            .filter(|name| config.allows(&roles, name, permission) && name.contains(&typed))
            .take(MAX_CHOICES)
            .map(|name| CommandOptionChoice {
                name: name.to_string(),
                name_localizations: None,
                value: CommandOptionChoiceValue::String(name.to_string()),
            })
            .collect();
        return choices(names);
    }

    let Some(name) = server else {
        // Only `status` may leave the server out: all the member may see.
        let lines: Vec<String> = bot
            .inner
            .services
            .iter()
            .filter(|s| config.allows(&roles, s.name(), Permission::View))
            .map(status_line)
            .collect();
        if lines.is_empty() {
            return private(&format!(
                "Your roles may see no server. {}",
                needed(&config.roles_allowing("*", Permission::View))
            ));
        }
        return private(&lines.join("\n"));
    };
    let Some(service) = bot.inner.services.iter().find(|s| s.name() == name) else {
        return private(&format!(
            "No server is named `{name}`; `/wakegate status` lists the ones you may see."
        ));
    };
    if !config.allows(&roles, name, permission) {
        return private(&format!(
            "You may not {} `{name}`. {}",
            match permission {
                Permission::View => "see",
                other => other.as_str(),
            },
            needed(&config.roles_allowing(name, permission))
        ));
    }
    match permission {
        Permission::View => private(&status_line(service)),
        action => {
            #[allow(deprecated)]
            let channel = interaction
                .channel
                .as_ref()
                .map(|c| c.id)
                .or(interaction.channel_id)
                .map(|c| c.get());
            follow::spawn(
                bot,
                service.clone(),
                action,
                interaction.token.clone(),
                channel,
                who,
            );
            InteractionResponse {
                kind: InteractionResponseType::DeferredChannelMessageWithSource,
                data: None,
            }
        }
    }
}

fn server_option(options: &[CommandDataOption]) -> Option<&str> {
    options
        .iter()
        .find(|o| o.name == "server")
        .and_then(|o| match &o.value {
            CommandOptionValue::String(s) | CommandOptionValue::Focused(s, _) => Some(s.as_str()),
            _ => None,
        })
}

/// "That needs the role @A or @B.", with role mentions (shown as names, never pinging).
fn needed(roles: &[u64]) -> String {
    let mentions: Vec<String> = roles.iter().map(|r| format!("<@&{r}>")).collect();
    format!(
        "That needs the role {}; ask an admin of this server for it.",
        mentions.join(" or ")
    )
}

/// One line about a service: state, address, players, idle time.
pub(super) fn status_line(service: &ServiceHandle) -> String {
    let status = service.status();
    let mut line = format!("**{}** is {}", service.name(), status.state);
    if let Some(address) = status.address {
        line.push_str(&format!(" at `{address}`"));
    }
    if let Some(players) = status.players {
        line.push_str(&format!(
            " · {players} player{}",
            if players == 1 { "" } else { "s" }
        ));
    }
    let connections = service.connections();
    if status.state == State::Awake && connections > 0 {
        line.push_str(&format!(
            " · {connections} connection{}",
            if connections == 1 { "" } else { "s" }
        ));
    }
    if let Some(idle) = status.idle_since {
        line.push_str(&format!(" · idle since {}", when(idle)));
    }
    if let Some(deadline) = status.idle_deadline {
        line.push_str(&format!(" · stops {} if nobody comes", when(deadline)));
    }
    if status.state == State::Waking
        && let Some(eta) = status.eta()
    {
        line.push_str(&format!(" · up in about {}s", eta.as_secs().max(1)));
    }
    if status.state == State::Failed
        && let Some(error) = &status.last_error
    {
        line.push_str(&format!(" · {error}"));
    }
    line
}

/// A time as Discord shows it to each reader in their own zone ("in 5 minutes").
fn when(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("<t:{seconds}:R>")
}

/// An answer only the member sees, that mentions nobody.
fn private(content: &str) -> InteractionResponse {
    InteractionResponse {
        kind: InteractionResponseType::ChannelMessageWithSource,
        data: Some(InteractionResponseData {
            content: Some(content.to_string()),
            flags: Some(MessageFlags::EPHEMERAL),
            allowed_mentions: Some(AllowedMentions::default()),
            ..Default::default()
        }),
    }
}

fn choices(choices: Vec<CommandOptionChoice>) -> InteractionResponse {
    InteractionResponse {
        kind: InteractionResponseType::ApplicationCommandAutocompleteResult,
        data: Some(InteractionResponseData {
            choices: Some(choices),
            ..Default::default()
        }),
    }
}
