//! The Discord bot against Discord's own protocol on both sides: interactions signed with a
//! fresh Ed25519 key exactly as Discord signs them, sent to the gateway's API listener; and a
//! stand-in for Discord's REST API (`standin`) that reads every request body with twilight-model
//! types, answers as Discord documents and records the calls.
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]

#[path = "../common/mod.rs"]
mod common;
mod created;
mod standin;

use std::time::Duration;

use axum::http::Method;
use common::*;
use ed25519_dalek::SigningKey;
use serde_json::{Value, json};
use standin::*;
use twilight_model::application::command::Command;
use twilight_model::http::interaction::InteractionResponse;

/// A gateway with an API token, the Discord bot, `echo` (a real process that boots in 200 ms)
/// and `secret` (which no role but the admin's covers).
async fn gateway_with_bot(name: &str, key: &SigningKey, discord: &Discord) -> wakegate::app::App {
    let dir = temp_dir(name);
    let backend = free_addr();
    gateway(&dir)
        .gateway_raw(
            "[[gateway.token]]\nname = \"ops\"\nsecret = \"ops-secret-0123456789abcdef\"\nrole = \"admin\"",
        )
        .service(
            svc("echo")
                .idle("10m")
                .process(&echo(backend, "200ms"), backend)
                .tcp(ANY_PORT),
        )
        .service(svc("secret").exec_true(free_addr()).tcp(ANY_PORT))
        .raw(&discord_table(
            &discord.url,
            &hex(key.verifying_key().as_bytes()),
            BOT_TOKEN,
        ))
        .start()
        .await
}

#[tokio::test]
async fn only_interactions_signed_recently_with_the_application_key_are_answered() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let app = gateway_with_bot("discord-signature", &key, &discord).await;
    let api = app.api_addr();
    let ping = json!({"id": "700000000000001000", "application_id": APP_ID.to_string(), "type": 1, "token": "t", "version": 1}).to_string();

    // The API's token guards the API, not this path: the signature is its authentication.
    let (status, _) = request(api, "GET /api/v1/services", &[], "").await;
    assert_eq!(status, 401);
    let (status, body) = post(api, &signed(&key, now_secs(), &ping), &ping).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"type": 1})
    );

    let refused = |(status, _): (u16, String)| assert_eq!(status, 401);
    // Another key, a body changed after signing, no headers, stale or future timestamps.
    refused(post(api, &signed(&fresh_key(), now_secs(), &ping), &ping).await);
    let tampered = ping.replace("\"type\":1", "\"type\":2");
    refused(post(api, &signed(&key, now_secs(), &ping), &tampered).await);
    refused(post(api, &[], &ping).await);
    refused(post(api, &signed(&key, now_secs(), &ping)[..1], &ping).await);
    refused(post(api, &signed(&key, now_secs() - 301, &ping), &ping).await);
    refused(post(api, &signed(&key, now_secs() + 120, &ping), &ping).await);
    // Four minutes late is still fine (Discord may retry).
    let (status, _) = post(api, &signed(&key, now_secs() - 240, &ping), &ping).await;
    assert_eq!(status, 200);

    // A guild that is not configured gets a refusal, even for the admin role, and no action.
    let answer = interact(
        api,
        &key,
        &command("start", Some("echo"), &[ADMIN], OTHER_GUILD, false),
    )
    .await;
    assert!(ephemeral(&answer), "{answer:?}");
    assert!(
        content(&answer).contains("not set up for this Discord server"),
        "{answer:?}"
    );
    assert_eq!(
        app.service("echo").unwrap().state(),
        wakegate::event::State::Asleep
    );
    assert!(discord.calls().is_empty());
    app.shutdown().await;
}

#[tokio::test]
async fn with_discord_listen_interactions_arrive_over_wakegates_own_tls_and_not_on_the_api() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let dir = temp_dir("discord-tls");
    let certified = rcgen::generate_simple_self_signed(vec!["bot.example.test".into()]).unwrap();
    let (cert, cert_key) = (dir.join("bot.pem"), dir.join("bot.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&cert_key, certified.signing_key.serialize_pem()).unwrap();
    let endpoint = free_addr();
    let app = gateway(&dir)
        .service(svc("echo").exec_true(free_addr()).tcp(ANY_PORT))
        .raw(&discord_table(
            &discord.url,
            &hex(key.verifying_key().as_bytes()),
            BOT_TOKEN,
        ))
        .raw(&format!(
            "\n[discord.listen]\nbind = \"{endpoint}\"\ntls_cert = {cert:?}\ntls_key = {cert_key:?}\n"
        ))
        .start()
        .await;

    // A client that trusts only that certificate, as Discord trusts a public one.
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let over_tls = async |headers: &[(&str, String)], body: &str| {
        let tcp = tokio::net::TcpStream::connect(endpoint).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("bot.example.test")
            .unwrap()
            .to_owned();
        let stream = connector.connect(name, tcp).await.unwrap();
        request_over(
            stream,
            "bot.example.test",
            "POST /discord/interactions",
            headers,
            body,
        )
        .await
    };
    let ping = json!({"id": "700000000000001000", "application_id": APP_ID.to_string(), "type": 1, "token": "t", "version": 1}).to_string();
    let (status, body) = over_tls(&signed(&key, now_secs(), &ping), &ping).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"type": 1})
    );
    let (status, _) = over_tls(&signed(&fresh_key(), now_secs(), &ping), &ping).await;
    assert_eq!(status, 401, "the signature is checked there too");
    let start = command("start", Some("echo"), &[ADMIN], GUILD, false).to_string();
    let (status, body) = over_tls(&signed(&key, now_secs(), &start), &start).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"type\":5"), "deferred: {body}");

    // Plain HTTP on that socket gets no answer, and the API no longer takes interactions.
    let (status, _) = post(endpoint, &signed(&key, now_secs(), &ping), &ping).await;
    assert_eq!(status, 0, "no plain HTTP answer on a TLS socket");
    let (status, _) = post(app.api_addr(), &signed(&key, now_secs(), &ping), &ping).await;
    assert_eq!(status, 404);
    app.shutdown().await;
}

#[tokio::test]
async fn start_is_deferred_then_its_answer_edited_with_each_step_until_up_and_stop_likewise() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let app = gateway_with_bot("discord-start", &key, &discord).await;
    let api = app.api_addr();
    let is_edit = |c: &Call| {
        c.method == Method::PATCH
            && c.path
                == format!("/api/v10/webhooks/{APP_ID}/interaction-token-secret/messages/@original")
    };
    // The first edit meets Discord's rate limit and must wait what it is told.
    discord.log.lock().unwrap().rate_limit_next = Some(0.4);

    let answer = interact(
        api,
        &key,
        &command("start", Some("echo"), &[STARTER], GUILD, false),
    )
    .await;
    assert_eq!(answer.kind, twilight_model::http::interaction::InteractionResponseType::DeferredChannelMessageWithSource);
    let calls = discord
        .until("saying echo is up", |c| {
            c.status == 200 && c.body.as_str().is_some_and(|t| t.contains("is up at"))
        })
        .await;
    let address = app.service("echo").unwrap().status().address.unwrap();
    let edits: Vec<&Call> = calls.iter().filter(|c| is_edit(c)).collect();
    assert_eq!(
        edits.len(),
        calls.len(),
        "only the answer is edited: {calls:#?}"
    );
    // The 429 was honoured: the retry came no sooner than `retry_after` later.
    assert_eq!(edits[0].status, 429);
    assert!(
        edits[1].at - edits[0].at >= Duration::from_millis(400),
        "{edits:#?}"
    );
    // No bot token on the interaction's own webhook: its token is in the path.
    assert!(edits.iter().all(|c| c.authorization.is_none()));
    let texts: Vec<&str> = edits[1..]
        .iter()
        .map(|c| c.body.as_str().unwrap())
        .collect();
    assert!(texts[0].starts_with("Starting **echo**…"), "{texts:#?}");
    let last = texts.last().unwrap();
    assert!(
        last.ends_with(&format!("**echo** is up at `{address}`")),
        "{last}"
    );
    // The steps of the wake are in it, as the event stream has them.
    let steps: Vec<String> = app
        .store()
        .events(0, None, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.service == "echo" && e.kind == wakegate::event::Kind::Progress)
        .map(|e| e.reason)
        .collect();
    assert!(!steps.is_empty());
    for step in &steps {
        assert!(last.contains(step.as_str()), "{step:?} missing from {last}");
    }
    assert!(discord.log.lock().unwrap().malformed.is_empty());

    // Status: private, with the state and the address.
    let answer = interact(
        api,
        &key,
        &command("status", Some("echo"), &[VIEWER], GUILD, false),
    )
    .await;
    assert!(ephemeral(&answer));
    assert!(
        content(&answer).starts_with(&format!("**echo** is awake at `{address}`")),
        "{answer:?}"
    );
    // Without a name: every service the roles may see (`*` for the starter).
    let answer = interact(
        api,
        &key,
        &command("status", None, &[STARTER], GUILD, false),
    )
    .await;
    let text = content(&answer);
    assert!(
        text.contains("**echo** is awake") && text.contains("**secret** is asleep"),
        "{text}"
    );

    // Stop: only the admin may (the starter role may only start).
    let before = discord.calls().len();
    let answer = interact(
        api,
        &key,
        &command("stop", Some("echo"), &[ADMIN], GUILD, false),
    )
    .await;
    assert_eq!(answer.kind, twilight_model::http::interaction::InteractionResponseType::DeferredChannelMessageWithSource);
    let calls = discord
        .until("saying echo is asleep", |c| {
            c.body
                .as_str()
                .is_some_and(|t| t.ends_with("**echo** is asleep"))
        })
        .await;
    let texts: Vec<&str> = calls[before..]
        .iter()
        .map(|c| c.body.as_str().unwrap())
        .collect();
    assert!(texts[0].starts_with("Stopping **echo**…"), "{texts:#?}");
    assert_eq!(
        app.service("echo").unwrap().state(),
        wakegate::event::State::Asleep
    );
    assert!(
        echo_servers(address).is_empty(),
        "the echo server still runs"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn roles_decide_what_a_member_may_do_and_autocomplete_lists_only_that() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let app = gateway_with_bot("discord-roles", &key, &discord).await;
    let api = app.api_addr();
    let choices = |answer: InteractionResponse| -> Vec<String> {
        assert_eq!(
            answer.kind,
            twilight_model::http::interaction::InteractionResponseType::ApplicationCommandAutocompleteResult
        );
        answer
            .data
            .unwrap()
            .choices
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect()
    };

    // Autocomplete lists what the roles allow for that subcommand, filtered by what is typed.
    let auto = |sub, typed, roles: &'static [u64]| command(sub, Some(typed), roles, GUILD, true);
    assert_eq!(
        choices(interact(api, &key, &auto("start", "", &[STARTER])).await),
        ["echo"]
    );
    assert_eq!(
        choices(interact(api, &key, &auto("status", "", &[STARTER])).await),
        ["echo", "secret"]
    );
    assert_eq!(
        choices(interact(api, &key, &auto("status", "", &[VIEWER])).await),
        ["echo"]
    );
    assert_eq!(
        choices(interact(api, &key, &auto("status", "sec", &[STARTER])).await),
        ["secret"]
    );
    assert!(choices(interact(api, &key, &auto("stop", "", &[STARTER, VIEWER])).await).is_empty());
    assert_eq!(
        choices(interact(api, &key, &auto("stop", "", &[ADMIN])).await),
        ["echo", "secret"]
    );
    assert!(choices(interact(api, &key, &auto("status", "", &[])).await).is_empty());

    // A role without the permission: refused privately, naming the roles that would do.
    let answer = interact(
        api,
        &key,
        &command("start", Some("echo"), &[VIEWER], GUILD, false),
    )
    .await;
    assert!(ephemeral(&answer));
    assert_eq!(
        content(&answer),
        format!(
            "You may not start `echo`. That needs the role <@&{STARTER}> or <@&{ADMIN}>; ask an admin of this server for it."
        )
    );
    // Autocomplete is no permission check: a name typed by hand is refused the same way.
    let answer = interact(
        api,
        &key,
        &command("start", Some("secret"), &[STARTER], GUILD, false),
    )
    .await;
    assert_eq!(
        content(&answer),
        format!(
            "You may not start `secret`. That needs the role <@&{ADMIN}>; ask an admin of this server for it."
        )
    );
    let answer = interact(
        api,
        &key,
        &command("status", Some("secret"), &[VIEWER], GUILD, false),
    )
    .await;
    assert!(
        content(&answer).starts_with("You may not see `secret`."),
        "{answer:?}"
    );
    let answer = interact(
        api,
        &key,
        &command("start", Some("nope"), &[ADMIN], GUILD, false),
    )
    .await;
    assert!(
        content(&answer).starts_with("No server is named `nope`"),
        "{answer:?}"
    );
    // The refusals mention nobody, and nothing was asked of Discord or of the services.
    assert_eq!(
        answer.data.unwrap().allowed_mentions.unwrap().parse,
        Vec::<twilight_model::channel::message::MentionType>::new()
    );
    assert!(discord.calls().is_empty());
    for name in ["echo", "secret"] {
        assert_eq!(
            app.service(name).unwrap().state(),
            wakegate::event::State::Asleep
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn register_overwrites_the_command_set_of_each_guild_and_twice_is_the_same() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let dir = temp_dir("discord-register");
    let table = discord_table(
        &discord.url,
        "${TEST_DISCORD_PUBLIC_KEY}",
        "${TEST_DISCORD_TOKEN}",
    )
    .replace(
        &format!("guilds = [\"{GUILD}\"]"),
        &format!("guilds = [\"{GUILD}\", \"{OTHER_GUILD}\"]"),
    );
    let file = gateway(&dir)
        .service(svc("echo").exec_true(free_addr()).tcp(ANY_PORT))
        .service(svc("secret").exec_true(free_addr()).tcp(ANY_PORT))
        .raw(&table)
        .write(&dir.join("wakegate.toml"));
    let register = || {
        let file = file.clone();
        let public = hex(key.verifying_key().as_bytes());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(WAKEGATE)
                .args(["discord", "register", "--config"])
                .arg(&file)
                .env("TEST_DISCORD_PUBLIC_KEY", public)
                .env("TEST_DISCORD_TOKEN", BOT_TOKEN)
                .output()
                .unwrap()
        })
    };
    // The first PUT meets a rate limit, which is waited out.
    discord.log.lock().unwrap().rate_limit_next = Some(0.2);
    let first = register().await.unwrap();
    let second = register().await.unwrap();
    let out = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(first.stdout, second.stdout);
    let expected =
        |g| format!("guild {g}: 1 command set (/wakegate status|start|stop|create|destroy|extend)");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [expected(GUILD), expected(OTHER_GUILD)]
    );
    for output in [&first, &second] {
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!all.contains(BOT_TOKEN), "{all}");
    }

    let calls = discord.calls();
    let put = |g: u64| format!("/api/v10/applications/{APP_ID}/guilds/{g}/commands");
    let paths: Vec<(u16, &str)> = calls.iter().map(|c| (c.status, c.path.as_str())).collect();
    let (g1, g2) = (put(GUILD), put(OTHER_GUILD));
    assert_eq!(
        paths,
        [
            (429, g1.as_str()),
            (200, &g1),
            (200, &g2),
            (200, &g1),
            (200, &g2)
        ]
    );
    assert!(calls.iter().all(|c| c.method == Method::PUT
        && c.authorization.as_deref() == Some(&format!("Bot {BOT_TOKEN}"))));
    // The same set every time: one chat command with six subcommands whose first option (the
    // server, or create's template) autocompletes.
    assert!(calls.windows(2).all(|w| w[0].body == w[1].body));
    let set: Vec<Command> = serde_json::from_value(calls[1].body.clone()).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].name, "wakegate");
    let subs: Vec<(&str, Option<bool>, Option<bool>)> = set[0]
        .options
        .iter()
        .map(|o| {
            let server = &o.options.as_ref().unwrap()[0];
            (o.name.as_str(), server.autocomplete, server.required)
        })
        .collect();
    assert_eq!(
        subs,
        [
            ("status", Some(true), Some(false)),
            ("start", Some(true), Some(true)),
            ("stop", Some(true), Some(true)),
            ("create", Some(true), Some(true)),
            ("destroy", Some(true), Some(true)),
            ("extend", Some(true), Some(true))
        ]
    );
    assert!(discord.log.lock().unwrap().malformed.is_empty());
}

#[tokio::test]
async fn a_start_that_fails_ends_its_answer_with_the_reason() {
    let key = fresh_key();
    let discord = Discord::start().await;
    let dir = temp_dir("discord-failure");
    let app = gateway(&dir)
        .service(
            svc("broken")
                .wake_timeout("10s")
                .process(
                    &["sh", "-c", "echo 'no world file' >&2; exit 3"],
                    free_addr(),
                )
                .tcp(ANY_PORT),
        )
        .raw(
            &discord_table(
                &discord.url,
                &hex(key.verifying_key().as_bytes()),
                BOT_TOKEN,
            )
            .replace("services = [\"echo\"]", "services = [\"broken\"]"),
        )
        .start()
        .await;
    let answer = interact(
        app.api_addr(),
        &key,
        &command("start", Some("broken"), &[ADMIN], GUILD, false),
    )
    .await;
    assert_eq!(
        answer.kind,
        twilight_model::http::interaction::InteractionResponseType::DeferredChannelMessageWithSource
    );
    let calls = discord
        .until("saying broken failed", |c| {
            c.body
                .as_str()
                .is_some_and(|t| t.contains("**broken** failed: "))
        })
        .await;
    let last = calls.last().unwrap().body.as_str().unwrap().to_string();
    let reason = app.service("broken").unwrap().status().last_error.unwrap();
    assert!(
        last.ends_with(&format!("**broken** failed: {reason}")),
        "{last}"
    );
    assert!(reason.contains("exit"), "{reason}");
    assert!(discord.log.lock().unwrap().malformed.is_empty());
    app.shutdown().await;
}
