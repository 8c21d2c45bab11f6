//! What the store asks of a database: commit a batch of writes in one transaction, and answer
//! the reads. Two engines answer it: SQLite in the data dir (`sqlite`), the default, and
//! PostgreSQL (`postgres`), a server of its own. The calls block: the writer
//! runs them on a blocking thread, reads come through `Store::read` (a blocking thread too).

use std::collections::HashMap;
use std::time::SystemTime;

use tokio::sync::oneshot;

use super::created::{Channel, Created};
use super::{Lease, ServiceRecord, Transition};
use crate::event::{Event, NewEvent};

pub(super) trait Engine: Send + Sync {
    /// Commits the ops and the notification cursors in one transaction; one id per op (the
    /// new row's, 0 for an op that makes none), or why it failed (the database's own words:
    /// "database is locked", "connection refused", …).
    fn commit(
        &self,
        batch: &[(u64, Op)],
        cursors: &HashMap<String, i64>,
    ) -> Result<Vec<i64>, String>;

    /// Called after a failed commit, before the next attempt: a connection left in a bad
    /// state by an I/O error does not recover by itself.
    fn recover(&self) {}

    fn backend_value(&self, service: &str, key: &str) -> anyhow::Result<Option<String>>;
    fn service(&self, name: &str) -> anyhow::Result<Option<ServiceRecord>>;
    /// The newest `limit` events, oldest first, optionally of one service.
    fn latest_events(&self, service: Option<&str>, limit: usize) -> anyhow::Result<Vec<Event>>;
    fn last_event_id(&self) -> anyhow::Result<i64>;
    fn transitions_since(
        &self,
        service: &str,
        since: SystemTime,
    ) -> anyhow::Result<(Vec<Transition>, Option<SystemTime>)>;
    fn boot_durations(
        &self,
        service: &str,
        woke_from: &str,
        limit: usize,
    ) -> anyhow::Result<Vec<u64>>;
    fn active_leases(&self, service: &str) -> anyhow::Result<Vec<Lease>>;
    fn events(&self, after: i64, service: Option<&str>, limit: usize)
    -> anyhow::Result<Vec<Event>>;
    /// A target's stored cursor, and the id of the newest event.
    fn notify_cursor(&self, target: &str) -> anyhow::Result<(Option<i64>, i64)>;
    fn created_channel(&self, id: i64) -> anyhow::Result<Option<Channel>>;
    fn live_created(&self) -> anyhow::Result<Vec<Created>>;
    fn latest_created(&self, name: &str) -> anyhow::Result<Option<Created>>;
}

/// A write handed to the writer.
pub(super) enum Op {
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
        reply: oneshot::Sender<Result<i64, String>>,
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
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A created service's record, new or changed.
    Created {
        record: Created,
        reply: oneshot::Sender<Result<i64, String>>,
    },
    /// The Discord channel kept with a created service (`None`: forget it).
    CreatedChannel {
        id: i64,
        channel: Option<Channel>,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

impl Op {
    /// Whether a caller waits for it (it is then answered, never retried).
    pub(super) fn answered(&self) -> bool {
        matches!(
            self,
            Op::AddLease { .. }
                | Op::BackendValue { .. }
                | Op::Created { .. }
                | Op::CreatedChannel { .. }
        )
    }

    /// Answers a waiting caller with why the store cannot write.
    pub(super) fn refuse(self, why: &str) {
        let why = format!("the store cannot write: {why}");
        match self {
            Op::AddLease { reply, .. } => drop(reply.send(Err(why))),
            Op::BackendValue { reply, .. } => drop(reply.send(Err(why))),
            Op::Created { reply, .. } => drop(reply.send(Err(why))),
            Op::CreatedChannel { reply, .. } => drop(reply.send(Err(why))),
            Op::Event { .. } | Op::EndLease { .. } => {}
        }
    }
}
