//! wakegate's Minecraft codec against the real `minecraft-protocol` npm package
//! (tests/peers/minecraft/packets.js): what its client writes, wakegate parses and encodes back
//! to the same bytes; what wakegate writes, its client reads as what was meant. Over the
//! versions whose packets changed shape, 1.7 to 26.1.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use wakegate::minecraft::{
    Clientbound, ConfigurationRequest, Frame, Handshake, Intent, LoginAcknowledged, LoginStart,
    LoginStartLayout, MAX_FRAME, MAX_HANDSHAKE_FRAME, MAX_LOGIN_FRAME, Protocol, StatusRequest,
    Uuid,
};

/// minecraft-protocol's version names and their protocol numbers.
const VERSIONS: &[(&str, i32)] = &[
    ("1.7", 5),
    ("1.8.8", 47),
    ("1.12.2", 340),
    ("1.16.5", 754),
    ("1.18.2", 758),
    ("1.19", 759),
    ("1.19.2", 760),
    ("1.19.3", 761),
    ("1.20.1", 763),
    ("1.20.2", 764),
    ("1.20.4", 765),
    ("1.20.6", 766),
    ("1.21.1", 767),
    ("1.21.3", 768),
    ("1.21.4", 769),
    ("1.21.11", 774),
    ("26.1", 775),
];

const UUID: &str = "069a79f4-44e9-4726-a5be-fca90e38aaf5";

/// Runs the jobs through packets.js and returns its results, one per job.
fn peer(jobs: &[Value]) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/minecraft");
    assert!(
        dir.join("node_modules/minecraft-protocol").exists(),
        "minecraft-protocol is not installed; run `npm ci --prefix tests/peers/minecraft` \
         (scripts/test does)"
    );
    let mut child = Command::new("node")
        .arg("packets.js")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run node; scripts/test installs it");
    let input = serde_json::to_vec(jobs).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "packets.js failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results.len(), jobs.len());
    results
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn written(result: &Value, what: &str) -> Vec<u8> {
    let hex = result["hex"]
        .as_str()
        .unwrap_or_else(|| panic!("minecraft-protocol could not write {what}: {result}"));
    unhex(hex)
}

fn frame(bytes: &[u8], max: usize) -> Frame {
    let frame = Frame::parse(bytes, max).unwrap().unwrap();
    assert_eq!(frame.raw().len(), bytes.len());
    frame
}

fn write(version: &str, state: &str, name: &str, params: Value) -> Value {
    json!({"op": "write", "version": version, "state": state, "to": "server", "name": name, "params": params})
}

fn read(version: &str, state: &str, bytes: &[u8]) -> Value {
    json!({"op": "read", "version": version, "state": state, "to": "client", "hex": hex(bytes)})
}

/// What to verify of the bytes minecraft-protocol wrote for one job.
type Check = Box<dyn Fn(&[u8])>;

#[test]
fn packets_its_client_writes_parse_and_encode_back_to_the_same_bytes() {
    let uuid: Uuid = UUID.parse().unwrap();
    let mut jobs = Vec::new();
    let mut checks: Vec<Check> = Vec::new();
    for &(version, number) in VERSIONS {
        let protocol = Protocol(number);
        jobs.push(write(
            version,
            "handshaking",
            "set_protocol",
            json!({"protocolVersion": number, "serverHost": "Play.Example.com.\u{0}FML2\u{0}", "serverPort": 25565, "nextState": 2}),
        ));
        checks.push(Box::new(move |bytes| {
            let handshake = Handshake::parse(frame(bytes, MAX_HANDSHAKE_FRAME).body()).unwrap();
            assert_eq!(handshake.protocol, protocol);
            assert_eq!(handshake.address.hostname(), "play.example.com");
            assert_eq!(handshake.address.forge(), Some(2));
            assert_eq!(handshake.port, 25565);
            assert_eq!(handshake.intent, Intent::Login);
            assert_eq!(handshake.encode().unwrap(), bytes, "{version}");
        }));

        // Login start with every field the version has; 1.19.1 to 1.20.1 also without UUID.
        let layout = LoginStart::layout(protocol);
        let signature = json!({"timestamp": {"$bigint": "1700000000000"}, "publicKey": {"$hex": "30".repeat(294)}, "signature": {"$hex": "ab".repeat(512)}});
        let mut variants = vec![true];
        if matches!(
            layout,
            LoginStartLayout::NameSignatureUuid | LoginStartLayout::NameOptionalUuid
        ) {
            variants.push(false);
        }
        for with_uuid in variants {
            let mut params = json!({"username": "Steve"});
            if layout != LoginStartLayout::Name && with_uuid {
                params["playerUUID"] = json!(UUID);
            }
            if matches!(
                layout,
                LoginStartLayout::NameSignature | LoginStartLayout::NameSignatureUuid
            ) {
                params["signature"] = signature.clone();
            }
            jobs.push(write(version, "login", "login_start", params));
            checks.push(Box::new(move |bytes| {
                let start = LoginStart::parse(frame(bytes, MAX_LOGIN_FRAME).body(), protocol)
                    .unwrap_or_else(|e| panic!("{version}: {e}"));
                assert_eq!(start.name, "Steve");
                let expect_uuid = match layout {
                    LoginStartLayout::Name | LoginStartLayout::NameSignature => None,
                    _ => with_uuid.then_some(uuid),
                };
                assert_eq!(start.uuid, expect_uuid, "{version}");
                if let Some(sig) = &start.signature {
                    assert_eq!(sig.expires_at, 1_700_000_000_000);
                    assert_eq!(sig.public_key, vec![0x30; 294]);
                    assert_eq!(sig.signature, vec![0xab; 512]);
                }
                assert_eq!(
                    start.signature.is_some(),
                    matches!(
                        layout,
                        LoginStartLayout::NameSignature | LoginStartLayout::NameSignatureUuid
                    )
                );
                assert_eq!(start.encode(protocol).unwrap(), bytes, "{version}");
            }));
        }

        jobs.push(write(version, "status", "ping_start", json!({})));
        checks.push(Box::new(|bytes| {
            let request = StatusRequest::parse(frame(bytes, MAX_LOGIN_FRAME).body()).unwrap();
            assert_eq!(request, StatusRequest::Status);
            assert_eq!(request.encode(), bytes);
        }));
        jobs.push(write(
            version,
            "status",
            "ping",
            json!({"time": {"$bigint": "-1234567890123"}}),
        ));
        checks.push(Box::new(|bytes| {
            let request = StatusRequest::parse(frame(bytes, MAX_LOGIN_FRAME).body()).unwrap();
            assert_eq!(request, StatusRequest::Ping(-1_234_567_890_123));
            assert_eq!(request.encode(), bytes);
        }));

        if protocol.has_configuration() {
            jobs.push(write(version, "login", "login_acknowledged", json!({})));
            checks.push(Box::new(move |bytes| {
                LoginAcknowledged::parse(frame(bytes, MAX_LOGIN_FRAME).body(), protocol).unwrap();
                assert_eq!(LoginAcknowledged::encode(protocol).unwrap(), bytes);
            }));
            jobs.push(write(
                version,
                "configuration",
                "keep_alive",
                json!({"keepAliveId": {"$bigint": "77"}}),
            ));
            checks.push(Box::new(move |bytes| {
                let request =
                    ConfigurationRequest::parse(frame(bytes, MAX_FRAME).body(), protocol).unwrap();
                assert_eq!(request, ConfigurationRequest::KeepAlive(77), "{version}");
                assert_eq!(request.encode(protocol).unwrap(), bytes);
            }));
            jobs.push(write(
                version,
                "configuration",
                "finish_configuration",
                json!({}),
            ));
            checks.push(Box::new(move |bytes| {
                let request =
                    ConfigurationRequest::parse(frame(bytes, MAX_FRAME).body(), protocol).unwrap();
                assert_eq!(
                    request,
                    ConfigurationRequest::FinishAcknowledged,
                    "{version}"
                );
            }));
        }
    }
    let results = peer(&jobs);
    for ((job, result), check) in jobs.iter().zip(&results).zip(&checks) {
        check(&written(result, &job.to_string()));
    }
}

#[test]
fn packets_wakegate_writes_read_in_its_client_as_meant() {
    let uuid: Uuid = UUID.parse().unwrap();
    let status = json!({
        "version": {"name": "1.21.4", "protocol": 769},
        "players": {"max": 20, "online": 0, "sample": []},
        "description": {"text": "§7Sleeping — join to wake it ✨"},
    })
    .to_string();
    let reason = json!({"text": "Starting; ", "color": "gold", "bold": true, "extra": ["about ", {"text": "40 s", "italic": true}]});
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    for &(version, number) in VERSIONS {
        let protocol = Protocol(number);
        let mut add = |state: &str, packet: Clientbound<'_>, want: Value| {
            jobs.push(read(version, state, &packet.encode(protocol).unwrap()));
            expected.push(want);
        };
        add(
            "status",
            Clientbound::StatusResponse { json: &status },
            json!({"name": "server_info", "params": {"response": status}}),
        );
        add(
            "status",
            Clientbound::Pong(-5),
            json!({"name": "ping", "params": {"time": {"$bigint": "-5"}}}),
        );
        add(
            "login",
            Clientbound::LoginDisconnect { reason: &reason },
            json!({"name": "disconnect", "params": {"reason": reason.to_string()}}),
        );
        let mut success = json!({"uuid": UUID, "username": "Steve"});
        if number >= 759 {
            success["properties"] = json!([]);
        }
        if (766..=767).contains(&number) {
            success["strictErrorHandling"] = json!(false);
        }
        add(
            "login",
            Clientbound::LoginSuccess {
                uuid,
                name: "Steve",
            },
            json!({"name": "success", "params": success}),
        );
        if protocol.has_configuration() {
            add(
                "configuration",
                Clientbound::ConfigurationKeepAlive(i64::MIN),
                json!({"name": "keep_alive", "params": {"keepAliveId": {"$bigint": i64::MIN.to_string()}}}),
            );
            let nbt_reason = json!({"type": "compound", "value": {
                "text": {"type": "string", "value": "Starting; "},
                "color": {"type": "string", "value": "gold"},
                "bold": {"type": "byte", "value": 1},
                "extra": {"type": "list", "value": {"type": "compound", "value": [
                    {"text": {"type": "string", "value": "about "}},
                    {"text": {"type": "string", "value": "40 s"}, "italic": {"type": "byte", "value": 1}},
                ]}},
            }});
            let want_reason = if number >= 765 {
                nbt_reason
            } else {
                json!(reason.to_string())
            };
            add(
                "configuration",
                Clientbound::ConfigurationDisconnect { reason: &reason },
                json!({"name": "disconnect", "params": {"reason": want_reason}}),
            );
        }
        if protocol.supports_transfer() {
            add(
                "configuration",
                Clientbound::Transfer {
                    host: "play.example.com",
                    port: 25565,
                },
                json!({"name": "transfer", "params": {"host": "play.example.com", "port": 25565}}),
            );
        }
    }
    let results = peer(&jobs);
    for ((job, result), want) in jobs.iter().zip(&results).zip(&expected) {
        assert_eq!(result, want, "{job}");
    }
}
