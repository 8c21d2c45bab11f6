//! The embedded SQLite store in the data dir: the event log and each service's last known state.
//! An event is committed before it is published, so what a client saw is never lost.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use crate::event::{self, Event, Kind, NewEvent, State, from_millis, to_millis};

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
];

/// The last state a service was recorded in.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub state: State,
    pub since: SystemTime,
    pub last_error: Option<String>,
}

/// When a service entered a state.
pub type Transition = (SystemTime, State);

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

/// A handle to the database. A std `Mutex` is right here: every call is a short synchronous
/// SQLite statement that never awaits while holding it, and calls are rare (state changes).
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (or creates) `wakegate.db` in `data_dir` and brings its schema up to date.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(data_dir).with_context(|| {
            format!(
                "cannot create data dir {}; check its permissions or set [gateway] data_dir",
                data_dir.display()
            )
        })?;
        let path = data_dir.join("wakegate.db");
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        Self::init(conn).with_context(|| format!("cannot prepare database {}", path.display()))
    }

    /// A store that lives only in memory (for tools and tests that need no history).
    pub fn in_memory() -> anyhow::Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> anyhow::Result<Store> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Migrations::from_slice(MIGRATIONS).to_latest(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Stores an event and, for a transition, the service's new state, in one transaction.
    /// `last_error` replaces the recorded one only when given.
    pub fn record(
        &self,
        service: &str,
        event: NewEvent,
        last_error: Option<&str>,
    ) -> anyhow::Result<Event> {
        // Kept at the precision it is stored with, so a reread event equals the published one.
        let time = from_millis(to_millis(SystemTime::now()));
        let detail = (!event.detail.is_null()).then(|| event.detail.to_string());
        let mut conn = self.conn.lock().unwrap();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO events (time_ms, service, kind, state, reason, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                to_millis(time),
                service,
                event.kind.as_str(),
                event.state.as_str(),
                event.reason,
                detail
            ],
        )?;
        let id = tx.last_insert_rowid();
        if event.kind == Kind::Transition {
            tx.execute(
                "INSERT INTO services (name, state, since_ms, last_error) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET
                    state = excluded.state, since_ms = excluded.since_ms,
                    last_error = COALESCE(excluded.last_error, last_error)",
                params![service, event.state.as_str(), to_millis(time), last_error],
            )?;
        }
        tx.commit()?;
        Ok(Event {
            id,
            time,
            service: service.to_string(),
            kind: event.kind,
            state: event.state,
            reason: event.reason,
            detail: event.detail,
        })
    }

    /// A value a backend stored for itself (see [`Store::set_backend_value`]).
    pub fn backend_value(&self, service: &str, key: &str) -> anyhow::Result<Option<String>> {
        let conn = self.conn.lock().unwrap();
        Ok(conn
            .query_row(
                "SELECT value FROM backend_values WHERE service = ?1 AND key = ?2",
                [service, key],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Stores (or, with `None`, forgets) a value a backend needs after a restart; committed
    /// before it returns.
    pub fn set_backend_value(
        &self,
        service: &str,
        key: &str,
        value: Option<&str>,
    ) -> anyhow::Result<()> {
        let conn = self.conn.lock().unwrap();
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

    /// The last recorded state of a service, if it was ever recorded.
    pub fn service(&self, name: &str) -> anyhow::Result<Option<ServiceRecord>> {
        let conn = self.conn.lock().unwrap();
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

    /// The newest `limit` events, oldest first, optionally of one service.
    pub fn latest_events(&self, service: Option<&str>, limit: usize) -> anyhow::Result<Vec<Event>> {
        let after = {
            let conn = self.conn.lock().unwrap();
            conn.query_row(
                "SELECT COALESCE(MIN(id) - 1, 0) FROM (SELECT id FROM events
                 WHERE (?1 IS NULL OR service = ?1) ORDER BY id DESC LIMIT ?2)",
                params![service, limit as i64],
                |row| row.get::<_, i64>(0),
            )?
        };
        self.events(after, service, limit)
    }

    /// The id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> anyhow::Result<i64> {
        let conn = self.conn.lock().unwrap();
        Ok(
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get(0)
            })?,
        )
    }

    /// The transitions of a service from `since` on, preceded by the last one before it, and
    /// the time of its first event ever.
    pub fn transitions_since(
        &self,
        service: &str,
        since: SystemTime,
    ) -> anyhow::Result<(Vec<Transition>, Option<SystemTime>)> {
        let conn = self.conn.lock().unwrap();
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

    /// How long the last `limit` wakes that started the backend took, oldest first.
    pub fn boot_durations(&self, service: &str, limit: usize) -> anyhow::Result<Vec<u64>> {
        let conn = self.conn.lock().unwrap();
        let mut stmt = conn.prepare_cached(
            "SELECT json_extract(detail, '$.duration_ms') FROM events
             WHERE service = ?1 AND kind = 'transition' AND state = 'awake'
               AND json_extract(detail, '$.adopted') IS NOT 1
               AND json_extract(detail, '$.duration_ms') IS NOT NULL
             ORDER BY id DESC LIMIT ?2",
        )?;
        let mut durations: Vec<u64> = stmt
            .query_map(params![service, limit as i64], |row| row.get::<_, i64>(0))?
            .filter_map(|d| d.ok().map(|d| d.max(0) as u64))
            .collect();
        durations.reverse();
        Ok(durations)
    }

    /// Records a new lease.
    pub fn add_lease(
        &self,
        service: &str,
        reason: &str,
        by: &str,
        duration: std::time::Duration,
    ) -> anyhow::Result<Lease> {
        let created = from_millis(to_millis(SystemTime::now()));
        let expires = created + duration;
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO leases (service, reason, holder, created_ms, expires_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![service, reason, by, to_millis(created), to_millis(expires)],
        )?;
        Ok(Lease {
            id: conn.last_insert_rowid(),
            reason: reason.to_string(),
            by: by.to_string(),
            created,
            expires: from_millis(to_millis(expires)),
        })
    }

    /// Ends a lease before it expires; false when it was not active.
    pub fn end_lease(&self, service: &str, id: i64) -> anyhow::Result<bool> {
        let conn = self.conn.lock().unwrap();
        let now = to_millis(SystemTime::now());
        let changed = conn.execute(
            "UPDATE leases SET ended_ms = ?3
             WHERE service = ?1 AND id = ?2 AND ended_ms IS NULL AND expires_ms > ?3",
            params![service, id, now],
        )?;
        Ok(changed == 1)
    }

    /// Leases of a service that have neither expired nor been ended.
    pub fn active_leases(&self, service: &str) -> anyhow::Result<Vec<Lease>> {
        let conn = self.conn.lock().unwrap();
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
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Events with an id above `after`, oldest first, optionally of one service.
    pub fn events(
        &self,
        after: i64,
        service: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Event>> {
        let conn = self.conn.lock().unwrap();
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
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The cursor of a notification target: the id of the last event it is done with. A target
    /// seen for the first time starts at the newest event (it is not sent the whole history).
    pub fn notify_cursor(&self, target: &str) -> anyhow::Result<i64> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO notify_cursors (target, last_id, updated_ms)
             VALUES (?1, (SELECT COALESCE(MAX(id), 0) FROM events), ?2)
             ON CONFLICT (target) DO NOTHING",
            params![target, to_millis(SystemTime::now())],
        )?;
        Ok(conn.query_row(
            "SELECT last_id FROM notify_cursors WHERE target = ?1",
            [target],
            |row| row.get(0),
        )?)
    }

    /// Moves a notification target's cursor forward (never back) to `id`.
    pub fn set_notify_cursor(&self, target: &str, id: i64) -> anyhow::Result<()> {
        let conn = self.conn.lock().unwrap();
        conn.execute(
            "INSERT INTO notify_cursors (target, last_id, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (target) DO UPDATE SET
                last_id = MAX(last_id, excluded.last_id), updated_ms = excluded.updated_ms",
            params![target, id, to_millis(SystemTime::now())],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_keep_increasing_across_reopen() {
        let dir = std::env::temp_dir().join(format!("wakegate-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = {
            let store = Store::open(&dir).unwrap();
            store
                .record(
                    "a",
                    NewEvent {
                        kind: Kind::Transition,
                        state: State::Awake,
                        reason: "woken".into(),
                        detail: serde_json::json!({"client": "127.0.0.1:1"}),
                    },
                    None,
                )
                .unwrap()
        };
        let store = Store::open(&dir).unwrap();
        let second = store
            .record(
                "a",
                NewEvent {
                    kind: Kind::Transition,
                    state: State::Failed,
                    reason: "broke".into(),
                    detail: serde_json::Value::Null,
                },
                Some("broke"),
            )
            .unwrap();
        assert!(second.id > first.id);
        let record = store.service("a").unwrap().unwrap();
        assert_eq!(record.state, State::Failed);
        assert_eq!(record.last_error.as_deref(), Some("broke"));
        let all = store.events(0, Some("a"), 10).unwrap();
        assert_eq!(all, vec![first.clone(), second]);
        assert_eq!(store.events(first.id, None, 10).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
