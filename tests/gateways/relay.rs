//! What reaches the gateway that does not own the service and must reach the owner: a
//! keep-awake lease taken or ended through its API, and the reports and pre-stop of the
//! service's agent, whose `gateway` is the follower (as behind a load balancer that sent it
//! there).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::*;

/// A lease's ids in a gateway's view of the service.
fn leases(gateway: &Wakegate) -> Vec<i64> {
    gateway.service("echo")["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_i64().unwrap())
        .collect()
}

/// Fails if the owner stops the service within `time`.
fn stays_awake(owner: &Wakegate, time: Duration) {
    let quiet = Instant::now();
    while quiet.elapsed() < time {
        assert_eq!(state(owner), "awake", "stopped while kept awake");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_lease_taken_and_ended_through_the_follower_wakes_and_keeps_the_service_at_the_owner() {
    let pair = Pair::new("relay-lease", "200ms", "1s");
    let (mut a, b) = pair.start();

    // Taken through the follower: the owner wakes the service for it.
    let (status, body) = http(
        b.api(),
        "POST",
        "/api/v1/services/echo/leases",
        r#"{"duration": "1h", "reason": "raid night"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    let taken = a.wait_for(&format!("lease #{id} taken by"));
    assert!(taken.contains("through gateway gw-b"), "{taken}");
    assert!(taken.contains("raid night"), "{taken}");
    until("the owner woke it for the lease", || state(&a) == "awake");
    until("both gateways show the lease", || {
        leases(&a) == [id] && leases(&b) == [id]
    });

    // No client at all, and it stays awake past several idle timeouts.
    stays_awake(&a, Duration::from_secs(3));

    // Ended through the follower: the owner drops it, and the idle stop follows.
    let (status, body) = http(
        b.api(),
        "DELETE",
        &format!("/api/v1/services/echo/leases/{id}"),
        "",
    )
    .unwrap();
    assert!(status < 300, "{status} {body}");
    let ended = a.wait_for(&format!("lease #{id} ended by"));
    assert!(ended.contains("through gateway gw-b"), "{ended}");
    a.wait_for("no connection for");
    a.wait_for("backend stopped");
    until("no lease shown on either", || {
        leases(&a).is_empty() && leases(&b).is_empty()
    });
    // A lease that is not in force any more is not ended again.
    let (status, _) = http(
        b.api(),
        "DELETE",
        &format!("/api/v1/services/echo/leases/{id}"),
        "",
    )
    .unwrap();
    assert_eq!(status, 404);
    assert_eq!(pair.starts(), 1);
}

/// `wakegate agent` as on the server, killed when dropped.
struct Agent(Child);

impl Agent {
    fn start(dir: &Path, api: SocketAddr, rest: &str) -> Agent {
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "gateway = \"http://{api}\"\nservice = \"echo\"\ntoken = \"unused\"\nhost = \"test-host\"\nreport_interval = \"1s\"\ncheck_interval = \"200ms\"\n{rest}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(WAKEGATE)
            .args(["agent", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_agent_reporting_to_the_follower_keeps_the_service_awake_and_runs_its_pre_stop_for_the_owner()
{
    let pair = Pair::new("relay-agent", "200ms", "1s");
    let (mut a, b) = pair.start();
    let count = pair.dir.join("count");
    let saved = pair.dir.join("saved");
    std::fs::write(&count, "1\n").unwrap();
    let _agent = Agent::start(
        &pair.dir,
        b.api(),
        &format!(
            "count_command = \"cat {}\"\npre_stop = \"touch {}\"",
            count.display(),
            saved.display()
        ),
    );

    // Woken by a client, which leaves: the agent's count (1), reported to the follower, is
    // what the owner counts.
    let mut client = TcpStream::connect(pair.listen[0]).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(echo_back(&mut client, b"hi\n"), b"hi\n");
    drop(client);
    until("the owner shows the agent's report", || {
        let view = a.service("echo");
        view["agent"]["host"] == "test-host" && view["agent"]["active"] == true
    });
    let began = a.wait_for("the agent on test-host began reporting");
    assert!(began.contains("count 1"), "{began}");
    stays_awake(&a, Duration::from_secs(3));

    // Nobody left: the owner stops it, after the pre-stop the agent ran (asked through the
    // follower, answered there, passed on to the owner).
    std::fs::write(&count, "0\n").unwrap();
    a.wait_for("no connection for");
    a.wait_for("asking the agent on test-host to run its pre-stop command");
    a.wait_for("the agent's pre-stop command finished after");
    a.wait_for("backend stopped");
    assert!(saved.exists(), "the pre-stop command did not run");
    assert_contiguous(&event_ids(&a));
    assert_eq!(pair.starts(), 1);
}
