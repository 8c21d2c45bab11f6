//! The routes of `wakegate agent`: its reports, the wait through which a stop asks it for its
//! pre-stop command, and the result of that command. An `agent` token reaches only these, and
//! only for its own services (checked with the token in `authenticate`); other tokens need
//! `operate`.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{Api, ApiError};
use crate::agent::wire::{PreStopResult, Report, ReportAnswer, WaitAnswer, WaitRequest};
use crate::event::format_time;

/// How long a wait is held before it is answered with nothing (below the usual idle timeout
/// of a reverse proxy in front of the API, 60 s).
const WAIT_HOLD: Duration = Duration::from_secs(25);

/// The service of an agent route (`/api/v1/services/{name}/report`, `…/agent/wait`,
/// `…/agent/pre-stop/{id}`), to check an agent token against.
pub(super) fn route_service(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/services/")?;
    let (name, action) = rest.split_once('/')?;
    let agent_route = action == "report"
        || action == "agent/wait"
        || action
            .strip_prefix("agent/pre-stop/")
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    agent_route.then_some(name)
}

fn bad_json(e: JsonRejection, example: &str) -> ApiError {
    ApiError::BadRequest(format!("{}; send JSON like {example}", e.body_text()))
}

/// `POST /api/v1/services/{name}/report`.
pub(super) async fn report(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<Report>, JsonRejection>,
) -> Result<Json<ReportAnswer>, ApiError> {
    let service = api.service(&name)?;
    let Json(report) = body.map_err(|e| {
        bad_json(
            e,
            r#"{"host": "mc-1", "connections": 2, "valid_for": "1m 30s"}"#,
        )
    })?;
    let valid_for = humantime::parse_duration(&report.valid_for)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`{}` is not a duration for valid_for; write one like \"90s\" (3 × the agent's report_interval)",
                report.valid_for
            ))
        })?;
    let ack = service.agent_report(report, valid_for).await?;
    Ok(Json(ReportAnswer {
        valid_until: format_time(ack.valid_until),
        pre_stop: ack.pre_stop,
    }))
}

/// `POST /api/v1/services/{name}/agent/wait`: answered as soon as a stop waits for the
/// agent's pre-stop command (one it has not `seen`), or with none after [`WAIT_HOLD`].
pub(super) async fn wait(
    State(api): State<Api>,
    Path(name): Path<String>,
    body: Result<Json<WaitRequest>, JsonRejection>,
) -> Result<Json<WaitAnswer>, ApiError> {
    let mut status = api.service(&name)?.watch();
    let Json(WaitRequest { seen }) = body.map_err(|e| bad_json(e, r#"{"seen": null}"#))?;
    let asked = tokio::time::timeout(WAIT_HOLD, async {
        status
            .wait_for(|s| s.pre_stop.as_ref().is_some_and(|p| Some(p.id) != seen))
            .await
            .map(|s| s.pre_stop.clone())
    })
    .await;
    match asked {
        Ok(Ok(pre_stop)) => Ok(Json(WaitAnswer { pre_stop })),
        // The service's actor has ended: wakegate is shutting down.
        Ok(Err(_)) => Err(ApiError::ShuttingDown),
        Err(_) => Ok(Json(WaitAnswer { pre_stop: None })),
    }
}

/// `POST /api/v1/services/{name}/agent/pre-stop/{id}`: how the pre-stop command ended.
pub(super) async fn pre_stop_done(
    State(api): State<Api>,
    Path((name, id)): Path<(String, u64)>,
    body: Result<Json<PreStopResult>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let service = api.service(&name)?;
    let Json(result) = body.map_err(|e| {
        bad_json(
            e,
            r#"{"ok": true, "exit": "exit code 0", "duration_ms": 1200}"#,
        )
    })?;
    if service.pre_stop_done(id, result).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::Conflict(format!(
            "service `{name}` waits for no pre-stop #{id}: it stopped without it after pre_stop_timeout, or the id is wrong"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_routes_name_their_service() {
        assert_eq!(route_service("/api/v1/services/mc/report"), Some("mc"));
        assert_eq!(route_service("/api/v1/services/mc/agent/wait"), Some("mc"));
        assert_eq!(
            route_service("/api/v1/services/mc/agent/pre-stop/17"),
            Some("mc")
        );
        for other in [
            "/api/v1/services/mc",
            "/api/v1/services/mc/wake",
            "/api/v1/services/mc/leases",
            "/api/v1/services/mc/agent/pre-stop/",
            "/api/v1/services/mc/agent/pre-stop/1/x",
            "/api/v1/services/mc/report/x",
            "/api/v1/events",
            "/metrics",
        ] {
            assert_eq!(route_service(other), None, "{other}");
        }
    }
}
