//! The client commands as a user runs them against a running gateway: `status`, `events` and
//! `wake` with `--config FILE`, from a shell that holds none of the server's secrets.

mod common;

use std::process::Command;

use common::*;

const SECRET: &str = "an-admin-secret-of-the-test-0123456789";

/// A client command with `--config FILE` and the token, and without the server's variables.
fn client(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(WAKEGATE)
        .args(args)
        .arg("--config")
        .arg(config)
        .args(["--token", SECRET])
        .env_remove("WAKEGATE_TEST_CLI_SECRET")
        .env_remove("WAKEGATE_TEST_CLI_HOOK")
        .env_remove("WAKEGATE_TOKEN")
        .env_remove("WAKEGATE_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn clients_read_only_the_api_address_and_show_the_whole_last_error_in_columns() {
    let dir = temp_dir("cli");
    let api = free_addr();
    // Each start writes its attempt number, then fails: the log holds every attempt.
    let script = "n=$(cat attempts 2>/dev/null || echo 0); n=$((n+1)); echo $n > attempts; \
                  echo \"starting attempt $n\"; echo \"Error: disk full on attempt $n\"; exit 1";
    let config = gateway(&dir)
        .set("api", api.to_string())
        .service(
            svc("broken")
                .process(&["sh", "-c", script], free_addr())
                .backend_set("cwd", dir.display().to_string())
                .tcp(ANY_PORT),
        )
        .service(svc("web").exec_true(free_addr()).tcp(ANY_PORT))
        .raw(
            "[[gateway.token]]\nname = \"ops\"\nrole = \"admin\"\nsecret = \"${WAKEGATE_TEST_CLI_SECRET}\"\n\n\
             [[notify]]\ntype = \"discord\"\nurl = \"${WAKEGATE_TEST_CLI_HOOK}\"\n",
        )
        .write(&dir.join("wakegate.toml"));
    let _gateway = Wakegate::start_with(&config, |c| {
        c.env("WAKEGATE_TEST_CLI_SECRET", SECRET)
            .env("WAKEGATE_TEST_CLI_HOOK", "http://127.0.0.1:9/webhooks/1/x")
    });

    // Two wakes, two failures: the second's reason quotes its own attempt only.
    for attempt in 1..=2 {
        let out = client(&config, &["wake", "broken", "--wait"]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "attempt {attempt}: {said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("failed"), "{said}");
    }
    let out = client(&config, &["status", "--json", "broken"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = view["last_error"].as_str().unwrap();
    assert!(error.contains("Error: disk full on attempt 2"), "{error}");
    assert!(
        !error.contains("attempt 1"),
        "the first attempt's output: {error}"
    );
    assert!(
        !error.contains("--- wakegate starts"),
        "wakegate's own header: {error}"
    );

    let out = client(&config, &["status"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = table.lines().collect();
    let header = lines[0];
    let row = lines.iter().find(|l| l.starts_with("broken ")).unwrap();
    assert!(
        row[header.find("STATE").unwrap()..].starts_with("failed "),
        "{table}"
    );
    // Every value keeps to its header's column: text starts where its header starts, figures
    // end where theirs ends.
    let row: Vec<char> = row.chars().collect();
    let blank = |i: usize| row.get(i).is_none_or(|c| *c == ' ');
    for column in ["NAME", "STATE", "FOR", "ADDRESS"] {
        let at = header.find(column).unwrap();
        assert!(
            !blank(at) && (at == 0 || blank(at - 1)),
            "{column} is not aligned:\n{table}"
        );
    }
    for column in [
        "CONNS",
        "HELD",
        "PLAYERS",
        "AWAKE 24H",
        "AWAKE 30D",
        "SAVED 30D",
    ] {
        let end = header.find(column).unwrap() + column.len();
        assert!(
            !blank(end - 1) && blank(end),
            "{column} is not aligned:\n{table}"
        );
    }
    // The last error in full below its row: what happened, then the server's last words.
    let at = lines.iter().position(|l| l.starts_with("broken ")).unwrap();
    assert!(
        lines[at + 1].trim_start().starts_with("last error: "),
        "{table}"
    );
    assert!(
        lines[at + 1..at + 5]
            .iter()
            .any(|l| l.trim() == "Error: disk full on attempt 2"),
        "{table}"
    );

    // Event ids are right-aligned in one column; a reason's quoted output goes on below, under
    // the reason.
    let out = client(&config, &["events", "--limit", "50"]);
    let events = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{events}");
    let lines: Vec<&str> = events.lines().collect();
    assert!(lines.len() >= 6, "{events}");
    let reason_at = lines[0].find("wakegate started").unwrap();
    for line in &lines {
        let (id, rest) = line.split_at(6);
        let an_event = id.trim_start().parse::<u64>().is_ok() && rest.starts_with("  ");
        let more = line[..reason_at].trim().is_empty() && line.len() > reason_at;
        assert!(
            an_event || more,
            "neither an event nor its reason: {line:?}\n{events}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.trim() == "Error: disk full on attempt 2"
                && l.find('E').unwrap() >= reason_at),
        "{events}"
    );
    assert!(
        events.contains("wake requested by API token ops"),
        "{events}"
    );
}

#[test]
fn a_client_of_an_api_bound_to_every_address_reaches_it_on_loopback_and_an_inline_token_is_warned_about()
 {
    let dir = temp_dir("cli-any");
    let api = free_addr();
    let config = gateway(&dir)
        .set("api", format!("0.0.0.0:{}", api.port()))
        .service(svc("web").exec_true(free_addr()).tcp(ANY_PORT))
        // Written inline: allowed, with a warning at start.
        .raw(&format!(
            "[[gateway.token]]\nname = \"ops\"\nrole = \"admin\"\nsecret = \"{SECRET}\"\n"
        ))
        .write(&dir.join("wakegate.toml"));
    let mut gateway = Wakegate::start(&config);
    let warning = gateway.wait_for("the secret of token `ops` is written in the file");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(!gateway.output().contains(SECRET), "{}", gateway.output());
    let out = client(&config, &["status", "web"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(table.lines().nth(1).unwrap().starts_with("web "), "{table}");
}

#[test]
fn an_agent_token_written_inline_is_warned_about_and_never_printed() {
    let dir = temp_dir("cli-agent");
    let file = dir.join("agent.toml");
    std::fs::write(
        &file,
        "gateway = \"http://127.0.0.1:9\"\nservice = \"survival\"\ntoken = \"inline-agent-token-0123456789\"\nports = [25565]\n",
    )
    .unwrap();
    let out = Command::new(WAKEGATE)
        .args(["agent", "--measure", "--config"])
        .arg(&file)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("agent.toml:3:9: the agent `token` is written in the file"),
        "{all}"
    );
    assert!(!all.contains("inline-agent-token"), "{all}");
}
