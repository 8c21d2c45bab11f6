//! A real PostgreSQL server for tests (Debian's `postgresql`, installed by scripts/test):
//! `initdb` and `pg_ctl` run as the `postgres` user (as whoever runs the tests when that is not
//! root) in a temporary directory. [`shared`] is one server for all the tests of a test binary,
//! each test taking a fresh database of its own ([`Server::database`]); a test that stops its
//! server under the gateway starts one of its own ([`Server::start`]).
//!
//! A server outlives nothing: a small watchdog shell stops it (and removes its directory) once
//! the test process is gone, however it ended. The store's unit tests and the several-gateways
//! benchmark use this file too (`#[path]` from src/store/tests.rs and
//! benches/gateways/main.rs), so it needs nothing from the rest of tests/common.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running PostgreSQL server.
pub struct Server {
    pub dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

/// The server shared by the tests of this test binary, started by the first that asks.
pub fn shared() -> &'static Server {
    static SHARED: OnceLock<Server> = OnceLock::new();
    SHARED.get_or_init(|| Server::start("shared"))
}

impl Server {
    /// Initialises a cluster in a fresh temporary directory and starts it on a free port of
    /// 127.0.0.1 (and a Unix socket in the directory), trusting local connections.
    pub fn start(name: &str) -> Server {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wakegate-pg-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(&dir));
        }
        let server = Server {
            port: free_port(),
            bin: bin_dir(),
            dir,
        };
        let data = server.dir.join("data");
        run(server
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data));
        watchdog(&server);
        server.pg_ctl("start");
        server
    }

    /// `pg_ctl start` (again after [`Server::stop`], on the same port), `stop`, `restart`.
    pub fn pg_ctl(&self, what: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let mut command = self.command("pg_ctl");
        command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-l"])
            .arg(self.dir.join("log"))
            .args(["-o", &options, "-w"]);
        if what != "start" {
            command.args(["-m", "immediate"]);
        }
        command.arg(what);
        run(&mut command);
    }

    /// Stops the server at once (`-m immediate`: like a crash, no clean shutdown).
    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    /// A fresh, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let db = format!(
            "{}_{}_{}",
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {db}"));
        self.url(&db)
    }

    /// The URL of database `db` as user `postgres` (trusted: no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one SQL command as `postgres` in database `postgres`.
    pub fn psql(&self, sql: &str) {
        run(self
            .command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(sql));
    }

    /// A command of the server's binaries, as the `postgres` user when run as root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }
}

/// Stops the server and removes its directory once this process is gone (a watchdog, so no
/// test run leaves a server behind, however it ended).
fn watchdog(server: &Server) {
    let stop = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {pg_ctl} -D {data} stop -m immediate >/dev/null 2>&1; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = server.command_line("pg_ctl"),
        data = server.dir.join("data").display(),
        dir = server.dir.display(),
    );
    // The shell puts the loop in the background and exits: the loop outlives this process.
    let started = Command::new("sh")
        .args(["-c", &format!("( {stop} ) >/dev/null 2>&1 &")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("cannot start the PostgreSQL watchdog");
    assert!(started.success());
}

impl Server {
    fn command_line(&self, program: &str) -> String {
        let path = self.bin.join(program);
        if as_root() {
            format!("runuser -u postgres -- {}", path.display())
        } else {
            path.display().to_string()
        }
    }
}

fn run(command: &mut Command) {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?} (is Debian's postgresql installed? scripts/test installs it): {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Debian keeps the server's programs out of PATH, in /usr/lib/postgresql/VERSION/bin: the
/// newest version there, else PATH (`pg_config --bindir`).
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|dirs| {
            dirs.filter_map(|d| d.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .max()
        });
    if let Some(version) = newest {
        let bin = Path::new("/usr/lib/postgresql")
            .join(version.to_string())
            .join("bin");
        if bin.join("initdb").exists() {
            return bin;
        }
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("PostgreSQL is not installed (scripts/test installs Debian's postgresql)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
