//! The real binary as a user runs it: `wakegate run --config FILE` in a child process whose
//! log lines a test waits for, which it signals, and which never outlives the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::{DEADLINE, WAKEGATE};

/// A running `wakegate run`, killed when dropped.
pub struct Wakegate {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// Lines before this one have been matched by `wait_for`.
    cursor: usize,
    api: SocketAddr,
}

impl Wakegate {
    /// Runs `wakegate run --config config` and returns once its listeners and its API are up.
    pub fn start(config: &Path) -> Wakegate {
        Wakegate::start_with(config, |command| command)
    }

    /// As [`Wakegate::start`], with `setup` adding to the command (its environment, say).
    pub fn start_with(config: &Path, setup: impl FnOnce(&mut Command) -> &mut Command) -> Wakegate {
        let mut command = Command::new(WAKEGATE);
        Wakegate::launch(&mut command, config, setup)
    }

    /// As [`Wakegate::start`], under an open-file limit of `nofile` (soft and hard), as a
    /// default shell or service manager may leave it: util-linux's `prlimit` sets the limit and
    /// then executes wakegate in its place (same pid).
    pub fn start_with_nofile(config: &Path, nofile: u64) -> Wakegate {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(WAKEGATE);
        Wakegate::launch(&mut command, config, |command| command)
    }

    fn launch(
        command: &mut Command,
        config: &Path,
        setup: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Wakegate {
        command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info");
        let mut gateway = Wakegate::spawn(setup(command));
        // The API is started after every listener: then clients are taken.
        let ready = gateway.wait_for("API ready.");
        let api = ready.split("api=http://").nth(1).unwrap();
        gateway.api = api.split_whitespace().next().unwrap().parse().unwrap();
        // The lines before stay to be waited for.
        gateway.cursor = 0;
        gateway
    }

    /// Runs `command` (any wakegate command) with its output read line by line; returns at
    /// once. Its API address is unknown until set with [`Wakegate::set_api`].
    pub fn spawn(command: &mut Command) -> Wakegate {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        // Threads, not tasks: the tests of the binary need no runtime of their own. Both
        // outputs are read all along, so wakegate never blocks on a full pipe.
        forward_lines(child.stdout.take().unwrap(), tx.clone());
        forward_lines(child.stderr.take().unwrap(), tx);
        Wakegate {
            child,
            lines,
            seen: Vec::new(),
            cursor: 0,
            api: SocketAddr::from(([127, 0, 0, 1], 1)),
        }
    }

    /// Where its API listens, once its output said so.
    pub fn set_api(&mut self, api: SocketAddr) {
        self.api = api;
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its API listens.
    pub fn api(&self) -> SocketAddr {
        self.api
    }

    /// Waits for the next log line (after the last one matched) containing `text`.
    pub fn wait_for(&mut self, text: &str) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(i) = (self.cursor..self.seen.len()).find(|&i| self.seen[i].contains(text)) {
                self.cursor = i + 1;
                return self.seen[i].clone();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("no log line with {text:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Everything it printed so far (stdout and stderr), one line each.
    pub fn output(&mut self) -> String {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), signal).unwrap();
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
    }

    /// Waits for the process to end, at most `deadline`.
    pub fn wait_exit_within(&mut self, deadline: Duration) -> ExitStatus {
        let give_up = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < give_up,
                "wakegate did not exit within {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then waits (at most `deadline`) for it to shut down; the rest of what it
    /// printed is then in `output`.
    pub fn stop(&mut self, deadline: Duration) -> ExitStatus {
        self.signal(Signal::TERM);
        let status = self.wait_exit_within(deadline);
        // Its pipes are closed: the threads send what was left, then end.
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
        status
    }

    /// The events of `service` from the first, live, over the API's event stream (SSE).
    pub async fn event_stream(&self, service: &str, deadline: Duration) -> EventStream {
        self.event_stream_after(service, 0, deadline).await
    }

    /// The events of `service` after the event `after`, live, over the API's event stream.
    pub async fn event_stream_after(
        &self,
        service: &str,
        after: i64,
        deadline: Duration,
    ) -> EventStream {
        let mut stream = tokio::net::TcpStream::connect(self.api).await.unwrap();
        let request = format!(
            "GET /api/v1/events/stream?service={service}&after={after} HTTP/1.0\r\nHost: wakegate\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        EventStream {
            lines: tokio::io::BufReader::new(stream).lines(),
            seen: Vec::new(),
            deadline,
        }
    }

    /// Kills it with SIGKILL (nothing is cleaned up) and waits until it is gone.
    pub fn kill(&mut self) {
        self.signal(Signal::KILL);
        self.wait_exit();
    }

    /// `GET /api/v1/services/NAME`.
    pub fn service(&self, name: &str) -> Value {
        api_json(self.api, "GET", &format!("/api/v1/services/{name}"))
    }

    /// The events of a service as the API sends them, oldest first.
    pub fn events(&self, name: &str) -> Vec<Value> {
        let page = api_json(
            self.api,
            "GET",
            &format!("/api/v1/events?service={name}&limit=500"),
        );
        page["events"].as_array().unwrap().clone()
    }

    /// `POST /api/v1/services/NAME/wake`.
    pub fn wake(&self, name: &str) {
        api_json(self.api, "POST", &format!("/api/v1/services/{name}/wake"));
    }

    /// `POST /api/v1/services/NAME/sleep`.
    pub fn sleep(&self, name: &str) {
        api_json(self.api, "POST", &format!("/api/v1/services/{name}/sleep"));
    }
}

/// Sends each line `from` reads to `to`, from a thread of its own, until either ends.
fn forward_lines(from: impl Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

/// The API's live event stream of one service, as JSON events.
pub struct EventStream {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>,
    /// Every event read so far, for the message when an awaited one never comes.
    seen: Vec<Value>,
    deadline: Duration,
}

impl EventStream {
    /// Reads events until one matches `done` (`what` names it for the failure message);
    /// returns all read in this call.
    pub async fn until(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut batch = Vec::new();
        let found = tokio::time::timeout(self.deadline, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let event: Value = serde_json::from_str(data.trim()).unwrap();
                self.seen.push(event.clone());
                batch.push(event.clone());
                if done(&event) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "no {what}; saw {:#?}", self.seen);
        batch
    }

    /// Reads events until a transition to `state` (its wire name: "asleep", "awake", …).
    pub async fn until_state(&mut self, state: &str) -> Vec<Value> {
        self.until(&format!("transition to {state}"), |e| {
            e["kind"] == "transition" && e["state"] == state
        })
        .await
    }
}

impl Drop for Wakegate {
    /// A test that ends without stopping its gateway stops it as an operator would, with
    /// SIGTERM: the gateway stops its backends (their `on_shutdown`), so no server a test
    /// started outlives it. One still running after [`STOP_ON_DROP`] is killed. A test that
    /// means a kill -9 says so with [`Wakegate::kill`].
    fn drop(&mut self) {
        // A failing test shows what its gateway said: the last lines of its output.
        if std::thread::panicking() {
            self.seen.extend(self.lines.try_iter());
            let from = self.seen.len().saturating_sub(60);
            eprintln!("--- the gateway's last output lines ---");
            for line in &self.seen[from..] {
                eprintln!("{line}");
            }
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), Signal::TERM);
            let give_up = Instant::now() + STOP_ON_DROP;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long a dropped [`Wakegate`] may take to shut down before it is killed.
const STOP_ON_DROP: Duration = Duration::from_secs(10);

/// A plain blocking HTTP/1.1 request with a JSON body; returns the status and the body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// A successful API call's JSON answer.
pub fn api_json(api: SocketAddr, method: &str, path: &str) -> Value {
    let (status, body) = http(api, method, path, "").unwrap();
    assert!(status < 300, "{method} {path}: {status} {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}
