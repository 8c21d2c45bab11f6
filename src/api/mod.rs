//! The HTTP API on `gateway.api`: health, and the state of every service as JSON.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::event::{self, State as ServiceState};
use crate::service::ServiceHandle;

/// One service as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub state: ServiceState,
    #[serde(serialize_with = "event::rfc3339")]
    pub since: SystemTime,
    pub backend: &'static str,
    /// Where the backend was found on its last wake, while awake.
    pub address: Option<String>,
    pub connections: usize,
    pub held: usize,
    pub refused: u64,
    #[serde(serialize_with = "event::rfc3339_opt")]
    pub idle_since: Option<SystemTime>,
    pub last_error: Option<String>,
}

impl ServiceView {
    pub fn of(handle: &ServiceHandle) -> ServiceView {
        let status = handle.status();
        ServiceView {
            name: handle.name().to_string(),
            state: status.state,
            since: status.since,
            backend: handle.backend_kind(),
            address: status.address.map(|a| a.to_string()),
            connections: handle.connections(),
            held: status.held,
            refused: handle.refused(),
            idle_since: status.idle_since,
            last_error: status.last_error,
        }
    }
}

/// Errors as JSON, with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no service is named `{0}`; GET /api/v1/services lists them")]
    NoSuchService(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::NoSuchService(_) => StatusCode::NOT_FOUND,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

type Services = Arc<[ServiceHandle]>;

/// The API's routes over the given services.
pub fn router(services: Services) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/services", get(list))
        .route("/api/v1/services/{name}", get(one))
        .with_state(services)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn list(State(services): State<Services>) -> Json<Vec<ServiceView>> {
    Json(services.iter().map(ServiceView::of).collect())
}

async fn one(
    State(services): State<Services>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    services
        .iter()
        .find(|s| s.name() == name)
        .map(|s| Json(ServiceView::of(s)))
        .ok_or(ApiError::NoSuchService(name))
}
