//! Podman's Docker-compatible API for the container tests and the sleep-mode benchmark: the
//! service (rootful, `runc`, the ulimits these machines need, from a `containers.conf` written
//! here), the test image imported from a busybox-static rootfs (no registry), and the Podman CLI
//! for what a user does by hand. Needs only std and sha2, so benches include it by path.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

impl Podman {
    /// Starts `podman system service` on a socket in `dir` (rootful, `runc`, the ulimits these
    /// machines need), waits until it answers, and imports the image. The service stops when
    /// this process ends.
    pub fn start(dir: &Path) -> Podman {
        assert!(
            Command::new("podman").arg("--version").output().is_ok(),
            "podman is missing: run scripts/test, which installs podman, runc and busybox-static"
        );
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
        podman.import_image(dir);
        podman
    }

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
