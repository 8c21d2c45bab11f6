//! The HTTP benchmark: wrk requests per second and latency against nginx directly, through
//! haproxy in http mode and through wakegate's `http` listener (the service awake), and through
//! both in TCP mode (wakegate's `tcp` listener), all on loopback and in one run; each with
//! keep-alive connections and with a new connection per request (`Connection: close`). A row
//! puts the reverse proxy alone (`Proxy::forward` behind a bare hyper server in this process,
//! two worker threads like wakegate's) in front of the same nginx: the difference to the
//! wakegate row is what the listener adds per request (routing, the service's ticket, activity
//! counting).
//!
//! Why: once a web app is awake, wakegate is its reverse proxy; it should cost no more than
//! haproxy (target: 1.1× haproxy's requests/s, at a p99 no higher) and add under a
//! millisecond to p99.
//! Absolute figures depend on the machine: compare within a run. `bench/http` installs wrk,
//! nginx and haproxy and runs this file; `cargo bench --bench http` runs it alone.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use support::{Proc, TempDir, free_ports, loopback, progress};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// wrk's settings: threads, open connections, seconds per run.
const WRK_THREADS: usize = 2;
const WRK_CONNECTIONS: usize = 32;
const WRK_SECONDS: u64 = 5;
/// Each target is measured this many times, in turns; the median is kept.
const ROUNDS: usize = 3;
/// What nginx serves: a small page, as a typical API answer or HTML fragment.
const PAGE_BYTES: usize = 1024;
const RPS_TARGET: f64 = 1.1;
const ADDED_P99_TARGET_MS: f64 = 1.0;
/// Every wait for a peer is bounded by this.
const PATIENCE: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let figures = runtime.block_on(run())?;
    print!("{}", figures.table());
    support::rows::record(&figures.rows())
}

async fn run() -> anyhow::Result<Figures> {
    let versions = [
        version_of("wrk", &["-v"])?,
        version_of("nginx", &["-v"])?,
        version_of("haproxy", &["-v"])?,
    ];
    let dir = TempDir::new("wakegate-bench-http")?;
    let [
        nginx_port,
        haproxy_port,
        haproxy_tcp,
        wakegate_port,
        wakegate_tcp,
    ] = free_ports()?;
    let [api_port, bare_port] = free_ports()?;

    let mut nginx = Nginx::start(&dir.0, nginx_port).await?;
    let mut haproxy = haproxy(&dir.0, haproxy_port, haproxy_tcp, loopback(nginx_port)).await?;
    let mut wakegate = wakegate(
        &dir.0,
        [wakegate_port, wakegate_tcp],
        api_port,
        loopback(nginx_port),
    )
    .await?;

    let _bare = BareProxy::start(bare_port, loopback(nginx_port))?;

    let targets = TARGETS.map(|label| match label {
        "nginx direct" => (label, nginx_port),
        "haproxy" => (label, haproxy_port),
        "wakegate" => (label, wakegate_port),
        "proxy alone" => (label, bare_port),
        "haproxy tcp" => (label, haproxy_tcp),
        _ => (label, wakegate_tcp),
    });
    // Each target once before measuring: connections to nginx opened, pools filled, caches warm.
    for (_, port) in targets {
        wrk(port, Duration::from_secs(1), false).await?;
    }
    let mut runs: [[Vec<Wrk>; TARGETS.len()]; 2] = Default::default();
    for (mode, close) in [false, true].into_iter().enumerate() {
        for round in 1..=ROUNDS {
            for (i, (label, port)) in targets.iter().enumerate() {
                nginx.proc.check_running()?;
                haproxy.check_running()?;
                wakegate.check_running()?;
                let run = wrk(*port, Duration::from_secs(WRK_SECONDS), close).await?;
                progress(&format!(
                    "{label}, {} {round}/{ROUNDS}: {:.0} requests/s, p50 {:.3} ms, p99 {:.3} ms",
                    if close {
                        "a connection per request"
                    } else {
                        "keep-alive"
                    },
                    run.rps,
                    run.p50_ms,
                    run.p99_ms
                ));
                runs[mode][i].push(run);
            }
        }
    }
    // Warnings other than the one about the API's missing token (the bench needs none).
    let problems: Vec<String> = wakegate
        .log_problems()
        .into_iter()
        .filter(|line| !line.contains("gateway.token"))
        .collect();
    ensure!(
        problems.is_empty(),
        "wakegate logged problems during the run:\n{}",
        problems.join("\n")
    );
    Ok(Figures {
        setup: format!("{}; {}", support::machine(), versions.join("; ")),
        results: runs.map(|mode| mode.map(|r| Wrk::median(&r))),
    })
}

/// One wrk run: requests per second and latency percentiles.
#[derive(Clone, Copy)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Wrk {
    /// The median of each figure on its own.
    fn median(runs: &[Wrk]) -> Wrk {
        let median = |f: fn(&Wrk) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Wrk {
            rps: median(|w| w.rps),
            p50_ms: median(|w| w.p50_ms),
            p99_ms: median(|w| w.p99_ms),
        }
    }
}

/// Runs wrk against 127.0.0.1:`port` for `length`, with keep-alive connections or (`close`)
/// a new connection per request.
async fn wrk(port: u16, length: Duration, close: bool) -> anyhow::Result<Wrk> {
    let url = format!("http://127.0.0.1:{port}/");
    let mut command = tokio::process::Command::new("wrk");
    if close {
        command.args(["-H", "Connection: close"]);
    }
    let run = command
        .args(["-t", &WRK_THREADS.to_string()])
        .args(["-c", &WRK_CONNECTIONS.to_string()])
        .args(["-d", &format!("{}s", length.as_secs())])
        .args(["--latency", &url])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(length + PATIENCE, run)
        .await
        .context("wrk did not finish in time")?
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk to {url} failed: {text}");
    // Anything but 2xx, or a socket error, means the figure is not about serving the page.
    ensure!(
        !text.contains("Non-2xx") && !text.contains("Socket errors"),
        "wrk to {url} saw errors:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("no Requests/sec in wrk's output")?
        .trim()
        .parse()?;
    let percentile = |p: &str| -> anyhow::Result<f64> {
        let line = text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .with_context(|| format!("no {p} latency in wrk's output:\n{text}"))?;
        duration_ms(line.trim())
    };
    Ok(Wrk {
        rps,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
    })
}

/// wrk's durations: "812.00us", "1.23ms", "2.00s".
fn duration_ms(text: &str) -> anyhow::Result<f64> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("odd duration from wrk: {text}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    Ok(match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        "m" => number * 60e3,
        _ => bail!("odd duration unit from wrk: {text}"),
    })
}

// ---------------------------------------------------------------------------------------------
// The peers.

/// nginx in the foreground, serving one small page with keep-alive connections that last.
struct Nginx {
    proc: Proc,
}

impl Nginx {
    async fn start(dir: &Path, port: u16) -> anyhow::Result<Nginx> {
        let root = dir.join("nginx");
        std::fs::create_dir_all(root.join("html"))?;
        std::fs::write(root.join("html/index.html"), "x".repeat(PAGE_BYTES))?;
        let root_text = root.to_string_lossy();
        // One worker: the machine is small and wrk and the proxies need the other core.
        // keepalive_requests: nginx closes a connection after 1,000 requests by default,
        // which would make every proxy reconnect now and then.
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {root_text}/nginx.pid;\n\
             error_log {root_text}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 75s;\n\
             \x20 client_body_temp_path {root_text}/body;\n  proxy_temp_path {root_text}/proxy;\n\
             \x20 fastcgi_temp_path {root_text}/fastcgi;\n  uwsgi_temp_path {root_text}/uwsgi;\n\
             \x20 scgi_temp_path {root_text}/scgi;\n\
             \x20 server {{\n    listen 127.0.0.1:{port};\n    root {root_text}/html;\n  }}\n}}\n"
        );
        let path = root.join("nginx.conf");
        std::fs::write(&path, config)?;
        let mut proc = Proc::spawn(
            "nginx",
            Command::new("nginx")
                .arg("-p")
                .arg(&root)
                .arg("-e")
                .arg(root.join("error.log"))
                .arg("-c")
                .arg(&path),
            dir,
        )?;
        proc.wait_listening(port).await?;
        Ok(Nginx { proc })
    }
}

/// haproxy in the foreground: in http mode on `port`, with connection reuse to nginx, adding
/// X-Forwarded-For as wakegate does; in TCP mode on `tcp_port`.
async fn haproxy(dir: &Path, port: u16, tcp_port: u16, nginx: SocketAddr) -> anyhow::Result<Proc> {
    let config = format!(
        "defaults\n    mode http\n    option forwardfor\n    http-reuse always\n\
         \x20   timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n\
         \nfrontend in\n    bind 127.0.0.1:{port}\n    default_backend out\n\
         \nbackend out\n    server nginx {nginx}\n\
         \nfrontend tcp_in\n    mode tcp\n    bind 127.0.0.1:{tcp_port}\n    default_backend tcp_out\n\
         \nbackend tcp_out\n    mode tcp\n    server nginx {nginx}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let mut proc = Proc::spawn(
        "haproxy",
        Command::new("haproxy").arg("-f").arg(&path).arg("-db"),
        dir,
    )?;
    for port in [port, tcp_port] {
        proc.wait_listening(port).await?;
    }
    Ok(proc)
}

/// `wakegate run` with two services (an `exec` backend that does nothing: nginx is already
/// there), one behind an `http` listener on `ports[0]`, woken before it returns, the other
/// behind a `tcp` listener on `ports[1]`, woken by its first connection.
async fn wakegate(
    dir: &Path,
    [port, tcp_port]: [u16; 2],
    api_port: u16,
    nginx: SocketAddr,
) -> anyhow::Result<Proc> {
    let api = loopback(api_port);
    let data_dir = dir.join("wakegate-data");
    let config = format!(
        "[gateway]\ndata_dir = {}\napi = \"{api}\"\nshutdown_grace = \"1s\"\n\
         \n[[service]]\nname = \"web\"\nidle_timeout = \"1h\"\n\
         [service.backend]\ntype = \"exec\"\nstart = \"true\"\nstop = \"true\"\n\
         address = \"{nginx}\"\n\
         [[service.listen]]\ntype = \"http\"\nbind = \"{}\"\nhostnames = [\"web\"]\n\
         default = true\nstrategy = \"block\"\n\
         \n[[service]]\nname = \"web-tcp\"\nidle_timeout = \"1h\"\n\
         [service.backend]\ntype = \"exec\"\nstart = \"true\"\nstop = \"true\"\n\
         address = \"{nginx}\"\n\
         [[service.listen]]\ntype = \"tcp\"\nbind = \"{}\"\n\
         max_connections_per_address = 0\n",
        toml::Value::from(data_dir.to_string_lossy().into_owned()),
        loopback(port),
        loopback(tcp_port),
    );
    let path = dir.join("wakegate.toml");
    std::fs::write(&path, config)?;
    let mut proc = Proc::spawn(
        "wakegate",
        Command::new(support::wakegate())
            .arg("run")
            .arg("--config")
            .arg(&path)
            // Fixed, so that a caller's RUST_LOG=debug cannot change the figures.
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1"),
        dir,
    )?;
    for port in [port, tcp_port, api_port] {
        proc.wait_listening(port).await?;
    }
    // A first request wakes the service and is held until it is awake: measure the proxy, not
    // the wake.
    for port in [port, tcp_port] {
        let deadline = Instant::now() + PATIENCE;
        loop {
            proc.check_running()?;
            if get_status(loopback(port)).await? == 200 {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "wakegate does not forward to nginx"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(proc)
}

/// The status of `GET /` at `target`, on a connection of its own.
async fn get_status(target: SocketAddr) -> anyhow::Result<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(target).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(PATIENCE, exchange)
        .await
        .context("no answer from wakegate")??;
    let response = String::from_utf8_lossy(&response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("odd answer from wakegate: {response}"))
}

/// `Proxy::forward` behind a bare hyper HTTP/1.1 server, on a runtime of its own with two
/// worker threads (as wakegate's), in front of nginx. Stops when dropped.
struct BareProxy {
    runtime: Option<tokio::runtime::Runtime>,
}

impl BareProxy {
    fn start(port: u16, nginx: SocketAddr) -> anyhow::Result<BareProxy> {
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        use wakegate::listener::http::proxy::{Proxy, ProxyTimeouts};

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind(loopback(port))?;
        listener.set_nonblocking(true)?;
        let proxy = Proxy::new(ProxyTimeouts::default());
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((stream, peer)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let proxy = proxy.clone();
                let service = service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move {
                        match proxy.forward(req, nginx, peer, false, None).await {
                            Ok(response) => Ok(response),
                            Err(e) => Err(e),
                        }
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        Ok(BareProxy {
            runtime: Some(runtime),
        })
    }
}

impl Drop for BareProxy {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The first line `tool ARGS` prints (on stdout or stderr), or why the tool cannot be used.
fn version_of(tool: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tool).args(args).output().with_context(|| {
        format!("{tool} is needed; bench/http installs it (apt-get install wrk nginx haproxy)")
    })?;
    let text = if out.stdout.is_empty() {
        String::from_utf8_lossy(&out.stderr).into_owned()
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    Ok(text.lines().next().unwrap_or(tool).trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// The report.

/// The targets, in the order they are measured and shown.
const TARGETS: [&str; 6] = [
    "nginx direct",
    "haproxy",
    "wakegate",
    "proxy alone",
    "haproxy tcp",
    "wakegate tcp",
];

struct Figures {
    setup: String,
    /// Keep-alive, then a connection per request; each in the order of [`TARGETS`].
    results: [[Wrk; TARGETS.len()]; 2],
}

impl Figures {
    /// The rows of `bench/run`'s summary: each mode against haproxy in the same mode.
    fn rows(&self) -> Vec<support::rows::Row> {
        let [keep, close] = &self.results;
        let mut rows = Vec::new();
        for (key, what, runs, w, h) in [
            (
                "tcp-keepalive",
                "HTTP keep-alive, TCP mode (req/s)",
                keep,
                5,
                4,
            ),
            (
                "tcp-newconn",
                "a new connection per request, TCP mode (req/s)",
                close,
                5,
                4,
            ),
            (
                "http-keepalive",
                "HTTP keep-alive, HTTP mode (req/s)",
                keep,
                2,
                1,
            ),
            (
                "http-newconn",
                "a new connection per request, HTTP mode (req/s)",
                close,
                2,
                1,
            ),
        ] {
            rows.push(support::rows::Row {
                key,
                what: format!(
                    "{what}; p99 {:.2} ms vs {:.2}",
                    runs[w].p99_ms, runs[h].p99_ms
                ),
                reference: "haproxy",
                reference_value: runs[h].rps,
                value: runs[w].rps,
                better: support::rows::Better::Higher,
                decimals: 0,
                goal: format!("≥ {RPS_TARGET}× haproxy, p99 ≤ its"),
                met: Some(
                    runs[w].rps >= RPS_TARGET * runs[h].rps && runs[w].p99_ms <= runs[h].p99_ms,
                ),
            });
        }
        rows
    }

    fn table(&self) -> String {
        let mut out = format!("\nwakegate HTTP benchmark, loopback: {}\n\n", self.setup);
        out += &format!(
            "{:<16}{:>14}{:>10}{:>10}{:>12}{:>15}{:>10}{:>10}{:>12}\n",
            "",
            "keep-alive r/s",
            "p50 (ms)",
            "p99 (ms)",
            "/ haproxy",
            "new conn r/s",
            "p50 (ms)",
            "p99 (ms)",
            "/ haproxy"
        );
        let [keep, close] = &self.results;
        for (i, label) in TARGETS.iter().enumerate() {
            // A TCP-mode proxy is compared with haproxy in TCP mode, the others with haproxy
            // in http mode.
            let reference = if label.ends_with("tcp") { 4 } else { 1 };
            let ratio = |runs: &[Wrk; TARGETS.len()]| {
                if i == 0 || i == reference {
                    "-".to_string()
                } else {
                    format!("{:.2}", runs[i].rps / runs[reference].rps)
                }
            };
            out += &format!(
                "{label:<16}{:>14.0}{:>10.3}{:>10.3}{:>12}{:>15.0}{:>10.3}{:>10.3}{:>12}\n",
                keep[i].rps,
                keep[i].p50_ms,
                keep[i].p99_ms,
                ratio(keep),
                close[i].rps,
                close[i].p50_ms,
                close[i].p99_ms,
                ratio(close),
            );
        }
        for (mode, runs) in [("keep-alive", keep), ("a connection per request", close)] {
            for (w, h, what) in [(2, 1, "http"), (5, 4, "tcp")] {
                let met =
                    runs[w].rps >= RPS_TARGET * runs[h].rps && runs[w].p99_ms <= runs[h].p99_ms;
                out += &format!(
                    "\nwakegate/haproxy, {what} mode, {mode}: {:.2} requests/s, p99 {:.3} vs {:.3} ms \
                     (target ≥ {RPS_TARGET}× at a p99 no higher: {})",
                    runs[w].rps / runs[h].rps,
                    runs[w].p99_ms,
                    runs[h].p99_ms,
                    if met { "met" } else { "NOT MET" },
                );
            }
        }
        out += &format!(
            "\nwakegate added p99 (http, keep-alive): {:.3} ms (target < {ADDED_P99_TARGET_MS} ms)\n",
            keep[2].p99_ms - keep[0].p99_ms,
        );
        out += &format!(
            "\nwrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s --latency, GET of a \
             {PAGE_BYTES}-byte page, with keep-alive and with `Connection: close` (a new \
             connection per request); the median of {ROUNDS} runs each, taken in turns.\n\
             nginx: 1 worker. haproxy: http mode, option forwardfor, http-reuse always; and a \
             tcp-mode frontend.\n\
             wakegate: an http listener and a tcp listener, the services awake, release build.\n\
             proxy alone: Proxy::forward behind a bare hyper HTTP/1.1 server in the bench process.\n\
             added: against nginx direct, which serves more requests in the same time (so a\n\
             longer queue at the same connection count): its p99 is a loose reference.\n\
             Compare within one run, not across runs or machines.\n"
        );
        out
    }
}
