//! Geyser's shape: one Java server that Bedrock players reach too, behind one service with a
//! `minecraft` and a `bedrock` listener (as examples/geyser.toml). The backend is
//! tests/peers/bedrock/geyser.js: flying-squid for Java and bedrock-protocol's server for
//! Bedrock in one process, whose Java status ping counts the players of both editions, as
//! Geyser's does. A join on either listener wakes the one server; players of either edition
//! keep it awake.

use std::net::SocketAddr;

use wakegate::event::State;

use super::*;

/// The Java edition the server and the Java bots speak.
const JAVA: &str = "1.20.4";

struct Geyser {
    app: App,
    /// The minecraft and bedrock listeners.
    java: SocketAddr,
    bedrock: SocketAddr,
    /// The server's own Bedrock address (Geyser's port).
    backend_bedrock: SocketAddr,
}

impl Geyser {
    async fn start(dir: &Path) -> Geyser {
        let (backend_java, backend_bedrock) = (free_addr(), free_udp_addr());
        let (java, bedrock) = (free_addr(), free_udp_addr());
        let command = [
            "node".to_string(),
            peers().join("geyser.js").display().to_string(),
            backend_java.port().to_string(),
            backend_bedrock.port().to_string(),
            JAVA.to_string(),
            VERSION.to_string(),
        ];
        let service = svc("mc")
            .idle("1s")
            .wake_timeout("60s")
            .set("player_poll", "300ms")
            .process(&command, backend_java)
            .readiness(typed("log").set("pattern", r"Done \(\d"))
            .listen(listener("minecraft", java).set("hold_timeout", "25s"))
            .listen(
                listener("bedrock", bedrock)
                    .set("backend_port", backend_bedrock.port())
                    .set("version", VERSION)
                    .set("motd_asleep", "geyser asleep")
                    .set("session_idle", "5s"),
            );
        let app = gateway(dir).service(service).start().await;
        Geyser {
            app,
            java,
            bedrock,
            backend_bedrock,
        }
    }

    fn mc(&self) -> &wakegate::service::ServiceHandle {
        self.app.service("mc").unwrap()
    }

    /// Waits until the server's Java status ping counts `n` players.
    async fn until_players(&self, n: u32) {
        let mut watch = self.mc().watch();
        tokio::time::timeout(PEER_DEADLINE, watch.wait_for(|s| s.players == Some(n)))
            .await
            .unwrap_or_else(|_| panic!("the player poll never counted {n} players"))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bedrock_join_wakes_the_java_server_and_java_players_join_it_too() {
    let dir = temp_dir("geyser-bedrock-first");
    let gw = Geyser::start(&dir).await;
    // Asleep, the Bedrock server list shows the sleeping MOTD.
    assert_eq!(ping(gw.bedrock).await["motd"], "geyser asleep");
    assert_eq!(gw.mc().state(), State::Asleep);

    let mut bedrock_player = join(gw.bedrock, "pocket", 10_000);
    bedrock_player.spawned().await;
    assert_eq!(gw.mc().state(), State::Awake);
    // The Java server counts the Bedrock player (Geyser's players are Java players).
    gw.until_players(1).await;
    // Awake, the Bedrock list shows the server's own pong.
    assert_eq!(ping(gw.bedrock).await["motd"], "geyser server");

    let mut java_player = Bots::join(gw.java.port(), "localhost", JAVA, &["javabot"]);
    java_player.spawned("javabot").await;
    gw.until_players(2).await;
    // The Bedrock player leaves after its ten seconds; the Java one keeps it awake.
    bedrock_player.finish().await.assert_spawned();
    gw.until_players(1).await;
    assert_eq!(gw.mc().state(), State::Awake);
    java_player.quit().await;
    wait_state(gw.mc(), State::Asleep).await;
    assert_eq!(starts_in_log(&dir, "mc"), 1);
    gw.app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_java_join_wakes_it_and_a_bedrock_player_on_the_server_keeps_it_awake() {
    let dir = temp_dir("geyser-java-first");
    let gw = Geyser::start(&dir).await;
    let mut java_player = Bots::join(gw.java.port(), "localhost", JAVA, &["javabot"]);
    java_player.spawned("javabot").await;
    assert_eq!(gw.mc().state(), State::Awake);
    // A Bedrock player straight on Geyser's port, past wakegate: no session of wakegate's holds
    // the service, only the players the Java status ping counts.
    let mut bedrock_player = join(gw.backend_bedrock, "pocket", 6000);
    bedrock_player.spawned().await;
    gw.until_players(2).await;
    java_player.quit().await;
    gw.until_players(1).await;
    // The Bedrock player stays its six seconds, six times the idle timeout: still awake.
    bedrock_player.finish().await.assert_spawned();
    assert_eq!(gw.mc().state(), State::Awake);
    wait_state(gw.mc(), State::Asleep).await;
    assert_eq!(starts_in_log(&dir, "mc"), 1);
    gw.app.shutdown().await;
}
