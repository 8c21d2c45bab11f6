//! Every statement of the PostgreSQL engine, as async functions over the pool. Times are
//! milliseconds since the epoch and an event's detail is JSONB; what they return is what the
//! SQLite engine returns for the same rows.

use std::time::SystemTime;

use sqlx::postgres::{PgPool, PgRow};
use sqlx::{AssertSqlSafe, Error, Postgres, Row, Transaction};

use crate::event::{Event, Kind, NewEvent, State, from_millis, to_millis};
use crate::store::created::{Channel, Created};
use crate::store::engine::Op;
use crate::store::{Lease, ServiceRecord, Transition};

/// An op's data, owned, for the store's runtime (the op itself keeps its reply channel).
pub(super) enum Write {
    Event {
        service: String,
        event: NewEvent,
        time: SystemTime,
        last_error: Option<String>,
    },
    AddLease {
        service: String,
        reason: String,
        by: String,
        created: SystemTime,
        expires: SystemTime,
    },
    EndLease {
        service: String,
        id: i64,
        at: SystemTime,
    },
    BackendValue {
        service: String,
        key: String,
        value: Option<String>,
    },
    Created(Created),
    CreatedChannel {
        id: i64,
        channel: Option<Channel>,
    },
}

impl Write {
    pub(super) fn of(op: &Op) -> Write {
        match op {
            Op::Event {
                service,
                event,
                time,
                last_error,
            } => Write::Event {
                service: service.clone(),
                event: event.clone(),
                time: *time,
                last_error: last_error.clone(),
            },
            Op::AddLease {
                service,
                reason,
                by,
                created,
                expires,
                ..
            } => Write::AddLease {
                service: service.clone(),
                reason: reason.clone(),
                by: by.clone(),
                created: *created,
                expires: *expires,
            },
            Op::EndLease { service, id, at } => Write::EndLease {
                service: service.clone(),
                id: *id,
                at: *at,
            },
            Op::BackendValue {
                service,
                key,
                value,
                ..
            } => Write::BackendValue {
                service: service.clone(),
                key: key.clone(),
                value: value.clone(),
            },
            Op::Created { record, .. } => Write::Created(record.clone()),
            Op::CreatedChannel { id, channel, .. } => Write::CreatedChannel {
                id: *id,
                channel: *channel,
            },
        }
    }
}

/// Writes a batch in one transaction; the ids of its rows, one per write. The events' ids are
/// taken from `event_ids` in the same transaction (see the migration).
pub(super) async fn commit(
    pool: &PgPool,
    writes: Vec<Write>,
    cursors: Vec<(String, i64)>,
) -> Result<Vec<i64>, Error> {
    let mut tx = pool.begin().await?;
    let events = writes
        .iter()
        .filter(|w| matches!(w, Write::Event { .. }))
        .count() as i64;
    let mut next_id = 0;
    if events > 0 {
        let last: i64 =
            sqlx::query_scalar("UPDATE event_ids SET last_id = last_id + $1 RETURNING last_id")
                .bind(events)
                .fetch_one(&mut *tx)
                .await?;
        next_id = last - events;
        // Delivered at the commit: the other gateways then read what is new (see `cluster`).
        sqlx::query("SELECT pg_notify('wakegate', '{\"k\":\"events\"}')")
            .execute(&mut *tx)
            .await?;
    }
    let mut ids = Vec::with_capacity(writes.len());
    for write in &writes {
        let id = match write {
            Write::Event {
                service,
                event,
                time,
                last_error,
            } => {
                next_id += 1;
                insert_event(
                    &mut tx,
                    next_id,
                    service,
                    event,
                    *time,
                    last_error.as_deref(),
                )
                .await?;
                next_id
            }
            Write::AddLease {
                service,
                reason,
                by,
                created,
                expires,
            } => {
                sqlx::query_scalar(
                    "INSERT INTO leases (service, reason, holder, created_ms, expires_ms)
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(service)
                .bind(reason)
                .bind(by)
                .bind(to_millis(*created))
                .bind(to_millis(*expires))
                .fetch_one(&mut *tx)
                .await?
            }
            Write::EndLease { service, id, at } => {
                sqlx::query(
                    "UPDATE leases SET ended_ms = $3
                     WHERE service = $1 AND id = $2 AND ended_ms IS NULL AND expires_ms > $3",
                )
                .bind(service)
                .bind(id)
                .bind(to_millis(*at))
                .execute(&mut *tx)
                .await?;
                0
            }
            Write::BackendValue {
                service,
                key,
                value: Some(value),
            } => {
                sqlx::query(
                    "INSERT INTO backend_values (service, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (service, key) DO UPDATE SET value = excluded.value",
                )
                .bind(service)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
                0
            }
            Write::BackendValue {
                service,
                key,
                value: None,
            } => {
                sqlx::query("DELETE FROM backend_values WHERE service = $1 AND key = $2")
                    .bind(service)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                0
            }
            Write::Created(c) => save_created(&mut tx, c).await?,
            Write::CreatedChannel { id, channel } => {
                set_channel(&mut tx, *id, channel.as_ref()).await?;
                0
            }
        };
        ids.push(id);
    }
    for (target, id) in cursors {
        sqlx::query(
            "INSERT INTO notify_cursors (target, last_id, updated_ms) VALUES ($1, $2, $3)
             ON CONFLICT (target) DO UPDATE SET
                last_id = GREATEST(notify_cursors.last_id, excluded.last_id),
                updated_ms = excluded.updated_ms",
        )
        .bind(target)
        .bind(id)
        .bind(to_millis(SystemTime::now()))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(ids)
}

async fn insert_event(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    service: &str,
    event: &NewEvent,
    time: SystemTime,
    last_error: Option<&str>,
) -> Result<(), Error> {
    let detail = (!event.detail.is_null()).then(|| event.detail.to_string());
    sqlx::query(
        "INSERT INTO events (id, time_ms, service, kind, state, reason, detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
    )
    .bind(id)
    .bind(to_millis(time))
    .bind(service)
    .bind(event.kind.as_str())
    .bind(event.state.as_str())
    .bind(&event.reason)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    if event.kind == Kind::Transition {
        sqlx::query(
            "INSERT INTO services (name, state, since_ms, last_error) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET
                state = excluded.state, since_ms = excluded.since_ms,
                last_error = COALESCE(excluded.last_error, services.last_error)",
        )
        .bind(service)
        .bind(event.state.as_str())
        .bind(to_millis(time))
        .bind(last_error)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn save_created(tx: &mut Transaction<'_, Postgres>, c: &Created) -> Result<i64, Error> {
    if c.id == 0 {
        return sqlx::query_scalar(
            "INSERT INTO created_services
             (name, template, owner, created_ms, deadline_ms, ended_ms, end_reason, port, backend_port)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        )
        .bind(&c.name)
        .bind(&c.template)
        .bind(&c.owner)
        .bind(to_millis(c.created))
        .bind(to_millis(c.deadline))
        .bind(c.ended.map(to_millis))
        .bind(&c.end_reason)
        .bind(c.port.map(i32::from))
        .bind(c.backend_port.map(i32::from))
        .fetch_one(&mut **tx)
        .await;
    }
    sqlx::query(
        "UPDATE created_services SET deadline_ms = $2, ended_ms = $3, end_reason = $4
         WHERE id = $1",
    )
    .bind(c.id)
    .bind(to_millis(c.deadline))
    .bind(c.ended.map(to_millis))
    .bind(&c.end_reason)
    .execute(&mut **tx)
    .await?;
    Ok(c.id)
}

async fn set_channel(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    channel: Option<&Channel>,
) -> Result<(), Error> {
    match channel {
        Some(c) => sqlx::query(
            "INSERT INTO created_channels (created_id, guild, channel, message)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (created_id) DO UPDATE SET guild = excluded.guild,
                channel = excluded.channel, message = excluded.message",
        )
        .bind(id)
        .bind(c.guild.to_string())
        .bind(c.channel.to_string())
        .bind(c.message.map(|m| m.to_string())),
        None => sqlx::query("DELETE FROM created_channels WHERE created_id = $1").bind(id),
    }
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn backend_value(
    pool: &PgPool,
    service: &str,
    key: &str,
) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT value FROM backend_values WHERE service = $1 AND key = $2")
        .bind(service)
        .bind(key)
        .fetch_optional(pool)
        .await
}

pub(super) async fn service(pool: &PgPool, name: &str) -> Result<Option<ServiceRecord>, Error> {
    let row: Option<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT state, since_ms, last_error FROM services WHERE name = $1")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(row.and_then(|(state, since, last_error)| {
        Some(ServiceRecord {
            state: State::parse(&state)?,
            since: from_millis(since),
            last_error,
        })
    }))
}

const EVENT: &str = "id, time_ms, service, kind, state, reason, detail::text";

fn event(row: PgRow) -> Result<Event, Error> {
    let kind: String = row.try_get(3)?;
    let state: String = row.try_get(4)?;
    let detail: Option<String> = row.try_get(6)?;
    Ok(Event {
        id: row.try_get(0)?,
        time: from_millis(row.try_get(1)?),
        service: row.try_get(2)?,
        kind: Kind::parse(&kind).unwrap_or(Kind::Progress),
        state: State::parse(&state).unwrap_or(State::Failed),
        reason: row.try_get(5)?,
        detail: detail
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or_default(),
    })
}

pub(super) async fn latest_events(
    pool: &PgPool,
    service: Option<&str>,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT * FROM (SELECT {EVENT} FROM events WHERE ($1::text IS NULL OR service = $1)
         ORDER BY id DESC LIMIT $2) newest ORDER BY id"
    )))
    .bind(service)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(event).collect()
}

pub(super) async fn events(
    pool: &PgPool,
    after: i64,
    service: Option<&str>,
    limit: usize,
) -> Result<Vec<Event>, Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {EVENT} FROM events WHERE id > $1 AND ($2::text IS NULL OR service = $2)
         ORDER BY id LIMIT $3"
    )))
    .bind(after)
    .bind(service)
    .bind(limit as i64)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(event).collect()
}

pub(super) async fn last_event_id(pool: &PgPool) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM events")
        .fetch_one(pool)
        .await
}

pub(super) async fn transitions_since(
    pool: &PgPool,
    service: &str,
    since: SystemTime,
) -> Result<(Vec<Transition>, Option<SystemTime>), Error> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT time_ms, state FROM events WHERE service = $1 AND kind = 'transition' AND (
            time_ms >= $2 OR id = (SELECT MAX(id) FROM events
                WHERE service = $1 AND kind = 'transition' AND time_ms < $2))
         ORDER BY id",
    )
    .bind(service)
    .bind(to_millis(since))
    .fetch_all(pool)
    .await?;
    let out = rows
        .into_iter()
        .filter_map(|(time, state)| Some((from_millis(time), State::parse(&state)?)))
        .collect();
    let first: Option<i64> =
        sqlx::query_scalar("SELECT MIN(time_ms) FROM events WHERE service = $1")
            .bind(service)
            .fetch_one(pool)
            .await?;
    Ok((out, first.map(from_millis)))
}

pub(super) async fn boot_durations(
    pool: &PgPool,
    service: &str,
    woke_from: &str,
    limit: usize,
) -> Result<Vec<u64>, Error> {
    // Wakes recorded before sleep modes existed were all cold starts.
    let mut durations: Vec<i64> = sqlx::query_scalar(
        "SELECT (detail->>'duration_ms')::numeric::bigint FROM events
         WHERE service = $1 AND kind = 'transition' AND state = 'awake'
           AND (detail->'adopted') IS DISTINCT FROM 'true'::jsonb
           AND jsonb_typeof(detail->'duration_ms') = 'number'
           AND COALESCE(detail->>'woke_from', 'stopped') = $3
         ORDER BY id DESC LIMIT $2",
    )
    .bind(service)
    .bind(limit as i64)
    .bind(woke_from)
    .fetch_all(pool)
    .await?;
    durations.reverse();
    Ok(durations.into_iter().map(|d| d.max(0) as u64).collect())
}

pub(super) async fn active_leases(pool: &PgPool, service: &str) -> Result<Vec<Lease>, Error> {
    let rows: Vec<(i64, String, String, i64, i64)> = sqlx::query_as(
        "SELECT id, reason, holder, created_ms, expires_ms FROM leases
         WHERE service = $1 AND ended_ms IS NULL AND expires_ms > $2 ORDER BY id",
    )
    .bind(service)
    .bind(to_millis(SystemTime::now()))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, reason, by, created, expires)| Lease {
            id,
            reason,
            by,
            created: from_millis(created),
            expires: from_millis(expires),
        })
        .collect())
}

pub(super) async fn notify_cursor(pool: &PgPool, target: &str) -> Result<Option<i64>, Error> {
    sqlx::query_scalar("SELECT last_id FROM notify_cursors WHERE target = $1")
        .bind(target)
        .fetch_optional(pool)
        .await
}

const CREATED: &str = "SELECT id, name, template, owner, created_ms, deadline_ms, ended_ms,
    end_reason, port, backend_port FROM created_services";

fn created(row: PgRow) -> Result<Created, Error> {
    let port = |i: usize| -> Result<Option<u16>, Error> {
        row.try_get::<Option<i32>, _>(i)?
            .map(|p| u16::try_from(p).map_err(|e| Error::Decode(Box::new(e))))
            .transpose()
    };
    Ok(Created {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        template: row.try_get(2)?,
        owner: row.try_get(3)?,
        created: from_millis(row.try_get(4)?),
        deadline: from_millis(row.try_get(5)?),
        ended: row.try_get::<Option<i64>, _>(6)?.map(from_millis),
        end_reason: row.try_get(7)?,
        port: port(8)?,
        backend_port: port(9)?,
    })
}

pub(super) async fn live_created(pool: &PgPool) -> Result<Vec<Created>, Error> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "{CREATED} WHERE ended_ms IS NULL ORDER BY id"
    )))
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(created).collect()
}

pub(super) async fn latest_created(pool: &PgPool, name: &str) -> Result<Option<Created>, Error> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "{CREATED} WHERE name = $1 ORDER BY id DESC LIMIT 1"
    )))
    .bind(name)
    .fetch_optional(pool)
    .await?;
    row.map(created).transpose()
}

pub(super) async fn created_channel(pool: &PgPool, id: i64) -> Result<Option<Channel>, Error> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT guild, channel, message FROM created_channels WHERE created_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let parse = |text: &str| text.parse::<u64>().map_err(|e| Error::Decode(Box::new(e)));
    row.map(|(guild, channel, message)| {
        Ok(Channel {
            guild: parse(&guild)?,
            channel: parse(&channel)?,
            message: message.as_deref().map(parse).transpose()?,
        })
    })
    .transpose()
}
