//! The slash command set (`/wakegate status|start|stop|create|destroy|extend`) as twilight-model
//! types, and `wakegate discord register`, which writes it to each configured guild with a bulk
//! overwrite.

use hyper::Method;
use twilight_model::application::command::{
    Command, CommandOption, CommandOptionType, CommandType,
};
use twilight_model::application::interaction::InteractionContextType;
use twilight_model::id::Id;

use super::config::Discord;
use super::rest::{Call, Rest};

/// The one command; its subcommands are the actions.
pub const NAME: &str = "wakegate";

/// The command set written to every guild.
pub fn commands(application_id: u64) -> Vec<Command> {
    let text = |name: &str, autocomplete: bool, required: bool, description: &str| CommandOption {
        autocomplete: Some(autocomplete),
        channel_types: None,
        choices: None,
        description: description.to_string(),
        description_localizations: None,
        kind: CommandOptionType::String,
        max_length: Some(100),
        max_value: None,
        min_length: Some(1),
        min_value: None,
        name: name.to_string(),
        name_localizations: None,
        options: None,
        file_types: None,
        required: Some(required),
    };
    let server = |required: bool, description: &str| text("server", true, required, description);
    let subcommand = |name: &str, description: &str, options: Vec<CommandOption>| CommandOption {
        autocomplete: None,
        channel_types: None,
        choices: None,
        description: description.to_string(),
        description_localizations: None,
        kind: CommandOptionType::SubCommand,
        max_length: None,
        max_value: None,
        min_length: None,
        min_value: None,
        name: name.to_string(),
        name_localizations: None,
        options: Some(options),
        file_types: None,
        required: None,
    };
    #[allow(deprecated)]
    let command = Command {
        application_id: Some(Id::new(application_id)),
        contexts: Some(vec![InteractionContextType::Guild]),
        default_member_permissions: None,
        description: "Start, stop, create and look at the servers wakegate runs".to_string(),
        description_localizations: None,
        dm_permission: None,
        guild_id: None,
        id: None,
        integration_types: None,
        kind: CommandType::ChatInput,
        name: NAME.to_string(),
        name_localizations: None,
        nsfw: None,
        options: vec![
            subcommand(
                "status",
                "Show a server's state, address and players (all you may see without a name)",
                vec![server(false, "The server (all you may see when left out)")],
            ),
            subcommand(
                "start",
                "Start a server and follow it until it is up",
                vec![server(true, "The server to start")],
            ),
            subcommand(
                "stop",
                "Stop a server and follow it until it is asleep",
                vec![server(true, "The server to stop")],
            ),
            subcommand(
                "create",
                "Create a server of your own from a template, with a private channel",
                vec![
                    text("template", true, true, "The template to create it from"),
                    text(
                        "name",
                        false,
                        false,
                        "Its name (a-z, 0-9, -); made from the template's when left out",
                    ),
                ],
            ),
            subcommand(
                "destroy",
                "Stop and remove a server created from a template",
                vec![server(true, "The created server to destroy")],
            ),
            subcommand(
                "extend",
                "Keep a created server longer before its deadline ends it",
                vec![
                    server(true, "The created server to extend"),
                    text("duration", false, true, "How much longer, e.g. 30m or 2h"),
                ],
            ),
        ],
        // Discord sets the real version; a new command is sent with any.
        version: Id::new(1),
    };
    vec![command]
}

/// Writes the command set to every configured guild; returns a line per guild saying what it
/// did.
pub async fn register(discord: &Discord) -> anyhow::Result<Vec<String>> {
    let rest = Rest::new(&discord.api_url, discord.token.clone());
    let commands = commands(discord.application_id);
    let mut done = Vec::new();
    for guild in &discord.guilds {
        let call = Call::bot(
            Method::PUT,
            format!(
                "/applications/{}/guilds/{guild}/commands",
                discord.application_id
            ),
        );
        let answer = rest
            .call(&call, Some(&commands))
            .await
            .map_err(|e| anyhow::anyhow!("cannot register the commands in guild {guild}: {e}; check `application_id`, the bot token and that the bot was invited to that guild with the applications.commands scope"))?;
        let written: Vec<Command> = serde_json::from_value(answer).map_err(|e| {
            anyhow::anyhow!("Discord's answer for guild {guild} is not a command list: {e}")
        })?;
        let names: Vec<String> = written
            .iter()
            .map(|c| {
                let subs: Vec<&str> = c.options.iter().map(|o| o.name.as_str()).collect();
                format!("/{} {}", c.name, subs.join("|"))
            })
            .collect();
        done.push(format!(
            "guild {guild}: {} command{} set ({})",
            written.len(),
            if written.len() == 1 { "" } else { "s" },
            names.join(", ")
        ));
    }
    Ok(done)
}
