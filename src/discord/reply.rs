//! The texts the bot answers with, shared by the commands and the channels: a service's status
//! line, private answers, refusals that name the roles needed, autocomplete choices.

use std::time::{SystemTime, UNIX_EPOCH};

use twilight_model::application::command::{CommandOptionChoice, CommandOptionChoiceValue};
use twilight_model::application::interaction::application_command::{
    CommandDataOption, CommandOptionValue,
};
use twilight_model::channel::message::{AllowedMentions, MessageFlags};
use twilight_model::http::interaction::{
    InteractionResponse, InteractionResponseData, InteractionResponseType,
};

use crate::event::State;
use crate::service::ServiceHandle;

/// Discord shows at most this many autocomplete choices.
pub(super) const MAX_CHOICES: usize = 25;

/// An autocomplete choice whose name and value are `name`.
pub(super) fn choice(name: &str) -> CommandOptionChoice {
    CommandOptionChoice {
        name: name.to_string(),
        name_localizations: None,
        value: CommandOptionChoiceValue::String(name.to_string()),
    }
}

/// "That needs the role @A or @B.", with role mentions (shown as names, never pinging).
pub(super) fn needed(roles: &[u64]) -> String {
    let mentions: Vec<String> = roles.iter().map(|r| format!("<@&{r}>")).collect();
    format!(
        "That needs the role {}; ask an admin of this server for it.",
        mentions.join(" or ")
    )
}

/// One line about a service: state, address, players, idle time.
pub(super) fn status_line(service: &ServiceHandle) -> String {
    let status = service.status();
    let mut line = format!("**{}** {}", service.name(), status.state.phrase());
    // Paused or frozen: it keeps its memory, and a wake resumes it in moments.
    if status.state == State::Asleep && status.sleep_mode.in_memory() {
        line.push_str(&format!(" ({})", status.sleep_mode));
    }
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
pub(super) fn private(content: &str) -> InteractionResponse {
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

/// A string option's value, typed in full or being typed (autocomplete).
pub(super) fn string_option<'a>(options: &'a [CommandDataOption], name: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|o| o.name == name)
        .and_then(|o| match &o.value {
            CommandOptionValue::String(s) | CommandOptionValue::Focused(s, _) => Some(s.as_str()),
            _ => None,
        })
}
