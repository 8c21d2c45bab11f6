//! The Discord bot, with no gateway socket: Discord POSTs each interaction to
//! `/discord/interactions` on the API listener, or on a socket of its own with wakegate's TLS
//! (`listen`), signed with the application's key (the signature is the authentication there,
//! not an API token). `/wakegate status|start|stop` act on the
//! configured services as the member's roles allow; a start or stop is answered at once and its
//! answer edited as the service moves (`follow`), through Discord's REST API (`rest`).
//! `/wakegate create|destroy|extend` act on templates (`created`), and each server a member
//! creates gets a private channel with a status message kept up to date (`channel`).
//!
//! `config` reads `[discord]`, `verify` checks signatures, `command` holds the command set and
//! `wakegate discord register`, `interaction` answers, `reply` holds the texts.

mod channel;
pub mod command;
pub mod config;
mod created;
mod follow;
mod interaction;
mod reply;
pub mod rest;
pub mod verify;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use config::{Discord, Permission};

use crate::service::Registry;
use crate::template::Templates;

/// Where Discord sends interactions, on the API listener or `[discord.listen]`.
pub const PATH: &str = "/discord/interactions";

/// What the interactions endpoint shares.
#[derive(Clone)]
pub struct Bot {
    inner: Arc<Inner>,
}

struct Inner {
    config: Discord,
    /// Read at each interaction: created services join and leave it at run time.
    services: Registry,
    /// Where `create`, `destroy` and `extend` go; none when wakegate runs without templates.
    templates: Option<Templates>,
    rest: rest::Rest,
    /// Follow-ups of starts and stops run here, and end with wakegate.
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Bot {
    pub fn new(
        config: Discord,
        services: Registry,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Bot {
        let rest = rest::Rest::new(&config.api_url, config.token.clone());
        Bot {
            inner: Arc::new(Inner {
                config,
                services,
                templates: None,
                rest,
                tasks,
                cancel,
            }),
        }
    }

    /// The bot with `create`, `destroy` and `extend`; the private channels of the created
    /// servers a member owns (those restored at start-up included) are kept from here on.
    pub fn with_templates(self, templates: Templates) -> Bot {
        let inner = Arc::into_inner(self.inner).expect("with_templates is called before use");
        let bot = Bot {
            inner: Arc::new(Inner {
                templates: Some(templates.clone()),
                ..inner
            }),
        };
        for name in templates.live_names() {
            channel::spawn(&bot, &name, None);
        }
        bot
    }

    /// The interactions route, to merge beside the API's routes (outside their token check).
    pub fn router(self) -> Router {
        Router::new()
            .route(PATH, post(interactions))
            .with_state(self)
    }
}

async fn interactions(State(bot): State<Bot>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(refused) = verify::verify(
        &bot.inner.config.public_key.0,
        &headers,
        &body,
        SystemTime::now(),
    ) {
        debug!(why = %refused, "Refused an interaction.");
        return (StatusCode::UNAUTHORIZED, refused.to_string()).into_response();
    }
    // A PING is answered from its type alone: the endpoint check in the developer portal must
    // pass even if Discord adds a field the interaction type does not know.
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: u8,
    }
    if serde_json::from_slice::<Kind>(&body).is_ok_and(|k| k.kind == 1) {
        return axum::Json(serde_json::json!({ "type": 1 })).into_response();
    }
    let interaction = match serde_json::from_slice(&body) {
        Ok(interaction) => interaction,
        Err(e) => {
            warn!(error = %e, "A signed interaction could not be read.");
            return (
                StatusCode::BAD_REQUEST,
                format!("not an interaction wakegate can read: {e}"),
            )
                .into_response();
        }
    };
    axum::Json(interaction::answer(&bot, interaction).await).into_response()
}
