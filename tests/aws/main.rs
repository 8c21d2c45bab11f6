//! The AWS backends against a real AWS API emulator: moto server (tests/peers/requirements.txt,
//! installed into .venv-peers by scripts/test), started once for this file on a free loopback
//! port. The real `wakegate` binary runs each scenario with test credentials in its
//! environment; fixtures (instances, clusters, task definitions, hosted zones) are made with
//! the AWS SDK for Rust. moto's IPs route nowhere, so a real local echo server plays the
//! server behind a fixed `address`.
//!
//! Between wakegate and moto sits a small recording proxy: it keeps every API call wakegate
//! made (to assert, say, that a terminated instance was never asked to start), and it can show
//! an instance as `stopping` for a few looks, a state moto skips (it stops instances at once).
// A test's own tasks end with the test: the daemon's rule (spawn on a tracker) is for src/.
#![allow(clippy::disallowed_methods)]
#![cfg(feature = "aws")]

#[path = "../common/mod.rs"]
mod common;
mod fixtures;
mod outside;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
use common::*;
use fixtures::*;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Scenarios.

#[test]
fn tags_must_select_exactly_one_instance_and_a_client_wakes_it() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("tags");
    let one = aws.instance(&[("app", &word), ("role", "one")], false);
    let twin_a = aws.instance(&[("app", &word), ("role", "two")], false);
    let twin_b = aws.instance(&[("app", &word), ("role", "two")], false);
    let dir = temp_dir("aws-tags");
    let (l0, l1, l2) = (free_addr(), free_addr(), free_addr());
    let mut config = gateway(&dir);
    for (name, listen) in [("none", l0), ("one", l1), ("two", l2)] {
        let role = if name == "none" { "zero" } else { name };
        config = config.service(
            ec2_service(name, listen, &aws.proxy.url)
                .backend_set("tags", inline(&[("app", word.as_str()), ("role", role)]))
                .backend_set("address", echo.addr),
        );
    }
    let mut gateway = start(&write_config(&dir, config));

    // One match: a client wakes the stopped instance and is served by the server behind it.
    assert_eq!(echo_through(l1, b"hello through ec2"), b"hello through ec2");
    assert_eq!(aws.state(&one), InstanceStateName::Running);
    gateway.wait_for("no connection for");
    gateway.wait_for("backend stopped after");
    assert_eq!(aws.state(&one), InstanceStateName::Stopped);

    // No match, and two matches: the wake fails with what was found; nothing is started.
    assert_eq!(echo_through(l0, b"x"), b"");
    gateway.wait_for("state=failed kind=\"transition\"");
    assert_eq!(echo_through(l2, b"x"), b"");
    gateway.wait_for("state=failed kind=\"transition\"");
    let none = gateway.service("none");
    assert_eq!(none["state"], "failed", "{none}");
    let error = none["last_error"].as_str().unwrap();
    assert!(error.contains("no instance matches"), "{error}");
    let two = gateway.service("two");
    assert_eq!(two["state"], "failed", "{two}");
    let error = two["last_error"].as_str().unwrap();
    assert!(
        error.contains("2 instances match where one must"),
        "{error}"
    );
    assert!(
        error.contains(&twin_a) && error.contains(&twin_b),
        "{error}"
    );
    assert_eq!(aws.state(&twin_a), InstanceStateName::Stopped);
    assert_eq!(aws.state(&twin_b), InstanceStateName::Stopped);
    let calls = aws.proxy.recorded.calls();
    let starts: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("ec2:StartInstances"))
        .collect();
    assert_eq!(starts.len(), 1, "{starts:#?}");
    assert!(starts[0].contains(&one), "{starts:#?}");
}

#[test]
fn a_terminated_instance_fails_the_wake_and_is_never_started() {
    let aws = Aws::new();
    let echo = Echo::start();
    let id = aws.instance(&[("app", &unique("gone"))], false);
    aws.block(aws.ec2.terminate_instances().instance_ids(&id).send())
        .unwrap();
    let dir = temp_dir("aws-terminated");
    let listen = free_addr();
    let service = ec2_service("gone", listen, &aws.proxy.url)
        .backend_set("instance_id", &id)
        .backend_set("address", echo.addr);
    let mut gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    // Found so at start-up, before anyone asks for it.
    let found = gateway.wait_for("state=failed kind=\"transition\"");
    assert!(
        found.contains("found the backend gone") && found.contains("is terminated"),
        "{found}"
    );
    assert_eq!(echo_through(listen, b"anyone?"), b"");
    gateway.wait_for("state=failed kind=\"transition\"");
    let view = gateway.service("gone");
    assert_eq!(view["state"], "failed", "{view}");
    let error = view["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("instance {id} is terminated"))
            && error.contains("launch a new instance"),
        "{error}"
    );
    assert_eq!(aws.proxy.recorded.count("ec2:StartInstances"), 0);
    assert_eq!(aws.state(&id), InstanceStateName::Terminated);
}

#[test]
fn hibernates_when_the_instance_allows_it_and_says_so_when_not() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("hib");
    let able = aws.instance(&[("app", &word), ("hib", "yes")], true);
    let unable = aws.instance(&[("app", &word), ("hib", "no")], false);
    let dir = temp_dir("aws-hibernate");
    let mut config = gateway(&dir);
    for (name, id) in [("able", &able), ("unable", &unable)] {
        config = config.service(
            ec2_service(name, free_addr(), &aws.proxy.url)
                .backend_set("instance_id", id)
                .backend_set("hibernate", true)
                .backend_set("address", echo.addr),
        );
    }
    let mut gateway = start(&write_config(&dir, config));
    for name in ["able", "unable"] {
        gateway.wake(name);
        gateway.wait_for("backend ready at");
    }
    for name in ["able", "unable"] {
        gateway.sleep(name);
        gateway.wait_for("backend stopped after");
    }
    assert_eq!(aws.state(&able), InstanceStateName::Stopped);
    assert_eq!(aws.state(&unable), InstanceStateName::Stopped);

    let stops = |id: &str| -> Vec<String> {
        aws.proxy
            .recorded
            .calls()
            .into_iter()
            .filter(|c| c.starts_with("ec2:StopInstances") && c.contains(id))
            .collect()
    };
    // What AWS was asked: hibernation for the one that can, a plain stop for the other.
    let able_stops = stops(&able);
    assert_eq!(able_stops.len(), 1, "{able_stops:#?}");
    assert!(able_stops[0].contains("Hibernate=true"), "{able_stops:#?}");
    let unable_stops = stops(&unable);
    assert_eq!(unable_stops.len(), 1, "{unable_stops:#?}");
    assert!(
        !unable_stops[0].contains("Hibernate=true"),
        "{unable_stops:#?}"
    );

    let able_events = gateway.events("able");
    assert!(
        able_events
            .iter()
            .any(|e| e["detail"]["instance"] == able.as_str()
                && e["detail"]["step"] == "stopping"
                && e["detail"]["hibernate"] == true),
        "{able_events:#?}"
    );
    assert!(
        !able_events.iter().any(|e| e["kind"] == "warning"),
        "{able_events:#?}"
    );
    let unable_events = gateway.events("unable");
    // Why it stops without hibernating (not configured for it, rather than refused by AWS)
    // is in the prose only.
    assert!(
        unable_events.iter().any(|e| e["kind"] == "warning"
            && e["detail"]["instance"] == unable.as_str()
            && e["detail"]["hibernate"] == false
            && e["reason"].as_str().unwrap().contains(&format!("instance {unable} is not configured for hibernation; stopping it without hibernating"))),
        "{unable_events:#?}"
    );
}

#[test]
fn throttled_calls_are_retried() {
    let aws = Aws::new();
    let echo = Echo::start();
    let id = aws.instance(&[("app", &unique("throttle"))], false);
    let dir = temp_dir("aws-throttle");
    let listen = free_addr();
    let service = ec2_service("busy", listen, &aws.proxy.url)
        .backend_set("instance_id", &id)
        .backend_set("address", echo.addr);
    let _gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    aws.proxy
        .recorded
        .throttle_starts
        .store(2, Ordering::SeqCst);
    assert_eq!(echo_through(listen, b"again"), b"again");
    // Two throttled answers, then the call that went through.
    assert_eq!(aws.proxy.recorded.count("ec2:StartInstances"), 3);
    assert_eq!(aws.state(&id), InstanceStateName::Running);
}

#[test]
fn a_wake_while_the_instance_is_stopping_waits_for_stopped_then_starts() {
    let aws = Aws::new();
    let echo = Echo::start();
    let id = aws.instance(&[("app", &unique("stopping"))], false);
    let dir = temp_dir("aws-stopping");
    let listen = free_addr();
    let service = ec2_service("late", listen, &aws.proxy.url)
        .backend_set("instance_id", &id)
        .backend_set("address", echo.addr);
    let mut gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    // From now on, the next three looks show the instance still stopping.
    aws.proxy.recorded.show_stopping.store(3, Ordering::SeqCst);
    assert_eq!(echo_through(listen, b"patience"), b"patience");
    gateway.wait_for("backend ready at");
    let events = gateway.events("late");
    assert!(
        events.iter().any(|e| e["detail"]["instance"] == id.as_str()
            && e["detail"]["step"] == "waiting for stopped"),
        "{events:#?}"
    );
    // The start was asked only after an answer showed the instance stopped.
    let calls = aws.proxy.recorded.calls();
    let shown = calls
        .iter()
        .rposition(|c| c == "proxy:ShownStopping")
        .unwrap();
    let start = calls
        .iter()
        .position(|c| c.starts_with("ec2:StartInstances"))
        .unwrap();
    assert!(start > shown, "{calls:#?}");
    assert_eq!(aws.proxy.recorded.count("ec2:StartInstances"), 1);
    assert_eq!(aws.proxy.recorded.show_stopping.load(Ordering::SeqCst), 0);
}

#[test]
fn the_dns_record_follows_the_new_public_ip_across_two_wakes() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("dns");
    let id = aws.instance(&[("app", &word)], false);
    let (zone_id, zone_name) = hosted_zone(&aws, &word);
    let record = format!("mc.{zone_name}");
    let dir = temp_dir("aws-dns");
    let service = ec2_service("mc", free_addr(), &aws.proxy.url)
        .backend_set("instance_id", &id)
        .backend_set("address", echo.addr)
        .dns(
            table()
                .set("zone_id", &zone_id)
                .set("name", &record)
                .set("ttl", 30)
                .set("gateway_ip", "203.0.113.10")
                .set("endpoint_url", &aws.proxy.url),
        );
    let mut gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    let a_record = || -> Option<(String, i64)> {
        let out = aws
            .block(
                aws.route53
                    .list_resource_record_sets()
                    .hosted_zone_id(&zone_id)
                    .send(),
            )
            .unwrap();
        out.resource_record_sets()
            .iter()
            .find(|s| s.name().trim_end_matches('.') == record && s.r#type().as_str() == "A")
            .map(|s| {
                (
                    s.resource_records()[0].value().to_string(),
                    s.ttl().unwrap_or(0),
                )
            })
    };

    let mut ips = Vec::new();
    for _ in 0..2 {
        gateway.wake("mc");
        gateway.wait_for("backend ready at");
        let ip = aws.public_ip(&id);
        assert_eq!(a_record(), Some((ip.clone(), 30)));
        ips.push(ip);
        gateway.wait_for("backend stopped after");
        assert_eq!(a_record(), Some(("203.0.113.10".to_string(), 30)));
    }
    assert_ne!(ips[0], ips[1], "moto gives a new public IP on every start");
    let events = gateway.events("mc");
    // Every change of the record, as (name, value, action); a failed one has no action.
    let changes: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| &e["detail"]["dns"])
        .filter(|dns| dns["action"].is_string())
        .map(|dns| {
            let text = |key: &str| dns[key].as_str().unwrap_or("");
            (text("name"), text("value"), text("action"))
        })
        .collect();
    let (sleeps, upsert) = ("203.0.113.10", "upsert");
    assert_eq!(
        changes,
        vec![
            // At start-up the instance is found stopped: the record is put where it belongs
            // (the gateway's IP: the server sleeps, clients reach wakegate).
            (record.as_str(), sleeps, upsert),
            (record.as_str(), ips[0].as_str(), upsert),
            (record.as_str(), sleeps, upsert),
            (record.as_str(), ips[1].as_str(), upsert),
            (record.as_str(), sleeps, upsert),
        ]
    );
}

#[test]
fn killed_mid_session_a_restarted_wakegate_adopts_the_instance_and_stops_it() {
    let aws = Aws::new();
    let echo = Echo::start();
    let id = aws.instance(&[("app", &unique("restart"))], false);
    let dir = temp_dir("aws-restart");
    let listen = free_addr();
    let service = ec2_service("kept", listen, &aws.proxy.url)
        .idle("3s")
        .backend_set("instance_id", &id)
        .backend_set("address", echo.addr);
    let config = write_config(&dir, gateway(&dir).service(service));
    let mut first = start(&config);
    first.wake("kept");
    first.wait_for("backend ready at");
    first.kill();
    assert_eq!(aws.state(&id), InstanceStateName::Running);

    let mut second = start(&config);
    second.wait_for("found the backend running");
    second.wait_for("backend ready at");
    assert_eq!(echo_through(listen, b"still here"), b"still here");
    second.wait_for("backend stopped after");
    assert_eq!(aws.state(&id), InstanceStateName::Stopped);
    assert_eq!(aws.proxy.recorded.count("ec2:StartInstances"), 1);
    assert_eq!(aws.proxy.recorded.count("ec2:StopInstances"), 1);
}

/// A cluster, and a task definition with awsvpc networking (moto wants cpu and memory on every
/// container); returns (cluster, family, subnet, security group).
fn ecs_fixtures(aws: &Aws, word: &str) -> (String, String, String, String) {
    use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, NetworkMode};
    let cluster = format!("{word}-cluster");
    aws.block(aws.ecs.create_cluster().cluster_name(&cluster).send())
        .unwrap();
    let family = format!("{word}-server");
    aws.block(
        aws.ecs
            .register_task_definition()
            .family(&family)
            .network_mode(NetworkMode::Awsvpc)
            .requires_compatibilities(Compatibility::Fargate)
            .cpu("256")
            .memory("512")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("server")
                    .image("itzg/minecraft-server")
                    .cpu(256)
                    .memory(512)
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let vpc = aws
        .block(aws.ec2.create_vpc().cidr_block("10.7.0.0/16").send())
        .unwrap();
    let vpc_id = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    // As Fargate wants it (and moto's RunTask fails with a 500 without it).
    aws.block(
        aws.ec2
            .modify_vpc_attribute()
            .vpc_id(&vpc_id)
            .enable_dns_hostnames(
                aws_sdk_ec2::types::AttributeBooleanValue::builder()
                    .value(true)
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let subnet = aws
        .block(
            aws.ec2
                .create_subnet()
                .vpc_id(&vpc_id)
                .cidr_block("10.7.1.0/24")
                .send(),
        )
        .unwrap();
    let subnet = subnet.subnet().unwrap().subnet_id().unwrap().to_string();
    let group = aws
        .block(
            aws.ec2
                .create_security_group()
                .group_name(word)
                .description("wakegate tests")
                .vpc_id(&vpc_id)
                .send(),
        )
        .unwrap();
    (
        cluster,
        family,
        subnet,
        group.group_id().unwrap().to_string(),
    )
}

#[test]
fn ecs_service_mode_scales_to_one_on_a_client_and_back_to_zero() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("svc");
    let (cluster, family, subnet, group) = ecs_fixtures(&aws, &word);
    aws.block(
        aws.ecs
            .create_service()
            .cluster(&cluster)
            .service_name("web")
            .task_definition(&family)
            .desired_count(0)
            .send(),
    )
    .unwrap();
    // moto's services launch no tasks: the test plays ECS's scheduler and runs the service's
    // task itself (ECS names its group "service:NAME"), beside another task of the cluster.
    let run = |task_group: &str| -> String {
        let vpc = aws_sdk_ecs::types::AwsVpcConfiguration::builder()
            .subnets(&subnet)
            .security_groups(&group)
            .build()
            .unwrap();
        let out = aws
            .block(
                aws.ecs
                    .run_task()
                    .cluster(&cluster)
                    .task_definition(&family)
                    .launch_type(aws_sdk_ecs::types::LaunchType::Fargate)
                    .group(task_group)
                    .network_configuration(
                        aws_sdk_ecs::types::NetworkConfiguration::builder()
                            .awsvpc_configuration(vpc)
                            .build(),
                    )
                    .send(),
            )
            .unwrap();
        task_ip(&out.tasks()[0])
    };
    let other_ip = run("family:other");
    let web_ip = run("service:web");
    assert_ne!(other_ip, web_ip);
    let (zone_id, zone_name) = hosted_zone(&aws, &word);
    let record = format!("web.{zone_name}");
    let desired = || {
        let out = aws
            .block(
                aws.ecs
                    .describe_services()
                    .cluster(&cluster)
                    .services("web")
                    .send(),
            )
            .unwrap();
        out.services()[0].desired_count()
    };
    let dir = temp_dir("aws-ecs-service");
    let listen = free_addr();
    let url = &aws.proxy.url;
    let service = svc("web")
        .idle("1s")
        .backend(
            typed("ecs")
                .set("cluster", &cluster)
                .set("mode", "service")
                .set("service", "web")
                .set("address", echo.addr)
                .set("endpoint_url", url),
        )
        .dns(
            table()
                .set("zone_id", &zone_id)
                .set("name", &record)
                .set("value", "private")
                .set("gateway_ip", "203.0.113.20")
                .set("endpoint_url", url),
        )
        .tcp(listen);
    let mut gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    assert_eq!(desired(), 0);
    assert_eq!(echo_through(listen, b"scale me"), b"scale me");
    assert_eq!(desired(), 1);
    // The record followed the service's task, not the other task of the cluster.
    assert_eq!(a_record(&aws, &zone_id, &record), Some(web_ip));
    gateway.wait_for("backend stopped after");
    assert_eq!(desired(), 0);
    assert_eq!(
        a_record(&aws, &zone_id, &record),
        Some("203.0.113.20".to_string())
    );
    let events = gateway.events("web");
    let scaled: Vec<(&str, u64)> = events
        .iter()
        .map(|e| &e["detail"])
        .filter(|d| d["ecs_service"].is_string())
        .map(|d| {
            (
                d["ecs_service"].as_str().unwrap(),
                d["desired_count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(scaled, vec![("web", 1), ("web", 0)]);
}

/// A task's private IP, from its network interface attachment.
fn task_ip(task: &aws_sdk_ecs::types::Task) -> String {
    task.attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value())
        .unwrap()
        .to_string()
}

/// A new hosted zone; returns (its id, its name).
fn hosted_zone(aws: &Aws, word: &str) -> (String, String) {
    let name = format!("{word}.test");
    let zone = aws
        .block(
            aws.route53
                .create_hosted_zone()
                .name(&name)
                .caller_reference(word)
                .send(),
        )
        .unwrap();
    let id = zone
        .hosted_zone()
        .unwrap()
        .id()
        .trim_start_matches("/hostedzone/")
        .to_string();
    (id, name)
}

/// The value of the A record `name`, if there is one.
fn a_record(aws: &Aws, zone_id: &str, name: &str) -> Option<String> {
    let out = aws
        .block(
            aws.route53
                .list_resource_record_sets()
                .hosted_zone_id(zone_id)
                .send(),
        )
        .unwrap();
    out.resource_record_sets()
        .iter()
        .find(|s| s.name().trim_end_matches('.') == name && s.r#type().as_str() == "A")
        .map(|s| s.resource_records()[0].value().to_string())
}

#[test]
fn ecs_task_mode_runs_one_task_finds_it_after_a_kill_and_stops_it() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("task");
    let (cluster, family, subnet, group) = ecs_fixtures(&aws, &word);
    let (zone_id, zone_name) = hosted_zone(&aws, &word);
    let record = format!("game.{zone_name}");
    let dir = temp_dir("aws-ecs-task");
    let listen = free_addr();
    let url = &aws.proxy.url;
    let service = svc("game")
        .idle("3s")
        .backend(
            typed("ecs")
                .set("cluster", &cluster)
                .set("mode", "task")
                .set("task_definition", &family)
                .set("subnets", [&subnet])
                .set("security_groups", [&group])
                .set("address", echo.addr)
                .set("endpoint_url", url),
        )
        .dns(
            table()
                .set("zone_id", &zone_id)
                .set("name", &record)
                .set("value", "private")
                .set("on_sleep", "delete")
                .set("endpoint_url", url),
        )
        .tcp(listen);
    let config = write_config(&dir, gateway(&dir).service(service));
    let tasks = |status: aws_sdk_ecs::types::DesiredStatus| -> Vec<aws_sdk_ecs::types::Task> {
        let listed = aws
            .block(
                aws.ecs
                    .list_tasks()
                    .cluster(&cluster)
                    .desired_status(status)
                    .send(),
            )
            .unwrap();
        if listed.task_arns().is_empty() {
            return Vec::new();
        }
        let out = aws
            .block(
                aws.ecs
                    .describe_tasks()
                    .cluster(&cluster)
                    .set_tasks(Some(listed.task_arns().to_vec()))
                    .send(),
            )
            .unwrap();
        out.tasks().to_vec()
    };
    let a_record = || a_record(&aws, &zone_id, &record);

    let mut first = start(&config);
    first.wake("game");
    first.wait_for("backend ready at");
    let running = tasks(aws_sdk_ecs::types::DesiredStatus::Running);
    assert_eq!(running.len(), 1);
    let task = running[0].clone();
    let arn = task.task_arn().unwrap().to_string();
    assert_eq!(task.group(), Some("wakegate:game"));
    // The record holds the task's private IP, from its network interface.
    assert_eq!(a_record(), Some(task_ip(&task)));
    first.kill();

    // The same task is found again through the ARN in the store: no second RunTask.
    let mut second = start(&config);
    second.wait_for("found the backend running");
    second.wait_for("backend ready at");
    assert_eq!(echo_through(listen, b"same task"), b"same task");
    second.wait_for("backend stopped after");
    assert_eq!(aws.proxy.recorded.count("ecs:RunTask"), 1);
    let stops: Vec<String> = aws
        .proxy
        .recorded
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("ecs:StopTask"))
        .collect();
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert!(stops[0].contains(&arn), "{stops:#?}");
    assert!(tasks(aws_sdk_ecs::types::DesiredStatus::Running).is_empty());
    assert_eq!(a_record(), None, "on_sleep = \"delete\" removes the record");
    let events = second.events("game");
    assert!(
        events
            .iter()
            .any(|e| e["detail"]["dns"]["name"] == record.as_str()
                && e["detail"]["dns"]["action"] == "delete"),
        "{events:#?}"
    );
}

/// A template in ECS task mode: each created service runs its own task, found again after a
/// `kill -9` of wakegate, and stopped when destroyed.
#[test]
fn an_ecs_task_template_runs_one_task_per_created_service_and_stops_it_when_destroyed() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("tpl");
    let (cluster, family, subnet, group) = ecs_fixtures(&aws, &word);
    let dir = temp_dir("aws-ecs-template");
    let base = free_addr().port();
    // moto's tasks route nowhere: the local echo server plays every task's server.
    let template = format!(
        r#"
[[template]]
name = "game"
ports = "{base}-{}"

[template.service]
idle_timeout = "1h"

[template.service.backend]
type = "ecs"
cluster = "{cluster}"
mode = "task"
task_definition = "{family}"
subnets = ["{subnet}"]
security_groups = ["{group}"]
address = "{}"
endpoint_url = "{}"

[[template.service.listen]]
type = "tcp"
bind = "127.0.0.1:{{port}}"
"#,
        base + 9,
        echo.addr,
        aws.proxy.url
    );
    let config = write_config(
        &dir,
        gateway(&dir)
            .service(svc("fixed").exec_true(free_addr()).tcp(free_addr()))
            .raw(&template),
    );
    let first = start(&config);
    let (status, body) = http(
        first.api(),
        "POST",
        "/api/v1/templates/game/create",
        r#"{"name": "game-ann", "owner": "ann"}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    let listen: SocketAddr = view["created"]["listen"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        aws.proxy.recorded.count("ecs:RunTask"),
        0,
        "started before a client"
    );
    assert_eq!(echo_through(listen, b"first"), b"first");
    assert_eq!(aws.proxy.recorded.count("ecs:RunTask"), 1);
    let mut first = first;
    first.kill();

    // Created again, and its task found through the ARN in the store: no second RunTask.
    let mut second = start(&config);
    second.wait_for("found the backend running");
    assert_eq!(echo_through(listen, b"again"), b"again");
    assert_eq!(aws.proxy.recorded.count("ecs:RunTask"), 1);
    assert_eq!(second.service("game-ann")["created"]["owner"], "ann");

    let (status, body) = http(second.api(), "DELETE", "/api/v1/services/game-ann", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(aws.proxy.recorded.count("ecs:StopTask"), 1);
    assert!(
        TcpStream::connect(listen).is_err(),
        "its listener outlived it"
    );
}

/// An ECS task template's task is stopped at the server's deadline and its DNS record (one per
/// server) deleted, and a task that never becomes ready is stopped too: nothing half-created
/// keeps running (and costing).
#[test]
fn an_ecs_task_template_is_stopped_at_its_deadline_and_when_it_never_becomes_ready() {
    let aws = Aws::new();
    let echo = Echo::start();
    let word = unique("tpl-end");
    let (cluster, family, subnet, group) = ecs_fixtures(&aws, &word);
    let (zone_id, zone_name) = hosted_zone(&aws, &word);
    let dir = temp_dir("aws-ecs-template-end");
    let base = free_addr().port();
    // `stuck`'s tasks "listen" where nothing does: its wake times out.
    let nowhere = free_addr();
    let templates: String = [("brief", echo.addr, 0), ("stuck", nowhere, 5)]
        .iter()
        .map(|(name, address, offset)| {
            format!(
                r#"
[[template]]
name = "{name}"
ports = "{}-{}"
lifetime = "3s"
warnings = []

[template.service]
idle_timeout = "1h"
wake_timeout = "2s"

[template.service.backend]
type = "ecs"
cluster = "{cluster}"
mode = "task"
task_definition = "{family}"
subnets = ["{subnet}"]
security_groups = ["{group}"]
address = "{address}"
endpoint_url = "{}"

[template.service.dns]
zone_id = "{zone_id}"
name = "{{name}}.{zone_name}"
gateway_ip = "203.0.113.10"
endpoint_url = "{}"

[[template.service.listen]]
type = "tcp"
bind = "127.0.0.1:{{port}}"
"#,
                base + offset,
                base + offset + 4,
                aws.proxy.url,
                aws.proxy.url
            )
        })
        .collect();
    let config = write_config(
        &dir,
        gateway(&dir)
            .service(svc("fixed").exec_true(free_addr()).tcp(free_addr()))
            .raw(&templates),
    );
    let mut gateway = start(&config);
    let api = gateway.api();
    let create = |template: &str| -> SocketAddr {
        let (status, body) = http(
            api,
            "POST",
            &format!("/api/v1/templates/{template}/create"),
            r#"{"owner": "ann"}"#,
        )
        .unwrap();
        assert_eq!(status, 201, "{body}");
        let view: Value = serde_json::from_str(&body).unwrap();
        view["created"]["listen"][0]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };

    let brief = create("brief");
    assert_eq!(echo_through(brief, b"hello"), b"hello");
    assert_eq!(aws.proxy.recorded.count("ecs:RunTask"), 1);
    let record = format!("brief-1.{zone_name}");
    assert!(
        a_record(&aws, &zone_id, &record).is_some(),
        "each created server has its record"
    );
    // Its client is gone, and it is not idle for long enough to sleep (1 h): only the
    // deadline stops it.
    gateway.wait_for("Ended a created service.");
    assert_eq!(aws.proxy.recorded.count("ecs:StopTask"), 1);
    assert_eq!(
        a_record(&aws, &zone_id, &record),
        None,
        "an ended server's record is deleted, not left pointing at the gateway"
    );
    assert!(
        TcpStream::connect(brief).is_err(),
        "its listener outlived it"
    );

    let stuck = create("stuck");
    // The client is held through the wake, then closed when the wake fails.
    let mut client = TcpStream::connect(stuck).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap_or(0), 0, "closed, not served");
    // The failed state is recorded once the clean-up is done.
    gateway.wait_for("state=failed");
    assert_eq!(aws.proxy.recorded.count("ecs:RunTask"), 2);
    let stuck_state = gateway.service("stuck-1");
    assert_eq!(stuck_state["state"], "failed", "{stuck_state:#}");
    assert!(
        stuck_state["last_error"]
            .as_str()
            .is_some_and(|r| r.contains("not ready within wake_timeout")),
        "{stuck_state:#}"
    );
    assert_eq!(
        aws.proxy.recorded.count("ecs:StopTask"),
        2,
        "the task that never became ready is stopped"
    );
}

#[test]
fn status_shows_awake_hours_and_the_money_saved() {
    let aws = Aws::new();
    let echo = Echo::start();
    let id = aws.instance(&[("app", &unique("cost"))], false);
    let dir = temp_dir("aws-cost");
    let listen = free_addr();
    let service = ec2_service("priced", listen, &aws.proxy.url)
        .set("hourly_cost", 2.5)
        .backend_set("instance_id", &id)
        .backend_set("address", echo.addr);
    let mut gateway = start(&write_config(&dir, gateway(&dir).service(service)));
    assert_eq!(echo_through(listen, b"pay"), b"pay");
    gateway.wait_for("backend stopped after");
    let view = gateway.service("priced");
    assert_eq!(view["hourly_cost"], 2.5);
    assert!(view["awake_seconds_day"].as_f64().unwrap() > 0.0, "{view}");
    let out = Command::new(WAKEGATE)
        .args(["status", "--api", &gateway.api().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("AWAKE 24H")
            && header.contains("AWAKE 30D")
            && header.contains("SAVED 30D"),
        "{text}"
    );
    let row = text.lines().find(|l| l.starts_with("priced")).unwrap();
    let saved = view["cost_saved_30d"].as_f64().unwrap();
    assert!(row.contains(&format!("{saved:.2}")), "{text}");
}

/// The policy's statements by Sid.
fn statements(policy: &Value) -> std::collections::BTreeMap<String, Value> {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["Sid"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

#[test]
fn iam_policy_names_exactly_the_configured_resources() {
    let dir = temp_dir("aws-iam");
    let config = services_only()
        .service(
            svc("by-id")
                .backend(
                    typed("ec2")
                        .set("instance_id", "i-0abc")
                        .set("region", "eu-west-1")
                        .set("address", "private")
                        .set("port", 25565),
                )
                .tcp("127.0.0.1:7101"),
        )
        .service(
            svc("by-tags")
                .backend(
                    typed("ec2")
                        .set("tags", inline(&[("Name", "mc"), ("env", "prod")]))
                        .set("address", "public")
                        .set("port", 25565),
                )
                .dns(
                    table()
                        .set("zone_id", "Z123")
                        .set("name", "mc.example.com")
                        .set("gateway_ip", "203.0.113.10"),
                )
                .tcp("127.0.0.1:7102"),
        )
        .service(
            svc("svc")
                .backend(
                    typed("ecs")
                        .set("cluster", "games")
                        .set("mode", "service")
                        .set("service", "web")
                        .set("region", "us-east-2")
                        .set("address", "10.0.0.5:80"),
                )
                .tcp("127.0.0.1:7103"),
        )
        .service(
            svc("job")
                .backend(
                    typed("ecs")
                        .set("cluster", "games")
                        .set("mode", "task")
                        .set("task_definition", "worker:7")
                        .set("region", "us-east-2")
                        .set("subnets", ["subnet-1"])
                        .set("security_groups", ["sg-1"])
                        .set("pass_roles", ["arn:aws:iam::123456789012:role/worker"])
                        .set("address", "private")
                        .set("port", 8080),
                )
                .dns(
                    table()
                        .set("zone_id", "Z456")
                        .set("name", "job.example.com")
                        .set("value", "private")
                        .set("on_sleep", "delete"),
                )
                .tcp("127.0.0.1:7104"),
        )
        .service(svc("local").exec_true("127.0.0.1:9").tcp("127.0.0.1:7105"))
        .write(&dir.join("wakegate.toml"));
    // No AWS call is made: the environment has no credentials and no endpoint.
    let out = Command::new(WAKEGATE)
        .args(["iam-policy", "--config"])
        .arg(&config)
        .env_remove("AWS_ACCESS_KEY_ID")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let policy: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(policy["Version"], "2012-10-17");
    let s = statements(&policy);
    let expected = serde_json::json!({
        "DescribeEc2": { "Sid": "DescribeEc2", "Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*" },
        "ByIdStartStop": { "Sid": "ByIdStartStop", "Effect": "Allow",
            "Action": ["ec2:StartInstances", "ec2:StopInstances"],
            "Resource": "arn:aws:ec2:eu-west-1:*:instance/i-0abc" },
        "ByTagsStartStop": { "Sid": "ByTagsStartStop", "Effect": "Allow",
            "Action": ["ec2:StartInstances", "ec2:StopInstances"],
            "Resource": "arn:aws:ec2:*:*:instance/*",
            "Condition": { "StringEquals": { "aws:ResourceTag/Name": "mc", "aws:ResourceTag/env": "prod" } } },
        "ByTagsDns": { "Sid": "ByTagsDns", "Effect": "Allow",
            "Action": "route53:ChangeResourceRecordSets",
            "Resource": "arn:aws:route53:::hostedzone/Z123",
            "Condition": { "ForAllValues:StringEquals": {
                "route53:ChangeResourceRecordSetsNormalizedRecordNames": ["mc.example.com"],
                "route53:ChangeResourceRecordSetsRecordTypes": ["A"] } } },
        "SvcScale": { "Sid": "SvcScale", "Effect": "Allow",
            "Action": ["ecs:UpdateService", "ecs:DescribeServices"],
            "Resource": "arn:aws:ecs:us-east-2:*:service/games/web" },
        "JobRunTask": { "Sid": "JobRunTask", "Effect": "Allow", "Action": "ecs:RunTask",
            "Resource": "arn:aws:ecs:us-east-2:*:task-definition/worker:7",
            "Condition": { "ArnLike": { "ecs:cluster": "arn:aws:ecs:us-east-2:*:cluster/games" } } },
        "JobStopTask": { "Sid": "JobStopTask", "Effect": "Allow",
            "Action": ["ecs:StopTask", "ecs:DescribeTasks"],
            "Resource": "arn:aws:ecs:us-east-2:*:task/games/*" },
        "JobPassRole": { "Sid": "JobPassRole", "Effect": "Allow", "Action": "iam:PassRole",
            "Resource": ["arn:aws:iam::123456789012:role/worker"],
            "Condition": { "StringEquals": { "iam:PassedToService": "ecs-tasks.amazonaws.com" } } },
        "JobDns": { "Sid": "JobDns", "Effect": "Allow",
            "Action": "route53:ChangeResourceRecordSets",
            "Resource": "arn:aws:route53:::hostedzone/Z456",
            "Condition": { "ForAllValues:StringEquals": {
                "route53:ChangeResourceRecordSetsNormalizedRecordNames": ["job.example.com"],
                "route53:ChangeResourceRecordSetsRecordTypes": ["A"] } } },
        "JobDnsRead": { "Sid": "JobDnsRead", "Effect": "Allow",
            "Action": "route53:ListResourceRecordSets",
            "Resource": "arn:aws:route53:::hostedzone/Z456" },
    });
    let expected: std::collections::BTreeMap<String, Value> =
        serde_json::from_value(expected).unwrap();
    assert_eq!(s, expected, "{}", String::from_utf8_lossy(&out.stdout));

    // A config without AWS needs no policy, and says so.
    let plain = services_only()
        .service(svc("x").exec_true("127.0.0.1:9").tcp("127.0.0.1:7106"))
        .write(&dir.join("plain.toml"));
    let out = Command::new(WAKEGATE)
        .args(["iam-policy", "--config"])
        .arg(&plain)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs no AWS permission"));
}
