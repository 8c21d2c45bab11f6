//! The HTTP API on `gateway.api`: services and what they cost, actions (wake, sleep, leases),
//! events (history, SSE, WebSocket), Prometheus metrics and the dashboard. Bearer tokens with
//! roles guard everything but `/healthz` and the dashboard page itself. (`app` merges the
//! Discord interactions route beside these, outside the token check: it is signed instead.)

mod agent;
pub mod config;
pub mod events;
mod gateways;
mod reload;
pub mod serve;
mod templates;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::error;

use self::config::{Role, Token};
use crate::event::{self, Published, SleepMode, State as ServiceState};
use crate::metrics;
use crate::service::{Denied, Gone, Registry, ServiceHandle};
use crate::store::{Lease, Store};
use crate::template::{CreatedView, Templates};

/// The dashboard: one self-contained page, embedded in the binary.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The longest a lease may be taken for.
const MAX_LEASE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What every handler shares.
#[derive(Clone)]
pub struct Api {
    services: Registry,
    /// The templates and their created services (none in tests that build the API alone).
    templates: Option<Templates>,
    store: Arc<Store>,
    events: broadcast::Sender<Published>,
    tokens: Arc<[Token]>,
    cors_origins: Arc<[String]>,
    /// The listeners' refusals and open connections, for `/metrics`.
    listener_metrics: metrics::ListenerMetrics,
    /// Reloads the gateway's config (none in tests that build the API alone).
    reloader: Option<crate::reload::Reloader>,
}

impl Api {
    pub fn new(
        services: Registry,
        store: Arc<Store>,
        events: broadcast::Sender<Published>,
        tokens: Vec<Token>,
        cors_origins: Vec<String>,
    ) -> Api {
        Api {
            services,
            templates: None,
            store,
            events,
            tokens: tokens.into(),
            cors_origins: cors_origins.into(),
            listener_metrics: metrics::ListenerMetrics::default(),
            reloader: None,
        }
    }

    /// Serves `POST /api/v1/reload` with this.
    pub fn with_reloader(mut self, reloader: crate::reload::Reloader) -> Api {
        self.reloader = Some(reloader);
        self
    }

    /// Shows these listeners' metrics in `/metrics` too.
    pub fn with_listener_metrics(mut self, listeners: metrics::ListenerMetrics) -> Api {
        self.listener_metrics = listeners;
        self
    }

    /// Serves the templates' routes with these.
    pub fn with_templates(mut self, templates: Templates) -> Api {
        self.templates = Some(templates);
        self
    }

    fn service(&self, name: &str) -> Result<ServiceHandle, ApiError> {
        self.services
            .get(name)
            .ok_or_else(|| ApiError::NoSuchService(name.to_string()))
    }

    /// A service as the API shows it.
    async fn view(&self, service: &ServiceHandle) -> Result<ServiceView, ApiError> {
        let mut view = ServiceView::read(service, &self.store).await?;
        view.created = self.created(service.name());
        Ok(view)
    }

    /// What a created service adds to its view.
    fn created(&self, name: &str) -> Option<CreatedView> {
        self.templates.as_ref().and_then(|t| t.view(name))
    }
}

/// Who is calling, as found by the token check.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The templates it may use, if only some (see [`Token::templates`]).
    pub templates: Option<Vec<String>>,
    /// No token was asked for: the API has none (it is then bound to loopback).
    pub anonymous: bool,
}

impl Caller {
    /// Who asked, for the reasons of events: "API token ops", or "an API client on this host"
    /// when the API has no tokens.
    pub fn by(&self) -> String {
        if self.anonymous {
            "an API client on this host".to_string()
        } else {
            format!("API token {}", self.name)
        }
    }
}

/// Errors as JSON, with a message that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no service is named `{0}`; GET /api/v1/services lists them")]
    NoSuchService(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error(
        "token `{name}` has the {role:?} role; this needs {needed:?} (ask an admin for a token with that role)"
    )]
    Forbidden {
        name: String,
        role: Role,
        needed: Role,
    },
    #[error("{0}")]
    BadRequest(String),
    /// A template, or a created service, that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The token may not use this template.
    #[error("{0}")]
    NotAllowed(String),
    /// A template's limit (per owner, in total, its ports) is reached.
    #[error("{0}")]
    Limit(String),
    #[error(
        "service `{service}` has no lease #{id} in force; GET /api/v1/services/{service}/leases lists them"
    )]
    NoSuchLease { service: String, id: i64 },
    #[error("{0}")]
    Conflict(String),
    #[error("wakegate is shutting down; try again once it is back")]
    ShuttingDown,
    #[error("internal error: {0}; the log of wakegate has the details")]
    Internal(String),
    /// The store cannot write right now (`/healthz` says why).
    #[error("{0}; GET /healthz says why, try again once the store can write")]
    StoreUnavailable(String),
}

impl ApiError {
    fn internal(e: anyhow::Error) -> ApiError {
        error!(error = %format!("{e:#}"), "API request failed.");
        ApiError::Internal(e.to_string())
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> ApiError {
        match denied {
            Denied::Schedule(why) | Denied::Rule(why) => ApiError::Conflict(why),
            Denied::Store(e) => ApiError::StoreUnavailable(format!("cannot record the lease: {e}")),
        }
    }
}

impl From<Gone> for ApiError {
    fn from(_: Gone) -> ApiError {
        ApiError::ShuttingDown
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::NoSuchService(_) | ApiError::NoSuchLease { .. } | ApiError::NotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } | ApiError::NotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::ShuttingDown | ApiError::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The API's routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/api/v1/me", get(me))
        .route("/metrics", get(metrics))
        .route("/api/v1/services", get(list))
        .route("/api/v1/gateways", get(gateways::list))
        .route(
            "/api/v1/services/{name}",
            get(one).delete(templates::destroy),
        )
        .route("/api/v1/services/{name}/extend", post(templates::extend))
        .route("/api/v1/templates", get(templates::list))
        .route(
            "/api/v1/templates/{template}/create",
            post(templates::create),
        )
        .route("/api/v1/services/{name}/wake", post(wake))
        .route("/api/v1/services/{name}/sleep", post(sleep))
        .route(
            "/api/v1/services/{name}/leases",
            get(leases).post(add_lease),
        )
        .route("/api/v1/services/{name}/leases/{id}", delete(end_lease))
        .route("/api/v1/reload", post(reload::reload))
        .merge(agent_routes())
        .route("/api/v1/events", get(events::history))
        .route("/api/v1/events/stream", get(events::sse))
        .route("/api/v1/ws", get(events::ws))
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .layer(middleware::from_fn_with_state(api.clone(), cors))
        .with_state(api)
}

/// The agents' routes alone, with the same token check, for `[gateway.agents]`.
pub fn agent_router(api: Api) -> Router {
    agent_routes()
        .layer(middleware::from_fn_with_state(api.clone(), authenticate))
        .with_state(api)
}

fn agent_routes() -> Router<Api> {
    Router::new()
        .route("/api/v1/services/{name}/report", post(agent::report))
        .route("/api/v1/services/{name}/agent/wait", post(agent::wait))
        .route(
            "/api/v1/services/{name}/agent/pre-stop/{id}",
            post(agent::pre_stop_done),
        )
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// The token a request presents: `Authorization: Bearer T`, or `?access_token=T` for the
/// streams, which browsers open without custom headers.
fn presented_token(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_string());
    }
    #[derive(Deserialize)]
    struct TokenQuery {
        access_token: Option<String>,
    }
    Query::<TokenQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|q| q.0.access_token)
}

/// Checks the token and its role: reading needs `read`, anything else `operate`; an `agent`
/// token may only use the agent routes of its own services.
async fn authenticate(State(api): State<Api>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path == "/" || path == "/healthz" {
        return next.run(request).await;
    }
    let agent_route = agent::route_service(path).map(str::to_string);
    let needed = if matches!(*request.method(), Method::GET | Method::HEAD) {
        Role::Read
    } else {
        Role::Operate
    };
    let mut reports_for: &[String] = &[];
    let caller = if api.tokens.is_empty() {
        // Allowed only on loopback (checked with the config): whoever can reach it is local.
        Caller {
            name: "local".into(),
            role: Role::Admin,
            templates: None,
            anonymous: true,
        }
    } else {
        let Some(presented) = presented_token(&request) else {
            return ApiError::Unauthorized(
                "this API needs a token: send `Authorization: Bearer TOKEN` (the CLI reads WAKEGATE_TOKEN)".into(),
            )
            .into_response();
        };
        // Every token is compared, so the time taken does not tell which one nearly matched.
        let mut found = None;
        for token in api.tokens.iter() {
            if same_secret(token.secret.expose().as_bytes(), presented.as_bytes()) {
                found = Some(token);
            }
        }
        let Some(token) = found else {
            return ApiError::Unauthorized(
                "this token is not known to wakegate; check WAKEGATE_TOKEN or the [[gateway.token]] entries".into(),
            )
            .into_response();
        };
        reports_for = &token.services;
        Caller {
            name: token.name.clone(),
            role: token.role,
            templates: token.templates.clone(),
            anonymous: false,
        }
    };
    if caller.role == Role::Agent {
        let services = reports_for
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let refusal = match agent_route.as_deref() {
            Some(service)
                if request.method() == Method::POST && reports_for.iter().any(|s| s == service) =>
            {
                None
            }
            Some(service) => Some(format!(
                "token `{}` may report only for {services}, not for service `{service}`; give the agent on that host a token of its own (role = \"agent\", services = [\"{service}\"])",
                caller.name
            )),
            None => Some(format!(
                "token `{}` has the agent role: it may only report activity for {services} (POST /api/v1/services/NAME/report); use a read or operate token for anything else",
                caller.name
            )),
        };
        if let Some(refusal) = refusal {
            return ApiError::NotAllowed(refusal).into_response();
        }
    } else if caller.role < needed {
        return ApiError::Forbidden {
            name: caller.name,
            role: caller.role,
            needed,
        }
        .into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// Allows the configured origins to call the API from their pages; no CORS otherwise.
async fn cors(State(api): State<Api>, request: Request, next: Next) -> Response {
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .filter(|o| {
            api.cors_origins
                .iter()
                .any(|a| a.as_bytes() == o.as_bytes())
        })
        .cloned();
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let headers = preflight.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        preflight
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

/// Who the token belongs to and what it may do (the dashboard greys out what it may not).
async fn me(Extension(caller): Extension<Caller>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "name": caller.name, "role": caller.role }))
}

/// `{"status": "ok"}`, or `"degraded"` with why while the store cannot write (still 200:
/// clients are served meanwhile). Answered from memory, never from the store.
async fn healthz(State(api): State<Api>) -> Json<serde_json::Value> {
    let health = api.store.health();
    Json(match health.failing {
        None => serde_json::json!({ "status": "ok" }),
        Some(failing) => serde_json::json!({
            "status": "degraded",
            "store": {
                "error": failing.error,
                "failing_since": event::format_time(failing.failing_since),
                "pending_events": health.pending_events,
                "dropped_events": health.dropped_events,
            },
        }),
    })
}

async fn metrics(State(api): State<Api>) -> impl IntoResponse {
    let mut text = metrics::render(&api.services.all());
    let health = api.store.health();
    metrics::render_store(
        &mut text,
        &metrics::StoreMetrics {
            pending_events: health.pending_events,
            write_failures: health.write_failures,
            dropped_events: health.dropped_events,
            degraded: health.failing.is_some(),
        },
    );
    api.listener_metrics.render(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// One service as the API shows it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub state: ServiceState,
    /// Asleep: how it sleeps (`stopped`, `paused` or `frozen`); waking: what the wake undoes;
    /// otherwise: how it will sleep once stopped.
    pub sleep_mode: SleepMode,
    #[serde(serialize_with = "event::rfc3339")]
    pub since: SystemTime,
    pub backend: &'static str,
    /// Where the backend was found on its last wake, while awake.
    pub address: Option<String>,
    /// Open connections through this gateway.
    pub connections: usize,
    /// The gateway that drives it, when several share a PostgreSQL store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Players online, as the backend of a Minecraft service last said, while awake.
    pub players: Option<u32>,
    pub held: usize,
    pub refused: u64,
    #[serde(serialize_with = "event::rfc3339_opt")]
    pub idle_since: Option<SystemTime>,
    /// When it will be stopped if nothing changes.
    #[serde(serialize_with = "event::rfc3339_opt")]
    pub idle_deadline: Option<SystemTime>,
    pub last_error: Option<String>,
    /// How long its recent wakes from `sleep_mode` took, oldest first: cold starts apart from
    /// resumes.
    pub boot_durations_ms: Vec<u64>,
    /// The expected duration of the next wake (the median of the recent ones from
    /// `sleep_mode`, as the service publishes it).
    pub eta_ms: Option<u64>,
    pub awake_seconds_day: f64,
    pub awake_seconds_30d: f64,
    pub hourly_cost: Option<f64>,
    /// What sleeping saved over the last 30 days (or since wakegate first ran it), against
    /// running it all the time.
    pub cost_saved_30d: Option<f64>,
    pub leases: Vec<Lease>,
    /// The last report of the service's agent, if one reported since wakegate started.
    pub agent: Option<AgentView>,
    /// For a service created from a template: its template, owner, creation and deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<CreatedView>,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// The last report of a service's agent, as the API shows it.
#[derive(Debug, Serialize)]
pub struct AgentView {
    pub host: String,
    #[serde(serialize_with = "event::rfc3339")]
    pub last_report: SystemTime,
    pub connections: Option<u32>,
    pub players: Option<u32>,
    pub count: Option<u64>,
    /// Until when its figures count without a new report.
    #[serde(serialize_with = "event::rfc3339")]
    pub valid_until: SystemTime,
    /// Its figures keep the service awake now.
    pub active: bool,
    /// `reporting`, `silent` (no report before `valid_until`) or `left` (it signed off).
    pub state: &'static str,
    /// It has a pre-stop command.
    pub pre_stop: bool,
    /// The id of the pre-stop a stop under way waits for.
    pub pre_stop_pending: Option<u64>,
}

impl AgentView {
    fn of(agent: &crate::service::AgentStatus, status: &crate::service::Status) -> AgentView {
        let now = SystemTime::now();
        AgentView {
            host: agent.host.clone(),
            last_report: agent.at,
            connections: agent.connections,
            players: agent.players,
            count: agent.count,
            valid_until: agent.valid_until,
            active: agent.active(now),
            state: if agent.leaving {
                "left"
            } else if agent.reporting(now) {
                "reporting"
            } else {
                "silent"
            },
            pre_stop: agent.pre_stop,
            pre_stop_pending: status.pre_stop.as_ref().map(|p| p.id),
        }
    }
}

impl ServiceView {
    pub fn of(handle: &ServiceHandle, store: &Store) -> Result<ServiceView, ApiError> {
        let status = handle.status();
        let agent = status.agent.as_ref().map(|a| AgentView::of(a, &status));
        let now = SystemTime::now();
        let month_ago = now - 30 * DAY;
        let (transitions, first) = store
            .transitions_since(handle.name(), month_ago)
            .map_err(ApiError::internal)?;
        let boot_durations_ms = store
            .boot_durations(handle.name(), status.sleep_mode, 10)
            .map_err(ApiError::internal)?;
        let awake_seconds_30d = running_seconds(&transitions, month_ago, now);
        let window_start = first.map_or(now, |f| f.max(month_ago));
        let window_hours = now
            .duration_since(window_start)
            .unwrap_or_default()
            .as_secs_f64()
            / 3600.0;
        Ok(ServiceView {
            name: handle.name().to_string(),
            state: status.state,
            sleep_mode: status.sleep_mode,
            since: status.since,
            backend: handle.backend_kind(),
            address: status.address.map(|a| a.to_string()),
            connections: handle.connections(),
            owner: status.owner.clone(),
            players: status.players,
            held: status.held,
            refused: handle.refused(),
            idle_since: status.idle_since,
            // A lease just taken may not be in the actor's deadline yet; it always counts.
            idle_deadline: status.idle_deadline.map(|d| {
                status
                    .leases
                    .iter()
                    .map(|l| l.expires)
                    .fold(d, SystemTime::max)
            }),
            last_error: status.last_error,
            eta_ms: status.expected_boot.map(|b| b.as_millis() as u64),
            boot_durations_ms,
            awake_seconds_day: running_seconds(&transitions, now - DAY, now),
            awake_seconds_30d,
            hourly_cost: handle.hourly_cost(),
            cost_saved_30d: handle
                .hourly_cost()
                .map(|cost| cost * (window_hours - awake_seconds_30d / 3600.0).max(0.0)),
            agent,
            leases: status.leases,
            created: None,
        })
    }

    /// [`of`](Self::of), reading the store on a blocking thread.
    pub async fn read(handle: &ServiceHandle, store: &Arc<Store>) -> Result<ServiceView, ApiError> {
        let handle = handle.clone();
        store
            .read(move |store| Ok(ServiceView::of(&handle, store)))
            .await
            .map_err(ApiError::internal)?
    }
}

/// Seconds between `from` and `now` that the backend ran (waking, awake or stopping), from
/// the transitions in time order (the first may be before `from`).
fn running_seconds(
    transitions: &[(SystemTime, ServiceState)],
    from: SystemTime,
    now: SystemTime,
) -> f64 {
    let mut total = Duration::ZERO;
    for (i, (start, state)) in transitions.iter().enumerate() {
        if !matches!(
            state,
            ServiceState::Waking | ServiceState::Awake | ServiceState::Stopping
        ) {
            continue;
        }
        let end = transitions.get(i + 1).map_or(now, |(t, _)| *t);
        let start = (*start).max(from);
        total += end.duration_since(start).unwrap_or_default();
    }
    total.as_secs_f64()
}

async fn list(State(api): State<Api>) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let services = api.services.all();
    let mut views = api
        .store
        .read(move |store| {
            Ok(services
                .iter()
                .map(|s| ServiceView::of(s, store))
                .collect::<Result<Vec<_>, _>>())
        })
        .await
        .map_err(ApiError::internal)??;
    for view in &mut views {
        view.created = api.created(&view.name);
    }
    Ok(Json(views))
}

async fn one(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    api.view(&api.service(&name)?).await.map(Json)
}

async fn wake(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let service = api.service(&name)?;
    service.wake(&caller.by()).await??;
    Ok((StatusCode::ACCEPTED, Json(api.view(&service).await?)))
}

async fn sleep(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let service = api.service(&name)?;
    service.sleep(&caller.by()).await??;
    Ok((StatusCode::ACCEPTED, Json(api.view(&service).await?)))
}

async fn leases(
    State(api): State<Api>,
    Path(name): Path<String>,
) -> Result<Json<Vec<Lease>>, ApiError> {
    Ok(Json(api.service(&name)?.status().leases))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaseRequest {
    /// A humantime duration: "2h", "90m".
    duration: String,
    #[serde(default)]
    reason: String,
}

async fn add_lease(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: Result<Json<LeaseRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Lease>), ApiError> {
    let service = api.service(&name)?;
    let Json(request) = body.map_err(|e| {
        ApiError::BadRequest(format!(
            "{}; send JSON like {{\"duration\": \"2h\", \"reason\": \"raid night\"}}",
            e.body_text()
        ))
    })?;
    let duration = crate::config::de::parse_duration(&request.duration)
        .ok()
        .filter(|d| !d.is_zero() && *d <= MAX_LEASE)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`{}` is not a lease duration; write one between 1s and 30 days, like \"2h\" or \"90m\"",
                request.duration
            ))
        })?;
    let lease = service
        .add_lease(duration, &request.reason, &caller.name)
        .await??;
    Ok((StatusCode::CREATED, Json(lease)))
}

async fn end_lease(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path((name, id)): Path<(String, i64)>,
) -> Result<StatusCode, ApiError> {
    let service = api.service(&name)?;
    if service.end_lease(id, &caller.name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NoSuchLease { service: name, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
        assert!(!same_secret(b"", b"x"));
    }

    #[test]
    fn running_time_is_clipped_to_the_window() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let at = |s| t0 + Duration::from_secs(s);
        let transitions = [
            (at(0), ServiceState::Waking),
            (at(10), ServiceState::Awake),
            (at(100), ServiceState::Stopping),
            (at(110), ServiceState::Asleep),
            (at(200), ServiceState::Waking),
        ];
        assert_eq!(running_seconds(&transitions, at(0), at(250)), 160.0);
        assert_eq!(running_seconds(&transitions, at(50), at(250)), 110.0);
    }
}
