//! The PostgreSQL engine of the store, the state on a server of its own: the same tables as
//! SQLite (versioned migrations in `migrations/`, run by sqlx under its advisory lock, so two
//! gateways starting together do not both migrate), through a small sqlx pool; and what lets
//! several gateways share it (`cluster`: leases on services, status and counts, notifications).
//!
//! The store's calls block (see `engine`); sqlx is async. The pool lives on a runtime of its
//! own, one thread, and a call hands its future over and waits for the answer on a channel.
//! That holds from any thread: the writer's blocking thread, a read on `spawn_blocking`, the
//! start-up, a test on a current-thread runtime (whose only thread would otherwise be the one
//! waiting).

pub(super) mod cluster;
mod queries;
mod relay;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Error, SqlSafeStr};

use super::created::{Channel, Created};
use super::engine::{Engine, Op};
use super::{Lease, Location, ServiceRecord, Transition};
use crate::config::de::Secret;
use crate::event::Event;
use queries::Write;

/// Schema changes, in order; never edit one that has shipped (sqlx refuses a changed
/// checksum), add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "the tables of the SQLite store",
        include_str!("migrations/0001_schema.sql"),
    ),
    (
        2,
        "several gateways: service owners, their status, connection counts",
        include_str!("migrations/0002_gateways.sql"),
    ),
    (
        3,
        "several gateways: the owner's pre-stop request, mirrored",
        include_str!("migrations/0003_relay.sql"),
    ),
];

/// How long a call waits for a connection from the pool: past it a write counts as failed (and
/// is retried with backoff) and `/healthz` says so; short, so a stall shows quickly.
const ACQUIRE: Duration = Duration::from_secs(3);
/// How long the start-up waits for the server to answer.
const CONNECT: Duration = Duration::from_secs(10);
/// Connections the pool keeps at most: one writer, a few readers, the listener of
/// notifications and the leases' renewals.
const CONNECTIONS: u32 = 8;

/// A PostgreSQL database, as an [`Engine`].
pub(super) struct Postgres {
    pool: PgPool,
    /// Owns the thread the pool's connections run on; shut down in the background on drop
    /// (dropping a runtime blocks, which a test's async context does not allow).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Postgres {
    /// Connects to the database `url` names and brings its schema up to date. The error says
    /// where (without the password) and what failed.
    pub(super) fn connect(url: &Secret) -> anyhow::Result<Postgres> {
        let location = Location::Postgres(url.clone()).describe();
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|e| anyhow::anyhow!("cannot read the PostgreSQL URL of [gateway] store: {e}"))?
            .application_name("wakegate");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("wakegate-postgres")
            .enable_all()
            .build()
            .context("cannot start the PostgreSQL store's thread")?;
        let connected = block(&runtime, async move {
            // One connection first, for its own reason when it fails (the pool would only say
            // that it timed out), within a bound (a host that drops packets never answers).
            let first = tokio::time::timeout(CONNECT, PgConnection::connect_with(&options))
                .await
                .map_err(|_| ("connect", format!("no answer within {CONNECT:?}")))?
                .map_err(|e| ("connect", e.to_string()))?;
            let _ = first.close().await;
            let pool = PgPoolOptions::new()
                .max_connections(CONNECTIONS)
                .acquire_timeout(ACQUIRE)
                .connect_with(options.clone())
                .await
                .map_err(|e| ("connect", e.to_string()))?;
            migrator()
                .run(&pool)
                .await
                .map_err(|e| ("bring the schema up to date in", e.to_string()))?;
            Ok::<_, (&'static str, String)>(pool)
        });
        let failed = match connected {
            Ok(Ok(pool)) => {
                tracing::info!(store = %location, "The store is in PostgreSQL; its schema is up to date.");
                return Ok(Postgres {
                    pool,
                    runtime: Some(runtime),
                });
            }
            Ok(Err((what, why))) => anyhow::anyhow!(
                "cannot {what} the PostgreSQL store at {location}: {why}; check that the server runs and that [gateway] store names it"
            ),
            Err(e) => e,
        };
        // Not dropped: that blocks, which the caller's async context does not allow.
        runtime.shutdown_background();
        Err(failed)
    }

    /// Runs a query on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        query: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> anyhow::Result<T> {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store");
        Ok(block(runtime, query)??)
    }

    fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Joins the gateways that share this database, as `id` with leases of `lease`.
    pub(super) fn cluster(&self, id: String, lease: Duration) -> cluster::Cluster {
        let runtime = self
            .runtime
            .as_ref()
            .expect("the runtime lives as long as the store");
        cluster::Cluster::join(id, lease, self.pool(), runtime.handle().clone())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` and waits for its output on a channel (never `block_on`, which
/// panics on a thread that is already driving tasks).
fn block<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<T> {
    let (answer, answered) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = answer.send(future.await);
    });
    answered
        .recv()
        .map_err(|_| anyhow::anyhow!("the PostgreSQL store stopped while it was being used"))
}

fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    (*sql).into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl Engine for Postgres {
    fn commit(
        &self,
        batch: &[(u64, Op)],
        cursors: &HashMap<String, i64>,
    ) -> Result<Vec<i64>, String> {
        let writes: Vec<Write> = batch.iter().map(|(_, op)| Write::of(op)).collect();
        let cursors: Vec<(String, i64)> = cursors.iter().map(|(t, id)| (t.clone(), *id)).collect();
        let pool = self.pool();
        self.run(async move { queries::commit(&pool, writes, cursors).await })
            .map_err(|e| format!("{e:#}"))
    }

    fn backend_value(&self, service: &str, key: &str) -> anyhow::Result<Option<String>> {
        let (pool, service, key) = (self.pool(), service.to_string(), key.to_string());
        self.run(async move { queries::backend_value(&pool, &service, &key).await })
    }

    fn service(&self, name: &str) -> anyhow::Result<Option<ServiceRecord>> {
        let (pool, name) = (self.pool(), name.to_string());
        self.run(async move { queries::service(&pool, &name).await })
    }

    fn latest_events(&self, service: Option<&str>, limit: usize) -> anyhow::Result<Vec<Event>> {
        let (pool, service) = (self.pool(), service.map(str::to_string));
        self.run(async move { queries::latest_events(&pool, service.as_deref(), limit).await })
    }

    fn last_event_id(&self) -> anyhow::Result<i64> {
        let pool = self.pool();
        self.run(async move { queries::last_event_id(&pool).await })
    }

    fn transitions_since(
        &self,
        service: &str,
        since: SystemTime,
    ) -> anyhow::Result<(Vec<Transition>, Option<SystemTime>)> {
        let (pool, service) = (self.pool(), service.to_string());
        self.run(async move { queries::transitions_since(&pool, &service, since).await })
    }

    fn boot_durations(
        &self,
        service: &str,
        woke_from: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<u64>> {
        let (pool, service, woke_from) = (self.pool(), service.to_string(), woke_from.to_string());
        self.run(async move { queries::boot_durations(&pool, &service, &woke_from, limit).await })
    }

    fn active_leases(&self, service: &str) -> anyhow::Result<Vec<Lease>> {
        let (pool, service) = (self.pool(), service.to_string());
        self.run(async move { queries::active_leases(&pool, &service).await })
    }

    fn events(
        &self,
        after: i64,
        service: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Event>> {
        let (pool, service) = (self.pool(), service.map(str::to_string));
        self.run(async move { queries::events(&pool, after, service.as_deref(), limit).await })
    }

    fn notify_cursor(&self, target: &str) -> anyhow::Result<(Option<i64>, i64)> {
        let (pool, target) = (self.pool(), target.to_string());
        self.run(async move {
            Ok((
                queries::notify_cursor(&pool, &target).await?,
                queries::last_event_id(&pool).await?,
            ))
        })
    }

    fn created_channel(&self, id: i64) -> anyhow::Result<Option<Channel>> {
        let pool = self.pool();
        self.run(async move { queries::created_channel(&pool, id).await })
    }

    fn live_created(&self) -> anyhow::Result<Vec<Created>> {
        let pool = self.pool();
        self.run(async move { queries::live_created(&pool).await })
    }

    fn latest_created(&self, name: &str) -> anyhow::Result<Option<Created>> {
        let (pool, name) = (self.pool(), name.to_string());
        self.run(async move { queries::latest_created(&pool, &name).await })
    }
}
