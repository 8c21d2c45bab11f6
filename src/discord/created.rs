//! `/wakegate create|destroy|extend`: servers created from a `[[template]]` by Discord members.
//! The member who creates one owns it (`discord:<user id>`), so the template's `max_per_owner`
//! is a per-member limit. A role's `templates` allow `create` (and `destroy`/`extend` of any
//! server from those templates); the owner may always destroy or extend their own; the admin
//! role may do all. A create is answered deferred, then edited as the new server wakes.

use std::time::Duration;

use hyper::Method;
use tracing::{info, warn};
use twilight_model::application::command::CommandOptionChoice;
use twilight_model::application::interaction::application_command::CommandDataOption;
use twilight_model::channel::message::AllowedMentions;
use twilight_model::http::interaction::{
    InteractionResponse, InteractionResponseData, InteractionResponseType,
};

use super::config::Permission;
use super::reply::{MAX_CHOICES, choice, needed, private, string_option};
use super::rest::Call;
use super::{Bot, channel, follow};

/// What a member asked: the subcommand, its options, and who asks from where.
pub(super) struct Asked<'a> {
    pub sub: &'a str,
    pub options: &'a [CommandDataOption],
    pub roles: &'a [u64],
    pub user: Option<u64>,
    /// How the member is named in events and logs.
    pub who: String,
    pub token: &'a str,
    pub channel: Option<u64>,
    pub guild: Option<u64>,
}

impl Asked<'_> {
    fn permission(&self) -> Permission {
        match self.sub {
            "create" => Permission::Create,
            "destroy" => Permission::Destroy,
            _ => Permission::Extend,
        }
    }

    fn owner(&self) -> Option<String> {
        self.user.map(channel::owner)
    }

    /// Whether the member may destroy or extend created server `name` (of `template`).
    fn may_change(&self, bot: &Bot, template: &str, owner: &str) -> bool {
        self.owner().as_deref() == Some(owner)
            || bot
                .inner
                .config
                .allows_template(self.roles, template, self.permission())
    }
}

/// Autocomplete: the templates the member may create from, or the servers they may change.
pub(super) fn choices(bot: &Bot, asked: &Asked<'_>) -> Vec<CommandOptionChoice> {
    let Some(templates) = &bot.inner.templates else {
        return Vec::new();
    };
    let config = &bot.inner.config;
    let names: Vec<String> = if asked.sub == "create" {
        let typed = string_option(asked.options, "template")
            .unwrap_or_default()
            .to_lowercase();
        templates
            .names()
            .into_iter()
            .filter(|t| config.allows_template(asked.roles, t, Permission::Create))
            .filter(|t| t.contains(&typed))
            .collect()
    } else {
        let typed = string_option(asked.options, "server")
            .unwrap_or_default()
            .to_lowercase();
        templates
            .live_names()
            .into_iter()
            .filter(|n| n.contains(&typed))
            .filter(|n| {
                templates
                    .view(n)
                    .is_some_and(|v| asked.may_change(bot, &v.template, &v.owner))
            })
            .collect()
    };
    names.iter().take(MAX_CHOICES).map(|n| choice(n)).collect()
}

/// Answers a create (deferred), a destroy (deferred) or an extend (at once).
pub(super) fn answer(bot: &Bot, asked: Asked<'_>) -> InteractionResponse {
    let Some(templates) = bot.inner.templates.clone() else {
        return private("wakegate has no [[template]]: there is nothing to create servers from.");
    };
    let Some(owner) = asked.owner() else {
        return private("This interaction names no member to own the server.");
    };
    let config = &bot.inner.config;
    if asked.sub == "create" {
        let Some(template) = string_option(asked.options, "template") else {
            return private("Name a template: `/wakegate create template:NAME`.");
        };
        let Some(view) = templates.list().into_iter().find(|t| t.name == template) else {
            return private(&format!(
                "No template is named `{template}`; the autocomplete lists the ones you may use."
            ));
        };
        if !config.allows_template(asked.roles, template, Permission::Create) {
            return private(&format!(
                "You may not create servers from `{template}`. {}",
                needed(&config.roles_allowing_template(template, Permission::Create))
            ));
        }
        // Checked here too, so that the refusal is an answer only the member sees.
        if let Some(max) = view.max_per_owner {
            let yours = view
                .live
                .iter()
                .filter(|n| templates.view(n).is_some_and(|v| v.owner == owner))
                .count();
            if yours >= max {
                return private(&format!(
                    "You have {yours} server{} from `{template}` already, the most one member may have; `/wakegate destroy` one first.",
                    if yours == 1 { "" } else { "s" }
                ));
            }
        }
        let (template, name) = (
            template.to_string(),
            string_option(asked.options, "name").map(str::to_lowercase),
        );
        let (bot, token, channel, guild, who) = (
            bot.clone(),
            asked.token.to_string(),
            asked.channel,
            asked.guild,
            asked.who,
        );
        let tasks = bot.inner.tasks.clone();
        tasks.spawn(async move {
            match templates.create(&template, name, &owner, &who).await {
                Ok(service) => {
                    channel::spawn(&bot, service.name(), guild);
                    follow::spawn(&bot, service, Permission::Start, token, channel, who);
                }
                Err(e) => {
                    info!(template = %template, by = %who, error = %e, "Discord asked for a server that could not be created.");
                    edit_answer(&bot, &token, &format!("Cannot create a server from `{template}`: {e}")).await;
                }
            }
        });
        return deferred();
    }

    let Some(name) = string_option(asked.options, "server") else {
        return private("Name the server.");
    };
    let Some(view) = templates.view(name) else {
        return private(&format!(
            "No created server is named `{name}`; the autocomplete lists the ones you may {}.",
            asked.sub
        ));
    };
    if !asked.may_change(bot, &view.template, &view.owner) {
        return private(&format!(
            "You may not {} `{name}`: it is not yours. {}",
            asked.sub,
            needed(&config.roles_allowing_template(&view.template, asked.permission()))
        ));
    }
    let name = name.to_string();
    if asked.sub == "extend" {
        let Some(duration) = string_option(asked.options, "duration") else {
            return private("Say how long, for example `duration:1h`.");
        };
        let Ok(duration) = crate::config::de::parse_duration(duration) else {
            return private(&format!(
                "`{duration}` is not a duration: write it like `30m`, `1h` or `2h30m`."
            ));
        };
        // Extending only writes a record: it is answered once done.
        let (bot, token, who) = (bot.clone(), asked.token.to_string(), asked.who);
        let tasks = bot.inner.tasks.clone();
        tasks.spawn(async move {
            let text = match templates.extend(&name, duration, &who).await {
                Ok(record) => format!(
                    "**{name}** now ends at <t:{}:f> (extended by {}).",
                    record
                        .deadline
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                    humantime::format_duration(Duration::from_secs(duration.as_secs()))
                ),
                Err(e) => format!("Cannot extend **{name}**: {e}"),
            };
            edit_answer(&bot, &token, &text).await;
        });
        return deferred();
    }
    let (bot, token, who) = (bot.clone(), asked.token.to_string(), asked.who);
    let tasks = bot.inner.tasks.clone();
    tasks.spawn(async move {
        let text = match templates
            .end(&name, &format!("destroyed by {who}"), &who)
            .await
        {
            Ok(_) => format!("**{name}** is destroyed."),
            Err(e) => format!("Cannot destroy **{name}**: {e}"),
        };
        edit_answer(&bot, &token, &text).await;
    });
    deferred()
}

fn deferred() -> InteractionResponse {
    InteractionResponse {
        kind: InteractionResponseType::DeferredChannelMessageWithSource,
        data: None,
    }
}

/// Edits the deferred answer once.
async fn edit_answer(bot: &Bot, token: &str, text: &str) {
    let call = Call::interaction(
        Method::PATCH,
        bot.inner.config.application_id,
        token,
        "/messages/@original",
    );
    let body = InteractionResponseData {
        content: Some(text.to_string()),
        allowed_mentions: Some(AllowedMentions::default()),
        ..Default::default()
    };
    if let Err(e) = bot.inner.rest.call(&call, Some(&body)).await {
        warn!(error = %e, "Could not edit the answer on Discord.");
    }
}
