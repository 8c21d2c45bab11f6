//! The dashboard of each gateway, in a real headless Chromium (tests/browser/owner.mjs,
//! playwright-core), names the gateway that drives the service, and the survivor's names
//! itself after a failover.

use std::path::Path;

use super::*;

/// Runs owner.mjs: every API's dashboard must say "driven by `owner`".
fn dashboards_say(owner: &str, apis: &[SocketAddr]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/owner.mjs");
    let output = std::process::Command::new("node")
        .arg(&script)
        .args(["echo", owner])
        .args(apis.iter().map(|a| format!("http://{a}")))
        .output();
    browser_passed(output);
}

#[test]
fn every_gateways_dashboard_names_the_owner_and_the_survivor_after_a_failover() {
    let pair = Pair::new("dashboard", "200ms", "1m");
    let (mut a, mut b) = pair.start();
    dashboards_say("gw-a", &[a.api(), b.api()]);

    a.kill();
    b.wait_for("This gateway owns the service now");
    dashboards_say("gw-b", &[b.api()]);
    b.stop(DEADLINE);
}
