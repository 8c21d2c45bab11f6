//! Answers one verified interaction: PING, the `/wakegate` subcommands and their autocomplete.
//! Refusals and `status` are ephemeral (only the member sees them); a start or a stop is public,
//! so the channel sees who woke what and when it is up.

use twilight_model::application::command::CommandOptionChoice;
use twilight_model::application::interaction::application_command::{
    CommandDataOption, CommandOptionValue,
};
use twilight_model::application::interaction::{Interaction, InteractionData, InteractionType};
use twilight_model::http::interaction::{
    InteractionResponse, InteractionResponseData, InteractionResponseType,
};

use super::config::Permission;
use super::reply::{MAX_CHOICES, choice, needed, private, status_line, string_option};
use super::{Bot, command, created, follow};
use crate::service::ServiceHandle;

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
    if matches!(sub, "create" | "destroy" | "extend") {
        let user = interaction
            .member
            .as_ref()
            .and_then(|m| m.user.as_ref())
            .or(interaction.user.as_ref())
            .map(|u| u.id.get());
        let channel = channel_of(&interaction);
        let asked = created::Asked {
            sub,
            options,
            roles: &roles,
            user,
            who,
            token: &interaction.token,
            channel,
            guild: interaction.guild_id.map(|g| g.get()),
        };
        return if autocomplete {
            choices(created::choices(bot, &asked))
        } else {
            created::answer(bot, asked)
        };
    }
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
            .all()
            .iter()
            .map(ServiceHandle::name)
            .filter(|name| config.allows(&roles, name, permission) && name.contains(&typed))
            .take(MAX_CHOICES)
            .map(choice)
            .collect();
        return choices(names);
    }

    let Some(name) = server else {
        // Only `status` may leave the server out: all the member may see.
        let lines: Vec<String> = bot
            .inner
            .services
            .all()
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
    let Some(service) = bot.inner.services.get(name) else {
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
        Permission::View => private(&status_line(&service)),
        action => {
            let channel = channel_of(&interaction);
            follow::spawn(
                bot,
                service,
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
    string_option(options, "server")
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

/// The channel an interaction came from (the newer `channel` object, else the older id).
fn channel_of(interaction: &Interaction) -> Option<u64> {
    #[allow(deprecated)]
    let id = interaction
        .channel
        .as_ref()
        .map(|c| c.id)
        .or(interaction.channel_id);
    id.map(|c| c.get())
}
