//! A scripted backend for the actor's tests: starts, stops and status answers are set by the
//! test, every call is recorded, and the server "listens" on a real socket bound to port 0 so
//! the readiness probe connects for real. Its calls take no time unless told to, so tests run
//! on paused time. Told to, its stop pauses or freezes the server instead ([`Fake::sleeps`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::backend::{Backend, BackendError, Exit, SleepMode, Status};

/// A call the actor made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Start,
    /// A start that resumed a paused or frozen server.
    Resume,
    Stop,
    /// A stop for real of a backend that pauses or freezes.
    StopForReal,
    Status,
}

#[derive(Debug)]
struct Script {
    calls: Vec<Call>,
    status: Status,
    start_failures: VecDeque<String>,
    stop_failures: VecDeque<String>,
    start_takes: Duration,
    /// How a stop leaves the server (None: stopped).
    sleeps: Option<SleepMode>,
    sleep_limit: Option<Duration>,
}

/// The test's side: what to answer, and what was asked.
#[derive(Clone)]
pub struct Fake {
    script: Arc<Mutex<Script>>,
    crashes: mpsc::UnboundedSender<Exit>,
    address: SocketAddr,
}

/// The actor's side.
pub struct FakeBackend {
    script: Arc<Mutex<Script>>,
    crashes: mpsc::UnboundedReceiver<Exit>,
    /// The socket the server "listens" on; the kernel completes connections to it, which is
    /// all a TCP readiness probe asks.
    listener: Arc<std::net::TcpListener>,
}

impl Fake {
    /// A stopped server, and the backend to give the actor.
    pub fn new() -> (Fake, FakeBackend) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script {
            calls: Vec::new(),
            status: Status::Stopped,
            start_failures: VecDeque::new(),
            stop_failures: VecDeque::new(),
            start_takes: Duration::ZERO,
            sleeps: None,
            sleep_limit: None,
        }));
        let (crashes, crashed) = mpsc::unbounded_channel();
        let fake = Fake {
            script: script.clone(),
            crashes,
            address,
        };
        let backend = FakeBackend {
            script,
            crashes: crashed,
            listener: Arc::new(listener),
        };
        (fake, backend)
    }

    /// Where the server listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.script.lock().unwrap().calls.clone()
    }

    /// How many times `call` was made.
    pub fn count(&self, call: Call) -> usize {
        self.calls().iter().filter(|c| **c == call).count()
    }

    /// What a status question is answered (at start-up); a start or stop changes it.
    pub fn set_status(&self, status: Status) {
        self.script.lock().unwrap().status = status;
    }

    /// The next start fails with this message.
    pub fn fail_next_start(&self, message: &str) {
        let mut script = self.script.lock().unwrap();
        script.start_failures.push_back(message.into());
    }

    /// The next stop fails with this message.
    pub fn fail_next_stop(&self, message: &str) {
        let mut script = self.script.lock().unwrap();
        script.stop_failures.push_back(message.into());
    }

    /// Each start takes this long (on the test's clock); a resume takes no time.
    pub fn start_takes(&self, duration: Duration) {
        self.script.lock().unwrap().start_takes = duration;
    }

    /// A stop pauses or freezes the server (`mode`), until `limit` if given.
    pub fn sleeps(&self, mode: SleepMode, limit: Option<Duration>) {
        let mut script = self.script.lock().unwrap();
        script.sleeps = Some(mode);
        script.sleep_limit = limit;
    }

    /// The server goes away on its own, as if it exited with `status`.
    pub fn crash(&self, status: &str) {
        self.script.lock().unwrap().status = Status::Stopped;
        let exit = Exit {
            status: status.into(),
            log_tail: "boom".into(),
        };
        let _ = self.crashes.send(exit);
    }
}

#[async_trait]
impl Backend for FakeBackend {
    fn kind(&self) -> &'static str {
        "fake"
    }

    async fn start(&mut self) -> Result<(), BackendError> {
        let takes = {
            let mut script = self.script.lock().unwrap();
            if let Some(message) = script.start_failures.pop_front() {
                script.calls.push(Call::Start);
                return Err(BackendError::Other(message));
            }
            let resumes = matches!(script.status, Status::Sleeping(_));
            script
                .calls
                .push(if resumes { Call::Resume } else { Call::Start });
            script.status = Status::Running;
            if resumes {
                Duration::ZERO
            } else {
                script.start_takes
            }
        };
        tokio::time::sleep(takes).await;
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        let mut script = self.script.lock().unwrap();
        script.calls.push(Call::Stop);
        if let Some(message) = script.stop_failures.pop_front() {
            return Err(BackendError::Other(message));
        }
        script.status = match script.sleeps {
            Some(mode) => Status::Sleeping(mode),
            None => Status::Stopped,
        };
        Ok(())
    }

    async fn stop_for_real(&mut self) -> Result<(), BackendError> {
        if self.script.lock().unwrap().sleeps.is_none() {
            return self.stop().await;
        }
        let mut script = self.script.lock().unwrap();
        script.calls.push(Call::StopForReal);
        if let Some(message) = script.stop_failures.pop_front() {
            return Err(BackendError::Other(message));
        }
        script.status = Status::Stopped;
        Ok(())
    }

    fn sleep_mode(&self) -> SleepMode {
        let script = self.script.lock().unwrap();
        match script.status {
            Status::Sleeping(mode) => mode,
            Status::Stopped => SleepMode::Stopped,
            _ => script.sleeps.unwrap_or_default(),
        }
    }

    fn sleep_limit(&self) -> Option<Duration> {
        self.script.lock().unwrap().sleep_limit
    }

    async fn status(&mut self) -> Result<Status, BackendError> {
        let mut script = self.script.lock().unwrap();
        script.calls.push(Call::Status);
        Ok(script.status.clone())
    }

    async fn address(&mut self) -> Result<String, BackendError> {
        Ok(self.listener.local_addr().unwrap().to_string())
    }

    async fn exited(&mut self) -> Exit {
        match self.crashes.recv().await {
            Some(exit) => exit,
            // The test let go of its side: nothing can crash it any more.
            None => std::future::pending().await,
        }
    }
}
