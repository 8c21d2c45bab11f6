//! The actor on paused time with a [`FakeBackend`]: hours of policy pass in milliseconds, and
//! every decision is seen as the events and states a user would see.
// A test's own tasks (clients held by the actor) end with the test.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{self, HealthAction};
use super::fake::{Call, Fake};
use super::{ServiceHandle, spawn};
use crate::config::parse;
use crate::event::{Cause, Event, Kind, Published, State};
use crate::store::Store;

pub(super) const MIN: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
/// Far beyond any test's timers: a test that waits this long on paused time has hung.
pub(super) const NEVER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A service named `web` with these extra `[[service]]` keys, behind a TCP listener.
fn service(keys: &str) -> config::Service {
    let toml = format!(
        r#"[gateway]
data_dir = "unused"
api = "127.0.0.1:0"

[[service]]
name = "web"
{keys}
[service.backend]
type = "exec"
start = "true"
stop = "true"
address = "127.0.0.1:9"
[[service.listen]]
type = "tcp"
bind = "127.0.0.1:0"
"#
    );
    let mut config = parse(&toml, "test.toml").unwrap();
    config.services.remove(0)
}

/// A running actor, its fake backend and its events.
pub(super) struct Running {
    pub(super) handle: ServiceHandle,
    pub(super) fake: Fake,
    events: broadcast::Receiver<Published>,
    pub(super) store: Arc<Store>,
    _cancel: tokio_util::sync::DropGuard,
}

impl Running {
    pub(super) async fn start(keys: &str) -> Running {
        Running::start_with(keys, |_| {}).await
    }

    /// Starts the actor once `script` has set the fake up (its answer at start-up, …).
    pub(super) async fn start_with(keys: &str, script: impl FnOnce(&Fake)) -> Running {
        let store = Arc::new(Store::in_memory().unwrap());
        let events = store.publisher().subscribe();
        let (fake, backend) = Fake::new();
        script(&fake);
        let cancel = CancellationToken::new();
        let handle = spawn(
            &service(keys),
            Box::new(backend),
            store.clone(),
            &TaskTracker::new(),
            cancel.clone(),
        );
        handle.reconciled().await;
        Running {
            handle,
            fake,
            events,
            store,
            _cancel: cancel.drop_guard(),
        }
    }

    /// Waits until the service is in `state`; returns when (on the test's clock).
    pub(super) async fn reach(&self, state: State) -> Instant {
        let mut watch = self.handle.watch();
        tokio::time::timeout(NEVER, watch.wait_for(|s| s.state == state))
            .await
            .unwrap_or_else(|_| panic!("never {state}: {:?}", self.handle.status()))
            .unwrap();
        Instant::now()
    }

    /// Wakes it through the API and waits until it is awake.
    pub(super) async fn wake(&self) -> Instant {
        self.handle.wake("test").await.unwrap().unwrap();
        self.reach(State::Awake).await
    }

    /// The next event that matches.
    pub(super) async fn next(&mut self, wanted: impl Fn(&Event) -> bool) -> Event {
        let events = &mut self.events;
        tokio::time::timeout(NEVER, async {
            loop {
                let event = events.recv().await.unwrap();
                if wanted(&event) {
                    return event.event().clone();
                }
            }
        })
        .await
        .expect("the event never came")
    }

    /// The next transition into `state`.
    pub(super) async fn entered(&mut self, state: State) -> Event {
        self.next(|e| e.kind == Kind::Transition && e.state == state)
            .await
    }
}

/// A client connection to the service, held open until dropped.
async fn client(service: &ServiceHandle) -> super::Ticket {
    service
        .connect("10.0.0.7:51234".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_unused_service_stops_after_its_idle_timeout_and_not_before() {
    let mut web = Running::start(r#"idle_timeout = "1h""#).await;
    let awake = web.wake().await;
    let stopping = web.entered(State::Stopping).await;
    let took = Instant::now() - awake;
    assert!(took >= HOUR && took < HOUR + MIN, "{took:?}");
    assert_eq!(stopping.reason, "no connection for 1h");
    assert_eq!(
        Cause::of(&stopping.detail),
        Some(Cause::Idle { idle_ms: 3_600_000 })
    );
    assert_eq!(stopping.detail["previous"], "awake");
    web.entered(State::Asleep).await;
    assert_eq!(
        web.fake.calls(),
        [Call::Status, Call::Start, Call::Stop],
        "asked at start-up, started once, stopped once"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_connection_keeps_it_awake_and_the_countdown_starts_when_it_closes() {
    let mut web = Running::start(r#"idle_timeout = "1h""#).await;
    web.wake().await;
    let ticket = client(&web.handle).await;
    assert_eq!(ticket.address, web.fake.address());
    tokio::time::sleep(5 * HOUR).await;
    assert_eq!(web.handle.state(), State::Awake);
    assert_eq!(web.handle.status().idle_deadline, None);
    let closed = Instant::now();
    drop(ticket);
    web.entered(State::Stopping).await;
    let took = Instant::now() - closed;
    assert!(took >= HOUR && took < HOUR + MIN, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn min_awake_holds_an_idle_stop_back() {
    let mut web = Running::start(
        r#"idle_timeout = "1m"
min_awake = "2h""#,
    )
    .await;
    let awake = web.wake().await;
    web.entered(State::Stopping).await;
    let took = Instant::now() - awake;
    assert!(took >= 2 * HOUR && took < 2 * HOUR + MIN, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn an_always_on_service_restarts_after_crashes_until_the_breaker_trips() {
    let mut web = Running::start(
        r#"always_on = true
max_restarts = 2
restart_window = "1h""#,
    )
    .await;
    // always_on wakes it by itself.
    web.entered(State::Awake).await;
    for _ in 0..2 {
        web.fake.crash("exit code 1");
        let restarting = web.entered(State::Waking).await;
        assert!(
            restarting.reason.starts_with("restarting after a crash"),
            "{restarting:?}"
        );
        assert_eq!(restarting.detail["exit"], "exit code 1");
        web.reach(State::Awake).await;
    }
    web.fake.crash("signal 9");
    let failed = web.entered(State::Failed).await;
    assert!(
        failed.reason.starts_with(
            "restarted 2 times within 1h: not restarting again; fix the server, then wake it by hand; it last crashed"
        ),
        "{failed:?}"
    );
    assert_eq!(failed.detail["exit"], "signal 9");
    // The first start plus two restarts; failed stays failed.
    tokio::time::sleep(HOUR).await;
    assert_eq!(web.fake.count(Call::Start), 3);
    assert_eq!(web.handle.state(), State::Failed);
}

#[tokio::test(start_paused = true)]
async fn failing_health_checks_restart_it_until_the_breaker_stops_it_for_good() {
    let mut web = Running::start(
        r#"idle_timeout = "1d"
max_restarts = 1
restart_window = "1h""#,
    )
    .await;
    web.wake().await;
    let unhealthy = |web: &Running| {
        let handle = web.handle.clone();
        async move {
            handle
                .unhealthy(HealthAction::Restart, "health check failed 3 times".into())
                .await
                .unwrap()
        }
    };
    unhealthy(&web).await;
    let stopping = web.entered(State::Stopping).await;
    assert_eq!(stopping.reason, "restarting: health check failed 3 times");
    assert_eq!(Cause::of(&stopping.detail), Some(Cause::Health));
    let waking = web.entered(State::Waking).await;
    assert_eq!(Cause::of(&waking.detail), Some(Cause::Restart));
    web.reach(State::Awake).await;
    unhealthy(&web).await;
    let stopping = web.entered(State::Stopping).await;
    assert_eq!(
        stopping.reason,
        "stopping for good: health check failed 3 times"
    );
    let failed = web.entered(State::Failed).await;
    assert_eq!(Cause::of(&failed.detail), Some(Cause::Breaker));
    assert!(failed.reason.starts_with("restarted 1 time within 1h"));
}

#[tokio::test(start_paused = true)]
async fn max_runtime_warns_then_stops_even_while_in_use() {
    let mut web = Running::start(
        r#"idle_timeout = "1d"
max_runtime = "2h"
max_runtime_warning = "10m""#,
    )
    .await;
    let awake = web.wake().await;
    let _ticket = client(&web.handle).await;
    let warning = web.next(|e| e.kind == Kind::Warning).await;
    assert_eq!(Instant::now() - awake, 2 * HOUR - 10 * MIN);
    assert_eq!(warning.reason, "it stops in 10m (max_runtime)");
    assert_eq!(warning.detail["stops_in_ms"], 600_000);
    let stopping = web.entered(State::Stopping).await;
    assert_eq!(Instant::now() - awake, 2 * HOUR);
    assert_eq!(stopping.reason, "it ran for max_runtime (2h)");
    assert_eq!(Cause::of(&stopping.detail), Some(Cause::MaxRuntime));
}

#[tokio::test(start_paused = true)]
async fn too_few_players_are_warned_about_then_it_stops() {
    let mut web = Running::start(
        r#"idle_timeout = "1d"
min_players = 1
warnings = 2
player_check_interval = "10m""#,
    )
    .await;
    let awake = web.wake().await;
    for n in 1..=2 {
        let warning = web.next(|e| e.kind == Kind::Warning).await;
        assert_eq!(Instant::now() - awake, n * 10 * MIN);
        assert_eq!(warning.detail["warning"], n);
        assert_eq!(warning.detail["of"], 2);
        assert_eq!(warning.detail["players"], 0);
    }
    let stopping = web.entered(State::Stopping).await;
    assert_eq!(Instant::now() - awake, 30 * MIN);
    assert_eq!(
        stopping.reason,
        "fewer than 1 players for 3 checks in a row"
    );
    assert_eq!(Cause::of(&stopping.detail), Some(Cause::MinPlayers));
}

#[tokio::test(start_paused = true)]
async fn a_failed_stop_is_retried_with_backoff() {
    let mut web = Running::start(r#"idle_timeout = "1m""#).await;
    web.wake().await;
    web.fake.fail_next_stop("the stop command exited with 1");
    web.fake.fail_next_stop("the stop command exited with 1");
    let failed = web.entered(State::Failed).await;
    assert_eq!(Cause::of(&failed.detail), Some(Cause::Stop));
    let first = Instant::now();
    let retry = web.entered(State::Stopping).await;
    assert_eq!(retry.reason, "retrying the stop that failed");
    assert_eq!(Instant::now() - first, Duration::from_secs(1));
    web.entered(State::Failed).await;
    let second = Instant::now();
    web.entered(State::Stopping).await;
    assert_eq!(Instant::now() - second, Duration::from_secs(2));
    web.entered(State::Asleep).await;
    assert_eq!(web.fake.count(Call::Stop), 3);
}

#[tokio::test(start_paused = true)]
async fn a_held_client_wakes_it_and_gets_the_backend() {
    let mut web = Running::start("").await;
    let handle = web.handle.clone();
    let connecting = tokio::spawn(async move { client(&handle).await });
    let waking = web.entered(State::Waking).await;
    assert_eq!(waking.reason, "client 10.0.0.7:51234 connected");
    assert_eq!(
        Cause::of(&waking.detail),
        Some(Cause::Client {
            client: Some("10.0.0.7:51234".into()),
            player: None
        })
    );
    let ticket = connecting.await.unwrap();
    assert_eq!(ticket.address, web.fake.address());
    assert_eq!(web.handle.connections(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_server_found_running_at_start_up_is_adopted() {
    let mut web = Running::start_with("", |fake| {
        fake.set_status(crate::backend::Status::Running);
    })
    .await;
    web.reach(State::Awake).await;
    let awake = web.entered(State::Awake).await;
    assert_eq!(awake.detail["adopted"], true);
    assert_eq!(web.fake.count(Call::Start), 0, "adopted, not started");
}

#[tokio::test(start_paused = true)]
async fn the_expected_boot_is_the_median_of_the_recent_wakes() {
    let mut web = Running::start(r#"idle_timeout = "1m""#).await;
    assert_eq!(web.handle.status().expected_boot, None);
    // The start-up found it stopped.
    web.entered(State::Asleep).await;
    for takes in [30, 10, 20] {
        web.fake.start_takes(Duration::from_secs(takes));
        web.wake().await;
        web.entered(State::Asleep).await;
    }
    let expected = web.handle.status().expected_boot.unwrap();
    assert!(
        expected >= Duration::from_secs(20) && expected < Duration::from_secs(25),
        "{expected:?}"
    );
    assert_eq!(web.handle.status().eta(), Some(expected));
    // A new actor over the same store knows it from the start.
    assert_eq!(
        super::sleep::expected_boot(&web.store, "web", crate::backend::SleepMode::Stopped),
        Some(expected)
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_start_fails_the_wake_and_the_held_client() {
    let mut web = Running::start("").await;
    web.fake.fail_next_start("the start command exited with 1");
    let handle = web.handle.clone();
    let connecting =
        tokio::spawn(async move { handle.connect("10.0.0.7:51234".parse().unwrap()).await });
    let failed = web.entered(State::Failed).await;
    assert_eq!(failed.reason, "the start command exited with 1");
    assert!(failed.detail["duration_ms"].is_u64(), "{failed:?}");
    assert!(matches!(
        connecting.await.unwrap(),
        Err(super::ConnectError::WakeFailed(_))
    ));
    // The half-started server is stopped, so a failed wake never leaves it running.
    assert_eq!(web.fake.count(Call::Stop), 1);
}

#[test]
fn the_median_of_nothing_is_none() {
    assert_eq!(super::sleep::median(&[5, 1, 9]), Some(5));
    assert_eq!(super::sleep::median(&[]), None);
}

#[tokio::test(start_paused = true)]
async fn a_sleep_by_hand_is_refused_for_an_always_on_service() {
    let web = Running::start("always_on = true").await;
    web.reach(State::Awake).await;
    let refused = web.handle.sleep("test").await.unwrap().unwrap_err();
    assert_eq!(
        refused.to_string(),
        "web is always_on; remove always_on from its config to let it sleep"
    );
}
