//! The embedded SQLite store in the data dir: the event log and each service's last known state.
//! An event is committed before it is published, so what a client saw is never lost.

use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use rusqlite_migration::{M, Migrations};

use crate::event::{Event, Kind, NewEvent, State, from_millis, to_millis};

/// Schema changes, in order; never edit one that has shipped, add a new one.
const MIGRATIONS: &[M<'static>] = &[M::up(
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
)];

/// The last state a service was recorded in.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRecord {
    pub state: State,
    pub since: SystemTime,
    pub last_error: Option<String>,
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
                kind: if kind == "progress" {
                    Kind::Progress
                } else {
                    Kind::Transition
                },
                state: State::parse(&state).unwrap_or(State::Failed),
                reason: row.get(5)?,
                detail: detail
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
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
