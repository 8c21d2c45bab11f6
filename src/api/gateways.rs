//! `GET /api/v1/gateways`: the gateways sharing this gateway's PostgreSQL store and who owns
//! each service, with the time left on their leases (by the database's clock). With SQLite,
//! this gateway alone, owning everything.

use axum::Json;
use axum::extract::State;
use serde::Serialize;

use super::{Api, ApiError};
use crate::store::{Member, Ownership};

#[derive(Debug, Serialize)]
pub(super) struct Gateways {
    /// This gateway's id, when the store is shared.
    this: Option<String>,
    /// The lease time, when the store is shared.
    lease_ms: Option<u64>,
    gateways: Vec<Member>,
    /// Who drives each service (and each notification target, `notify:NAME`).
    owners: Vec<Ownership>,
}

pub(super) async fn list(State(api): State<Api>) -> Result<Json<Gateways>, ApiError> {
    let Some(cluster) = api.store.cluster() else {
        return Ok(Json(Gateways {
            this: None,
            lease_ms: None,
            gateways: Vec::new(),
            owners: Vec::new(),
        }));
    };
    let gateways = cluster.members().await.map_err(ApiError::internal)?;
    let owners = cluster.owners().await.map_err(ApiError::internal)?;
    Ok(Json(Gateways {
        this: Some(cluster.id().to_string()),
        lease_ms: Some(cluster.lease().as_millis() as u64),
        gateways,
        owners,
    }))
}
