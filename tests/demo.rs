//! `wakegate demo` as a new user runs it: the built binary as a child process, a browser's
//! request, the commands its hints print, run as printed.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Instant;

use common::{DEADLINE, WAKEGATE, Wakegate, temp_dir};

/// A browser's GET of `/`: the status code and the body.
fn browse(addr: SocketAddr) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Mozilla/5.0 Firefox/130.0\r\nAccept: text/html,application/xhtml+xml\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text.split_once("\r\n\r\n").unwrap().1.to_string())
}

/// The address after `prefix` in `line` ("open http://127.0.0.1:41234 — …").
fn address_after(line: &str, prefix: &str) -> SocketAddr {
    let rest = line.split(prefix).nth(1).unwrap();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().unwrap()
}

/// The command between backticks in a hint line, as words.
fn hinted_command(line: &str) -> Vec<String> {
    let command = line.split('`').nth(1).unwrap();
    command.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_demo_shows_the_waiting_page_wakes_serves_its_page_and_sleeps_again() {
    let dir = temp_dir("demo");
    // A short idle timeout (the documented --idle), ports of the kernel's choosing, and a data
    // dir of its own (the demo keeps it in the temp dir).
    let mut demo = Wakegate::spawn(
        Command::new(WAKEGATE)
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--idle",
                "1s",
            ])
            .env("TMPDIR", &dir)
            .current_dir(&dir),
    );
    let open = demo.wait_for("open http://");
    let site = address_after(&open, "open http://");
    let dashboard = demo.wait_for("on the dashboard");
    let status_hint = demo.wait_for("status --api");
    let api = address_after(&status_hint, "at http://");
    demo.set_api(api);
    let wake_hint = demo.wait_for("wake demo --wait");
    assert!(dashboard.contains("pretends to cost 3.00"), "{dashboard}");
    // The hint names the binary that runs, by a path that works from here.
    let status = hinted_command(&status_hint);
    assert_eq!(status[0], WAKEGATE, "{status_hint}");
    assert_eq!(status[1..3], ["status", "--api"]);
    let now = demo.wait_for("(now)");
    assert!(now.contains("asleep"), "{now}");

    // A browser first gets the waiting page, which opens the demo's own page once it is up.
    let (code, page) = browse(site);
    assert_eq!(code, 503, "{page}");
    assert!(page.contains("demo is starting"), "{page}");
    demo.wait_for("waking");
    let deadline = Instant::now() + DEADLINE;
    let served = loop {
        let (code, body) = browse(site);
        if code == 200 {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the demo never woke: {code} {body}"
        );
        // The page polls too; this is a browser's reload, not a wait for an event.
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(served.contains("<h1>Awake!</h1>"), "{served}");
    let awake = demo.wait_for("awake");
    assert!(awake.contains("backend ready at"), "{awake}");

    // Left alone for its idle timeout, it goes back to sleep.
    let stopping = demo.wait_for("stopping");
    assert!(stopping.contains("no connection for"), "{stopping}");
    let asleep = demo.wait_for("asleep");
    assert!(asleep.contains("backend stopped"), "{asleep}");

    // The commands the hints print work as printed: status shows the money saved, and a wake
    // from the terminal says how long the recent wakes took.
    let out = Command::new(&status[0])
        .args(&status[1..])
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{table}");
    let header = table.lines().next().unwrap();
    let row = table.lines().nth(1).unwrap();
    assert!(row.starts_with("demo "), "{table}");
    let saved_at = header.find("SAVED 30D").unwrap();
    let saved = row[saved_at..].trim();
    assert!(saved.parse::<f64>().is_ok(), "no money saved in:\n{table}");

    let wake = hinted_command(&wake_hint);
    let out = Command::new(&wake[0]).args(&wake[1..]).output().unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("demo: expected to be awake in about 2"),
        "no ETA in:\n{said}"
    );
    // With no token, the API's caller is told as what it is.
    demo.wait_for("wake requested by an API client on this host");
    demo.wait_for("awake");
    assert!(demo.stop(DEADLINE).success(), "{}", demo.output());
}
