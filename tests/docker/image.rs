//! The container image of deploy/Containerfile, built by Podman and run as its README says:
//! with a config from a volume (the default command) and with `wakegate demo`.
//!
//! No registry is reachable here, so the two images the file starts from are stood in for:
//! the runtime base (`debian:bookworm-slim`) by a minimal Debian bookworm made with debootstrap
//! and imported once, and the Rust build stage by the file's own `prebuilt` stage, fed the
//! binary built for these tests. The rest of the file runs as written, its `apt-get` included.

use std::path::Path;
use std::sync::OnceLock;

use super::common::*;
use super::fixtures::*;

/// The stand-in for `debian:bookworm-slim`.
const DEBIAN: &str = "localhost/wakegate-test-debian:bookworm";

/// Makes the Debian base once per machine (a few minutes: debootstrap downloads it).
fn debian_base() -> &'static str {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        let podman = podman();
        if podman
            .try_cli(&["image", "exists", DEBIAN])
            .status
            .success()
        {
            return;
        }
        let root = temp_dir("debian-rootfs");
        let out = std::process::Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&root)
            .arg("http://deb.debian.org/debian")
            .output()
            .expect("debootstrap is missing: run scripts/test, which installs it");
        assert!(
            out.status.success(),
            "debootstrap failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tar = root.with_extension("tar");
        let status = std::process::Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        podman.cli(&["import", &tar.display().to_string(), DEBIAN]);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(&tar);
    });
    DEBIAN
}

/// Builds deploy/Containerfile on the stand-ins; returns the image's name.
fn build(tag: &Tag) -> String {
    let base = debian_base();
    let context = temp_dir("image-context");
    std::fs::create_dir_all(context.join("target/release")).unwrap();
    std::fs::copy(WAKEGATE, context.join("target/release/wakegate")).unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Containerfile");
    let image = format!("localhost/wakegate-image-test:{}", tag.0);
    podman().cli(&[
        "build",
        "--file",
        &file.display().to_string(),
        "--build-arg",
        "BINARY_FROM=prebuilt",
        "--build-arg",
        &format!("RUNTIME={base}"),
        "--tag",
        &image,
        &context.display().to_string(),
    ]);
    let _ = std::fs::remove_dir_all(&context);
    image
}

/// Waits for the container's gateway to listen on `addr`, then GETs / through it (a client
/// that is not a browser is held while the server wakes).
fn served(addr: std::net::SocketAddr) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container's gateway never listened on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    get(addr)
}

#[test]
fn the_image_builds_runs_a_config_from_a_volume_and_the_demo() {
    let podman = podman();
    let tag = Tag::new("image");
    let image = build(&tag);
    let user = podman.cli(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user, "wakegate", "the image must not run as root");
    let size = podman.cli(&["image", "inspect", "--format", "{{.Size}}", &image]);
    eprintln!("image {image}: {size} bytes (with the test build's unoptimized binary)");

    // The default command: `run` on the config mounted at /etc/wakegate/wakegate.toml, the
    // state in the /data volume, a service whose server is wakegate's own demo server.
    let dir = temp_dir("image-config");
    let (listen, backend, api) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "[gateway]\ndata_dir = \"/data\"\napi = \"{api}\"\nshutdown_grace = \"1s\"\n\n\
         [[service]]\nname = \"web\"\nidle_timeout = \"2s\"\n\
         [service.backend]\ntype = \"process\"\naddress = \"{backend}\"\n\
         command = [\"wakegate\", \"demo-backend\", \"--listen\", \"{backend}\"]\n\
         [[service.listen]]\ntype = \"tcp\"\nbind = \"{listen}\"\n"
    );
    let path = dir.join("wakegate.toml");
    std::fs::write(&path, config).unwrap();
    let name = tag.name("config");
    let label = tag.label();
    let volume = format!("{}:/etc/wakegate/wakegate.toml:ro", path.display());
    podman.cli(&[
        "run",
        // Kept in a file, for `podman logs`, with no journald to send them to.
        "--log-driver",
        "k8s-file",
        "--detach",
        "--name",
        &name,
        "--label",
        &label,
        "--init",
        "--network",
        "host",
        "--volume",
        &volume,
        &image,
    ]);
    let page = served(listen);
    assert!(
        page.contains("Awake!") && page.contains("wakegate demo"),
        "{page}"
    );
    let view = api_json(api, "GET", "/api/v1/services/web");
    assert_eq!(view["state"], "awake", "{view}");
    // Idle for 2 s: stopped inside the container, as anywhere.
    let deadline = std::time::Instant::now() + DEADLINE;
    while api_json(api, "GET", "/api/v1/services/web")["state"] != "asleep" {
        assert!(std::time::Instant::now() < deadline, "never went to sleep");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A stop is a graceful shutdown (STOPSIGNAL SIGTERM through the init), exit code 0.
    podman.cli(&["stop", "--time", "30", &name]);
    let exit = podman.cli(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    // The container's stderr, where wakegate logs, comes out on podman's own.
    let out = podman.try_cli(&["logs", &name]);
    let logs = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(exit, "0", "{logs}");
    assert!(logs.contains("Stopped."), "{logs}");

    // `wakegate demo`, as the quick start runs it, inside the image.
    let (listen, api) = (free_addr(), free_addr());
    let name = tag.name("demo");
    podman.cli(&[
        "run",
        // Kept in a file, for `podman logs`, with no journald to send them to.
        "--log-driver",
        "k8s-file",
        "--detach",
        "--name",
        &name,
        "--label",
        &label,
        "--init",
        "--network",
        "host",
        &image,
        "demo",
        "--listen",
        &listen.to_string(),
        "--api",
        &api.to_string(),
        "--idle",
        "2s",
    ]);
    let page = served(listen);
    assert!(
        page.contains("Awake!") && page.contains("wakegate demo"),
        "{page}"
    );
    podman.cli(&["stop", "--time", "30", &name]);
    let exit = podman.cli(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit, "0", "{}", podman.cli(&["logs", &name]));
    let _ = podman.try_cli(&["rmi", "--force", &image]);
    // The build's intermediate stages, left untagged.
    let _ = podman.try_cli(&["image", "prune", "--force"]);
}
