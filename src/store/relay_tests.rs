//! What a gateway that does not own a service passes on through the database, and the lock
//! between the owner's idle stop and another gateway's first client.

use std::sync::Arc;
use std::time::Duration;

use super::postgres_server;
use super::*;
use crate::config::de::Secret;
use crate::event::State;

async fn pair(database: &str) -> (Arc<Store>, Arc<Store>) {
    let location = Location::Postgres(Secret::new(postgres_server::shared().database(database)));
    let open = |id: &str| {
        let location = location.clone();
        let member = Membership {
            id: id.into(),
            lease: Duration::from_secs(5),
        };
        tokio::task::spawn_blocking(move || {
            Store::connect_as(&location, std::path::Path::new("/nonexistent"), &member)
        })
    };
    let a = Arc::new(open("gw-a").await.unwrap().unwrap());
    let b = Arc::new(open("gw-b").await.unwrap().unwrap());
    (a, b)
}

fn awake_at(address: &str) -> Mirror {
    Mirror {
        owner: "gw-a".into(),
        state: Some(State::Awake),
        since: Some(now()),
        address: Some(address.parse().unwrap()),
        last_error: None,
        pre_stop: None,
    }
}

/// The owner's idle stop and another gateway's first client never both go ahead: in every
/// round, run at the same time, either the client is counted (and the owner does not stop) or
/// the owner stops (and the client is not let through, the state being `stopping`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stop_and_a_first_client_through_another_gateway_exclude_each_other() {
    let (a, b) = pair("relay_lock").await;
    let (ca, cb) = (a.cluster().unwrap(), b.cluster().unwrap());
    assert!(ca.claim("web").await.unwrap().mine);

    // One after the other: a counted client keeps it from stopping; once gone, it stops, and
    // a client that comes then is not let through.
    assert!(ca.publish("web", awake_at("127.0.0.1:9")).await.unwrap());
    assert_eq!(
        cb.admit("web").await.unwrap(),
        Some("127.0.0.1:9".parse().unwrap())
    );
    assert!(
        !ca.stop_if_unused("web").await.unwrap(),
        "stopped under a client"
    );
    cb.set_connections("web", 0).await.unwrap();
    assert!(ca.stop_if_unused("web").await.unwrap());
    assert_eq!(
        cb.mirror("web").await.unwrap().unwrap().state,
        Some(State::Stopping)
    );
    assert_eq!(cb.admit("web").await.unwrap(), None);
    // Only the owner may decide a stop.
    assert!(ca.publish("web", awake_at("127.0.0.1:9")).await.unwrap());
    assert!(!cb.stop_if_unused("web").await.unwrap());

    // At the same time, many rounds: never both.
    let (mut stops, mut admits) = (0, 0);
    for _ in 0..60 {
        assert!(ca.publish("web", awake_at("127.0.0.1:9")).await.unwrap());
        cb.set_connections("web", 0).await.unwrap();
        let (stop, admit) = tokio::join!(ca.stop_if_unused("web"), cb.admit("web"));
        let (stop, admit) = (stop.unwrap(), admit.unwrap());
        assert!(
            stop != admit.is_some(),
            "the stop and the client went ahead together (or neither): {stop} {admit:?}"
        );
        stops += usize::from(stop);
        admits += usize::from(admit.is_some());
    }
    assert_eq!(stops + admits, 60);
}

/// A lease taken through another gateway is in the database for the owner to read, with the
/// owner told; one ended there is ended once, and only while in force.
#[tokio::test]
async fn leases_taken_and_ended_through_another_gateway_reach_the_owner() {
    let (a, b) = pair("relay_leases").await;
    let (ca, cb) = (a.cluster().unwrap(), b.cluster().unwrap());
    assert!(ca.claim("web").await.unwrap().mine);
    let mut heard = ca.subscribe();

    let lease = b
        .add_lease("web", "raid night", "ops", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(ca.active_leases("web").await.unwrap(), vec![lease.clone()]);
    // The owner is told (told again until it hears: its listener may not be listening yet).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let told = loop {
        cb.leases_changed("web", "ops").await.unwrap();
        let wait = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                if let Ok(Signal::Leases { s, g, by }) = heard.recv().await {
                    return (s, g, by);
                }
            }
        });
        if let Ok(told) = wait.await {
            break told;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the owner never heard"
        );
    };
    assert_eq!(told, ("web".into(), "gw-b".into(), "ops".into()));

    assert!(cb.end_lease("web", lease.id, "ops").await.unwrap());
    assert!(
        !cb.end_lease("web", lease.id, "ops").await.unwrap(),
        "ended twice"
    );
    assert!(!cb.end_lease("web", 999_999, "ops").await.unwrap());
    assert_eq!(ca.active_leases("web").await.unwrap(), vec![]);
}
