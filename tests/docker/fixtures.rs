//! The fixtures of the container tests: one Podman API service for the test binary (rootful,
//! `runc`, the ulimits these machines need, from a `containers.conf` written here), the test
//! image imported from a busybox-static rootfs (no registry), the Podman CLI for what a user
//! does by hand, and a label per test by which its containers are removed when it ends.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::common::*;

/// The test image: busybox (its applets on the PATH) and a page to serve in /www.
pub const IMAGE: &str = "localhost/wakegate-test:latest";
/// What /www/index.html holds.
pub const PAGE: &str = "served from a container woken by wakegate";
/// The label that marks a test's containers.
pub const TEST_LABEL: &str = "wakegate-test";

pub struct Podman {
    /// The Docker-compatible API's Unix socket.
    pub socket: PathBuf,
    conf: PathBuf,
    /// Closing it (when this test process ends) makes the wrapper shell stop the service.
    _stdin: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

/// The Podman service of this test binary, started on first use, and the image imported.
pub fn podman() -> &'static Podman {
    static PODMAN: OnceLock<Podman> = OnceLock::new();
    PODMAN.get_or_init(|| {
        assert!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is missing: run scripts/test, which installs podman, runc and busybox-static"
        );
        let dir = temp_dir("podman");
        let conf = dir.join("containers.conf");
        // The engine's defaults fail here: crun on rlimits and hybrid cgroups, and the
        // default ulimits above what the machine allows.
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\n[engine]\nruntime = \"runc\"\n",
        )
        .unwrap();
        let socket = dir.join("podman.sock");
        let url = format!("unix://{}", socket.display());
        // The service may re-exec itself: the shell stops whatever process serves this
        // socket (its path is unique to this run), not the pid it started.
        let script = format!(
            "podman system service --time=0 {url} >{log} 2>&1 & read _; for pid in $(pgrep -f -x 'podman system service --time=0 {url}'); do kill $pid; done",
            log = dir.join("service.log").display(),
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .env("CONTAINERS_CONF", &conf)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let podman = Podman {
            socket,
            conf,
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !podman.answers() {
            assert!(
                Instant::now() < deadline,
                "the Podman service did not answer on {}; see {}",
                podman.socket.display(),
                dir.join("service.log").display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        podman.import_image(&dir);
        podman
    })
}

impl Podman {
    /// `unix://…` for DOCKER_HOST or `socket`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Whether the API answers `GET /_ping`.
    fn answers(&self) -> bool {
        use std::io::Read;
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        if stream
            .write_all(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.") && answer.contains("OK")
    }

    /// Builds the rootfs (busybox with its applet links, the page, /tmp) and imports it,
    /// unless the image of the same busybox and page is there from an earlier run.
    fn import_image(&self, dir: &Path) {
        use sha2::Digest;
        let busybox = std::fs::read("/bin/busybox")
            .expect("/bin/busybox is missing: run scripts/test, which installs busybox-static");
        let mut hash = sha2::Sha256::new();
        hash.update(&busybox);
        hash.update(PAGE);
        let made_of: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let label = format!("{{{{index .Config.Labels \"{TEST_LABEL}.rootfs\"}}}}");
        let out = self.try_cli(&["image", "inspect", "--format", &label, IMAGE]);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == made_of {
            return;
        }
        let root = dir.join("rootfs");
        for sub in ["bin", "www", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("bin/busybox"), &busybox).unwrap();
        std::fs::set_permissions(
            root.join("bin/busybox"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        std::fs::write(root.join("www/index.html"), PAGE).unwrap();
        let tar = dir.join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        let made_of = format!("LABEL {TEST_LABEL}.rootfs={made_of}");
        let tar_path = tar.display().to_string();
        let args = [
            "import",
            "--change",
            "ENV PATH=/bin",
            "--change",
            &made_of,
            &tar_path,
            IMAGE,
        ];
        self.cli(&args);
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_file(&tar);
    }

    /// Runs the Podman CLI (as a user would by hand) and returns what it printed, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn try_cli(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .unwrap()
    }

    /// A container's state (`running`, `paused`, `exited`…), `None` when it does not exist.
    pub fn state(&self, container: &str) -> Option<String> {
        let out = self.try_cli(&[
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.Status}}",
            container,
        ]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// A label of a container.
    pub fn label(&self, container: &str, label: &str) -> String {
        self.cli(&[
            "inspect",
            "--type",
            "container",
            "--format",
            &format!("{{{{index .Config.Labels \"{label}\"}}}}"),
            container,
        ])
    }

    /// The names of the containers carrying `label=value`.
    pub fn named(&self, label: &str, value: &str) -> Vec<String> {
        let list = self.cli(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={label}={value}"),
            "--format",
            "{{.Names}}",
        ]);
        list.lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }
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
