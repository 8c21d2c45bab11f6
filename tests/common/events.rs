//! Waiting on what a service does: its state, and its events by their typed fields (`kind`,
//! `state`, `detail["trigger"]`, …) rather than by the prose of `reason`, which is for people.

use tokio::sync::broadcast::Receiver;
use wakegate::event::{Event, Kind, Published, State};
use wakegate::service::ServiceHandle;

use super::DEADLINE;

/// Waits until the service is in `state`.
pub async fn wait_state(service: &ServiceHandle, state: State) {
    let mut watch = service.watch();
    tokio::time::timeout(DEADLINE, watch.wait_for(|s| s.state == state))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} did not become {state}; it is {:?}",
                service.name(),
                service.status()
            )
        })
        .unwrap();
}

/// Puts every service to sleep (an `exec` backend keeps running through a shutdown), then
/// shuts the gateway down: a test leaves no server behind.
pub async fn sleep_then_shutdown(app: wakegate::app::App) {
    for service in app.services() {
        service.sleep("test").await.unwrap().unwrap();
        wait_state(service, State::Asleep).await;
    }
    app.shutdown().await;
}

/// Collects transitions from `events` until one reaches `state`.
pub async fn transitions_until(events: &mut Receiver<Published>, state: State) -> Vec<Event> {
    let mut seen = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.recv().await.unwrap().event().clone();
            if event.kind == Kind::Transition {
                let done = event.state == state;
                seen.push(event);
                if done {
                    return;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no transition to {state}; saw {seen:#?}"));
    seen
}

/// Collects every event of a service until one matches `done`.
pub async fn events_until(
    events: &mut Receiver<Published>,
    done: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            let event = events.recv().await.unwrap().event().clone();
            let stop = done(&event);
            seen.push(event);
            if stop {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "the awaited event never came; saw {seen:#?}");
    seen
}

/// Waits for the next event of `events` that matches `want` and returns it; the events before
/// it are shown if none comes.
pub async fn wait_event(events: &mut Receiver<Published>, want: impl Fn(&Event) -> bool) -> Event {
    events_until(events, want).await.pop().unwrap()
}

/// Whether `event` is a transition to `state`.
pub fn is_transition(event: &Event, state: State) -> bool {
    event.kind == Kind::Transition && event.state == state
}

/// The event's `detail[key]` as text ("" when it has none): `trigger`, `client`, `exit`, …
pub fn detail<'a>(event: &'a Event, key: &str) -> &'a str {
    event.detail[key].as_str().unwrap_or("")
}
