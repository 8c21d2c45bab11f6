//! The real binary as a user runs it: `wakegate run --config FILE` in a child process whose
//! log lines a test waits for, which it signals, and which never outlives the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;

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
    pub fn start_with(
        config: &Path,
        setup: impl FnOnce(&mut Command) -> &mut Command,
    ) -> Wakegate {
        let mut command = Command::new(WAKEGATE);
        command
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info");
        let mut child = setup(&mut command)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // A thread, not a task: the tests of the binary need no runtime of their own.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gateway = Wakegate {
            child,
            lines,
            seen: Vec::new(),
            cursor: 0,
            api: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        // The API is started after every listener: then clients are taken.
        let ready = gateway.wait_for("API ready.");
        let api = ready.split("api=http://").nth(1).unwrap();
        gateway.api = api.split_whitespace().next().unwrap().parse().unwrap();
        // The lines before stay to be waited for.
        gateway.cursor = 0;
        gateway
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

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill_process(Pid::from_raw(self.child.id() as i32).unwrap(), signal).unwrap();
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.wait().unwrap()
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

impl Drop for Wakegate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
