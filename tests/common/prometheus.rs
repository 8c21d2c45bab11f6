//! The Prometheus exposition checked by Prometheus's own parser and linter, `promtool check
//! metrics` (Debian's `prometheus` package; scripts/test installs it).

use std::io::Write;
use std::process::{Command, Stdio};

/// Panics with promtool's findings unless `exposition` parses and passes its lint.
pub fn promtool_check(exposition: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run promtool; scripts/test installs it (Debian's `prometheus` package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\nin:\n{exposition}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}
