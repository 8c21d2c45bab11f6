//! The store on both engines, SQLite and a real PostgreSQL server, and against real faults:
//! another connection holding SQLite's write lock, the way another process would, or the
//! PostgreSQL server stopped. Events must wait in order, keep contiguous ids, and be
//! published only once committed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::*;
use crate::config::de::Secret;
use crate::event::{Kind, Published, State};

#[path = "../../tests/common/postgres.rs"]
mod postgres_server;

/// A fresh database on one engine, for one test.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Db {
    /// The same test on SQLite, then on PostgreSQL.
    fn both(name: &str) -> [Db; 2] {
        [
            Db::Sqlite(temp_dir(name)),
            Db::Postgres(postgres_server::shared().database(name)),
        ]
    }

    /// Opens the store (again, after a close: a restart of wakegate).
    async fn open(&self) -> Arc<Store> {
        let (location, dir) = match self {
            Db::Sqlite(dir) => (Location::Sqlite, dir.clone()),
            Db::Postgres(url) => (
                Location::Postgres(Secret::new(url.clone())),
                PathBuf::from("/nonexistent"),
            ),
        };
        // Connecting blocks (as at start-up): off the test's only thread.
        let store = tokio::task::spawn_blocking(move || Store::connect(&location, &dir))
            .await
            .unwrap()
            .unwrap();
        Arc::new(store)
    }

    fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Sqlite(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

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
    for db in Db::both("reopen") {
        queued_is_written_by_close_and_ids_keep_increasing_across_reopen(&db).await;
    }
}

async fn queued_is_written_by_close_and_ids_keep_increasing_across_reopen(db: &Db) {
    let last = {
        let store = db.open().await;
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
    let store = db.open().await;
    let all = store.events(0, Some("a"), 100).unwrap();
    let ids: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=11).collect::<Vec<_>>(), "{}", db.engine());
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
}

#[tokio::test]
async fn a_created_services_channel_is_kept_and_forgotten() {
    for db in Db::both("channel") {
        created_services_channel_is_kept_and_forgotten(&db).await;
    }
}

async fn created_services_channel_is_kept_and_forgotten(db: &Db) {
    let store = db.open().await;
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
    drop(store);
    // Read again after a restart.
    let store = db.open().await;
    assert_eq!(store.created_channel(id).unwrap(), Some(channel));
    store.set_created_channel(id, None).await.unwrap();
    assert_eq!(store.created_channel(id).unwrap(), None);
    store.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_backend_value_is_committed_before_set_returns() {
    for db in Db::both("value") {
        backend_value_is_committed_before_set_returns(&db).await;
    }
}

async fn backend_value_is_committed_before_set_returns(db: &Db) {
    let store = db.open().await;
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

/// The PostgreSQL analogue of the lock: the server stopped under the store (a crash, a
/// restart). Events wait in order, callers who wait are told at once, and once the server is
/// back the store reconnects and writes them with contiguous ids.
#[tokio::test]
async fn events_wait_in_order_while_the_postgres_server_is_down_and_are_written_once_it_is_back() {
    let server = postgres_server::Server::start("down");
    let db = Db::Postgres(server.database("down"));
    let store = db.open().await;
    let mut live = store.publisher().subscribe();
    store.record("a", step(0), now(), None);
    let first = next(&mut live).await;

    server.stop();
    let mut failing = store.failing();
    for n in 1..=50 {
        store.record(if n % 2 == 0 { "a" } else { "b" }, step(n), now(), None);
    }
    tokio::time::timeout(DEADLINE, failing.wait_for(Option::is_some))
        .await
        .expect("the store never said it cannot write")
        .unwrap();
    let health = store.health();
    assert_eq!(health.pending_events, 50);
    assert!(health.write_failures >= 1);
    assert!(matches!(
        live.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));
    let refused = store
        .add_lease("a", "raid", "test", Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().starts_with("the store cannot write: "),
        "{refused}"
    );

    server.pg_ctl("start");
    for n in 1..=50 {
        let event = next(&mut live).await;
        assert_eq!(event.id, first.id + n as i64, "ids follow each other");
        assert_eq!(
            event.reason,
            format!("step {n}"),
            "in the order handed over"
        );
        assert_eq!(store.events(event.id - 1, None, 1).unwrap(), vec![event]);
    }
    tokio::time::timeout(DEADLINE, failing.wait_for(Option::is_none))
        .await
        .expect("the store never recovered")
        .unwrap();
    let lease = store
        .add_lease("a", "raid", "test", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.active_leases("a").unwrap(), vec![lease]);
    store.close(Duration::from_secs(1)).await;
}

/// Every read answers the same on both engines for the same writes.
#[tokio::test]
async fn both_engines_answer_every_read_alike() {
    let [sqlite, postgres] = Db::both("alike");
    let (a, b) = (sqlite.open().await, postgres.open().await);
    for store in [&a, &b] {
        write_history(store).await;
    }
    let t = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
    for (what, left, right) in [
        (
            "events",
            format!("{:?}", a.events(0, None, 100).unwrap()),
            format!("{:?}", b.events(0, None, 100).unwrap()),
        ),
        (
            "events of a service after an id",
            format!("{:?}", a.events(3, Some("b"), 2).unwrap()),
            format!("{:?}", b.events(3, Some("b"), 2).unwrap()),
        ),
        (
            "latest events",
            format!("{:?}", a.latest_events(Some("a"), 3).unwrap()),
            format!("{:?}", b.latest_events(Some("a"), 3).unwrap()),
        ),
        (
            "last event id",
            format!("{:?}", a.last_event_id().unwrap()),
            format!("{:?}", b.last_event_id().unwrap()),
        ),
        (
            "service",
            format!("{:?}", (a.service("a").unwrap(), a.service("zz").unwrap())),
            format!("{:?}", (b.service("a").unwrap(), b.service("zz").unwrap())),
        ),
        (
            "transitions since",
            format!("{:?}", a.transitions_since("a", t(25)).unwrap()),
            format!("{:?}", b.transitions_since("a", t(25)).unwrap()),
        ),
        (
            "boot durations",
            format!(
                "{:?}",
                (
                    a.boot_durations("a", event::SleepMode::Stopped, 10)
                        .unwrap(),
                    a.boot_durations("a", event::SleepMode::Frozen, 10).unwrap()
                )
            ),
            format!(
                "{:?}",
                (
                    b.boot_durations("a", event::SleepMode::Stopped, 10)
                        .unwrap(),
                    b.boot_durations("a", event::SleepMode::Frozen, 10).unwrap()
                )
            ),
        ),
        (
            "leases",
            format!(
                "{:?}",
                a.active_leases("a")
                    .unwrap()
                    .iter()
                    .map(|l| (l.id, &l.reason, &l.by))
                    .collect::<Vec<_>>()
            ),
            format!(
                "{:?}",
                b.active_leases("a")
                    .unwrap()
                    .iter()
                    .map(|l| (l.id, &l.reason, &l.by))
                    .collect::<Vec<_>>()
            ),
        ),
        (
            "created",
            format!(
                "{:?}",
                (a.live_created().unwrap(), a.latest_created("mc-1").unwrap())
            ),
            format!(
                "{:?}",
                (b.live_created().unwrap(), b.latest_created("mc-1").unwrap())
            ),
        ),
        (
            "cursors",
            format!(
                "{:?}",
                (
                    a.notify_cursor("hook").unwrap(),
                    a.notify_cursor("new").unwrap()
                )
            ),
            format!(
                "{:?}",
                (
                    b.notify_cursor("hook").unwrap(),
                    b.notify_cursor("new").unwrap()
                )
            ),
        ),
    ] {
        assert_eq!(left, right, "{what}: sqlite, then postgres");
    }
    // What the scenario is meant to show, once, so that "alike" is not "both empty".
    assert_eq!(a.last_event_id().unwrap(), 7);
    assert_eq!(
        a.boot_durations("a", event::SleepMode::Stopped, 10)
            .unwrap(),
        vec![4000, 9000]
    );
    assert_eq!(a.active_leases("a").unwrap().len(), 1);
    assert_eq!(a.live_created().unwrap().len(), 1);
    assert_eq!(a.notify_cursor("hook").unwrap(), 5);
    a.close(Duration::from_secs(1)).await;
    b.close(Duration::from_secs(1)).await;
}

/// The same writes, at fixed times, on a fresh store.
async fn write_history(store: &Arc<Store>) {
    let t = |s: u64| std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s);
    let transition = |state: State, detail: serde_json::Value| NewEvent {
        kind: Kind::Transition,
        state,
        reason: format!("to {}", state.as_str()),
        detail,
    };
    use serde_json::json;
    store.record("a", transition(State::Waking, json!(null)), t(10), None);
    store.record(
        "a",
        transition(State::Awake, json!({"duration_ms": 4000})),
        t(20),
        None,
    );
    store.record("b", step(1), t(21), None);
    store.record(
        "a",
        transition(State::Failed, json!({"why": "crash"})),
        t(30),
        Some("it crashed".into()),
    );
    store.record(
        "a",
        transition(
            State::Awake,
            json!({"duration_ms": 9000, "woke_from": "stopped"}),
        ),
        t(40),
        None,
    );
    store.record(
        "a",
        transition(State::Awake, json!({"duration_ms": 1, "adopted": true})),
        t(50),
        None,
    );
    store.record(
        "b",
        transition(
            State::Awake,
            json!({"duration_ms": 77, "woke_from": "frozen"}),
        ),
        t(60),
        None,
    );
    let kept = store
        .add_lease("a", "raid", "ops", Duration::from_secs(3600))
        .await
        .unwrap();
    let ended = store
        .add_lease("a", "build", "ci", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!((kept.id, ended.id), (1, 2));
    store.end_lease("a", ended.id);
    let mut created = Created {
        id: 0,
        name: "mc-1".into(),
        template: "mc".into(),
        owner: "discord:5".into(),
        created: t(1),
        deadline: t(7200),
        ended: None,
        end_reason: None,
        port: Some(25570),
        backend_port: None,
    };
    created.id = store.save_created(&created).await.unwrap();
    created.ended = Some(t(100));
    created.end_reason = Some("its deadline passed".into());
    store.save_created(&created).await.unwrap();
    created.id = 0;
    created.ended = None;
    created.end_reason = None;
    created.backend_port = Some(30000);
    store.save_created(&created).await.unwrap();
    store.set_notify_cursor("hook", 5);
    store.set_notify_cursor("hook", 2);
    store.settled(DEADLINE).await;
}

/// A PostgreSQL store that cannot be reached stops the start, saying where and what failed,
/// never the password.
#[tokio::test]
async fn an_unreachable_postgres_store_says_where_and_why_without_the_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://gw:hunter2@127.0.0.1:{closed}/wake");
    let location = Location::Postgres(Secret::new(url));
    let error = tokio::task::spawn_blocking(move || {
        Store::connect(&location, std::path::Path::new("/nonexistent")).err()
    })
    .await
    .unwrap()
    .expect("connected to a closed port");
    let error = format!("{error:#}");
    assert!(
        error.starts_with(&format!(
            "cannot connect the PostgreSQL store at postgres://gw@127.0.0.1:{closed}/wake: "
        )),
        "{error}"
    );
    assert!(error.contains("refused"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");

    // A server that is there, without the database.
    let server = postgres_server::shared();
    let url = format!(
        "postgres://gw:hunter2@127.0.0.1:{}/no_such_database",
        server.port
    );
    let location = Location::Postgres(Secret::new(url));
    let error = tokio::task::spawn_blocking(move || {
        Store::connect(&location, std::path::Path::new("/nonexistent")).err()
    })
    .await
    .unwrap()
    .expect("connected to a database that does not exist");
    let error = format!("{error:#}");
    assert!(error.contains("no_such_database"), "{error}");
    assert!(error.contains("does not exist"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}

/// Gateways sharing a database own each service one at a time: a second one is refused the
/// service while the first renews its lease, hears the owner's status and tells it its
/// connections, takes the service once the lease has expired by the database's clock, and at
/// once after a release.
#[tokio::test]
async fn gateways_sharing_a_postgres_database_own_each_service_one_at_a_time() {
    let url = postgres_server::shared().database("owners");
    let location = Location::Postgres(Secret::new(url));
    let open = |id: &str| {
        let location = location.clone();
        let member = Membership {
            id: id.into(),
            lease: Duration::from_secs(1),
        };
        tokio::task::spawn_blocking(move || {
            Store::connect_as(&location, std::path::Path::new("/nonexistent"), &member)
        })
    };
    let a = Arc::new(open("gw-a").await.unwrap().unwrap());
    let b = Arc::new(open("gw-b").await.unwrap().unwrap());
    let (ca, cb) = (a.cluster().unwrap(), b.cluster().unwrap());
    let mine = |owner: &str| Claim {
        owner: owner.into(),
        mine: true,
    };
    let theirs = |owner: &str| Claim {
        owner: owner.into(),
        mine: false,
    };
    assert_eq!(ca.claim("web").await.unwrap(), mine("gw-a"));
    assert_eq!(cb.claim("web").await.unwrap(), theirs("gw-a"));
    assert_eq!(ca.claim("web").await.unwrap(), mine("gw-a"), "a renewal");

    // B hears A's status and reads it; B cannot publish one.
    let mut heard = cb.subscribe();
    let awake = Mirror {
        owner: "gw-a".into(),
        state: Some(State::Awake),
        since: Some(now()),
        address: Some("127.0.0.1:9".parse().unwrap()),
        last_error: None,
        pre_stop: None,
    };
    // The listener may not be listening yet: publish until B hears it.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(ca.publish("web", awake.clone()).await.unwrap());
        let wait = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                if let Ok(Signal::Status { s }) = heard.recv().await {
                    return s;
                }
            }
        });
        if let Ok(service) = wait.await {
            assert_eq!(service, "web");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "B never heard A");
    }
    assert_eq!(cb.mirror("web").await.unwrap(), Some(awake.clone()));
    assert!(!cb.publish("web", awake.clone()).await.unwrap());

    // B's clients count for A, not for B itself.
    cb.set_connections("web", 3).await.unwrap();
    assert_eq!(ca.others_connections("web").await.unwrap(), 3);
    assert_eq!(cb.others_connections("web").await.unwrap(), 0);

    // A stops renewing: B gets the service once A's lease has expired, not before.
    let stopped_renewing = tokio::time::Instant::now();
    let taken = loop {
        let claim = cb.claim("web").await.unwrap();
        if claim.mine {
            break stopped_renewing.elapsed();
        }
        assert_eq!(claim, theirs("gw-a"));
        assert!(stopped_renewing.elapsed() < DEADLINE, "B never took it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(taken >= Duration::from_millis(900), "taken after {taken:?}");
    assert_eq!(ca.claim("web").await.unwrap(), theirs("gw-b"));

    // Released, it is A's again at once, though B's lease had time left.
    assert!(cb.release("web", awake).await.unwrap());
    assert_eq!(ca.claim("web").await.unwrap(), mine("gw-a"));
    let owners = ca.owners().await.unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].owner, "gw-a");
    let members: Vec<String> = ca
        .members()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(members, ["gw-a", "gw-b"]);
}

#[path = "relay_tests.rs"]
mod relay;
