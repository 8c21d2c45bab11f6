//! The `docker` backend's config, read from whole config files, and the address read from an
//! inspected container (the engine's JSON, as Docker and Podman write it). Its calls to a real
//! engine are tested against Podman in `tests/docker/`.

use std::time::Duration;

use bollard::models::ContainerInspectResponse;

use super::address_of;
use super::config::{Address, Docker, PortMap, Select};
use crate::backend::config::Backend;

fn service(backend: &str) -> String {
    format!(
        r#"
[[service]]
name = "mc"
[service.backend]
type = "docker"
{backend}
[[service.listen]]
type = "tcp"
bind = "127.0.0.1:0"
"#
    )
}

fn docker(backend: &str) -> Docker {
    let config =
        crate::config::parse(&service(backend), "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let Backend::Docker(docker) = config.services[0].backend.clone() else {
        panic!("not docker")
    };
    docker
}

fn problems(backend: &str) -> String {
    crate::config::parse(&service(backend), "test.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn a_container_by_name_with_its_defaults() {
    let d = docker("container = \"mc\"\nport = 25565");
    assert_eq!(d.select, Select::Name("mc".into()));
    assert_eq!(d.address, Address::Published(25565));
    assert_eq!(d.stop_timeout, Duration::from_secs(30));
    assert!(!d.pause && !d.remove && d.create.is_none() && d.socket.is_none());
}

#[test]
fn labels_network_pause_and_socket() {
    let d = docker(
        r#"labels = { app = "mc", tier = "games" }
network = "games"
port = 25565
sleep_mode = "pause"
socket = "unix:///run/podman/podman.sock"
stop_timeout = "2m""#,
    );
    assert_eq!(
        d.select,
        Select::Labels(vec![
            ("app".into(), "mc".into()),
            ("tier".into(), "games".into())
        ])
    );
    assert_eq!(
        d.address,
        Address::Network {
            network: "games".into(),
            port: 25565
        }
    );
    assert!(d.pause);
    assert_eq!(d.socket.as_deref(), Some("unix:///run/podman/podman.sock"));
    assert_eq!(d.stop_timeout, Duration::from_secs(120));
}

#[test]
fn an_image_alone_selects_the_container_wakegate_created() {
    let d = docker(
        r#"image = "itzg/minecraft-server"
address = "127.0.0.1:25565"
remove = true
[service.backend.create]
command = ["/start"]
env = { EULA = "TRUE" }
ports = ["127.0.0.1:25565:25565", "19132/udp"]
volumes = ["mc-data:/data", "/srv/config:/config:ro"]
labels = { owner = "ops" }
init = true"#,
    );
    assert_eq!(d.select, Select::Created);
    assert!(d.remove);
    let create = d.create.unwrap();
    assert_eq!(create.image, "itzg/minecraft-server");
    assert_eq!(create.command, ["/start"]);
    assert_eq!(create.env[0].0, "EULA");
    assert_eq!(create.env[0].1.expose(), "TRUE");
    assert_eq!(create.ports.len(), 2);
    assert_eq!(create.volumes.len(), 2);
    assert_eq!(
        create.labels,
        vec![("owner".to_string(), "ops".to_string())]
    );
    assert!(create.init);
}

#[test]
fn each_mistake_is_told_with_what_to_do() {
    for (backend, message) in [
        ("port = 80", "names no container"),
        (
            "container = \"a\"\nlabels = { x = \"y\" }\nport = 80",
            "both `container` and `labels`",
        ),
        ("labels = {}\nport = 80", "`labels` is empty"),
        ("container = \"a\"", "does not say where the server listens"),
        (
            "container = \"a\"\nport = 80\naddress = \"h:1\"",
            "both `address` and `port`",
        ),
        (
            "container = \"a\"\nport = 80\nsleep_mode = \"freeze\"",
            "unknown sleep_mode `freeze`",
        ),
        (
            "container = \"a\"\nport = 80\nremove = true",
            "`remove = true` needs an `image`",
        ),
        (
            "image = \"x\"\nport = 80\nremove = true\nsleep_mode = \"pause\"",
            "cannot go together",
        ),
        (
            "container = \"a\"\nport = 80\nsocket = \"docker.sock\"",
            "not a Unix socket path",
        ),
        (
            "container = \"a\"\nport = 80\n[service.backend.create]\ninit = true",
            "needs an `image`",
        ),
        (
            "image = \"x\"\nport = 80\n[service.backend.create]\nports = [\"http\"]",
            "not a port mapping",
        ),
        (
            "image = \"x\"\nport = 80\n[service.backend.create]\nvolumes = [\"/data\"]",
            "not a volume",
        ),
        (
            "image = \"x\"\nport = 80\n[service.backend.create]\nlabels = { \"wakegate.service\" = \"y\" }",
            "wakegate's own",
        ),
        ("container = \"a\"\nport = 80\ncolour = \"blue\"", "colour"),
    ] {
        let text = problems(backend);
        assert!(text.contains(message), "{backend}: {text}");
    }
}

#[test]
fn container_readiness_needs_a_docker_backend() {
    let src = r#"
[[service]]
name = "web"
[service.backend]
type = "exec"
start = "true"
stop = "true"
address = "127.0.0.1:9"
[service.readiness]
type = "container"
[[service.listen]]
type = "tcp"
bind = "127.0.0.1:0"
"#;
    let err = crate::config::parse(src, "test.toml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a docker backend"), "{err}");
    let ok = service("container = \"a\"\nport = 80\n[service.readiness]\ntype = \"container\"");
    let config = crate::config::parse(&ok, "test.toml").unwrap();
    assert!(matches!(
        config.services[0].readiness.probe,
        crate::probe::Probe::Container
    ));
}

#[test]
fn port_mappings_read_as_docker_run_p() {
    let map = |t: &str| PortMap::parse(t);
    let m = map("8080:80").unwrap();
    assert_eq!(
        (m.container.as_str(), m.host_ip, m.host_port),
        ("80/tcp", None, Some(8080))
    );
    let m = map("127.0.0.1:8080:80").unwrap();
    assert_eq!(
        (m.host_ip.as_deref(), m.host_port),
        (Some("127.0.0.1"), Some(8080))
    );
    let m = map("127.0.0.1::80").unwrap();
    assert_eq!(
        (m.host_ip.as_deref(), m.host_port),
        (Some("127.0.0.1"), None)
    );
    let m = map("[::1]:8080:80").unwrap();
    assert_eq!(m.host_ip.as_deref(), Some("::1"));
    assert_eq!(map("19132/udp").unwrap().container, "19132/udp");
    for bad in ["", "http", "0", "80/icmp", "70000:80", "a:b:c:d"] {
        assert_eq!(map(bad), None, "{bad}");
    }
}

fn inspected(json: serde_json::Value) -> ContainerInspectResponse {
    serde_json::from_value(json).unwrap()
}

#[test]
fn the_address_is_read_from_the_network_or_the_published_port() {
    let info = inspected(serde_json::json!({
        "Name": "/mc",
        "NetworkSettings": {
            "Networks": {"games": {"IPAddress": "10.89.0.5"}, "podman": {"IPAddress": ""}},
            "Ports": {
                "25565/tcp": [{"HostIp": "", "HostPort": "31000"}],
                "8080/tcp": [{"HostIp": "127.0.0.2", "HostPort": "8081"}],
                "9000/tcp": [{"HostIp": "::", "HostPort": "9001"}],
                "7000/tcp": null
            }
        }
    }));
    let network = |n: &str, port| Address::Network {
        network: n.into(),
        port,
    };
    assert_eq!(
        address_of(&info, &network("games", 25565)).unwrap(),
        "10.89.0.5:25565"
    );
    assert_eq!(
        address_of(&info, &network("host", 25565)).unwrap(),
        "127.0.0.1:25565"
    );
    let err = address_of(&info, &network("podman", 25565)).unwrap_err();
    assert!(
        err.contains("no IP on network `podman`") && err.contains("games, podman"),
        "{err}"
    );
    assert_eq!(
        address_of(&info, &Address::Published(25565)).unwrap(),
        "127.0.0.1:31000"
    );
    assert_eq!(
        address_of(&info, &Address::Published(8080)).unwrap(),
        "127.0.0.2:8081"
    );
    assert_eq!(
        address_of(&info, &Address::Published(9000)).unwrap(),
        "[::1]:9001"
    );
    let err = address_of(&info, &Address::Published(7000)).unwrap_err();
    assert!(
        err.contains("publishes no host port for its port 7000/tcp"),
        "{err}"
    );
    assert_eq!(
        address_of(&info, &Address::Fixed("mc:1".into())).unwrap(),
        "mc:1"
    );
}
