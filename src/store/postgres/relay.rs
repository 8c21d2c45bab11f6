//! What a gateway that does not own a service passes on to its owner through the database
//! (keep-awake leases taken or ended there, the agent's reports and pre-stop results that
//! reached it), and the row lock that keeps an owner from stopping a service for idleness in
//! the moment another gateway lets a first client through: the owner decides the stop, and the
//! other counts its first client, each under a lock on the service's row of `service_owners`,
//! so one of them always sees the other's write.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::cluster::{CHANNEL, Cluster, Signal, millis, notify};
use crate::agent::wire::{PreStopResult, Report};
use crate::event::{State, to_millis};
use crate::store::Lease;

/// The most of a pre-stop's output passed on (a notification holds under 8,000 bytes).
const MAX_OUTPUT: usize = 2_000;
/// The longest host name passed on with a report (the owner keeps 64 characters).
const MAX_HOST: usize = 256;

impl Cluster {
    /// Tells the owner that this gateway took or ended a lease on `service` for `by`.
    pub async fn leases_changed(&self, service: &str, by: &str) -> anyhow::Result<()> {
        self.tell(Signal::Leases {
            s: service.into(),
            g: self.id.clone(),
            by: by.into(),
        })
        .await
    }

    /// Ends lease `id` on `service` if it is in force, and tells the owner, in one
    /// transaction; false when there is no such lease.
    pub async fn end_lease(&self, service: &str, id: i64, by: &str) -> anyhow::Result<bool> {
        let (pool, service) = (self.pool.clone(), service.to_string());
        let payload = serde_json::to_string(&Signal::Leases {
            s: service.clone(),
            g: self.id.clone(),
            by: by.into(),
        })?;
        let now = to_millis(SystemTime::now());
        self.run(async move {
            let mut tx = pool.begin().await?;
            let ended = sqlx::query(
                "UPDATE leases SET ended_ms = $3
                 WHERE service = $1 AND id = $2 AND ended_ms IS NULL AND expires_ms > $3",
            )
            .bind(&service)
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if ended {
                notify(&mut *tx, &payload).await?;
            }
            tx.commit().await?;
            Ok(ended)
        })
        .await
    }

    /// The keep-awake leases on `service` in force now, whichever gateway took them.
    pub async fn active_leases(&self, service: &str) -> anyhow::Result<Vec<Lease>> {
        let (pool, service) = (self.pool.clone(), service.to_string());
        self.run(async move { super::queries::active_leases(&pool, &service).await })
            .await
    }

    /// Passes a report of the service's agent on to its owner.
    pub async fn forward_report(
        &self,
        service: &str,
        mut report: Report,
        valid_for: Duration,
    ) -> anyhow::Result<()> {
        report
            .host
            .truncate(report.host.floor_char_boundary(MAX_HOST));
        self.tell(Signal::Report {
            s: service.into(),
            g: self.id.clone(),
            report,
            valid_for_ms: millis(valid_for) as u64,
        })
        .await
    }

    /// Passes how the pre-stop `id` ended on to the service's owner (the output's last
    /// 2,000 bytes).
    pub async fn forward_pre_stop(
        &self,
        service: &str,
        id: u64,
        mut result: PreStopResult,
    ) -> anyhow::Result<()> {
        let cut = result
            .output
            .ceil_char_boundary(result.output.len().saturating_sub(MAX_OUTPUT));
        result.output.drain(..cut);
        self.tell(Signal::PreStopDone {
            s: service.into(),
            g: self.id.clone(),
            id,
            result,
        })
        .await
    }

    /// The owner, before stopping `service` for idleness: true, with its published state
    /// `stopping` already, when no other gateway counts a client of it; false when one does or
    /// this gateway no longer holds it. Decided under the lock on its row, so a gateway
    /// letting a first client through ([`Cluster::admit`]) either came first and is counted,
    /// or comes after and finds it stopping.
    pub async fn stop_if_unused(&self, service: &str) -> anyhow::Result<bool> {
        let (pool, me, service) = (self.pool.clone(), self.id.clone(), service.to_string());
        let payload = serde_json::to_string(&Signal::Status { s: service.clone() })?;
        let since = to_millis(SystemTime::now());
        self.run(async move {
            let mut tx = pool.begin().await?;
            let mine = sqlx::query(
                "SELECT 1 FROM service_owners WHERE service = $1 AND owner = $2 FOR UPDATE",
            )
            .bind(&service)
            .bind(&me)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
            if !mine {
                return Ok(false);
            }
            let others: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(connections), 0)::BIGINT FROM service_counts
                 WHERE service = $1 AND gateway <> $2 AND expires > clock_timestamp()",
            )
            .bind(&service)
            .bind(&me)
            .fetch_one(&mut *tx)
            .await?;
            if others > 0 {
                return Ok(false);
            }
            sqlx::query(
                "UPDATE service_owners SET state = $2, since_ms = $3, address = NULL
                 WHERE service = $1",
            )
            .bind(&service)
            .bind(State::Stopping.as_str())
            .bind(since)
            .execute(&mut *tx)
            .await?;
            notify(&mut *tx, &payload).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// A gateway that does not own `service`, before it lets a first client through: counts
    /// that client in the database, under the lock on the service's row, if the owner still
    /// has it awake; the backend's address then, `None` when it is not awake (the client waits
    /// for the next wake). See [`Cluster::stop_if_unused`].
    pub async fn admit(&self, service: &str) -> anyhow::Result<Option<SocketAddr>> {
        let (pool, me, service) = (self.pool.clone(), self.id.clone(), service.to_string());
        let lease = millis(self.lease());
        let payload = serde_json::to_string(&Signal::Counts {
            s: service.clone(),
            g: me.clone(),
        })?;
        // One statement, so one round trip: the row lock, the count and the notification
        // (sent at its commit) in its one transaction. A data-modifying `WITH` runs whether
        // or not the outer query reads it; it counts only when the row is there, awake.
        self.run(async move {
            let address: Option<Option<String>> = sqlx::query_scalar(
                "WITH owner AS (
                     SELECT address FROM service_owners
                     WHERE service = $1 AND state = $4 FOR SHARE
                 ), counted AS (
                     INSERT INTO service_counts (service, gateway, connections, expires)
                     SELECT $1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond'
                     FROM owner
                     ON CONFLICT (service, gateway) DO UPDATE SET
                         connections = GREATEST(service_counts.connections, 1),
                         expires = EXCLUDED.expires
                     RETURNING pg_notify($5, $6)
                 )
                 SELECT address FROM owner",
            )
            .bind(&service)
            .bind(&me)
            .bind(lease)
            .bind(State::Awake.as_str())
            .bind(CHANNEL)
            .bind(&payload)
            .fetch_optional(&pool)
            .await?;
            Ok(address.flatten().and_then(|a| a.parse::<SocketAddr>().ok()))
        })
        .await
    }
}
