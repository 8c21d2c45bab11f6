//! The writer: it commits through the engine, strictly in the order they were handed over,
//! the events and the other writes. Callers never wait for the database: an event is
//! queued and published on the broadcast channel once committed. A write that fails (the
//! database locked by another process past a short busy timeout, a full disk, a read-only or
//! failing filesystem) stays queued and is retried in order with backoff, so nothing handed
//! over is lost while wakegate runs; past [`MAX_PENDING`] queued events, new ones are dropped
//! and counted. Writes whose caller waits for the result (a lease's id, a backend's value)
//! are answered with an error instead of waiting while the store cannot write.
//!
//! One drain at a time runs on tokio's blocking pool while something is queued (and ends when
//! the queue is empty), rather than on a thread of its own: tokio then knows a write is under
//! way, and tests on paused time do not jump their clock while an event is being written.
//! The in-memory store (tests, tools) runs the same steps inline, in the caller.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, oneshot, watch};
use tracing::{error, info, warn};

use super::engine::{Engine, Op};
use crate::event::{Event, Published};

/// Events kept in memory while the store cannot write; past it new events are dropped.
pub const MAX_PENDING: usize = 100_000;
/// At most this many queued writes go in one transaction.
const BATCH: usize = 256;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LONGEST_RETRY: Duration = Duration::from_secs(5);

/// Why the store cannot write, since when.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Failing {
    /// The database's message ("database is locked", "database or disk is full", "connection refused", …).
    pub error: String,
    #[serde(serialize_with = "crate::event::rfc3339")]
    pub failing_since: SystemTime,
}

/// How the writer is doing, for `/healthz` and the metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Set while writes fail.
    pub failing: Option<Failing>,
    /// Events handed over and not yet committed.
    pub pending_events: u64,
    /// Write attempts that failed since wakegate started.
    pub write_failures: u64,
    /// Events dropped because [`MAX_PENDING`] were already queued.
    pub dropped_events: u64,
}

struct Queue {
    ops: VecDeque<(u64, Op)>,
    /// Notification cursors to store: only the latest of each target matters.
    cursors: HashMap<String, i64>,
    /// Sequence number of the last op queued.
    queued: u64,
    events: usize,
    /// Set by `close`: finish by then.
    closing: Option<Instant>,
    /// A drain is running (it takes everything queued before it ends).
    draining: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    more: Condvar,
    failing: watch::Sender<Option<Failing>>,
    pending: AtomicU64,
    failures: AtomicU64,
    dropped: AtomicU64,
    /// Sequence number of the last op done with (committed, or answered with an error).
    done: Mutex<u64>,
    /// Signalled when `done` moves and when writes start failing.
    done_moved: Condvar,
    events: broadcast::Sender<Published>,
    /// Set when another publisher shares the channel (see [`Announced`]).
    announced: std::sync::OnceLock<Arc<Announced>>,
}

/// The handle the store hands writes to.
pub(super) struct Writer {
    shared: Arc<Shared>,
    pipe: Arc<Pipe>,
    /// Writes run in the caller (in memory).
    inline: bool,
}

/// What a write goes through: the engine that commits it.
struct Pipe {
    engine: Arc<dyn Engine>,
    shared: Arc<Shared>,
}

impl Writer {
    /// A writer that commits through `engine` on a blocking thread (`inline`: in the caller).
    pub(super) fn new(
        engine: Arc<dyn Engine>,
        events: broadcast::Sender<Published>,
        inline: bool,
    ) -> Writer {
        let shared = Shared::new(events);
        let pipe = Pipe {
            engine,
            shared: shared.clone(),
        };
        Writer {
            shared,
            pipe: Arc::new(pipe),
            inline,
        }
    }

    /// Shares the publishing with another publisher of the same log (the tail of a store
    /// shared by several gateways): an event goes out once, from whichever sees it first.
    pub(super) fn share_publishing(&self, announced: Arc<Announced>) {
        let _ = self.shared.announced.set(announced);
    }

    /// Queues an event; it is published once committed. Dropped (and counted) when
    /// [`MAX_PENDING`] events are already waiting.
    pub(super) fn event(&self, op: Op) {
        let mut queue = self.shared.queue.lock().unwrap();
        if queue.events >= MAX_PENDING {
            let dropped = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() || dropped == 0 {
                error!(
                    dropped = dropped + 1,
                    pending = queue.events,
                    "The store has not been able to write for a while and {MAX_PENDING} events are waiting; dropping new events. See /healthz for why."
                );
            }
            return;
        }
        queue.events += 1;
        self.shared.pending.fetch_add(1, Ordering::Relaxed);
        self.push(queue, op);
    }

    /// Queues a write that is retried in order like an event (a lease's end).
    pub(super) fn write(&self, op: Op) {
        let queue = self.shared.queue.lock().unwrap();
        self.push(queue, op);
    }

    /// Queues a write whose caller waits: refused at once while the store cannot write.
    pub(super) fn ask(&self, op: Op) {
        if let Some(failing) = self.shared.failing.borrow().clone() {
            op.refuse(&failing.error);
            return;
        }
        let queue = self.shared.queue.lock().unwrap();
        self.push(queue, op);
    }

    /// Stores a notification cursor with the next write; a later one replaces it.
    pub(super) fn cursor(&self, target: &str, id: i64) {
        let mut queue = self.shared.queue.lock().unwrap();
        let cursor = queue.cursors.entry(target.to_string()).or_insert(id);
        *cursor = (*cursor).max(id);
        self.wake(queue);
    }

    fn push(&self, mut queue: std::sync::MutexGuard<'_, Queue>, op: Op) {
        queue.queued += 1;
        let seq = queue.queued;
        queue.ops.push_back((seq, op));
        self.wake(queue);
    }

    fn wake(&self, mut queue: std::sync::MutexGuard<'_, Queue>) {
        if self.inline {
            // In memory nothing fails for long: write until the queue is empty or a write fails.
            drop(queue);
            while let Step::Wrote = self.pipe.step() {}
            return;
        }
        if std::mem::replace(&mut queue.draining, true) {
            return;
        }
        drop(queue);
        let pipe = self.pipe.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || pipe.drain())),
            // Outside a runtime (a tool), a thread of its own.
            Err(_) => drop(std::thread::spawn(move || pipe.drain())),
        }
    }

    /// Changes between writing and not.
    pub(super) fn failing(&self) -> watch::Receiver<Option<Failing>> {
        self.shared.failing.subscribe()
    }

    pub(super) fn health(&self) -> Health {
        Health {
            failing: self.shared.failing.borrow().clone(),
            pending_events: self.shared.pending.load(Ordering::Relaxed),
            write_failures: self.shared.failures.load(Ordering::Relaxed),
            dropped_events: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Waits until what was queued before this call is written, at most `within`, and not at
    /// all while the store cannot write. Blocking: for reads, which run on blocking threads.
    pub(super) fn caught_up(&self, within: Duration) {
        let target = self.shared.queue.lock().unwrap().queued;
        let done = self.shared.done.lock().unwrap();
        drop(
            self.shared
                .done_moved
                .wait_timeout_while(done, within, |done| {
                    *done < target && self.shared.failing.borrow().is_none()
                })
                .unwrap(),
        );
    }

    /// Writes what is queued, trying for at most `grace` while the store cannot write, and
    /// returns once done. What could not be written by then is lost, and said so in the log.
    pub(super) fn close(&self, grace: Duration) {
        let mut queue = self.shared.queue.lock().unwrap();
        queue.closing = Some(Instant::now() + grace);
        if !self.inline && !std::mem::replace(&mut queue.draining, true) {
            drop(queue);
            self.pipe.drain();
            return;
        }
        drop(
            self.shared
                .more
                .wait_while(queue, |q| q.draining && !self.inline)
                .unwrap(),
        );
    }
}

impl Drop for Writer {
    /// Without `close` (a test that drops its gateway), a drain under way gives up on a store
    /// that cannot write after a moment.
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock().unwrap();
        queue
            .closing
            .get_or_insert(Instant::now() + Duration::from_secs(2));
    }
}

impl Shared {
    fn new(events: broadcast::Sender<Published>) -> Arc<Shared> {
        Arc::new(Shared {
            queue: Mutex::new(Queue {
                ops: VecDeque::new(),
                cursors: HashMap::new(),
                queued: 0,
                events: 0,
                closing: None,
                draining: false,
            }),
            more: Condvar::new(),
            failing: watch::Sender::new(None),
            pending: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            done: Mutex::new(0),
            done_moved: Condvar::new(),
            events,
            announced: std::sync::OnceLock::new(),
        })
    }
}

/// What one attempt did.
enum Step {
    Idle,
    Wrote,
    Failed,
}

/// What a committed op gives back.
enum Written {
    Event(Event),
    /// A new row's id, to the caller waiting for it.
    Id(oneshot::Sender<Result<i64, String>>, i64),
    Value(oneshot::Sender<Result<(), String>>),
    Nothing,
}

impl Pipe {
    /// Writes until the queue is empty, backing off after a failure; gives up at `closing`.
    fn drain(&self) {
        let mut backoff = FIRST_RETRY;
        loop {
            match self.step() {
                Step::Wrote => backoff = FIRST_RETRY,
                Step::Idle => {
                    let mut queue = self.shared.queue.lock().unwrap();
                    if queue.ops.is_empty() && queue.cursors.is_empty() {
                        queue.draining = false;
                        drop(queue);
                        self.shared.more.notify_all();
                        return;
                    }
                }
                Step::Failed => {
                    let mut queue = self.shared.queue.lock().unwrap();
                    let mut wait = backoff;
                    if let Some(closing) = queue.closing {
                        let left = closing.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            error!(
                                events = queue.events,
                                writes = queue.ops.len(),
                                "wakegate stops while the store cannot write; the events not written are lost (they are in this log)."
                            );
                            queue.draining = false;
                            drop(queue);
                            self.shared.more.notify_all();
                            return;
                        }
                        wait = wait.min(left);
                    }
                    drop(queue);
                    // New writes do not cut the wait short: a flood of events while the disk
                    // is full must not turn into a flood of attempts.
                    std::thread::sleep(wait);
                    backoff = (backoff * 2).min(LONGEST_RETRY);
                    self.engine.recover();
                }
            }
        }
    }

    /// Writes the ops at the front of the queue in one transaction.
    fn step(&self) -> Step {
        let (batch, cursors) = {
            let mut queue = self.shared.queue.lock().unwrap();
            let take = queue.ops.len().min(BATCH);
            let batch: Vec<(u64, Op)> = queue.ops.drain(..take).collect();
            let cursors = std::mem::take(&mut queue.cursors);
            (batch, cursors)
        };
        if batch.is_empty() && cursors.is_empty() {
            return Step::Idle;
        }
        match self.engine.commit(&batch, &cursors) {
            Ok(ids) => {
                self.wrote(batch, ids);
                Step::Wrote
            }
            Err(e) => {
                self.failed(batch, cursors, e);
                Step::Failed
            }
        }
    }

    fn wrote(&self, batch: Vec<(u64, Op)>, ids: Vec<i64>) {
        let mut last = 0;
        let mut events = 0;
        for ((seq, op), id) in batch.into_iter().zip(ids) {
            last = seq;
            match written(op, id) {
                Written::Event(event) => {
                    events += 1;
                    let first = self
                        .shared
                        .announced
                        .get()
                        .is_none_or(|a| a.first(event.id));
                    if first {
                        let _ = self.shared.events.send(Published::new(event));
                    }
                }
                Written::Id(reply, id) => drop(reply.send(Ok(id))),
                Written::Value(reply) => drop(reply.send(Ok(()))),
                Written::Nothing => {}
            }
        }
        let upto = {
            let mut queue = self.shared.queue.lock().unwrap();
            queue.events -= events;
            // With nothing left, writes answered with an error earlier are done with too.
            if queue.ops.is_empty() {
                queue.queued
            } else {
                last
            }
        };
        self.shared
            .pending
            .fetch_sub(events as u64, Ordering::Relaxed);
        {
            let mut done = self.shared.done.lock().unwrap();
            *done = (*done).max(upto);
        }
        self.shared.done_moved.notify_all();
        let mut recovered = None;
        self.shared.failing.send_if_modified(|failing| {
            recovered = failing.take();
            recovered.is_some()
        });
        if let Some(failing) = recovered {
            let stalled = SystemTime::now()
                .duration_since(failing.failing_since)
                .unwrap_or_default();
            info!(
                stalled = %humantime::format_duration(Duration::from_millis(stalled.as_millis() as u64)),
                pending = self.shared.pending.load(Ordering::Relaxed),
                dropped = self.shared.dropped.load(Ordering::Relaxed),
                "The store writes again; the events kept meanwhile are being written in order."
            );
        }
    }

    /// Puts what failed back in front (callers who wait are answered instead), and records why.
    fn failed(&self, batch: Vec<(u64, Op)>, cursors: HashMap<String, i64>, why: String) {
        self.shared.failures.fetch_add(1, Ordering::Relaxed);
        let mut refused = Vec::new();
        {
            let mut queue = self.shared.queue.lock().unwrap();
            for (target, id) in cursors {
                let cursor = queue.cursors.entry(target).or_insert(id);
                *cursor = (*cursor).max(id);
            }
            let rest = std::mem::take(&mut queue.ops);
            for (seq, op) in batch.into_iter().chain(rest) {
                if op.answered() {
                    refused.push(op);
                } else {
                    queue.ops.push_back((seq, op));
                }
            }
        }
        for op in refused {
            op.refuse(&why);
        }
        let pending = self.shared.pending.load(Ordering::Relaxed);
        self.shared.failing.send_modify(|failing| match failing {
            Some(f) => f.error = why,
            None => {
                warn!(
                    error = %why,
                    pending,
                    "The store cannot write; clients are still served, and events are kept in memory and written once it can (up to {MAX_PENDING})."
                );
                *failing = Some(Failing {
                    error: why,
                    failing_since: SystemTime::now(),
                });
            }
        });
        // Readers waiting for the writes to catch up go on without them.
        drop(self.shared.done.lock().unwrap());
        self.shared.done_moved.notify_all();
    }
}

fn written(op: Op, id: i64) -> Written {
    match op {
        Op::Event {
            service,
            event,
            time,
            ..
        } => Written::Event(Event {
            id,
            time,
            service,
            kind: event.kind,
            state: event.state,
            reason: event.reason,
            detail: event.detail,
        }),
        Op::AddLease { reply, .. } => Written::Id(reply, id),
        Op::BackendValue { reply, .. } => Written::Value(reply),
        Op::Created { reply, .. } => Written::Id(reply, id),
        Op::CreatedChannel { reply, .. } => Written::Value(reply),
        Op::EndLease { .. } => Written::Nothing,
    }
}

/// Event ids already published on this gateway's channel, when two publishers share it (the
/// writer, and the tail that reads what other gateways wrote): whoever announces an id first
/// publishes it, so no subscriber gets an event twice.
#[derive(Debug, Default)]
pub(crate) struct Announced {
    /// Every id up to the first is published; the set holds those above it.
    inner: Mutex<(i64, std::collections::BTreeSet<i64>)>,
}

impl Announced {
    /// Whether `id` is announced for the first time (then the caller publishes it).
    pub(crate) fn first(&self, id: i64) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        id > inner.0 && inner.1.insert(id)
    }

    /// Every id up to `id` has been published.
    pub(crate) fn passed(&self, id: i64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0 = inner.0.max(id);
        let from = inner.0 + 1;
        let above = inner.1.split_off(&from);
        inner.1 = above;
    }
}
