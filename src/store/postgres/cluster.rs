//! Several gateways on one PostgreSQL database: each service's owner holds a lease on it
//! (`service_owners`, expiries on the database's clock), publishes the service's status there
//! for the others to mirror, and hears what they ask of it (a wake, a sleep) through
//! `LISTEN/NOTIFY` on one channel, `wakegate`; every gateway writes its open connections per
//! service (`service_counts`), which the owner's idle rule adds up. No port of its own: all of
//! it goes through the database.
//!
//! The calls run on the store's runtime (where the pool lives) and are awaited from anywhere.
//! Notifications are a hint, never the only way: whoever follows also reads again on a timer
//! (a third of the lease), so a notification lost while a connection was down costs time,
//! never correctness.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Error, Row};
use tokio::sync::broadcast;

use crate::agent::wire::{PreStopRequest, PreStopResult, Report};
use crate::event::{State, from_millis, to_millis};

/// The one channel every gateway listens on.
pub(super) const CHANNEL: &str = "wakegate";

/// What a notification on [`CHANNEL`] tells the gateways (its JSON payload).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Signal {
    /// The owner published a new status of `s`.
    Status { s: String },
    /// Gateway `g` asks the owner of `s` to wake it, for `by` (`api`: through the API, else
    /// for a client).
    Wake {
        s: String,
        g: String,
        by: String,
        api: bool,
    },
    /// Gateway `g` asks the owner of `s` to put it to sleep, for `by`.
    Sleep { s: String, g: String, by: String },
    /// Gateway `g` changed its count of open connections to `s`.
    Counts { s: String, g: String },
    /// The owner of `s` let go of it (a clean shutdown): another may take it at once.
    Released { s: String },
    /// Gateway `g` took or ended a keep-awake lease on `s` for `by`: the owner reads the
    /// leases in force again.
    Leases { s: String, g: String, by: String },
    /// A report of the agent of `s` that reached gateway `g`, for the owner to count.
    Report {
        s: String,
        g: String,
        report: Report,
        valid_for_ms: u64,
    },
    /// How the pre-stop `id` of `s` ended, as the agent told gateway `g`.
    PreStopDone {
        s: String,
        g: String,
        id: u64,
        result: PreStopResult,
    },
    /// A gateway committed events (sent by the writing transaction, so heard after its commit).
    Events,
    /// Not a notification: the listening connection was lost (and is being opened again), so
    /// some may have been missed; read everything again.
    #[serde(skip)]
    Resync,
}

impl Signal {
    /// The service it is about (none for [`Signal::Resync`]).
    pub fn service(&self) -> Option<&str> {
        match self {
            Signal::Status { s }
            | Signal::Wake { s, .. }
            | Signal::Sleep { s, .. }
            | Signal::Counts { s, .. }
            | Signal::Released { s }
            | Signal::Leases { s, .. }
            | Signal::Report { s, .. }
            | Signal::PreStopDone { s, .. } => Some(s),
            Signal::Events | Signal::Resync => None,
        }
    }
}

/// Who holds a service after a claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub owner: String,
    /// This gateway holds it (now, or still).
    pub mine: bool,
}

/// A service's status as its owner last published it.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub owner: String,
    pub state: Option<State>,
    pub since: Option<SystemTime>,
    pub address: Option<SocketAddr>,
    pub last_error: Option<String>,
    /// A pre-stop the owner waits for the agent to run.
    pub pre_stop: Option<PreStopRequest>,
}

/// A service's owner, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ownership {
    pub service: String,
    pub owner: String,
    /// Milliseconds until the lease expires (negative: expired, waiting for a taker).
    pub expires_in_ms: i64,
}

/// A gateway sharing the database, for `status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    pub id: String,
    #[serde(serialize_with = "crate::event::rfc3339")]
    pub started: SystemTime,
    /// Milliseconds until its presence expires (negative: gone).
    pub expires_in_ms: i64,
}

/// This gateway's part in a database it shares with others.
pub struct Cluster {
    pub(super) id: String,
    lease: Duration,
    pub(super) pool: PgPool,
    runtime: tokio::runtime::Handle,
    signals: broadcast::Sender<Signal>,
}

impl Cluster {
    /// Joins: starts listening for the others' notifications, and keeps this gateway's
    /// presence (and its connection counts) alive, on the store's runtime.
    pub(super) fn join(
        id: String,
        lease: Duration,
        pool: PgPool,
        runtime: tokio::runtime::Handle,
    ) -> Cluster {
        let (signals, _) = broadcast::channel(256);
        runtime.spawn(listen(pool.clone(), signals.clone()));
        runtime.spawn(presence(pool.clone(), id.clone(), lease));
        Cluster {
            id,
            lease,
            pool,
            runtime,
            signals,
        }
    }

    /// Publishes on `events` what the other gateways write to the log, tailing it (`id >` the
    /// last one seen) after each of their commits is heard, and at least every third of the
    /// lease; `announced` keeps an event from being published twice (see the writer).
    pub(crate) fn tail(
        &self,
        events: broadcast::Sender<crate::event::Published>,
        announced: std::sync::Arc<crate::store::writer::Announced>,
    ) {
        let (pool, signals, every) = (self.pool.clone(), self.subscribe(), self.lease / 3);
        self.runtime
            .spawn(tail(pool, events, announced, signals, every));
    }

    /// This gateway's id (`[gateway] id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// How long a lease on a service lasts without renewal (`[gateway] lease`).
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Every notification heard, from this gateway too.
    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        query: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> anyhow::Result<T> {
        Ok(self.runtime.spawn(query).await??)
    }

    /// Takes the service, or renews this gateway's lease on it: it succeeds when nobody holds
    /// it, this gateway does, or the holder's lease has expired (by the database's clock).
    pub async fn claim(&self, service: &str) -> anyhow::Result<Claim> {
        let (pool, me, service) = (self.pool.clone(), self.id.clone(), service.to_string());
        let lease = millis(self.lease);
        self.run(async move {
            let taken: Option<String> = sqlx::query_scalar(
                "INSERT INTO service_owners (service, owner, taken, expires)
                 VALUES ($1, $2, clock_timestamp(), clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (service) DO UPDATE SET
                     owner = EXCLUDED.owner,
                     expires = EXCLUDED.expires,
                     taken = CASE WHEN service_owners.owner = EXCLUDED.owner
                                  THEN service_owners.taken ELSE EXCLUDED.taken END
                 WHERE service_owners.owner = EXCLUDED.owner
                    OR service_owners.expires < clock_timestamp()
                 RETURNING owner",
            )
            .bind(&service)
            .bind(&me)
            .bind(lease)
            .fetch_optional(&pool)
            .await?;
            if let Some(owner) = taken {
                return Ok(Claim { owner, mine: true });
            }
            let owner: String =
                sqlx::query_scalar("SELECT owner FROM service_owners WHERE service = $1")
                    .bind(&service)
                    .fetch_one(&pool)
                    .await?;
            let mine = owner == me;
            Ok(Claim { owner, mine })
        })
        .await
    }

    /// Publishes the owner's status of the service for the others (and tells them); false when
    /// this gateway does not hold it any more.
    pub async fn publish(&self, service: &str, status: Mirror) -> anyhow::Result<bool> {
        self.write_status(service, status, false).await
    }

    /// Lets go of the service (a clean shutdown), with its last status: another gateway may
    /// take it at once.
    pub async fn release(&self, service: &str, status: Mirror) -> anyhow::Result<bool> {
        self.write_status(service, status, true).await
    }

    async fn write_status(
        &self,
        service: &str,
        status: Mirror,
        release: bool,
    ) -> anyhow::Result<bool> {
        let (pool, me, service) = (self.pool.clone(), self.id.clone(), service.to_string());
        let signal = match release {
            true => Signal::Released { s: service.clone() },
            false => Signal::Status { s: service.clone() },
        };
        let payload = serde_json::to_string(&signal)?;
        let pre_stop = status
            .pre_stop
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        self.run(async move {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE service_owners SET state = $3, since_ms = $4, address = $5,
                     last_error = $6, pre_stop = $8,
                     expires = CASE WHEN $7 THEN clock_timestamp() - interval '1 millisecond'
                                    ELSE expires END
                 WHERE service = $1 AND owner = $2",
            )
            .bind(&service)
            .bind(&me)
            .bind(status.state.map(State::as_str))
            .bind(status.since.map(to_millis))
            .bind(status.address.map(|a| a.to_string()))
            .bind(status.last_error)
            .bind(release)
            .bind(pre_stop)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                notify(&mut *tx, &payload).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
        .await
    }

    /// The service's owner and the status it last published.
    pub async fn mirror(&self, service: &str) -> anyhow::Result<Option<Mirror>> {
        let (pool, service) = (self.pool.clone(), service.to_string());
        self.run(async move {
            let row = sqlx::query(
                "SELECT owner, state, since_ms, address, last_error, pre_stop FROM service_owners
                 WHERE service = $1",
            )
            .bind(&service)
            .fetch_optional(&pool)
            .await?;
            Ok(row.map(|row| Mirror {
                owner: row.get(0),
                state: row
                    .get::<Option<String>, _>(1)
                    .and_then(|s| State::parse(&s)),
                since: row.get::<Option<i64>, _>(2).map(from_millis),
                address: row.get::<Option<String>, _>(3).and_then(|a| a.parse().ok()),
                last_error: row.get(4),
                pre_stop: row
                    .get::<Option<String>, _>(5)
                    .and_then(|p| serde_json::from_str(&p).ok()),
            }))
        })
        .await
    }

    /// Asks the owner of a service to wake it.
    pub async fn ask_wake(&self, service: &str, by: &str, api: bool) -> anyhow::Result<()> {
        self.tell(Signal::Wake {
            s: service.into(),
            g: self.id.clone(),
            by: by.into(),
            api,
        })
        .await
    }

    /// Asks the owner of a service to put it to sleep.
    pub async fn ask_sleep(&self, service: &str, by: &str) -> anyhow::Result<()> {
        self.tell(Signal::Sleep {
            s: service.into(),
            g: self.id.clone(),
            by: by.into(),
        })
        .await
    }

    pub(super) async fn tell(&self, signal: Signal) -> anyhow::Result<()> {
        let (pool, payload) = (self.pool.clone(), serde_json::to_string(&signal)?);
        self.run(async move { notify(&pool, &payload).await }).await
    }

    /// Writes this gateway's open connections to a service (and tells its owner).
    pub async fn set_connections(&self, service: &str, connections: usize) -> anyhow::Result<()> {
        let (pool, me, service) = (self.pool.clone(), self.id.clone(), service.to_string());
        let lease = millis(self.lease);
        let payload = serde_json::to_string(&Signal::Counts {
            s: service.clone(),
            g: me.clone(),
        })?;
        self.run(async move {
            sqlx::query(
                "INSERT INTO service_counts (service, gateway, connections, expires)
                 VALUES ($1, $2, $3, clock_timestamp() + $4 * interval '1 millisecond')
                 ON CONFLICT (service, gateway) DO UPDATE SET
                     connections = EXCLUDED.connections, expires = EXCLUDED.expires",
            )
            .bind(&service)
            .bind(&me)
            .bind(connections as i64)
            .bind(lease)
            .execute(&pool)
            .await?;
            notify(&pool, &payload).await
        })
        .await
    }

    /// The open connections to a service through the other gateways that are alive.
    pub async fn others_connections(&self, service: &str) -> anyhow::Result<u64> {
        let (pool, me, service) = (self.pool.clone(), self.id.clone(), service.to_string());
        self.run(async move {
            let sum: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(connections), 0)::BIGINT FROM service_counts
                 WHERE service = $1 AND gateway <> $2 AND expires > clock_timestamp()",
            )
            .bind(&service)
            .bind(&me)
            .fetch_one(&pool)
            .await?;
            Ok(sum.max(0) as u64)
        })
        .await
    }

    /// Every service's owner and how long its lease has left.
    pub async fn owners(&self) -> anyhow::Result<Vec<Ownership>> {
        let pool = self.pool.clone();
        self.run(async move {
            let rows = sqlx::query(
                "SELECT service, owner,
                     (EXTRACT(EPOCH FROM expires - clock_timestamp()) * 1000)::BIGINT
                 FROM service_owners ORDER BY service",
            )
            .fetch_all(&pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| Ownership {
                    service: r.get(0),
                    owner: r.get(1),
                    expires_in_ms: r.get(2),
                })
                .collect())
        })
        .await
    }

    /// The gateways seen within the last lease time, and this one.
    pub async fn members(&self) -> anyhow::Result<Vec<Member>> {
        let pool = self.pool.clone();
        self.run(async move {
            let rows = sqlx::query(
                "SELECT id, started_ms,
                     (EXTRACT(EPOCH FROM expires - clock_timestamp()) * 1000)::BIGINT
                 FROM gateways ORDER BY id",
            )
            .fetch_all(&pool)
            .await?;
            Ok(rows
                .iter()
                .map(|r| Member {
                    id: r.get(0),
                    started: from_millis(r.get(1)),
                    expires_in_ms: r.get(2),
                })
                .collect())
        })
        .await
    }
}

pub(super) fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

pub(super) async fn notify<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(payload)
        .execute(executor)
        .await
        .map(|_| ())
}

/// Hears the notifications of every gateway and hands them out; after a lost connection, a
/// [`Signal::Resync`] (what was sent meanwhile is gone).
async fn listen(pool: PgPool, signals: broadcast::Sender<Signal>) {
    const RETRY: Duration = Duration::from_millis(250);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let _ = signals.send(Signal::Resync);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    match serde_json::from_str::<Signal>(notification.payload()) {
                        Ok(signal) => drop(signals.send(signal)),
                        Err(e) => {
                            tracing::warn!(error = %e, "An unreadable notification on the shared store's channel; ignored.")
                        }
                    }
                }
                // The connection was lost; the next call opens it again and listens anew.
                Ok(None) => drop(signals.send(Signal::Resync)),
                Err(_) => {
                    tokio::time::sleep(RETRY).await;
                    break;
                }
            }
        }
    }
}

async fn tail(
    pool: PgPool,
    events: broadcast::Sender<crate::event::Published>,
    announced: std::sync::Arc<crate::store::writer::Announced>,
    mut signals: broadcast::Receiver<Signal>,
    every: Duration,
) {
    const PAGE: usize = 500;
    let mut last = loop {
        match super::queries::last_event_id(&pool).await {
            Ok(id) => break id,
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    announced.passed(last);
    loop {
        // Ids follow the order of commits, so what is above `last` is all that is new.
        while let Ok(page) = super::queries::events(&pool, last, None, PAGE).await {
            let full = page.len() == PAGE;
            for event in page {
                last = event.id;
                if announced.first(event.id) {
                    let _ = events.send(crate::event::Published::new(event));
                }
                announced.passed(last);
            }
            if !full {
                break;
            }
        }
        let new_events = async {
            loop {
                match signals.recv().await {
                    Ok(Signal::Events | Signal::Resync) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(every, new_events).await;
    }
}

/// Keeps this gateway's row alive, and its connection counts with it, every third of the
/// lease.
async fn presence(pool: PgPool, id: String, lease: Duration) {
    let started = to_millis(SystemTime::now());
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let renewed = async {
            sqlx::query(
                "INSERT INTO gateways (id, started_ms, expires)
                 VALUES ($1, $2, clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (id) DO UPDATE SET expires = EXCLUDED.expires",
            )
            .bind(&id)
            .bind(started)
            .bind(millis(lease))
            .execute(&pool)
            .await?;
            sqlx::query(
                "UPDATE service_counts SET expires = clock_timestamp() + $2 * interval '1 millisecond'
                 WHERE gateway = $1",
            )
            .bind(&id)
            .bind(millis(lease))
            .execute(&pool)
            .await
        };
        // A failure shows in the leases and in the store's health; tried again next tick.
        let _ = renewed.await;
    }
}
