//! The SQLite engine of the store: the schema and its migrations, how a connection is opened,
//! and every statement, as functions over a connection. The writer's commits run on a
//! connection of their own, reads on another (WAL lets them go on while someone else holds the
//! write lock); in memory both share one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use rusqlite_migration::{M, Migrations};

use super::created::{self, Channel, Created};
use super::engine::{Engine, Op};
use super::{Lease, ServiceRecord, Transition};
use crate::event::{Event, Kind, NewEvent, State, from_millis, to_millis};

/// The database file in the data dir (or in memory), as an [`Engine`].
pub(super) struct Sqlite {
    write: Mutex<Connection>,
    /// `None` in memory: reads share the write connection.
    reads: Option<Mutex<Connection>>,
    /// Where to open a fresh write connection after a failure (`None` in memory).
    path: Option<PathBuf>,
}

impl Sqlite {
    /// Opens (or creates) the database at `path` and brings its schema up to date, with a
    /// connection for reads and one for writes.
    pub(super) fn open(path: &Path) -> anyhow::Result<Sqlite> {
        let reads = open_and_migrate(path)?;
        let write = open(path, WRITE_BUSY)?;
        Ok(Sqlite {
            write: Mutex::new(write),
            reads: Some(Mutex::new(reads)),
            path: Some(path.to_path_buf()),
        })
    }

    /// A database that lives only in memory.
    pub(super) fn in_memory() -> anyhow::Result<Sqlite> {
        Ok(Sqlite {
            write: Mutex::new(open_in_memory()?),
            reads: None,
            path: None,
        })
    }

    /// Runs a read on the read connection. A std `Mutex`: each read is a short synchronous
    /// statement, run on a blocking thread, that never awaits while holding it.
    fn with<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> anyhow::Result<T> {
        let conn = self.reads.as_ref().unwrap_or(&self.write).lock().unwrap();
        Ok(read(&conn)?)
    }
}

impl Engine for Sqlite {
    fn commit(
        &self,
        batch: &[(u64, Op)],
        cursors: &HashMap<String, i64>,
    ) -> Result<Vec<i64>, String> {
        let mut conn = self.write.lock().unwrap();
        write(&mut conn, batch, cursors).map_err(|e| e.to_string())
    }

    /// A fresh connection: one opened read-only (the filesystem was) or left in a bad state
    /// by an I/O error does not recover by itself.
    fn recover(&self) {
        if let Some(path) = &self.path
            && let Ok(conn) = open(path, WRITE_BUSY)
        {
            *self.write.lock().unwrap() = conn;
        }
    }

    fn backend_value(&self, service: &str, key: &str) -> anyhow::Result<Option<String>> {
        self.with(|c| backend_value(c, service, key))
    }

    fn service(&self, name: &str) -> anyhow::Result<Option<ServiceRecord>> {
        self.with(|c| service(c, name))
    }

    fn latest_events(&self, service: Option<&str>, limit: usize) -> anyhow::Result<Vec<Event>> {
        self.with(|c| {
            let after = before_latest(c, service, limit)?;
            events(c, after, service, limit)
        })
    }

    fn last_event_id(&self) -> anyhow::Result<i64> {
        self.with(last_event_id)
    }

    fn transitions_since(
        &self,
        service: &str,
        since: SystemTime,
    ) -> anyhow::Result<(Vec<Transition>, Option<SystemTime>)> {
        self.with(|c| transitions_since(c, service, since))
    }

    fn boot_durations(
        &self,
        service: &str,
        woke_from: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<u64>> {
        self.with(|c| boot_durations(c, service, woke_from, limit))
    }

    fn active_leases(&self, service: &str) -> anyhow::Result<Vec<Lease>> {
        self.with(|c| active_leases(c, service))
    }

    fn events(
        &self,
        after: i64,
        service: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Event>> {
        self.with(|c| events(c, after, service, limit))
    }

    fn notify_cursor(&self, target: &str) -> anyhow::Result<(Option<i64>, i64)> {
        self.with(|c| Ok((notify_cursor(c, target)?, last_event_id(c)?)))
    }

    fn created_channel(&self, id: i64) -> anyhow::Result<Option<Channel>> {
        self.with(|c| created::channel(c, id))
    }

    fn live_created(&self) -> anyhow::Result<Vec<Created>> {
        self.with(created::live)
    }

    fn latest_created(&self, name: &str) -> anyhow::Result<Option<Created>> {
        self.with(|c| created::latest(c, name))
    }
}

/// Writes a batch in one transaction; the ids of its rows, one per op.
fn write(
    conn: &mut Connection,
    batch: &[(u64, Op)],
    cursors: &HashMap<String, i64>,
) -> rusqlite::Result<Vec<i64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut ids = Vec::with_capacity(batch.len());
    for (_, op) in batch {
        let id = match op {
            Op::Event {
                service,
                event,
                time,
                last_error,
            } => insert_event(&tx, service, event, *time, last_error.as_deref())?,
            Op::AddLease {
                service,
                reason,
                by,
                created,
                expires,
                ..
            } => add_lease(&tx, service, reason, by, *created, *expires)?,
            Op::EndLease { service, id, at } => {
                end_lease(&tx, service, *id, *at)?;
                0
            }
            Op::BackendValue {
                service,
                key,
                value,
                ..
            } => {
                set_backend_value(&tx, service, key, value.as_deref())?;
                0
            }
            Op::Created { record, .. } => created::save(&tx, record)?,
            Op::CreatedChannel { id, channel, .. } => {
                created::set_channel(&tx, *id, channel.as_ref())?;
                0
            }
        };
        ids.push(id);
    }
    for (target, id) in cursors {
        set_notify_cursor(&tx, target, *id)?;
    }
    tx.commit()?;
    Ok(ids)
}

/// Schema changes, in order; never edit one that has shipped, add a new one.
const MIGRATIONS: &[M<'static>] = &[
    M::up(
        "CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        time_ms INTEGER NOT NULL,
        service TEXT NOT NULL,
        kind    TEXT NOT NULL,
        state   TEXT NOT NULL,
        reason  TEXT NOT NULL,
        detail  TEXT
    );
    CREATE INDEX events_by_service ON events (service, id);
    CREATE TABLE services (
        name       TEXT PRIMARY KEY,
        state      TEXT NOT NULL,
        since_ms   INTEGER NOT NULL,
        last_error TEXT
    );",
    ),
    M::up(
        "CREATE TABLE leases (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        service    TEXT NOT NULL,
        reason     TEXT NOT NULL,
        holder     TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        ended_ms   INTEGER
    );
    CREATE INDEX leases_by_service ON leases (service, expires_ms);
    CREATE INDEX transitions_by_service ON events (service, kind, time_ms);",
    ),
    // The notification outbox: per [[notify]] target, the id of the last event it is done with
    // (delivered, refused for good, or filtered out). The events table is the queue.
    M::up(
        "CREATE TABLE notify_cursors (
        target     TEXT PRIMARY KEY,
        last_id    INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    );",
    ),
    // What a backend must find again after a restart (the ARN of the ECS task it ran).
    M::up(
        "CREATE TABLE backend_values (
        service TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT NOT NULL,
        PRIMARY KEY (service, key)
    );",
    ),
    // Services created from a [[template]] at run time; an ended one is kept for history, so a
    // name is unique only among the live ones.
    M::up(
        "CREATE TABLE created_services (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        name         TEXT NOT NULL,
        template     TEXT NOT NULL,
        owner        TEXT NOT NULL,
        created_ms   INTEGER NOT NULL,
        deadline_ms  INTEGER NOT NULL,
        ended_ms     INTEGER,
        end_reason   TEXT,
        port         INTEGER,
        backend_port INTEGER
    );
    CREATE UNIQUE INDEX created_services_live ON created_services (name) WHERE ended_ms IS NULL;",
    ),
    // The private Discord channel of a created service and its status message (ids as text:
    // Discord's snowflakes), so that after a restart the same message is edited.
    M::up(
        "CREATE TABLE created_channels (
        created_id INTEGER PRIMARY KEY REFERENCES created_services (id),
        guild      TEXT NOT NULL,
        channel    TEXT NOT NULL,
        message    TEXT
    );",
    ),
];

/// How long the writer waits for another process's write lock before the attempt counts as
/// failed (and is retried with backoff): short, so a stall shows in `/healthz` quickly.
const WRITE_BUSY: Duration = Duration::from_secs(1);
/// How long a read waits for a lock (rare in WAL mode: a checkpoint, a recovery).
const READ_BUSY: Duration = Duration::from_secs(5);

/// Opens the database file, checks that it is one and brings its schema up to date.
fn open_and_migrate(path: &Path) -> anyhow::Result<Connection> {
    let mut conn = open(path, READ_BUSY)?;
    // Already WAL (every database wakegate made): a read, so a database locked by another
    // process still opens, as does a full disk's.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Migrations::from_slice(MIGRATIONS).to_latest(&mut conn)?;
    Ok(conn)
}

/// A connection to a database whose schema is up to date.
fn open(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(busy)?;
    Ok(conn)
}

/// A database that lives only in memory, with its schema.
fn open_in_memory() -> anyhow::Result<Connection> {
    let mut conn = Connection::open_in_memory()?;
    Migrations::from_slice(MIGRATIONS).to_latest(&mut conn)?;
    Ok(conn)
}

/// Inserts an event and, for a transition, the service's new state (in the caller's
/// transaction). `last_error` replaces the recorded one only when given.
fn insert_event(
    conn: &Connection,
    service: &str,
    event: &NewEvent,
    time: SystemTime,
    last_error: Option<&str>,
) -> rusqlite::Result<i64> {
    let detail = (!event.detail.is_null()).then(|| event.detail.to_string());
    conn.prepare_cached(
        "INSERT INTO events (time_ms, service, kind, state, reason, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        to_millis(time),
        service,
        event.kind.as_str(),
        event.state.as_str(),
        event.reason,
        detail
    ])?;
    let id = conn.last_insert_rowid();
    if event.kind == Kind::Transition {
        conn.prepare_cached(
            "INSERT INTO services (name, state, since_ms, last_error) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET
                state = excluded.state, since_ms = excluded.since_ms,
                last_error = COALESCE(excluded.last_error, last_error)",
        )?
        .execute(params![
            service,
            event.state.as_str(),
            to_millis(time),
            last_error
        ])?;
    }
    Ok(id)
}

fn set_backend_value(
    conn: &Connection,
    service: &str,
    key: &str,
    value: Option<&str>,
) -> rusqlite::Result<()> {
    match value {
        Some(value) => conn.execute(
            "INSERT INTO backend_values (service, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (service, key) DO UPDATE SET value = excluded.value",
            params![service, key, value],
        )?,
        None => conn.execute(
            "DELETE FROM backend_values WHERE service = ?1 AND key = ?2",
            params![service, key],
        )?,
    };
    Ok(())
}

fn add_lease(
    conn: &Connection,
    service: &str,
    reason: &str,
    by: &str,
    created: SystemTime,
    expires: SystemTime,
) -> rusqlite::Result<i64> {
    conn.execute(
        "INSERT INTO leases (service, reason, holder, created_ms, expires_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![service, reason, by, to_millis(created), to_millis(expires)],
    )?;
    Ok(conn.last_insert_rowid())
}

fn end_lease(conn: &Connection, service: &str, id: i64, at: SystemTime) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE leases SET ended_ms = ?3
         WHERE service = ?1 AND id = ?2 AND ended_ms IS NULL AND expires_ms > ?3",
        params![service, id, to_millis(at)],
    )?;
    Ok(())
}

/// Moves a notification target's cursor forward (never back) to `id`.
fn set_notify_cursor(conn: &Connection, target: &str, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO notify_cursors (target, last_id, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (target) DO UPDATE SET
            last_id = MAX(last_id, excluded.last_id), updated_ms = excluded.updated_ms",
    )?
    .execute(params![target, id, to_millis(SystemTime::now())])?;
    Ok(())
}

fn notify_cursor(conn: &Connection, target: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT last_id FROM notify_cursors WHERE target = ?1",
        [target],
        |row| row.get(0),
    )
    .optional()
}

fn backend_value(conn: &Connection, service: &str, key: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT value FROM backend_values WHERE service = ?1 AND key = ?2",
        [service, key],
        |row| row.get(0),
    )
    .optional()
}

fn service(conn: &Connection, name: &str) -> rusqlite::Result<Option<ServiceRecord>> {
    let row = conn
        .query_row(
            "SELECT state, since_ms, last_error FROM services WHERE name = ?1",
            [name],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?;
    Ok(row.and_then(|(state, since, last_error)| {
        Some(ServiceRecord {
            state: State::parse(&state)?,
            since: from_millis(since),
            last_error,
        })
    }))
}

/// The id just before the newest `limit` events (of one service).
fn before_latest(conn: &Connection, service: Option<&str>, limit: usize) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MIN(id) - 1, 0) FROM (SELECT id FROM events
         WHERE (?1 IS NULL OR service = ?1) ORDER BY id DESC LIMIT ?2)",
        params![service, limit as i64],
        |row| row.get::<_, i64>(0),
    )
}

fn last_event_id(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
        row.get(0)
    })
}

fn transitions_since(
    conn: &Connection,
    service: &str,
    since: SystemTime,
) -> rusqlite::Result<(Vec<Transition>, Option<SystemTime>)> {
    let mut stmt = conn.prepare_cached(
        "SELECT time_ms, state FROM events WHERE service = ?1 AND kind = 'transition' AND (
            time_ms >= ?2 OR id = (SELECT MAX(id) FROM events
                WHERE service = ?1 AND kind = 'transition' AND time_ms < ?2))
         ORDER BY id",
    )?;
    let rows = stmt.query_map(params![service, to_millis(since)], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (time, state) = row?;
        if let Some(state) = State::parse(&state) {
            out.push((from_millis(time), state));
        }
    }
    let first: Option<i64> = conn.query_row(
        "SELECT MIN(time_ms) FROM events WHERE service = ?1",
        [service],
        |row| row.get(0),
    )?;
    Ok((out, first.map(from_millis)))
}

fn boot_durations(
    conn: &Connection,
    service: &str,
    woke_from: &str,
    limit: usize,
) -> rusqlite::Result<Vec<u64>> {
    // Wakes recorded before sleep modes existed were all cold starts.
    let mut stmt = conn.prepare_cached(
        "SELECT json_extract(detail, '$.duration_ms') FROM events
         WHERE service = ?1 AND kind = 'transition' AND state = 'awake'
           AND json_extract(detail, '$.adopted') IS NOT 1
           AND json_extract(detail, '$.duration_ms') IS NOT NULL
           AND IFNULL(json_extract(detail, '$.woke_from'), 'stopped') = ?3
         ORDER BY id DESC LIMIT ?2",
    )?;
    let mut durations: Vec<u64> = stmt
        .query_map(params![service, limit as i64, woke_from], |row| {
            row.get::<_, i64>(0)
        })?
        .filter_map(|d| d.ok().map(|d| d.max(0) as u64))
        .collect();
    durations.reverse();
    Ok(durations)
}

fn active_leases(conn: &Connection, service: &str) -> rusqlite::Result<Vec<Lease>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, reason, holder, created_ms, expires_ms FROM leases
         WHERE service = ?1 AND ended_ms IS NULL AND expires_ms > ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![service, to_millis(SystemTime::now())], |row| {
        Ok(Lease {
            id: row.get(0)?,
            reason: row.get(1)?,
            by: row.get(2)?,
            created: from_millis(row.get(3)?),
            expires: from_millis(row.get(4)?),
        })
    })?;
    rows.collect()
}

fn events(
    conn: &Connection,
    after: i64,
    service: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, time_ms, service, kind, state, reason, detail FROM events
         WHERE id > ?1 AND (?2 IS NULL OR service = ?2) ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, service, limit as i64], |row| {
        let kind: String = row.get(3)?;
        let state: String = row.get(4)?;
        let detail: Option<String> = row.get(6)?;
        Ok(Event {
            id: row.get(0)?,
            time: from_millis(row.get(1)?),
            service: row.get(2)?,
            kind: Kind::parse(&kind).unwrap_or(Kind::Progress),
            state: State::parse(&state).unwrap_or(State::Failed),
            reason: row.get(5)?,
            detail: detail
                .and_then(|d| serde_json::from_str(&d).ok())
                .unwrap_or_default(),
        })
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer retries a failed transaction from scratch: the ids it then gets must follow
    /// the last committed one, or the event feed would see a gap.
    #[test]
    fn a_rolled_back_insert_does_not_use_up_an_id() {
        let mut conn = open_in_memory().unwrap();
        let event = NewEvent {
            kind: Kind::Progress,
            state: State::Awake,
            reason: "step".into(),
            detail: serde_json::Value::Null,
        };
        let now = SystemTime::now();
        assert_eq!(insert_event(&conn, "a", &event, now, None).unwrap(), 1);
        {
            let tx = conn.transaction().unwrap();
            assert_eq!(insert_event(&tx, "a", &event, now, None).unwrap(), 2);
            tx.rollback().unwrap();
        }
        assert_eq!(insert_event(&conn, "a", &event, now, None).unwrap(), 2);
    }
}
