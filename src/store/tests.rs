//! The store against real faults: another connection holding SQLite's write lock, the way
//! another process would. Events must wait in order, keep contiguous ids, and be published
//! only once committed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::*;
use crate::event::{Kind, Published, State};

/// Generous: the machine may be busy; a passing test never waits this long.
const DEADLINE: Duration = Duration::from_secs(20);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wakegate-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn step(n: usize) -> NewEvent {
    NewEvent {
        kind: Kind::Progress,
        state: State::Awake,
        reason: format!("step {n}"),
        detail: serde_json::json!({ "n": n }),
    }
}

async fn next(live: &mut broadcast::Receiver<Published>) -> Event {
    tokio::time::timeout(DEADLINE, live.recv())
        .await
        .expect("no event was published")
        .unwrap()
        .event()
        .clone()
}

/// Holds the database's write lock from another connection until dropped.
struct Lock(#[allow(dead_code)] rusqlite::Connection);

impl Lock {
    fn take(dir: &std::path::Path) -> Lock {
        let conn = rusqlite::Connection::open(dir.join("wakegate.db")).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        Lock(conn)
    }
}

#[tokio::test]
async fn events_wait_in_order_while_the_database_is_locked_and_are_published_once_committed() {
    let dir = temp_dir("locked");
    let store = Arc::new(Store::open(&dir).unwrap());
    let mut live = store.publisher().subscribe();
    store.record("a", step(0), now(), None);
    let first = next(&mut live).await;

    let lock = Lock::take(&dir);
    let mut failing = store.failing();
    for n in 1..=50 {
        store.record(if n % 2 == 0 { "a" } else { "b" }, step(n), now(), None);
    }
    tokio::time::timeout(DEADLINE, failing.wait_for(Option::is_some))
        .await
        .expect("the store never said it cannot write")
        .unwrap();
    let health = store.health();
    assert_eq!(health.failing.unwrap().error, "database is locked");
    assert_eq!(health.pending_events, 50);
    assert!(health.write_failures >= 1);
    // Nothing uncommitted is published, and reads go on during the lock.
    assert!(matches!(
        live.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    assert_eq!(store.last_event_id().unwrap(), first.id);
    // A caller that waits for its write is told at once, not kept waiting.
    let refused = store
        .add_lease("a", "raid", "test", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "the store cannot write: database is locked"
    );

    drop(lock);
    for n in 1..=50 {
        let event = next(&mut live).await;
        assert_eq!(event.id, first.id + n as i64, "ids follow each other");
        assert_eq!(
            event.reason,
            format!("step {n}"),
            "in the order handed over"
        );
        // Published only once it is in the store.
        let stored = store.events(event.id - 1, None, 1).unwrap();
        assert_eq!(stored, vec![event]);
    }
    tokio::time::timeout(DEADLINE, failing.wait_for(Option::is_none))
        .await
        .expect("the store never recovered")
        .unwrap();
    assert_eq!(store.health().pending_events, 0);
    // Writes that wait for their result work again.
    let lease = store
        .add_lease("a", "raid", "test", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.active_leases("a").unwrap(), vec![lease]);
    store.close(Duration::from_secs(1)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn what_is_queued_is_written_by_close_and_ids_keep_increasing_across_reopen() {
    let dir = temp_dir("reopen");
    let last = {
        let store = Arc::new(Store::open(&dir).unwrap());
        let transition = NewEvent {
            kind: Kind::Transition,
            state: State::Failed,
            reason: "broke".into(),
            detail: serde_json::Value::Null,
        };
        for n in 0..10 {
            store.record("a", step(n), now(), None);
        }
        store.record("a", transition, now(), Some("broke".into()));
        store.set_notify_cursor("discord", 4);
        store.set_notify_cursor("discord", 3);
        store.close(Duration::from_secs(1)).await;
        store.health()
    };
    assert_eq!(last.pending_events, 0);
    let store = Arc::new(Store::open(&dir).unwrap());
    let all = store.events(0, Some("a"), 100).unwrap();
    let ids: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=11).collect::<Vec<_>>());
    let record = store.service("a").unwrap().unwrap();
    assert_eq!(record.state, State::Failed);
    assert_eq!(record.last_error.as_deref(), Some("broke"));
    assert_eq!(record.since, all[10].time);
    // The cursor never goes back.
    assert_eq!(store.notify_cursor("discord").unwrap(), 4);
    let mut live = store.publisher().subscribe();
    store.record("a", step(11), now(), None);
    assert_eq!(next(&mut live).await.id, 12);
    store.close(Duration::from_secs(1)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_created_services_channel_is_kept_and_forgotten() {
    let dir = temp_dir("channel");
    let store = Arc::new(Store::open(&dir).unwrap());
    let record = crate::store::Created {
        id: 0,
        name: "mc-1".into(),
        template: "mc".into(),
        owner: "discord:5".into(),
        created: now(),
        deadline: now(),
        ended: None,
        end_reason: None,
        port: None,
        backend_port: None,
    };
    let id = store.save_created(&record).await.unwrap();
    assert_eq!(store.created_channel(id).unwrap(), None);
    let mut channel = CreatedChannel {
        guild: 700_000_000_000_000_010,
        channel: u64::MAX - 1,
        message: None,
    };
    store.set_created_channel(id, Some(channel)).await.unwrap();
    assert_eq!(store.created_channel(id).unwrap(), Some(channel));
    channel.message = Some(700_000_000_000_009_001);
    store.set_created_channel(id, Some(channel)).await.unwrap();
    store.close(Duration::from_secs(1)).await;
    // Read again after a restart.
    let store = Arc::new(Store::open(&dir).unwrap());
    assert_eq!(store.created_channel(id).unwrap(), Some(channel));
    store.set_created_channel(id, None).await.unwrap();
    assert_eq!(store.created_channel(id).unwrap(), None);
    store.close(Duration::from_secs(1)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_backend_value_is_committed_before_set_returns() {
    let dir = temp_dir("value");
    let store = Arc::new(Store::open(&dir).unwrap());
    store
        .set_backend_value("web", "task", Some("arn:1"))
        .await
        .unwrap();
    assert_eq!(
        store.backend_value("web", "task").unwrap().as_deref(),
        Some("arn:1")
    );
    store.set_backend_value("web", "task", None).await.unwrap();
    assert_eq!(store.backend_value("web", "task").unwrap(), None);
    store.close(Duration::from_secs(1)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_database_says_what_to_do() {
    let dir = temp_dir("damaged");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("wakegate.db"), vec![0x42; 8192]).unwrap();
    let error = format!("{:#}", Store::open(&dir).err().unwrap());
    assert!(error.contains("it is damaged; move it away"), "{error}");
    std::fs::remove_dir_all(&dir).unwrap();
}
