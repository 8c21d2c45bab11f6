//! The routes of templates and created services: list the templates, create a service from
//! one, destroy a created service, extend its deadline. Each needs the `operate` role, and a
//! token limited to some templates (`templates = [...]`) may use only those.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::config::Role;
use super::{Api, ApiError, Caller, ServiceView};
use crate::template::{TemplateError, TemplateView, Templates};

/// The longest an extension may be asked for at once.
const MAX_EXTEND: Duration = Duration::from_secs(365 * 24 * 3600);

impl From<TemplateError> for ApiError {
    fn from(e: TemplateError) -> ApiError {
        let text = e.to_string();
        match e {
            TemplateError::NoSuchTemplate(_) | TemplateError::NoSuchService(_) => {
                ApiError::NotFound(text)
            }
            TemplateError::BadRequest(_) => ApiError::BadRequest(text),
            TemplateError::Conflict(_) => ApiError::Conflict(text),
            TemplateError::Limit(_) => ApiError::Limit(text),
            TemplateError::Store(_) => ApiError::StoreUnavailable(text),
            TemplateError::Start(_) => ApiError::Conflict(text),
        }
    }
}

impl Api {
    fn templates(&self) -> Result<&Templates, ApiError> {
        self.templates
            .as_ref()
            .ok_or_else(|| ApiError::NotFound("this gateway has no [[template]]".into()))
    }
}

/// Refuses a caller whose token is limited to other templates.
fn may_use(caller: &Caller, template: &str) -> Result<(), ApiError> {
    match &caller.templates {
        Some(allowed) if caller.role < Role::Admin && !allowed.iter().any(|t| t == template) => {
            Err(ApiError::NotAllowed(format!(
                "token `{}` may not use template `{template}` (it may use: {}); ask an admin to add it to the token's `templates`",
                caller.name,
                allowed.join(", ")
            )))
        }
        _ => Ok(()),
    }
}

pub(super) async fn list(State(api): State<Api>) -> Json<Vec<TemplateView>> {
    Json(
        api.templates
            .as_ref()
            .map(Templates::list)
            .unwrap_or_default(),
    )
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: Option<String>,
    /// Who the service is for (default: the token's name); `max_per_owner` counts by it.
    owner: Option<String>,
}

pub(super) async fn create(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(template): Path<String>,
    body: Option<Json<CreateBody>>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let body = body.map(|b| b.0).unwrap_or_default();
    let templates = api.templates()?;
    may_use(&caller, &template)?;
    let owner = body.owner.unwrap_or_else(|| caller.name.clone());
    if owner.is_empty() || owner.len() > 200 {
        return Err(ApiError::BadRequest(
            "owner must be 1 to 200 characters".into(),
        ));
    }
    let by = caller.by();
    let handle = templates.create(&template, body.name, &owner, &by).await?;
    Ok((StatusCode::CREATED, Json(api.view(&handle).await?)))
}

pub(super) async fn destroy(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let templates = api.templates()?;
    if let Some(template) = templates.template_of(&name) {
        may_use(&caller, &template)?;
    } else if api.services.get(&name).is_some() {
        return Err(ApiError::Conflict(format!(
            "service `{name}` is configured, not created from a template; only created services can be destroyed (remove it from the config instead)"
        )));
    }
    let by = caller.by();
    let ended = templates
        .end(&name, &format!("destroyed by {by}"), &by)
        .await?;
    Ok(Json(serde_json::json!({
        "name": ended.name,
        "template": ended.template,
        "owner": ended.owner,
        "ended": ended.ended.map(crate::event::format_time),
        "reason": ended.end_reason,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExtendBody {
    /// How much later the deadline moves, e.g. "1h".
    duration: String,
}

pub(super) async fn extend(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<ExtendBody>,
) -> Result<Json<ServiceView>, ApiError> {
    let templates = api.templates()?;
    if let Some(template) = templates.template_of(&name) {
        may_use(&caller, &template)?;
    }
    let duration = crate::config::de::parse_duration(&body.duration)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_EXTEND)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`{}` is not a duration from 1s to 365d; write e.g. \"1h\" or \"30m\"",
                body.duration
            ))
        })?;
    let by = caller.by();
    templates.extend(&name, duration, &by).await?;
    let handle = api.service(&name)?;
    Ok(Json(api.view(&handle).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, templates: Option<&[&str]>) -> Caller {
        Caller {
            name: "bot".into(),
            role,
            templates: templates.map(|t| t.iter().map(|s| s.to_string()).collect()),
            anonymous: false,
        }
    }

    #[test]
    fn a_token_limited_to_some_templates_may_use_only_those() {
        assert!(may_use(&caller(Role::Operate, None), "mc").is_ok());
        assert!(may_use(&caller(Role::Operate, Some(&["mc"])), "mc").is_ok());
        let refused = may_use(&caller(Role::Operate, Some(&["mc"])), "web").unwrap_err();
        assert!(matches!(refused, ApiError::NotAllowed(_)));
        assert!(refused.to_string().contains("template `web`"), "{refused}");
        // An admin token may use them all.
        assert!(may_use(&caller(Role::Admin, Some(&["mc"])), "web").is_ok());
    }
}
