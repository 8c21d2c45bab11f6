//! `POST /api/v1/reload`: reads the gateway's config file again and applies what changed
//! (admin role). A refused file answers 422 with every problem and its line.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::config::Role;
use super::{Api, ApiError, Caller};
use crate::reload::{Refusal, problem_json};

/// The request's body (optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReloadRequest {
    /// Leave the backends of the services the file no longer has running.
    #[serde(default)]
    keep_running: bool,
}

pub(super) async fn reload(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    if caller.role < Role::Admin {
        return Err(ApiError::Forbidden {
            name: caller.name,
            role: caller.role,
            needed: Role::Admin,
        });
    }
    let Some(reloader) = &api.reloader else {
        return Err(ApiError::Conflict(
            "this gateway cannot reload: it was not started from a config file".into(),
        ));
    };
    // The body is optional: an empty one asks for the defaults.
    let request: ReloadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "the body must be JSON like {{\"keep_running\": true}}: {e}"
            ))
        })?
    };
    match reloader.reload(request.keep_running, &caller.by()).await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(Refusal::ShuttingDown) => Err(ApiError::ShuttingDown),
        Err(refusal) => {
            let problems = match &refusal {
                Refusal::Invalid { problems, .. } => problems.iter().map(problem_json).collect(),
                _ => Vec::new(),
            };
            let body = serde_json::json!({
                "error": refusal.to_string(),
                "problems": problems,
            });
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response())
        }
    }
}
