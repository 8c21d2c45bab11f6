//! The actor with a backend that pauses or freezes its server instead of stopping it: a wake
//! resumes it, its wake times are kept apart from cold starts, its exit in its sleep is
//! noticed, its sleep limit stops it for real, and so do a restart and a failed wake.

use std::time::Duration;

use tokio::time::Instant;

use super::config::HealthAction;
use super::fake::Call;
use super::sleep::expected_boot;
use super::tests::{HOUR, MIN, Running};
use crate::backend::{SleepMode, Status};
use crate::event::{Cause, Kind, State};

const COLD: Duration = Duration::from_secs(20);

/// A service whose fake freezes on stop (until `limit`), and whose cold start takes [`COLD`];
/// returned once the start-up found it stopped.
async fn freezing(keys: &str, limit: Option<Duration>) -> Running {
    let mut web = Running::start_with(keys, |fake| {
        fake.sleeps(SleepMode::Frozen, limit);
        fake.start_takes(COLD);
    })
    .await;
    web.entered(State::Asleep).await;
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Stopped);
    web
}

#[tokio::test(start_paused = true)]
async fn a_frozen_server_is_resumed_and_its_wakes_are_timed_apart_from_cold_starts() {
    let mut web = freezing(r#"idle_timeout = "1m""#, None).await;
    // The first wake is a cold start; once awake, the service knows it will sleep frozen,
    // and has no resume to expect a time from yet.
    web.wake().await;
    let status = web.handle.status();
    assert_eq!(status.sleep_mode, SleepMode::Frozen);
    assert_eq!(status.expected_boot, None);

    let asleep = web.entered(State::Asleep).await;
    assert!(
        asleep.reason.starts_with("backend frozen after"),
        "{asleep:?}"
    );
    assert_eq!(asleep.detail["sleep_mode"], "frozen", "{asleep:?}");
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Frozen);
    assert_eq!(web.handle.status().eta(), None);

    let woken = Instant::now();
    web.wake().await;
    assert!(woken.elapsed() < COLD, "resumed, not started cold");
    let ready = web.entered(State::Awake).await;
    assert_eq!(ready.detail["woke_from"], "frozen", "{ready:?}");
    assert!(ready.reason.contains("resumed: it was frozen"), "{ready:?}");
    assert_eq!(
        web.fake.calls(),
        [Call::Status, Call::Start, Call::Stop, Call::Resume]
    );

    // Asleep frozen again: the ETA is that of the resume, not of the cold start.
    web.entered(State::Asleep).await;
    let eta = web.handle.status().eta().unwrap();
    assert!(eta < Duration::from_secs(1), "{eta:?}");
    let frozen = expected_boot(&web.store, "web", SleepMode::Frozen).unwrap();
    let cold = expected_boot(&web.store, "web", SleepMode::Stopped).unwrap();
    assert_eq!(frozen, eta);
    assert!(
        cold >= COLD && cold < COLD + Duration::from_secs(5),
        "{cold:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn found_frozen_at_start_up_it_stays_asleep_frozen_until_a_wake_resumes_it() {
    let mut web = Running::start_with("", |fake| {
        fake.sleeps(SleepMode::Frozen, None);
        fake.set_status(Status::Sleeping(SleepMode::Frozen));
    })
    .await;
    let asleep = web.entered(State::Asleep).await;
    assert!(
        asleep
            .reason
            .starts_with("wakegate started and found the backend frozen"),
        "{asleep:?}"
    );
    assert_eq!(Cause::of(&asleep.detail), Some(Cause::Reconcile));
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Frozen);
    tokio::time::sleep(HOUR).await;
    assert_eq!(web.fake.calls(), [Call::Status], "nothing was done to it");
    web.wake().await;
    assert_eq!(web.fake.calls(), [Call::Status, Call::Resume]);
}

#[tokio::test(start_paused = true)]
async fn a_server_killed_in_its_frozen_sleep_is_noticed_and_starts_cold_next_time() {
    let mut web = freezing(r#"idle_timeout = "1m""#, None).await;
    web.wake().await;
    web.entered(State::Asleep).await;
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Frozen);

    web.fake.crash("signal 9 (SIGKILL)");
    let noticed = web.next(|e| e.kind == Kind::Warning).await;
    assert_eq!(
        noticed.reason,
        "the frozen server exited in its sleep (signal 9 (SIGKILL)); the next wake starts it cold"
    );
    assert_eq!(noticed.detail["exit"], "signal 9 (SIGKILL)");
    assert_eq!(noticed.state, State::Asleep);
    let status = web.handle.status();
    assert_eq!(status.sleep_mode, SleepMode::Stopped);
    // The cold start's history is back in the ETA.
    assert_eq!(
        status.expected_boot,
        expected_boot(&web.store, "web", SleepMode::Stopped)
    );

    web.wake().await;
    assert_eq!(web.fake.calls().last(), Some(&Call::Start));
}

#[tokio::test(start_paused = true)]
async fn after_its_sleep_limit_a_frozen_server_is_stopped_for_real() {
    let mut web = freezing(r#"idle_timeout = "1m""#, Some(12 * HOUR)).await;
    web.wake().await;
    web.entered(State::Asleep).await;
    let frozen = Instant::now();

    let stopping = web.entered(State::Stopping).await;
    let slept = frozen.elapsed();
    assert!(slept >= 12 * HOUR && slept < 12 * HOUR + MIN, "{slept:?}");
    assert_eq!(stopping.detail["trigger"], "sleep_limit", "{stopping:?}");
    assert!(
        stopping.reason.starts_with("frozen for 12h"),
        "{stopping:?}"
    );
    let asleep = web.entered(State::Asleep).await;
    assert!(
        asleep.reason.starts_with("backend stopped after"),
        "{asleep:?}"
    );
    assert_eq!(asleep.detail["sleep_mode"], "stopped");
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Stopped);
    assert_eq!(web.fake.calls().last(), Some(&Call::StopForReal));

    // Stopped for real, it has no limit left to reach; the next stop freezes it again.
    tokio::time::sleep(24 * HOUR).await;
    assert_eq!(web.handle.state(), State::Asleep);
    web.wake().await;
    assert_eq!(web.fake.calls().last(), Some(&Call::Start));
    web.entered(State::Asleep).await;
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Frozen);
}

#[tokio::test(start_paused = true)]
async fn a_restart_and_a_failed_wake_stop_a_freezing_server_for_real() {
    let mut web = freezing(r#"idle_timeout = "1h""#, None).await;
    web.wake().await;
    web.handle
        .unhealthy(HealthAction::Restart, "the health check failed".into())
        .await
        .unwrap();
    web.entered(State::Stopping).await;
    web.entered(State::Awake).await;
    let calls = web.fake.calls();
    assert_eq!(
        &calls[calls.len() - 2..],
        [Call::StopForReal, Call::Start],
        "{calls:?}"
    );

    web.handle.sleep("test").await.unwrap().unwrap();
    web.entered(State::Asleep).await;
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Frozen);
    web.fake.fail_next_start("the server did not resume");
    web.handle.wake("test").await.unwrap().unwrap();
    web.entered(State::Failed).await;
    assert_eq!(web.fake.calls().last(), Some(&Call::StopForReal));
    assert_eq!(web.handle.status().sleep_mode, SleepMode::Stopped);
}
