//! `[discovery.docker]`: containers labelled `wakegate.enable=true` become services, live.
//! One scenario (its steps in order): every gateway would discover every labelled container on
//! the engine, so two discovery tests side by side would see each other's.

use std::io::Read;
use std::net::TcpStream;

use super::common::*;
use super::fixtures::*;

/// The labels of a discovered service on the host network: its name, its tcp bind, the
/// port its server listens on, and more.
fn labels(name: &str, bind: std::net::SocketAddr, port: u16, more: &[&str]) -> Vec<String> {
    let mut labels: Vec<String> = [
        "wakegate.enable=true".to_string(),
        format!("wakegate.name={name}"),
        format!("wakegate.bind={bind}"),
        format!("wakegate.port={port}"),
        "wakegate.network=host".to_string(),
    ]
    .to_vec();
    labels.extend(more.iter().map(|l| l.to_string()));
    labels
        .into_iter()
        .flat_map(|l| ["--label".to_string(), l])
        .collect()
}

/// Creates a labelled container serving the page on `port`.
fn labelled(tag: &Tag, what: &str, port: u16, labels: &[String]) -> String {
    let extra: Vec<&str> = labels.iter().map(String::as_str).collect();
    tag.serving(what, port, &extra)
}

#[test]
fn labelled_containers_come_and_go_as_services_and_a_bad_label_is_skipped() {
    let podman = podman();
    let tag = Tag::new("disc");
    let dir = temp_dir("docker-discovery");
    let (early, late, bad) = (
        format!("early-{}", tag.0),
        format!("late-{}", tag.0),
        format!("bad-{}", tag.0),
    );

    // One container is there before wakegate starts.
    let (early_port, early_listen) = (free_addr().port(), free_addr());
    labelled(
        &tag,
        "early",
        early_port,
        &labels(&early, early_listen, early_port, &[]),
    );
    // A configured service, with a connection that must live through the others' changes.
    let steady_backend = free_addr();
    let steady_listen = free_addr();
    let config = gateway(&dir)
        .service(
            svc("steady")
                .process(&echo(steady_backend, "0s"), steady_backend)
                .tcp(steady_listen),
        )
        .raw(&format!(
            "[discovery.docker]\nsocket = {:?}\n",
            podman.url()
        ));
    let mut gateway = start(&dir, &config);
    let found = gateway.wait_for("Discovered a service");
    assert!(found.contains(&early), "{found}");
    assert_eq!(get(early_listen), PAGE);
    assert_eq!(gateway.service(&early)["state"], "awake");

    let mut steady = TcpStream::connect(steady_listen).unwrap();
    assert_eq!(echo_back(&mut steady, b"before"), b"before");

    // A container created while wakegate runs becomes a service, and a client wakes it.
    let (late_port, late_listen) = (free_addr().port(), free_addr());
    let late_container = labelled(
        &tag,
        "late",
        late_port,
        &labels(&late, late_listen, late_port, &["wakegate.idle_timeout=1h"]),
    );
    let found = gateway.wait_for("Discovered a service");
    assert!(found.contains(&late), "{found}");
    assert_eq!(get(late_listen), PAGE);
    assert_eq!(podman.state(&late_container).as_deref(), Some("running"));

    // A label that does not parse: that container alone is skipped, with an event and a log
    // line naming the container and the label.
    let bad_listen = free_addr();
    let bad_container = labelled(
        &tag,
        "bad",
        free_addr().port(),
        &labels(&bad, bad_listen, 1, &["wakegate.idle_timeout=soon"]),
    );
    let line = gateway.wait_for("does not parse");
    assert!(
        line.contains(&bad_container) && line.contains("wakegate.idle_timeout"),
        "{line}"
    );
    // Its service does not exist: the event is among all the gateway's, once stored (the
    // log line may come first).
    let deadline = std::time::Instant::now() + DEADLINE;
    let warning = loop {
        let all = api_json(gateway.api(), "GET", "/api/v1/events?limit=500");
        let found = all["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["service"] == bad.as_str() && e["kind"] == "warning")
            .cloned();
        if let Some(warning) = found {
            break warning;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no warning event for the skipped container"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(warning["detail"]["label"], "wakegate.idle_timeout");
    assert_eq!(warning["detail"]["container"], bad_container.as_str());
    let (status, _) = http(gateway.api(), "GET", &format!("/api/v1/services/{bad}"), "").unwrap();
    assert_eq!(status, 404);
    assert!(TcpStream::connect(bad_listen).is_err());

    // The running container removed: its service goes away, its socket closes.
    podman.cli(&["rm", "--force", "--time", "0", &late_container]);
    let gone = gateway.wait_for("Took a discovered service away");
    assert!(gone.contains(&late), "{gone}");
    let (status, _) = http(
        gateway.api(),
        "GET",
        &format!("/api/v1/services/{late}"),
        "",
    )
    .unwrap();
    assert_eq!(status, 404);
    assert!(TcpStream::connect(late_listen).is_err());

    // Nothing else was touched: the other discovered service, and the open connection.
    assert_eq!(get(early_listen), PAGE);
    assert_eq!(echo_back(&mut steady, b"after"), b"after");
    steady.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    steady.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}
