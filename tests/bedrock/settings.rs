//! The bedrock listener's keys with real Bedrock peers: `wake_rate`, `motd_failed`,
//! `ping_cache`, `max_sessions`, `allow` and `deny`.

use std::time::Duration;

use wakegate::event::State;

use super::*;

#[tokio::test]
async fn wake_rate_limits_the_wakes_of_an_address_not_its_joins() {
    let dir = temp_dir("bedrock-rate");
    let gw = Bedrock::new(&dir, "wake_rate = \"1/1m\"").await;
    // The first join wakes it; a second one while it is awake counts for nothing.
    join(gw.addr, "first", 0).finish().await.assert_spawned();
    join(gw.addr, "warm", 0).finish().await.assert_spawned();
    gw.mc().sleep("the test").await.unwrap().unwrap();
    gw.until_state(State::Asleep).await;
    // Asleep again: this address has had its wake for the minute.
    let refused_before = gw.refused("rate_limited").await;
    let late = join_with(gw.addr, "late", 0, 3000);
    gw.until_refused("rate_limited", refused_before + 1).await;
    late.finish().await.assert_kept_out();
    assert_eq!(gw.mc().state(), State::Asleep);
    assert_eq!(starts_in_log(&dir, "mc"), 1);
    // A ping is still answered, with the sleeping MOTD.
    assert_eq!(ping(gw.addr).await["motd"], "zzz asleep");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_server_that_cannot_start_shows_the_failed_motd() {
    let dir = temp_dir("bedrock-failed");
    let backend = free_udp_addr();
    let service = svc("mc")
        .idle("1s")
        .wake_timeout("10s")
        .process(&["sh", "-c", "echo cannot start; exit 3"], backend)
        .readiness(typed("bedrock"))
        .listen(
            listener("bedrock", ANY_PORT)
                .set("version", VERSION)
                .set("motd_failed", "broken, join to retry"),
        );
    let gw = start(&dir, service, backend).await;
    let player = join_with(gw.addr, "hopeful", 0, 3000);
    gw.until_state(State::Failed).await;
    player.finish().await.assert_kept_out();
    // Each of the client's connection requests that came while it had failed tried again.
    gw.until_state(State::Failed).await;
    let starts = starts_in_log(&dir, "mc");
    let ad = ping(gw.addr).await;
    assert_eq!(ad["motd"], "broken, join to retry", "{ad}");
    assert_eq!(ad["playersOnline"], 0, "{ad}");
    let status = mcstatus_bedrock(gw.addr).await.unwrap();
    assert_eq!(status["motd"], "broken, join to retry", "{status}");
    // Pings do not try again.
    assert_eq!(gw.mc().state(), State::Failed);
    assert_eq!(starts_in_log(&dir, "mc"), starts);
    gw.app.shutdown().await;
}

/// Players online in the pong wakegate relays for an awake server whose listener keeps a pong
/// `cache` long: one ping before a player joins (straight to the server), one after.
async fn players_seen_with_ping_cache(name: &str, cache: &str) -> (u64, u64) {
    let dir = temp_dir(name);
    let backend = free_udp_addr();
    let service = bedrock_service(backend, 0, &format!("ping_cache = \"{cache}\""));
    let gw = start(&dir, service, backend).await;
    let lease = gw
        .mc()
        .add_lease(Duration::from_secs(120), "the test", "the test")
        .await
        .unwrap()
        .unwrap();
    gw.until_state(State::Awake).await;
    let before = ping(gw.addr).await;
    assert_eq!(before["motd"], "real bedrock server", "{before}");
    let player = join(backend, "direct", 60_000);
    // The server's own pong counts the player.
    let deadline = tokio::time::Instant::now() + PEER_DEADLINE;
    while ping(backend).await["playersOnline"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the player never got on"
        );
    }
    let after = ping(gw.addr).await;
    drop(player);
    gw.mc().end_lease(lease.id, "the test").await.unwrap();
    gw.app.shutdown().await;
    let online = |ad: &Value| ad["playersOnline"].as_u64().unwrap();
    (online(&before), online(&after))
}

#[tokio::test]
async fn a_long_ping_cache_answers_from_the_last_pong_and_none_asks_the_server_each_time() {
    assert_eq!(
        players_seen_with_ping_cache("bedrock-cache-60", "60s").await,
        (0, 0),
        "a pong cached a minute shows the players of the first ping"
    );
    assert_eq!(
        players_seen_with_ping_cache("bedrock-cache-0", "0s").await,
        (0, 1),
        "without a cache every ping reaches the server"
    );
}

#[tokio::test]
async fn max_sessions_lets_one_player_in_and_keeps_the_next_out() {
    let dir = temp_dir("bedrock-max");
    let gw = Bedrock::new(&dir, "max_sessions = 1\nsession_idle = \"30s\"").await;
    let first = join(gw.addr, "first", 60_000);
    gw.until_state(State::Awake).await;
    // The first player is in (its session is the one allowed) before the second tries.
    let deadline = tokio::time::Instant::now() + PEER_DEADLINE;
    while ping(gw.addr).await["playersOnline"] != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first player never got on"
        );
    }
    let second = join_with(gw.addr, "second", 0, 3000);
    gw.until_refused("max_sessions", 1).await;
    second.finish().await.assert_kept_out();
    assert_eq!(gw.sessions().await, 1);
    drop(first);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_denied_address_gets_no_pong_no_join_and_wakes_nothing() {
    let dir = temp_dir("bedrock-deny");
    let gw = Bedrock::new(&dir, "deny = [\"127.0.0.1\"]").await;
    let out = try_ping(gw.addr).await;
    assert!(!out.status.success(), "a denied address got a pong");
    assert!(mcstatus_bedrock(gw.addr).await.is_err());
    join_with(gw.addr, "denied", 0, 3000)
        .finish()
        .await
        .assert_kept_out();
    gw.until_refused("denied", 1).await;
    assert_eq!(gw.mc().state(), State::Asleep);
    assert_eq!(starts_in_log(&dir, "mc"), 0);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn an_allow_list_without_the_address_keeps_it_out() {
    let dir = temp_dir("bedrock-allow");
    let gw = Bedrock::new(&dir, "allow = [\"10.0.0.0/8\", \"127.0.0.2\"]").await;
    assert!(mcstatus_bedrock(gw.addr).await.is_err());
    join_with(gw.addr, "outsider", 0, 3000)
        .finish()
        .await
        .assert_kept_out();
    gw.until_refused("denied", 1).await;
    assert_eq!(gw.mc().state(), State::Asleep);
    gw.app.shutdown().await;
}
