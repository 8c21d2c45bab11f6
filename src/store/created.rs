//! Services created from a `[[template]]` at run time: what must outlive a restart of wakegate
//! (who owns each, its deadline, the ports it was given) and the history of the ended ones.

use std::time::SystemTime;

use rusqlite::{Connection, OptionalExtension, params};

use crate::event::{from_millis, to_millis};

/// One created service, live (`ended` is `None`) or kept for history.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// The row's id; 0 for one not stored yet.
    pub id: i64,
    pub name: String,
    pub template: String,
    pub owner: String,
    pub created: SystemTime,
    pub deadline: SystemTime,
    pub ended: Option<SystemTime>,
    /// Why it ended ("destroyed by API token ops", "its deadline passed", …).
    pub end_reason: Option<String>,
    /// The port given as `{port}`, if the template allocates one.
    pub port: Option<u16>,
    /// The port given as `{backend_port}`, if the template allocates one.
    pub backend_port: Option<u16>,
}

/// Inserts a new record (id 0) or updates the one with its id; returns the id.
pub(super) fn save(conn: &Connection, c: &Created) -> rusqlite::Result<i64> {
    if c.id == 0 {
        conn.prepare_cached(
            "INSERT INTO created_services
             (name, template, owner, created_ms, deadline_ms, ended_ms, end_reason, port, backend_port)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            c.name,
            c.template,
            c.owner,
            to_millis(c.created),
            to_millis(c.deadline),
            c.ended.map(to_millis),
            c.end_reason,
            c.port,
            c.backend_port
        ])?;
        return Ok(conn.last_insert_rowid());
    }
    conn.prepare_cached(
        "UPDATE created_services SET deadline_ms = ?2, ended_ms = ?3, end_reason = ?4
         WHERE id = ?1",
    )?
    .execute(params![
        c.id,
        to_millis(c.deadline),
        c.ended.map(to_millis),
        c.end_reason
    ])?;
    Ok(c.id)
}

/// The created services not ended, oldest first.
pub(super) fn live(conn: &Connection) -> rusqlite::Result<Vec<Created>> {
    let mut stmt = conn.prepare_cached(&format!("{SELECT} WHERE ended_ms IS NULL ORDER BY id"))?;
    stmt.query_map([], row)?.collect()
}

/// The newest record of a name, live or ended.
pub(super) fn latest(conn: &Connection, name: &str) -> rusqlite::Result<Option<Created>> {
    conn.prepare_cached(&format!(
        "{SELECT} WHERE name = ?1 ORDER BY id DESC LIMIT 1"
    ))?
    .query_row([name], row)
    .optional()
}

const SELECT: &str = "SELECT id, name, template, owner, created_ms, deadline_ms, ended_ms,
    end_reason, port, backend_port FROM created_services";

fn row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Created> {
    Ok(Created {
        id: row.get(0)?,
        name: row.get(1)?,
        template: row.get(2)?,
        owner: row.get(3)?,
        created: from_millis(row.get(4)?),
        deadline: from_millis(row.get(5)?),
        ended: row.get::<_, Option<i64>>(6)?.map(from_millis),
        end_reason: row.get(7)?,
        port: row.get(8)?,
        backend_port: row.get(9)?,
    })
}

/// The Discord channel kept with a created service: the guild it is in, its id, and the id of
/// its status message once posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channel {
    pub guild: u64,
    pub channel: u64,
    pub message: Option<u64>,
}

/// Stores (or, with `None`, forgets) the channel of created service `id`.
pub(super) fn set_channel(
    conn: &Connection,
    id: i64,
    channel: Option<&Channel>,
) -> rusqlite::Result<()> {
    match channel {
        Some(c) => conn.execute(
            "INSERT INTO created_channels (created_id, guild, channel, message)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (created_id) DO UPDATE SET guild = excluded.guild,
                channel = excluded.channel, message = excluded.message",
            params![
                id,
                c.guild.to_string(),
                c.channel.to_string(),
                c.message.map(|m| m.to_string())
            ],
        )?,
        None => conn.execute("DELETE FROM created_channels WHERE created_id = ?1", [id])?,
    };
    Ok(())
}

/// The channel of created service `id`, if one is kept.
pub(super) fn channel(conn: &Connection, id: i64) -> rusqlite::Result<Option<Channel>> {
    let parse = |text: String, i: usize| {
        text.parse::<u64>().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    conn.prepare_cached(
        "SELECT guild, channel, message FROM created_channels WHERE created_id = ?1",
    )?
    .query_row([id], |row| {
        Ok(Channel {
            guild: parse(row.get(0)?, 0)?,
            channel: parse(row.get(1)?, 1)?,
            message: row
                .get::<_, Option<String>>(2)?
                .map(|m| parse(m, 2))
                .transpose()?,
        })
    })
    .optional()
}
