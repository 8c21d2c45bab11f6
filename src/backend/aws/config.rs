//! The config of the `ec2` and `ecs` backends and of `[service.dns]` (Route53): their runtime
//! types and the readers of their tables. Reading needs no AWS access.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use toml::de::DeValue;

use crate::config::de::{duration, optional_duration, read};
use crate::config::diag::Problems;

// ---------------------------------------------------------------------------------------------
// Runtime types.

/// How to reach the AWS API: the standard chain gives credentials and, unless set, the region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Api {
    pub region: Option<String>,
    /// Another endpoint than AWS's own (a proxy, a local emulator).
    pub endpoint_url: Option<String>,
}

/// Where the server listens once started: an address read from AWS on every wake, or a fixed
/// `host:port` (an Elastic IP, a DNS name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Public(u16),
    Private(u16),
    /// The public DNS name (EC2 only).
    Dns(u16),
    Fixed(String),
}

/// An EC2 instance, started and stopped as the service wakes and sleeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ec2 {
    pub target: Ec2Target,
    /// Stop by hibernating (RAM saved to the root volume), when the instance allows it.
    pub hibernate: bool,
    pub address: Address,
    /// How long a stop may take before it counts as failed.
    pub stop_timeout: Duration,
    /// How a health check's restart is done.
    pub restart: Restart,
    /// After a reboot, how long the server may take to go down before readiness is awaited.
    pub reboot_grace: Duration,
    pub state_poll: crate::backend::StatePoll,
    pub api: Api,
    pub dns: Option<Dns>,
}

/// How an EC2 instance is restarted when a health check asks for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// StopInstances then StartInstances: a new host, and a new public IP.
    #[default]
    StopStart,
    /// RebootInstances: the same host and addresses, faster.
    Reboot,
}

/// Which instance: by id, or the one instance whose tags all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ec2Target {
    Id(String),
    Tags(Vec<(String, String)>),
}

impl std::fmt::Display for Ec2Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ec2Target::Id(id) => write!(f, "instance {id}"),
            Ec2Target::Tags(tags) => {
                let tags: Vec<String> = tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "the instance tagged {}", tags.join(", "))
            }
        }
    }
}

/// An ECS service scaled between 0 and 1, or a task run and stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ecs {
    pub cluster: String,
    pub mode: EcsMode,
    pub address: Address,
    pub stop_timeout: Duration,
    pub state_poll: crate::backend::StatePoll,
    pub api: Api,
    pub dns: Option<Dns>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EcsMode {
    /// desiredCount 1 on wake, 0 on sleep.
    Service { service: String },
    /// RunTask on wake, StopTask on sleep.
    Task(RunTask),
}

/// What RunTask is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunTask {
    pub task_definition: String,
    pub launch_type: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub assign_public_ip: bool,
    /// Roles the task definition names (task and execution role), for `iam:PassRole`.
    pub pass_roles: Vec<String>,
}

/// `[service.dns]`: a Route53 A record that follows the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub zone_id: String,
    /// The record's name, without a trailing dot.
    pub name: String,
    pub ttl: i64,
    /// Which of the server's addresses the record gets.
    pub value: DnsValue,
    pub on_sleep: OnSleep,
    /// Route53 is global: only its endpoint may be set.
    pub api: Api,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsValue {
    Public,
    Private,
}

/// What the record becomes while the server sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSleep {
    /// Point it at the gateway, so clients reach wakegate and wake the server.
    Gateway(Ipv4Addr),
    Delete,
}

// ---------------------------------------------------------------------------------------------
// File types.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Ec2Config {
    instance_id: Option<Spanned<String>>,
    tags: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    hibernate: bool,
    address: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    region: Option<String>,
    endpoint_url: Option<Spanned<String>>,
    #[serde(default = "default_stop_timeout", deserialize_with = "duration")]
    stop_timeout: Duration,
    #[serde(default)]
    restart: Restart,
    #[serde(default = "default_reboot_grace", deserialize_with = "duration")]
    reboot_grace: Duration,
    #[serde(default = "default_state_poll", deserialize_with = "duration")]
    state_poll: Duration,
    #[serde(default, deserialize_with = "optional_duration")]
    state_poll_asleep: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EcsConfig {
    cluster: Spanned<String>,
    mode: Spanned<String>,
    service: Option<Spanned<String>>,
    task_definition: Option<Spanned<String>>,
    launch_type: Option<Spanned<String>>,
    #[serde(default)]
    subnets: Vec<String>,
    #[serde(default)]
    security_groups: Vec<String>,
    #[serde(default)]
    assign_public_ip: bool,
    #[serde(default)]
    pass_roles: Vec<Spanned<String>>,
    address: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    region: Option<String>,
    endpoint_url: Option<Spanned<String>>,
    #[serde(default = "default_stop_timeout", deserialize_with = "duration")]
    stop_timeout: Duration,
    #[serde(default = "default_state_poll", deserialize_with = "duration")]
    state_poll: Duration,
    #[serde(default, deserialize_with = "optional_duration")]
    state_poll_asleep: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsConfig {
    zone_id: Spanned<String>,
    name: Spanned<String>,
    #[serde(default = "default_ttl")]
    ttl: Spanned<i64>,
    value: Option<Spanned<String>>,
    on_sleep: Option<Spanned<String>>,
    gateway_ip: Option<Spanned<String>>,
    endpoint_url: Option<Spanned<String>>,
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(600)
}
/// An instance rebooted goes down within seconds; a minute covers a slow shutdown.
fn default_reboot_grace() -> Duration {
    Duration::from_secs(60)
}
/// A console change is noticed within a minute; Describe calls are free.
fn default_state_poll() -> Duration {
    Duration::from_secs(60)
}

/// `state_poll` ("0s" turns it off) and `state_poll_asleep` (off unless set).
fn state_poll(awake: Duration, asleep: Option<Duration>) -> crate::backend::StatePoll {
    crate::backend::StatePoll {
        awake: (!awake.is_zero()).then_some(awake),
        asleep: asleep.filter(|d| !d.is_zero()),
    }
}
fn default_ttl() -> Spanned<i64> {
    Spanned::new(0..0, 60)
}

/// Reads an `ec2` backend table (without its `type`) and the `[service.dns]` beside it.
pub(crate) fn read_ec2(
    rest: Spanned<DeValue<'_>>,
    dns: Option<Spanned<DeValue<'_>>>,
    problems: &mut Problems<'_>,
) -> Option<Ec2> {
    let span = rest.span();
    // The record is read first, so that its mistakes show whatever the backend's.
    let dns = dns.map(|table| read_dns_table(table, problems));
    let c: Ec2Config = read(rest, problems)?;
    let api = read_api(c.region, c.endpoint_url, problems);
    let address = read_address(c.address, c.port, true, span.clone(), problems);
    let target = match (c.instance_id, c.tags) {
        (Some(id), None) => {
            let valid = id.get_ref().starts_with("i-") && id.get_ref().len() > 2;
            if !valid {
                problems.add(
                    Some(id.span()),
                    format!("`{}` is not an instance id", id.get_ref()),
                    "instance ids look like \"i-0123456789abcdef0\"",
                );
            }
            valid.then(|| Ec2Target::Id(id.into_inner()))
        }
        (None, Some(tags)) if tags.get_ref().is_empty() => {
            problems.add(
                Some(tags.span()),
                "`tags` is empty: every instance would match",
                "name the tags that select exactly one instance, e.g. tags = { Name = \"minecraft\" }",
            );
            None
        }
        (None, Some(tags)) => Some(Ec2Target::Tags(tags.into_inner().into_iter().collect())),
        (Some(id), Some(_)) => {
            problems.add(
                Some(id.span()),
                "both `instance_id` and `tags` are set",
                "select the instance one way: by `instance_id` or by `tags`",
            );
            None
        }
        (None, None) => {
            problems.add(
                Some(span.clone()),
                "the ec2 backend names no instance",
                "add `instance_id = \"i-...\"` or `tags = { Name = \"...\" }`",
            );
            None
        }
    };
    Some(Ec2 {
        target: target?,
        hibernate: c.hibernate,
        address: address?,
        stop_timeout: c.stop_timeout,
        restart: c.restart,
        reboot_grace: c.reboot_grace,
        state_poll: state_poll(c.state_poll, c.state_poll_asleep),
        api: api?,
        dns: match dns {
            None => None,
            Some(record) => Some(record?),
        },
    })
}

/// Reads an `ecs` backend table (without its `type`) and the `[service.dns]` beside it.
pub(crate) fn read_ecs(
    rest: Spanned<DeValue<'_>>,
    dns: Option<Spanned<DeValue<'_>>>,
    problems: &mut Problems<'_>,
) -> Option<Ecs> {
    let span = rest.span();
    // The record is read first, so that its mistakes show whatever the backend's.
    let dns = dns.map(|table| read_dns_table(table, problems));
    let c: EcsConfig = read(rest, problems)?;
    let api = read_api(c.region, c.endpoint_url, problems);
    let address = read_address(c.address, c.port, false, span.clone(), problems);
    let mut ok = true;
    if c.cluster.get_ref().trim().is_empty() {
        problems.add(
            Some(c.cluster.span()),
            "`cluster` is empty",
            "name the ECS cluster (its name or ARN)",
        );
        ok = false;
    }
    let mut needs = |key: &str, value: Option<Spanned<String>>, mode: &str| match value {
        Some(v) => Some(v.into_inner()),
        None => {
            problems.add(
                Some(c.mode.span()),
                format!("mode = \"{mode}\" needs `{key}`"),
                &format!("add `{key} = \"...\"` to the ecs backend"),
            );
            None
        }
    };
    let mode = match c.mode.get_ref().as_str() {
        "service" => {
            needs("service", c.service, "service").map(|service| EcsMode::Service { service })
        }
        "task" => {
            let task_definition = needs("task_definition", c.task_definition, "task");
            let launch_type = match c.launch_type {
                None => Some("FARGATE".to_string()),
                Some(t) if matches!(t.get_ref().as_str(), "FARGATE" | "EC2" | "EXTERNAL") => {
                    Some(t.into_inner())
                }
                Some(t) => {
                    problems.add(
                        Some(t.span()),
                        format!("unknown launch_type `{}`", t.get_ref()),
                        "use one of: FARGATE, EC2, EXTERNAL",
                    );
                    None
                }
            };
            let mut roles = Vec::new();
            for role in c.pass_roles {
                if role.get_ref().starts_with("arn:") && role.get_ref().contains(":role/") {
                    roles.push(role.into_inner());
                } else {
                    problems.add(
                        Some(role.span()),
                        format!("`{}` is not a role ARN", role.get_ref()),
                        "write the task definition's role ARNs, e.g. \"arn:aws:iam::123456789012:role/ecsTaskExecutionRole\"",
                    );
                    ok = false;
                }
            }
            match (task_definition, launch_type) {
                (Some(task_definition), Some(launch_type)) => Some(EcsMode::Task(RunTask {
                    task_definition,
                    launch_type,
                    subnets: c.subnets,
                    security_groups: c.security_groups,
                    assign_public_ip: c.assign_public_ip,
                    pass_roles: roles,
                })),
                _ => None,
            }
        }
        other => {
            problems.add(
                Some(c.mode.span()),
                format!("unknown ecs mode `{other}`"),
                "use mode = \"service\" (scale a service between 0 and 1) or \"task\" (run and stop one task)",
            );
            None
        }
    };
    ok.then_some(())?;
    Some(Ecs {
        cluster: c.cluster.into_inner(),
        mode: mode?,
        address: address?,
        stop_timeout: c.stop_timeout,
        state_poll: state_poll(c.state_poll, c.state_poll_asleep),
        api: api?,
        dns: match dns {
            None => None,
            Some(record) => Some(record?),
        },
    })
}

fn read_api(
    region: Option<String>,
    endpoint_url: Option<Spanned<String>>,
    problems: &mut Problems<'_>,
) -> Option<Api> {
    if let Some(url) = &endpoint_url
        && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
    {
        problems.add(
            Some(url.span()),
            format!("endpoint_url `{}` is not an http(s) URL", url.get_ref()),
            "write it like \"https://ec2.eu-west-1.amazonaws.com\", or remove it to use AWS's own",
        );
        return None;
    }
    Some(Api {
        region,
        endpoint_url: endpoint_url.map(Spanned::into_inner),
    })
}

/// `address` ("public", "private", "dns" or host:port) and `port` (needed unless host:port).
fn read_address(
    address: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    ec2: bool,
    table: std::ops::Range<usize>,
    problems: &mut Problems<'_>,
) -> Option<Address> {
    let kinds = if ec2 {
        "\"public\", \"private\", \"dns\" or a fixed \"host:port\""
    } else {
        "\"public\", \"private\" or a fixed \"host:port\""
    };
    let (text, span) = match &address {
        Some(a) => (a.get_ref().as_str(), a.span()),
        None => ("public", table.clone()),
    };
    let needs_port = |make: fn(u16) -> Address, problems: &mut Problems<'_>| match &port {
        Some(p) if *p.get_ref() > 0 => Some(make(*p.get_ref())),
        Some(p) => {
            problems.add(
                Some(p.span()),
                "port = 0 is not a port",
                "write the port the server listens on",
            );
            None
        }
        None => {
            problems.add(
                Some(span.clone()),
                format!("address = \"{text}\" needs a `port`"),
                "add `port = ...`: the port the server listens on",
            );
            None
        }
    };
    match text {
        "public" => needs_port(Address::Public, problems),
        "private" => needs_port(Address::Private, problems),
        "dns" if ec2 => needs_port(Address::Dns, problems),
        fixed => {
            let valid = fixed.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                problems.add(
                    Some(span),
                    format!("address `{fixed}` is not one of {kinds}"),
                    &format!("use one of {kinds}"),
                );
                return None;
            }
            if let Some(p) = &port {
                problems.add(
                    Some(p.span()),
                    "`port` is set but the address already has one",
                    "remove `port`, or set address = \"public\" to read the address from AWS",
                );
                return None;
            }
            Some(Address::Fixed(fixed.to_string()))
        }
    }
}

/// Reads a `[service.dns]` beside a backend that cannot keep it, for the record's own mistakes;
/// the caller says why it cannot.
pub(crate) fn check_dns(table: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) {
    read_dns_table(table, problems);
}

fn read_dns_table(table: Spanned<DeValue<'_>>, problems: &mut Problems<'_>) -> Option<Dns> {
    let c: DnsConfig = read(table, problems)?;
    read_dns(c, problems)
}

fn read_dns(c: DnsConfig, problems: &mut Problems<'_>) -> Option<Dns> {
    let mut ok = true;
    let zone_id = c
        .zone_id
        .get_ref()
        .trim_start_matches("/hostedzone/")
        .to_string();
    if zone_id.is_empty() || !zone_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        problems.add(
            Some(c.zone_id.span()),
            format!("`{}` is not a hosted zone id", c.zone_id.get_ref()),
            "copy the zone's id from Route53, e.g. \"Z0123456789ABCDEFGHIJ\"",
        );
        ok = false;
    }
    let name = c.name.get_ref().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty()
        || !name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
    {
        problems.add(
            Some(c.name.span()),
            format!("`{}` is not a DNS name", c.name.get_ref()),
            "write the record's full name, e.g. \"mc.example.com\"",
        );
        ok = false;
    }
    let ttl = *c.ttl.get_ref();
    if !(0..=86_400).contains(&ttl) {
        problems.add(
            Some(c.ttl.span()),
            format!("ttl = {ttl} is out of range"),
            "use a short ttl in seconds, e.g. 60: clients must see the change soon",
        );
        ok = false;
    }
    let value = match c.value.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("public") => Some(DnsValue::Public),
        Some("private") => Some(DnsValue::Private),
        Some(other) => {
            problems.add(
                c.value.as_ref().map(|v| v.span()),
                format!("unknown dns value `{other}`"),
                "use value = \"public\" or \"private\": which of the server's IPs the record gets",
            );
            None
        }
    };
    let gateway_ip = match &c.gateway_ip {
        Some(ip) => match ip.get_ref().parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.add(
                    Some(ip.span()),
                    format!("gateway_ip `{}` is not an IPv4 address", ip.get_ref()),
                    "write the IPv4 address clients reach wakegate on, e.g. \"203.0.113.10\"",
                );
                return None;
            }
        },
        None => None,
    };
    let on_sleep = match (
        c.on_sleep.as_ref().map(|v| v.get_ref().as_str()),
        gateway_ip,
    ) {
        (None | Some("gateway"), Some(ip)) => Some(OnSleep::Gateway(ip)),
        (None | Some("gateway"), None) => {
            problems.add(
                Some(c.on_sleep.as_ref().map_or(c.zone_id.span(), |v| v.span())),
                "on_sleep = \"gateway\" needs `gateway_ip`",
                "add gateway_ip = \"...\" (where clients reach wakegate), or set on_sleep = \"delete\"",
            );
            None
        }
        (Some("delete"), _) => Some(OnSleep::Delete),
        (Some(other), _) => {
            problems.add(
                c.on_sleep.as_ref().map(|v| v.span()),
                format!("unknown on_sleep `{other}`"),
                "use on_sleep = \"gateway\" (point the record at gateway_ip) or \"delete\"",
            );
            None
        }
    };
    let api = read_api(None, c.endpoint_url, problems);
    let (value, on_sleep, api) = (value?, on_sleep?, api?);
    ok.then_some(Dns {
        api,
        zone_id,
        name,
        ttl,
        value,
        on_sleep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::config::Backend;

    fn backend(src: &str) -> Backend {
        let config = crate::config::parse(src, "test.toml").unwrap();
        config.services[0].backend.clone()
    }

    #[test]
    fn the_ec2_example_reads_into_its_runtime_type() {
        let Backend::Ec2(ec2) = backend(include_str!("../../../examples/ec2.toml")) else {
            panic!("not ec2")
        };
        assert_eq!(
            ec2.target,
            Ec2Target::Tags(vec![
                ("Name".into(), "minecraft".into()),
                ("wakegate".into(), "yes".into())
            ])
        );
        assert!(ec2.hibernate);
        assert_eq!(ec2.address, Address::Public(25565));
        assert_eq!(ec2.api.region.as_deref(), Some("eu-west-1"));
        let dns = ec2.dns.unwrap();
        assert_eq!(dns.name, "mc.example.com");
        assert_eq!(dns.ttl, 60);
        assert_eq!(
            dns.on_sleep,
            OnSleep::Gateway(Ipv4Addr::new(203, 0, 113, 10))
        );
    }

    #[test]
    fn an_ecs_task_reads_with_its_defaults() {
        let src = r#"
[[service]]
name = "job"
[service.backend]
type = "ecs"
cluster = "games"
mode = "task"
task_definition = "worker"
subnets = ["subnet-1"]
address = "10.1.2.3:8080"
[[service.listen]]
type = "tcp"
bind = "127.0.0.1:0"
"#;
        let Backend::Ecs(ecs) = backend(src) else {
            panic!("not ecs")
        };
        let EcsMode::Task(run) = ecs.mode else {
            panic!("not task mode")
        };
        assert_eq!(run.launch_type, "FARGATE");
        assert!(!run.assign_public_ip);
        assert_eq!(ecs.address, Address::Fixed("10.1.2.3:8080".into()));
        assert_eq!(ecs.stop_timeout, Duration::from_secs(600));
    }
}
