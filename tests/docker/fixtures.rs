//! The fixtures of the container tests: one Podman API service for the test binary (its start,
//! the image and the CLI are in `podman.rs`), and a label per test by which its containers are
//! removed when it ends.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::common::*;
pub use super::podman::{IMAGE, PAGE, Podman, TEST_LABEL};

/// The Podman service of this test binary, started on first use, and the image imported.
pub fn podman() -> &'static Podman {
    static PODMAN: OnceLock<Podman> = OnceLock::new();
    PODMAN.get_or_init(|| Podman::start(&temp_dir("podman")))
}

/// One test's containers: unique names, the test label, removed when the test ends (however
/// it ends).
pub struct Tag(pub String);

impl Tag {
    pub fn new(test: &str) -> Tag {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        Tag(format!(
            "{test}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// A container name of this test.
    pub fn name(&self, what: &str) -> String {
        format!("wg-{}-{what}", self.0)
    }

    /// `--label wakegate-test=TAG`, for `podman create`.
    pub fn label(&self) -> String {
        format!("{TEST_LABEL}={}", self.0)
    }

    /// Creates a container of the test image on the host network, with the test label and
    /// an init (so a stop's SIGTERM reaches the server): `extra` options, then the command.
    pub fn create(&self, name: &str, extra: &[&str], command: &[&str]) {
        let label = self.label();
        let mut args = vec![
            "create",
            "--name",
            name,
            "--label",
            &label,
            "--init",
            "--network",
            "host",
        ];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        args.extend_from_slice(command);
        podman().cli(&args);
    }
}

impl Tag {
    /// Creates a container serving the page on `port` (busybox httpd), with `extra` options;
    /// returns its name.
    pub fn serving(&self, what: &str, port: u16, extra: &[&str]) -> String {
        let name = self.name(what);
        let command = httpd(port);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        self.create(&name, extra, &command);
        name
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        let podman = podman();
        for name in podman.named(TEST_LABEL, &self.0) {
            let _ = podman.try_cli(&["rm", "--force", "--time", "0", &name]);
        }
    }
}

/// busybox httpd serving the page on `port` of the host's loopback, in the foreground.
pub fn httpd(port: u16) -> Vec<String> {
    [
        "httpd",
        "-f",
        "-p",
        &format!("127.0.0.1:{port}"),
        "-h",
        "/www",
    ]
    .map(String::from)
    .to_vec()
}

/// GETs `/` through `addr` (HTTP/1.0 over a plain TCP listener) and returns the body.
pub fn get(addr: SocketAddr) -> String {
    use std::io::Read;
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string())
}

/// The `[service.backend]` of a container on the host network, on `port`, through the
/// fixture's socket.
pub fn docker_backend(container: &str, port: u16) -> Table {
    typed("docker")
        .set("socket", podman().url())
        .set("container", container)
        .set("network", "host")
        .set("port", port as i64)
}

/// The transitions of a service, as the API lists them.
pub fn transitions(gateway: &Wakegate, service: &str) -> Vec<String> {
    gateway
        .events(service)
        .iter()
        .filter(|e| e["kind"] == "transition")
        .map(|e| e["state"].as_str().unwrap().to_string())
        .collect()
}

/// Starts `wakegate run` on `config` written into `dir`.
pub fn start(dir: &Path, config: &Config) -> Wakegate {
    Wakegate::start(&config.write(&dir.join("wakegate.toml")))
}
