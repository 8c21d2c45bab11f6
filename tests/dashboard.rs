//! The dashboard in a real headless Chromium (tests/browser/dashboard.mjs, playwright-core):
//! a person signs in with a token, sees the sleeping service, clicks Wake and watches it wake
//! through the live stream. The gateway runs in process with a real child process behind it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::*;
use wakegate::event::{Kind, State};

const OPERATE_SECRET: &str = "dashboard-test-operate-0123456789";
const READ_SECRET: &str = "dashboard-test-read-0123456789";

/// Chromium's start and the page's steps together; a passing run takes a few seconds.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);

/// Where the screenshots stay after the run, for people to look at.
fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_wakes_a_service_from_the_dashboard() {
    init_logs();
    let dir = temp_dir("dashboard");
    let backend = free_addr();
    // The echo server takes 1.5 s to open its port, so the wake has steps to show.
    let app = gateway(&dir)
        .gateway_raw(&format!(
            "[[gateway.token]]\nname = \"ops\"\nsecret = \"{OPERATE_SECRET}\"\nrole = \"operate\"\n\n\
             [[gateway.token]]\nname = \"viewer\"\nsecret = \"{READ_SECRET}\"\nrole = \"read\""
        ))
        .service(
            svc("web")
                .idle("10m")
                .set("hourly_cost", 0.25)
                .process(&echo(backend, "1500ms"), backend)
                .tcp(ANY_PORT),
        )
        .start()
        .await;
    let service = app.service("web").unwrap().clone();
    wait_state(&service, State::Asleep).await;

    let artifacts = artifacts();
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/dashboard.mjs");
    let browser = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("http://{}", app.api_addr()))
        .arg(OPERATE_SECRET)
        .arg(&screenshot)
        .arg(READ_SECRET)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let run = tokio::time::timeout(BROWSER_DEADLINE, browser).await;

    // What the click did, read before the gateway shuts down (which stops the service); the
    // gateway is shut down before any assertion, so a failure leaves no server running.
    let state = service.status().state;
    let actions: Vec<String> = app
        .store()
        .events(0, Some("web"), 100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == Kind::Action)
        .map(|e| e.reason)
        .collect();
    let echoed = round_trip(app.listen_addr("web").unwrap(), b"hello").await;
    app.shutdown().await;

    browser_passed(run.expect("the browser test did not finish in time"));

    // The click really woke it, and only the operate token's click did.
    assert_eq!(state, State::Awake);
    assert!(
        actions.len() == 1 && actions[0].ends_with(" ops"),
        "one wake, by the operate token, was expected: {actions:?}"
    );
    assert_eq!(echoed.unwrap(), b"hello");

    for shot in [screenshot, artifacts.join("dashboard-phone.png")] {
        let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
            "{} is not a PNG of a page",
            shot.display()
        );
    }
}
