//! The config builder of the tests: a gateway and its services in a few calls instead of an
//! inline TOML block, so that a key renamed in the file format is renamed here once.
//!
//! ```ignore
//! gateway(&dir)
//!     .service(svc("web").idle("1s").process(echo(backend, "0s"), backend).tcp(ANY_PORT))
//!     .start()
//!     .await
//! ```
//! Keys without a method of their own go through `set` (a typed value) or `raw` (TOML lines
//! written as they are).

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{WAKEGATE, init_logs};

/// A loopback bind on a port the kernel picks (read back with `App::listen_addr`).
pub const ANY_PORT: &str = "127.0.0.1:0";

/// A value as TOML writes it inline.
pub trait Toml {
    /// The TOML text of the value.
    fn toml(&self) -> String;
}

impl<T: Toml + ?Sized> Toml for &T {
    fn toml(&self) -> String {
        (**self).toml()
    }
}

impl Toml for str {
    fn toml(&self) -> String {
        // JSON's string escapes are a subset of TOML's basic-string escapes.
        serde_json::to_string(self).unwrap()
    }
}

impl Toml for String {
    fn toml(&self) -> String {
        self.as_str().toml()
    }
}

impl Toml for SocketAddr {
    fn toml(&self) -> String {
        self.to_string().toml()
    }
}

impl Toml for Path {
    fn toml(&self) -> String {
        self.display().to_string().toml()
    }
}

impl Toml for PathBuf {
    fn toml(&self) -> String {
        self.as_path().toml()
    }
}

impl Toml for bool {
    fn toml(&self) -> String {
        self.to_string()
    }
}

impl Toml for f64 {
    fn toml(&self) -> String {
        // `{:?}` keeps the decimal point (2.0, not 2), so the value stays a float.
        format!("{self:?}")
    }
}

macro_rules! integers {
    ($($t:ty)*) => {$(
        impl Toml for $t {
            fn toml(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
integers!(i32 i64 u16 u32 u64 usize);

impl<T: Toml> Toml for [T] {
    fn toml(&self) -> String {
        let items: Vec<String> = self.iter().map(Toml::toml).collect();
        format!("[{}]", items.join(", "))
    }
}

impl<T: Toml, const N: usize> Toml for [T; N] {
    fn toml(&self) -> String {
        self.as_slice().toml()
    }
}

impl<T: Toml> Toml for Vec<T> {
    fn toml(&self) -> String {
        self.as_slice().toml()
    }
}

/// TOML text written as it is (an inline table, say).
#[derive(Debug, Clone)]
pub struct Raw(pub String);

impl Toml for Raw {
    fn toml(&self) -> String {
        self.0.clone()
    }
}

/// An inline table of strings: `{ app = "web", role = "one" }`.
pub fn inline(pairs: &[(&str, &str)]) -> Raw {
    let items: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k} = {}", v.toml()))
        .collect();
    Raw(format!("{{ {} }}", items.join(", ")))
}

/// The lines of one table: `key = value` pairs and raw lines, in the order given.
#[derive(Debug, Clone, Default)]
pub struct Table {
    lines: Vec<String>,
}

/// An empty table.
pub fn table() -> Table {
    Table::default()
}

/// A table that starts with `type = "kind"` (a backend, probe, listener or notification).
pub fn typed(kind: &str) -> Table {
    table().set("type", kind)
}

/// A listener of `kind` (`tcp`, `http`, `minecraft`) on `bind`; add its options with `set`.
pub fn listener(kind: &str, bind: impl Display) -> Table {
    typed(kind).set("bind", bind.to_string())
}

impl Table {
    /// `key = value`; a key set before is replaced where it stood.
    pub fn set(mut self, key: &str, value: impl Toml) -> Table {
        let line = format!("{key} = {}", value.toml());
        let prefix = format!("{key} = ");
        match self.lines.iter().position(|l| l.starts_with(&prefix)) {
            Some(i) => self.lines[i] = line,
            None => self.lines.push(line),
        }
        self
    }

    /// Lines written as they are, for keys the builder has no method for.
    pub fn raw(mut self, text: &str) -> Table {
        self.lines.push(text.trim_end_matches('\n').to_string());
        self
    }

    fn render(&self, header: &str, out: &mut String) {
        out.push_str(header);
        out.push('\n');
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
    }
}

/// One `[[service]]`.
#[derive(Debug, Clone)]
pub struct Service {
    top: Table,
    backend: Option<Table>,
    env: Option<Table>,
    /// Sub-tables by their header suffix (`readiness`, `dns`, `backend.rcon`, `[health]`…).
    tables: Vec<(String, Table)>,
    listens: Vec<Table>,
}

/// A service named `name`; give it a backend and listeners.
pub fn svc(name: &str) -> Service {
    Service {
        top: table().set("name", name),
        backend: None,
        env: None,
        tables: Vec::new(),
        listens: Vec::new(),
    }
}

impl Service {
    /// A key of the service itself (`min_awake`, `always_on`, `hourly_cost`, …).
    pub fn set(mut self, key: &str, value: impl Toml) -> Service {
        self.top = self.top.set(key, value);
        self
    }

    /// Lines of the service itself written as they are.
    pub fn raw(mut self, text: &str) -> Service {
        self.top = self.top.raw(text);
        self
    }

    /// `idle_timeout`.
    pub fn idle(self, timeout: &str) -> Service {
        self.set("idle_timeout", timeout)
    }

    /// `wake_timeout`.
    pub fn wake_timeout(self, timeout: &str) -> Service {
        self.set("wake_timeout", timeout)
    }

    /// The backend, written as given (`typed("ec2").set(…)`).
    pub fn backend(mut self, backend: Table) -> Service {
        self.backend = Some(backend);
        self
    }

    /// A key of the backend set so far.
    pub fn backend_set(mut self, key: &str, value: impl Toml) -> Service {
        self.backend = Some(self.backend.unwrap_or_default().set(key, value));
        self
    }

    /// Lines of the backend written as they are.
    pub fn backend_raw(mut self, text: &str) -> Service {
        self.backend = Some(self.backend.unwrap_or_default().raw(text));
        self
    }

    /// An `exec` backend: shell hooks to start and stop it, and where it then listens.
    pub fn exec(self, start: &str, stop: &str, address: impl Display) -> Service {
        self.backend(
            typed("exec")
                .set("start", start)
                .set("stop", stop)
                .set("address", address.to_string()),
        )
    }

    /// An `exec` backend whose hooks do nothing, in front of something the test runs itself.
    pub fn exec_true(self, address: impl Display) -> Service {
        self.exec("true", "true", address)
    }

    /// A `process` backend: wakegate runs `command` and finds it at `address`.
    pub fn process<S: AsRef<str>>(self, command: &[S], address: impl Display) -> Service {
        let command: Vec<&str> = command.iter().map(AsRef::as_ref).collect();
        self.backend(
            typed("process")
                .set("command", command)
                .set("address", address.to_string()),
        )
    }

    /// A variable of `[service.backend.env]`.
    pub fn env(mut self, key: &str, value: impl Toml) -> Service {
        self.env = Some(self.env.unwrap_or_default().set(key, value));
        self
    }

    /// A sub-table `[service.NAME]` (`readiness`, `dns`, `backend.rcon`, …).
    pub fn table(mut self, name: &str, table: Table) -> Service {
        self.tables.push((format!("[service.{name}]"), table));
        self
    }

    /// `[service.readiness]`.
    pub fn readiness(self, probe: Table) -> Service {
        self.table("readiness", probe)
    }

    /// One more `[[service.health]]` check.
    pub fn health(mut self, check: Table) -> Service {
        self.tables.push(("[[service.health]]".into(), check));
        self
    }

    /// `[service.dns]`.
    pub fn dns(self, dns: Table) -> Service {
        self.table("dns", dns)
    }

    /// One more `[[service.listen]]`, written as given (`listener("http", bind).set(…)`).
    pub fn listen(mut self, listen: Table) -> Service {
        self.listens.push(listen);
        self
    }

    /// A plain TCP listener on `bind`.
    pub fn tcp(self, bind: impl Display) -> Service {
        self.listen(listener("tcp", bind))
    }

    /// An HTTP listener on `bind` with its defaults.
    pub fn http(self, bind: impl Display) -> Service {
        self.listen(listener("http", bind))
    }

    /// A Minecraft listener on `bind` with its defaults.
    pub fn minecraft(self, bind: impl Display) -> Service {
        self.listen(listener("minecraft", bind))
    }

    /// The service's TOML.
    pub fn to_toml(&self) -> String {
        let mut out = String::from("\n");
        self.top.render("[[service]]", &mut out);
        if let Some(backend) = &self.backend {
            backend.render("[service.backend]", &mut out);
        }
        if let Some(env) = &self.env {
            env.render("[service.backend.env]", &mut out);
        }
        for (header, table) in &self.tables {
            table.render(header, &mut out);
        }
        for listen in &self.listens {
            listen.render("[[service.listen]]", &mut out);
        }
        out
    }
}

/// A whole config file: `[gateway]`, its services, and what follows them.
#[derive(Debug, Clone)]
pub struct Config {
    /// `None` leaves `[gateway]` out (its defaults apply).
    gateway: Option<Table>,
    services: Vec<Service>,
    /// After the services: `[[notify]]` and the like.
    tail: Vec<String>,
}

/// A gateway with its data in `dir`, the API on a port the kernel picks, and a short
/// shutdown grace (so a test's shutdown never waits long).
pub fn gateway(dir: &Path) -> Config {
    Config {
        gateway: Some(
            table()
                .set("data_dir", dir)
                .set("api", ANY_PORT)
                .set("shutdown_grace", "2s"),
        ),
        services: Vec::new(),
        tail: Vec::new(),
    }
}

/// A config without a `[gateway]` table, for commands that only read the services
/// (`config check`, `iam-policy`).
pub fn services_only() -> Config {
    Config {
        gateway: None,
        services: Vec::new(),
        tail: Vec::new(),
    }
}

impl Config {
    /// A key of `[gateway]`; a default set before is replaced.
    pub fn set(mut self, key: &str, value: impl Toml) -> Config {
        self.gateway = Some(self.gateway.unwrap_or_default().set(key, value));
        self
    }

    /// Removes a key of `[gateway]` (one of the builder's defaults).
    pub fn unset(mut self, key: &str) -> Config {
        if let Some(gateway) = &mut self.gateway {
            let prefix = format!("{key} = ");
            gateway.lines.retain(|l| !l.starts_with(&prefix));
        }
        self
    }

    /// Lines in `[gateway]` written as they are (`[[gateway.token]]` tables go here too).
    pub fn gateway_raw(mut self, text: &str) -> Config {
        self.gateway = Some(self.gateway.unwrap_or_default().raw(text));
        self
    }

    /// One more service.
    pub fn service(mut self, service: Service) -> Config {
        self.services.push(service);
        self
    }

    /// TOML written as it is after the services (`[[notify]]` tables, say).
    pub fn raw(mut self, text: &str) -> Config {
        self.tail.push(text.to_string());
        self
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if let Some(gateway) = &self.gateway {
            gateway.render("[gateway]", &mut out);
        }
        for service in &self.services {
            out.push_str(&service.to_toml());
        }
        for text in &self.tail {
            out.push('\n');
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }

    /// Writes the file to `path` and returns the path.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.to_toml()).unwrap();
        path.to_path_buf()
    }

    /// The config as wakegate reads it; a mistake of the test panics with wakegate's message.
    pub fn parse(&self) -> wakegate::config::Config {
        wakegate::config::parse(&self.to_toml(), "test.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a gateway with this config in this process.
    pub async fn start(&self) -> wakegate::app::App {
        init_logs();
        wakegate::app::App::start(self.parse()).await.unwrap()
    }
}

/// An `exec` service (give it its listeners) whose hooks run the echo server in the
/// background, count the starts (see [`hook_starts`]), and take `stop_delay` to stop (like a
/// server that saves its world first).
pub fn hooked_echo(
    name: &str,
    dir: &Path,
    backend: SocketAddr,
    idle: &str,
    stop_delay: &str,
) -> Service {
    let pid = dir.join(format!("{name}.echo.pid"));
    let starts = dir.join(format!("{name}.starts"));
    let (pid, starts) = (pid.display(), starts.display());
    svc(name)
        .idle(idle)
        .wake_timeout("15s")
        .exec(
            &format!(
                "echo start >> '{starts}'; '{WAKEGATE}' demo-backend --echo --listen {backend} --boot-delay 300ms >/dev/null 2>&1 & echo $! > '{pid}'"
            ),
            &format!("sleep {stop_delay}; kill $(cat '{pid}')"),
            backend,
        )
        .backend_set("status", format!("kill -0 $(cat '{pid}' 2>/dev/null) 2>/dev/null"))
}

/// How often the start hook of the [`hooked_echo`] service `name` in `dir` ran.
pub fn hook_starts(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{name}.starts")))
        .map(|starts| starts.lines().count())
        .unwrap_or(0)
}

/// The demo backend as an echo server (a `process` command), opening `listen` after `delay`.
pub fn echo(listen: SocketAddr, delay: &str) -> Vec<String> {
    let listen = listen.to_string();
    [
        WAKEGATE,
        "demo-backend",
        "--echo",
        "--listen",
        &listen,
        "--boot-delay",
        delay,
    ]
    .map(String::from)
    .to_vec()
}

/// A `[[template]]` of the demo echo server (`{port}` its listener, `{backend_port}` its
/// backend, ten of each from a free start), with `keys` added to the template table.
pub fn echo_template(name: &str, idle: &str, keys: &str) -> String {
    let base = super::free_addr().port();
    format!(
        r#"
[[template]]
name = "{name}"
ports = "{}-{}"
backend_ports = "{}-{}"
{keys}

[template.service]
idle_timeout = "{idle}"

[template.service.backend]
type = "process"
command = ["{WAKEGATE}", "demo-backend", "--echo", "--listen", "127.0.0.1:{{backend_port}}"]
address = "127.0.0.1:{{backend_port}}"

[[template.service.listen]]
type = "tcp"
bind = "127.0.0.1:{{port}}"
"#,
        base,
        base + 9,
        base + 10,
        base + 19
    )
}
