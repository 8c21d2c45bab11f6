//! The store: the event log, each service's last known state, leases, notification cursors,
//! created services and backends' values. One [`engine::Engine`] holds them: the embedded
//! SQLite database in the data dir (`sqlite`, the default) or a PostgreSQL database
//! (`postgres`), which several gateways may share (`Cluster`: each service driven by one of
//! them under a lease). Nothing on an async worker waits for the database:
//! writes go, in order, to the writer (`writer`), reads run on the engine from async code
//! through [`Store::read`]. An event is committed before it is published, so what a client saw is
//! never lost; while the store cannot write, events wait in memory and `/healthz` says why.

mod config;
mod created;
mod engine;
mod postgres;
mod sqlite;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::sync::{broadcast, oneshot};

use crate::event::{self, Event, NewEvent, Published, from_millis, to_millis};
use engine::{Engine, Op};
use writer::Writer;

pub use config::{Location, Membership};
pub use created::{Channel as CreatedChannel, Created};
pub use postgres::cluster::{Claim, Cluster, Member, Mirror, Ownership, Signal};
pub use writer::{Failing, Health, MAX_PENDING};

/// How long a read waits for the writes handed over before it.
const CAUGHT_UP: Duration = Duration::from_secs(1);

/// Live events the broadcast channel keeps for a subscriber that falls behind (it then reads
/// the rest from the store).
const LIVE_EVENTS: usize = 1024;

/// The last state a service was recorded in.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub state: event::State,
    pub since: SystemTime,
    pub last_error: Option<String>,
}

/// When a service entered a state.
pub type Transition = (SystemTime, event::State);

/// A keep-awake lease: the service counts as in use until it expires or is ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Lease {
    pub id: i64,
    pub reason: String,
    /// Who took it (the API token's name).
    pub by: String,
    #[serde(serialize_with = "event::rfc3339")]
    pub created: SystemTime,
    #[serde(serialize_with = "event::rfc3339")]
    pub expires: SystemTime,
}

/// A handle to the database. Reads are blocking (each a short statement on the engine): apart
/// from the start-up, async code calls them through [`Store::read`], on a blocking thread.
pub struct Store {
    engine: Arc<dyn Engine>,
    writer: Writer,
    events: broadcast::Sender<Published>,
    /// The gateways sharing a PostgreSQL database; none on SQLite (one gateway, always the
    /// owner of its services).
    cluster: Option<Arc<Cluster>>,
}

/// The current time at the precision the store keeps, so a reread event equals the published
/// one.
pub fn now() -> SystemTime {
    from_millis(to_millis(SystemTime::now()))
}

impl Store {
    /// Opens the store `[gateway] store` names: SQLite in the data dir, or a PostgreSQL
    /// database (connected, and its schema brought up to date, before this returns).
    pub fn connect(location: &Location, data_dir: &Path) -> anyhow::Result<Store> {
        Store::connect_as(location, data_dir, &Membership::default())
    }

    /// As [`Store::connect`], as the gateway `member` names (its id and lease time, used only
    /// by a PostgreSQL store, which other gateways may share).
    pub fn connect_as(
        location: &Location,
        data_dir: &Path,
        member: &Membership,
    ) -> anyhow::Result<Store> {
        match location {
            Location::Sqlite => Store::open(data_dir),
            Location::Postgres(url) => {
                let engine = postgres::Postgres::connect(url)?;
                let cluster = engine.cluster(member.id.clone(), member.lease);
                let mut store = Store::with_engine(Arc::new(engine), false);
                // Every gateway publishes every gateway's events, each once.
                let announced = Arc::new(writer::Announced::default());
                store.writer.share_publishing(announced.clone());
                cluster.tail(store.events.clone(), announced);
                store.cluster = Some(Arc::new(cluster));
                Ok(store)
            }
        }
    }

    /// The gateways sharing this store's database, when it is PostgreSQL.
    pub fn cluster(&self) -> Option<Arc<Cluster>> {
        self.cluster.clone()
    }

    /// Opens (or creates) `wakegate.db` in `data_dir` and brings its schema up to date, with a
    /// connection for reads and one for the writer. A database locked by another process or on a full disk opens (it is
    /// written once it can be); a damaged one or an unreadable directory does not.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir).with_context(|| {
            format!(
                "cannot create data dir {}; check its permissions or set [gateway] data_dir",
                data_dir.display()
            )
        })?;
        let path = data_dir.join("wakegate.db");
        let engine = sqlite::Sqlite::open(&path).map_err(|e| open_error(&path, e))?;
        Ok(Store::with_engine(Arc::new(engine), false))
    }

    /// A store that lives only in memory (for tools and tests that need no history). Its
    /// writes run in the caller, so an event is published when it is handed over.
    pub fn in_memory() -> anyhow::Result<Store> {
        Ok(Store::with_engine(
            Arc::new(sqlite::Sqlite::in_memory()?),
            true,
        ))
    }

    fn with_engine(engine: Arc<dyn Engine>, inline: bool) -> Store {
        let (events, _) = broadcast::channel(LIVE_EVENTS);
        Store {
            writer: Writer::new(engine.clone(), events.clone(), inline),
            engine,
            events,
            cluster: None,
        }
    }

    /// The channel every event is published on, once committed.
    pub fn publisher(&self) -> broadcast::Sender<Published> {
        self.events.clone()
    }

    /// Hands an event over to be stored and then published; never waits. `time` is when it
    /// happened (see [`now`]); for a transition, the service's recorded state changes with it,
    /// and `last_error` replaces the recorded one when given.
    pub fn record(
        &self,
        service: &str,
        event: NewEvent,
        time: SystemTime,
        last_error: Option<String>,
    ) {
        self.writer.event(Op::Event {
            service: service.to_string(),
            event,
            time: from_millis(to_millis(time)),
            last_error,
        });
    }

    /// Records a new lease; fails at once while the store cannot write.
    pub async fn add_lease(
        &self,
        service: &str,
        reason: &str,
        by: &str,
        duration: Duration,
    ) -> anyhow::Result<Lease> {
        let created = now();
        let expires = from_millis(to_millis(created + duration));
        let (reply, answer) = oneshot::channel();
        self.writer.ask(Op::AddLease {
            service: service.to_string(),
            reason: reason.to_string(),
            by: by.to_string(),
            created,
            expires,
            reply,
        });
        let id = answered(answer).await?;
        Ok(Lease {
            id,
            reason: reason.to_string(),
            by: by.to_string(),
            created,
            expires,
        })
    }

    /// Ends a lease before it expires (written in order with the events, retried while the
    /// store cannot write).
    pub fn end_lease(&self, service: &str, id: i64) {
        self.writer.write(Op::EndLease {
            service: service.to_string(),
            id,
            at: SystemTime::now(),
        });
    }

    /// Stores (or, with `None`, forgets) a value a backend needs after a restart; committed
    /// before it returns, or an error at once while the store cannot write.
    pub async fn set_backend_value(
        &self,
        service: &str,
        key: &str,
        value: Option<&str>,
    ) -> anyhow::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.writer.ask(Op::BackendValue {
            service: service.to_string(),
            key: key.to_string(),
            value: value.map(str::to_string),
            reply,
        });
        answered(answer).await
    }

    /// Stores a created service's record (new when its id is 0) and returns its id; committed
    /// before it returns, or an error at once while the store cannot write.
    pub async fn save_created(&self, record: &Created) -> anyhow::Result<i64> {
        let (reply, answer) = oneshot::channel();
        self.writer.ask(Op::Created {
            record: record.clone(),
            reply,
        });
        answered(answer).await
    }

    /// Stores (or, with `None`, forgets) the Discord channel of created service `id` (its
    /// record's id); committed before it returns, or an error at once while the store cannot
    /// write.
    pub async fn set_created_channel(
        &self,
        id: i64,
        channel: Option<CreatedChannel>,
    ) -> anyhow::Result<()> {
        let (reply, answer) = oneshot::channel();
        self.writer.ask(Op::CreatedChannel { id, channel, reply });
        answered(answer).await
    }

    /// The Discord channel kept with created service `id`.
    pub fn created_channel(&self, id: i64) -> anyhow::Result<Option<CreatedChannel>> {
        self.with(|e| e.created_channel(id))
    }

    /// The created services not ended, oldest first.
    pub fn live_created(&self) -> anyhow::Result<Vec<Created>> {
        self.with(|e| e.live_created())
    }

    /// The newest record of a created service's name, live or ended.
    pub fn latest_created(&self, name: &str) -> anyhow::Result<Option<Created>> {
        self.with(|e| e.latest_created(name))
    }

    /// Moves a notification target's cursor forward (never back) to `id`, with the next write;
    /// only the latest cursor of a target is written.
    pub fn set_notify_cursor(&self, target: &str, id: i64) {
        self.writer.cursor(target, id);
    }

    /// How the writes are doing (for `/healthz` and the metrics); never touches SQLite.
    pub fn health(&self) -> Health {
        self.writer.health()
    }

    /// Whether (and why) the store cannot write, as it changes.
    pub fn failing(&self) -> tokio::sync::watch::Receiver<Option<Failing>> {
        self.writer.failing()
    }

    /// Writes what is still queued, trying for at most `grace` while the store cannot write.
    /// Called once wakegate has stopped its services.
    pub async fn close(self: &Arc<Self>, grace: Duration) {
        let store = self.clone();
        let _ = tokio::task::spawn_blocking(move || store.writer.close(grace)).await;
    }

    /// Waits until the writes handed over before this call are committed and published, at
    /// most `within`, and not at all while the store cannot write.
    pub async fn settled(self: &Arc<Self>, within: Duration) {
        let store = self.clone();
        let _ = tokio::task::spawn_blocking(move || store.writer.caught_up(within)).await;
    }

    /// Runs reads on a blocking thread, so a slow one never holds up an async worker.
    pub async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        reads: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || reads(&store))
            .await
            .context("a read of the store was cancelled")?
    }

    /// Runs a read once the writes handed over before it are committed (waiting at most
    /// [`CAUGHT_UP`], and not while the store cannot write): whoever acted, then reads, sees
    /// what the action recorded.
    fn with<T>(&self, read: impl FnOnce(&dyn Engine) -> anyhow::Result<T>) -> anyhow::Result<T> {
        self.writer.caught_up(CAUGHT_UP);
        read(self.engine.as_ref())
    }

    /// A value a backend stored for itself (see [`Store::set_backend_value`]).
    pub fn backend_value(&self, service: &str, key: &str) -> anyhow::Result<Option<String>> {
        self.with(|e| e.backend_value(service, key))
    }

    /// The last recorded state of a service, if it was ever recorded.
    pub fn service(&self, name: &str) -> anyhow::Result<Option<ServiceRecord>> {
        self.with(|e| e.service(name))
    }

    /// The newest `limit` events, oldest first, optionally of one service.
    pub fn latest_events(&self, service: Option<&str>, limit: usize) -> anyhow::Result<Vec<Event>> {
        self.with(|e| e.latest_events(service, limit))
    }

    /// The id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> anyhow::Result<i64> {
        self.with(|e| e.last_event_id())
    }

    /// The transitions of a service from `since` on, preceded by the last one before it, and
    /// the time of its first event ever.
    pub fn transitions_since(
        &self,
        service: &str,
        since: SystemTime,
    ) -> anyhow::Result<(Vec<Transition>, Option<SystemTime>)> {
        self.with(|e| e.transitions_since(service, since))
    }

    /// How long the last `limit` wakes from `woke_from` took (cold starts from `stopped`,
    /// resumes from `paused` or `frozen`), oldest first; adopted servers are not counted.
    pub fn boot_durations(
        &self,
        service: &str,
        woke_from: event::SleepMode,
        limit: usize,
    ) -> anyhow::Result<Vec<u64>> {
        self.with(|e| e.boot_durations(service, woke_from.as_str(), limit))
    }

    /// Leases of a service that have neither expired nor been ended.
    pub fn active_leases(&self, service: &str) -> anyhow::Result<Vec<Lease>> {
        self.with(|e| e.active_leases(service))
    }

    /// Events with an id above `after`, oldest first, optionally of one service.
    pub fn events(
        &self,
        after: i64,
        service: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Event>> {
        self.with(|e| e.events(after, service, limit))
    }

    /// The cursor of a notification target: the id of the last event it is done with. A target
    /// seen for the first time starts at the newest event (it is not sent the whole history).
    pub fn notify_cursor(&self, target: &str) -> anyhow::Result<i64> {
        let (stored, newest) = self.with(|e| e.notify_cursor(target))?;
        Ok(stored.unwrap_or_else(|| {
            self.set_notify_cursor(target, newest);
            newest
        }))
    }

    /// Writes an event at once and returns it, without publishing it (tests that publish in
    /// an order of their own).
    #[cfg(test)]
    pub(crate) fn insert_now(&self, service: &str, event: NewEvent) -> Event {
        let time = now();
        let op = Op::Event {
            service: service.to_string(),
            event: event.clone(),
            time,
            last_error: None,
        };
        let id = self.engine.commit(&[(0, op)], &Default::default()).unwrap()[0];
        Event {
            id,
            time,
            service: service.to_string(),
            kind: event.kind,
            state: event.state,
            reason: event.reason,
            detail: event.detail,
        }
    }
}

/// What a caller that waits for a write is told.
async fn answered<T>(answer: oneshot::Receiver<Result<T, String>>) -> anyhow::Result<T> {
    match answer.await {
        Ok(result) => result.map_err(anyhow::Error::msg),
        Err(_) => anyhow::bail!("the store cannot write: wakegate is shutting down"),
    }
}

/// Why the database cannot be used at start-up, and what to do.
fn open_error(path: &Path, e: anyhow::Error) -> anyhow::Error {
    let sqlite = e
        .chain()
        .find_map(|c| c.downcast_ref::<rusqlite::Error>())
        .and_then(rusqlite::Error::sqlite_error_code);
    let what = match sqlite {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            "it is damaged; move it away (wakegate starts with an empty history and finds each service's state from its backend) or restore it from a backup"
        }
        Some(rusqlite::ErrorCode::ReadOnly | rusqlite::ErrorCode::CannotOpen) => {
            "check that the data dir is on a writable filesystem (not mounted read-only) and that wakegate may write it"
        }
        Some(rusqlite::ErrorCode::DiskFull) => "the disk is full; free some space",
        _ => "check the data dir ([gateway] data_dir)",
    };
    e.context(format!("cannot open database {}: {what}", path.display()))
}

#[cfg(test)]
mod tests;
