//! The fixtures of the AWS scenarios: moto (started once for the test binary), the recording
//! proxy between wakegate and moto, SDK clients straight to moto, a local echo server, and the
//! wakegate binary with a test environment.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_ec2::types::{
    HibernationOptionsRequest, InstanceStateName, ResourceType, Tag, TagSpecification,
};

use super::common::*;

pub const REGION: &str = "us-east-1";
/// An AMI moto knows.
pub const AMI: &str = "ami-12c6146b";

// ---------------------------------------------------------------------------------------------
// moto, shared by the tests of this file.

pub struct Moto {
    pub url: String,
    /// Closing it (when this test process ends) makes the wrapper shell stop moto.
    pub _stdin: Mutex<ChildStdin>,
    pub _child: Mutex<Child>,
}

pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let server = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-peers/bin/moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/test, which installs tests/peers/requirements.txt into .venv-peers",
            server.display()
        );
        let addr = free_addr();
        // The shell stops moto when our end of its stdin closes, so moto never outlives the
        // tests, even when they panic or are killed.
        let script = format!(
            "{:?} -H 127.0.0.1 -p {} >/dev/null 2>&1 & pid=$!; read _; kill $pid",
            server.display().to_string(),
            addr.port()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let url = format!("http://{addr}");
        // moto is a Python program: it listens once it has imported itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while http(addr, "POST", "/moto-api/reset", "").is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // ECS tasks stay where a test puts them (by default each look moves them on).
        let body = r#"{"model_name":"ecs::task","transition":{"progression":"manual","times":1000000}}"#;
        http(addr, "POST", "/moto-api/state-manager/set-transition", body).unwrap();
        Moto {
            url,
            _stdin: Mutex::new(stdin),
            _child: Mutex::new(child),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The recording proxy between wakegate and moto.

#[derive(Default)]
pub struct Recorded {
    /// Every call: "ec2:StopInstances Action=StopInstances&...", "ecs:RunTask {...}".
    pub calls: Mutex<Vec<String>>,
    /// How many more DescribeInstances answers show `stopped` instances as `stopping`.
    pub show_stopping: AtomicUsize,
    /// How many more StartInstances calls are answered with AWS's throttling error.
    pub throttle_starts: AtomicUsize,
}

impl Recorded {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn count(&self, action: &str) -> usize {
        self.calls()
            .iter()
            .filter(|c| c.split(' ').next() == Some(action))
            .count()
    }
}

pub struct Proxy {
    pub url: String,
    pub recorded: Arc<Recorded>,
}

pub fn start_proxy(runtime: &tokio::runtime::Runtime, moto: &str) -> Proxy {
    let recorded = Arc::new(Recorded::default());
    let upstream: SocketAddr = moto.trim_start_matches("http://").parse().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = recorded.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let state = state.clone();
        async move { forward(request, upstream, &state).await }
    });
    runtime.spawn(async move { axum::serve(listener, app).await });
    Proxy { url, recorded }
}

pub async fn forward(
    request: axum::extract::Request,
    upstream: SocketAddr,
    state: &Recorded,
) -> axum::response::Response {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).to_string();
    // EC2 names the action in its form body, JSON protocols (ECS) in a header.
    let action = match parts.headers.get("x-amz-target") {
        Some(target) => format!(
            "ecs:{}",
            target
                .to_str()
                .unwrap_or("")
                .rsplit('.')
                .next()
                .unwrap_or("")
        ),
        None => match text.split('&').find_map(|kv| kv.strip_prefix("Action=")) {
            Some(action) => format!("ec2:{action}"),
            None => format!("{}:{}", parts.method, parts.uri.path()),
        },
    };
    state.calls.lock().unwrap().push(format!("{action} {text}"));
    if action == "ec2:StartInstances"
        && state
            .throttle_starts
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        // What EC2 answers when an account calls it too often.
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>throttled</RequestID></Response>";
        return axum::response::Response::builder()
            .status(503)
            .header("content-type", "text/xml")
            .body(axum::body::Body::from(body))
            .unwrap();
    }
    let stream = tokio::net::TcpStream::connect(upstream).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut upstream_request = hyper::Request::builder()
        .method(parts.method)
        .uri(parts.uri);
    for (name, value) in &parts.headers {
        upstream_request = upstream_request.header(name, value);
    }
    let response = sender
        .send_request(
            upstream_request
                .body(http_body_util::Full::new(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers().get("content-type").cloned();
    let mut body =
        String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes())
            .to_string();
    if action == "ec2:DescribeInstances"
        && body.contains("<name>stopped</name>")
        && state
            .show_stopping
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        body = body
            .replace("<code>80</code>", "<code>64</code>")
            .replace("<name>stopped</name>", "<name>stopping</name>");
        state
            .calls
            .lock()
            .unwrap()
            .push("proxy:ShownStopping".into());
    }
    let mut builder = axum::response::Response::builder().status(status);
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(axum::body::Body::from(body)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

/// One scenario: a runtime for fixtures and the proxy, SDK clients straight to moto.
pub struct Aws {
    pub runtime: tokio::runtime::Runtime,
    pub proxy: Proxy,
    pub ec2: aws_sdk_ec2::Client,
    pub ecs: aws_sdk_ecs::Client,
    pub route53: aws_sdk_route53::Client,
}

impl Aws {
    pub fn new() -> Aws {
        let moto = moto();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let proxy = start_proxy(&runtime, &moto.url);
        let credentials =
            aws_sdk_ec2::config::Credentials::new("test", "test", None, None, "tests");
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                credentials,
            ))
            .endpoint_url(&moto.url)
            .http_client(wakegate::backend::aws::sdk::http_client())
            .build();
        Aws {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            ecs: aws_sdk_ecs::Client::new(&sdk),
            route53: aws_sdk_route53::Client::new(&sdk),
            runtime,
            proxy,
        }
    }

    pub fn block<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Launches an instance with these tags and stops it; returns its id.
    pub fn instance(&self, tags: &[(&str, &str)], hibernation: bool) -> String {
        let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(*k).value(*v).build());
        }
        let out = self
            .block(
                self.ec2
                    .run_instances()
                    .image_id(AMI)
                    .min_count(1)
                    .max_count(1)
                    .tag_specifications(spec.build())
                    .hibernation_options(
                        HibernationOptionsRequest::builder()
                            .configured(hibernation)
                            .build(),
                    )
                    .send(),
            )
            .unwrap();
        let id = out.instances()[0].instance_id().unwrap().to_string();
        self.block(self.ec2.stop_instances().instance_ids(&id).send())
            .unwrap();
        assert_eq!(self.state(&id), InstanceStateName::Stopped);
        id
    }

    pub fn describe(&self, id: &str) -> aws_sdk_ec2::types::Instance {
        let out = self
            .block(self.ec2.describe_instances().instance_ids(id).send())
            .unwrap();
        out.reservations()[0].instances()[0].clone()
    }

    pub fn state(&self, id: &str) -> InstanceStateName {
        self.describe(id).state().unwrap().name().unwrap().clone()
    }

    pub fn public_ip(&self, id: &str) -> String {
        self.describe(id).public_ip_address().unwrap().to_string()
    }
}

/// A unique word for this test's tags and names (moto is shared by the tests of this file).
pub fn unique(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------------------------
// The wakegate binary.

/// The environment of a wakegate that talks to moto: test credentials, and nothing of the
/// machine's own AWS setup (no files, no instance metadata).
pub fn aws_env(command: &mut Command) -> &mut Command {
    command
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
}

/// `wakegate run` with the environment of a wakegate that talks to moto.
pub fn start(config: &Path) -> Wakegate {
    Wakegate::start_with(config, aws_env)
}

/// The project's own demo backend as a local echo server, killed with the test.
pub struct Echo {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Echo {
    pub fn start() -> Echo {
        let addr = free_addr();
        let child = Command::new(WAKEGATE)
            .args(["demo-backend", "--echo", "--listen", &addr.to_string()])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + DEADLINE;
        while TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the echo server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Echo { child, addr }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends bytes through the gateway and reads the echo.
pub fn echo_through(listen: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(listen).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    // A gateway whose wake failed may have closed the connection already.
    let _ = stream.write_all(payload);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut back = Vec::new();
    let _ = stream.read_to_end(&mut back);
    back
}

/// The config file of a scenario.
pub fn write_config(dir: &Path, config: Config) -> PathBuf {
    config.write(&dir.join("wakegate.toml"))
}

/// An `ec2` service through the recording proxy at `endpoint`, stopped after a second idle;
/// the test adds how it selects its instance and where the server is.
pub fn ec2_service(name: &str, listen: SocketAddr, endpoint: &str) -> Service {
    svc(name)
        .idle("1s")
        .wake_timeout("20s")
        .backend(typed("ec2").set("endpoint_url", endpoint))
        .tcp(listen)
}
