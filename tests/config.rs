//! Config files: every example must pass `config check`, every file in tests/config/invalid/
//! must fail with the messages its `# expect:` lines name (and none its `# reject:` lines
//! name), every file in tests/config/warning/ must pass with the warnings its lines name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::WAKEGATE;

fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn check(file: &Path) -> std::process::Output {
    Command::new(WAKEGATE)
        .args(["config", "check"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn every_example_passes_config_check() {
    let examples = toml_files("examples");
    assert!(!examples.is_empty(), "examples/ holds no config");
    for file in examples {
        // The variables an example reads (`${NAME}`) are set, as the user would.
        let text = std::fs::read_to_string(&file).unwrap();
        let mut command = Command::new(WAKEGATE);
        command.args(["config", "check"]).arg(&file);
        for (i, _) in text.match_indices("${") {
            let name: String = text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            command.env(name, "https://example.com/set-by-the-test");
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{} fails:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    }
}

#[test]
fn the_printed_example_is_the_checked_one_and_passes() {
    let out = Command::new(WAKEGATE)
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = common::temp_dir("example");
    let file = dir.join("wakegate.toml");
    std::fs::write(&file, &out.stdout).unwrap();
    assert!(check(&file).status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
            > 20
    );
}

/// The `# expect:` and `# reject:` lines of a fixture.
fn expectations(text: &str) -> (Vec<&str>, Vec<&str>) {
    let lines = |prefix: &str| -> Vec<&str> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .collect()
    };
    (lines("# expect: "), lines("# reject: "))
}

/// Checks `file` and asserts its exit code and its expectations on stdout and stderr.
fn check_fixture(file: &Path, code: i32) {
    let text = std::fs::read_to_string(file).unwrap();
    let (expected, rejected) = expectations(&text);
    assert!(
        !expected.is_empty(),
        "{} has no `# expect:` line",
        file.display()
    );
    let out = check(file);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}: unexpected exit code:\n{all}",
        file.display()
    );
    for want in expected {
        assert!(
            all.contains(want),
            "{}: expected {want:?} in:\n{all}",
            file.display()
        );
    }
    for unwanted in rejected {
        assert!(
            !all.contains(unwanted),
            "{}: {unwanted:?} must not be in:\n{all}",
            file.display()
        );
    }
}

#[test]
fn every_invalid_file_fails_with_its_expected_messages() {
    let invalid = toml_files("tests/config/invalid");
    assert!(!invalid.is_empty(), "tests/config/invalid/ holds no config");
    for file in invalid {
        check_fixture(&file, 1);
    }
}

#[test]
fn every_warning_file_passes_with_its_expected_warnings() {
    let files = toml_files("tests/config/warning");
    assert!(!files.is_empty(), "tests/config/warning/ holds no config");
    for file in files {
        check_fixture(&file, 0);
    }
}

#[test]
fn five_mistakes_are_reported_in_one_run() {
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/invalid/five-mistakes.toml");
    let out = check(&file);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // One line per problem, each with its own line:column, in the order of the file.
    let places: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{}:", file.display())))
        .map(|l| l.split(": ").next().unwrap())
        .collect();
    assert_eq!(
        places,
        ["13:1", "14:16", "16:8", "20:13", "34:8"],
        "{stderr}"
    );
    assert!(stderr.contains(": 5 problems found"), "{stderr}");
}

#[test]
fn the_deploy_config_passes_config_check_with_the_built_in_ec2_backend() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/wakegate.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("type = \"ec2\""), "{text}");
    assert!(!text.contains("aws ec2"), "no AWS CLI hooks: {text}");
    let out = check(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_secret_from_the_environment_is_never_printed() {
    let dir = common::temp_dir("secret");
    let file = common::services_only()
        .service(
            common::svc("web")
                .idle("soon")
                .process(&["./server"], "127.0.0.1:8080")
                .env("API_TOKEN", "${WAKEGATE_TEST_TOKEN}")
                .tcp("127.0.0.1:8081"),
        )
        .write(&dir.join("wakegate.toml"));
    let out = Command::new(WAKEGATE)
        .args(["config", "check"])
        .arg(&file)
        .env("WAKEGATE_TEST_TOKEN", "s3cr3t-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("`soon` is not a duration"), "{all}");
    assert!(!all.contains("s3cr3t-value"), "{all}");
}

#[test]
fn run_reads_the_config_from_the_environment() {
    let out = Command::new(WAKEGATE)
        .arg("run")
        .env("WAKEGATE_CONFIG", "/nonexistent/wakegate.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/wakegate.toml"),
        "{err}"
    );
}

#[test]
fn a_handoff_to_a_private_address_or_with_a_short_idle_timeout_passes_with_warnings() {
    let dir = common::temp_dir("handoff");
    let handoff = |name: &str, address: &str, idle: &str, port: u16| {
        let listen = common::listener("minecraft", format!("127.0.0.1:{port}"))
            .set("transfer_to", "backend");
        common::svc(name)
            .idle(idle)
            .exec_true(address)
            .listen(listen)
    };
    let named = common::listener("minecraft", "127.0.0.1:25603")
        .set("transfer_to", "backend")
        .set("transfer_host", "direct.example.com");
    let file = common::services_only()
        .service(handoff("lan", "10.0.3.7:25565", "10m", 25601))
        .service(handoff("quick", "203.0.113.7:25565", "90s", 25602))
        .service(
            common::svc("named")
                .exec_true("10.0.3.8:25565")
                .listen(named),
        )
        .write(&dir.join("wakegate.toml"));
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: service `lan`: transfer_to = \"backend\" hands players to 10.0.3.7:25565, a private address: players from elsewhere are forwarded through wakegate instead; set transfer_host"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "warning: service `quick`: transfer_to = \"backend\": handed-off players keep the service awake only through the player poll (every 30s), and idle_timeout (1m 30s)"
        ),
        "{stderr}"
    );
    // Nothing else: a public address, a transfer_host and a long idle_timeout are fine.
    assert_eq!(stderr.matches("warning:").count(), 2, "{stderr}");
}

#[test]
fn a_check_that_accepts_any_certificate_passes_with_a_warning() {
    let dir = common::temp_dir("insecure");
    let file = common::services_only()
        .service(
            common::svc("web")
                .exec_true("127.0.0.1:8080")
                .health(
                    common::typed("http")
                        .set("url", "https://web.example.com/healthz")
                        .set("insecure", true),
                )
                .tcp("127.0.0.1:8081"),
        )
        .write(&dir.join("wakegate.toml"));
    let out = check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: service `web`: the health check of https://web.example.com/healthz accepts any certificate"
        ),
        "{stderr}"
    );
}
