//! `ec2` backend: an EC2 instance, selected by id or by tags, started on a wake and stopped (or
//! hibernated) on sleep. Every instance state is handled: a wake while the instance is still
//! `stopping` waits for `stopped` and then starts it; a `terminated` instance fails the wake
//! with a message instead of being started. Its address is read again after every start (the
//! public IP changes), and `[service.dns]` follows it.

use std::net::Ipv4Addr;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{Filter, Instance, InstanceStateName};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

use super::config::{Address, DnsValue, Ec2, Ec2Target, Restart};
use super::dns::Record;
use super::sdk;
use crate::backend::{Backend, BackendError, Note, Notes, StatePoll, Status};
use crate::event::Kind;

pub struct Ec2Backend {
    service: String,
    config: Ec2,
    client: Option<aws_sdk_ec2::Client>,
    dns: Option<Record>,
    notes: Notes,
    notes_rx: Option<mpsc::UnboundedReceiver<Note>>,
}

/// What wakegate needs of an instance.
#[derive(Debug, Clone)]
struct Found {
    id: String,
    state: InstanceStateName,
    public_ip: Option<String>,
    private_ip: Option<String>,
    public_dns: Option<String>,
    hibernation: bool,
}

impl Found {
    fn of(instance: &Instance) -> Found {
        Found {
            id: instance.instance_id().unwrap_or("?").to_string(),
            state: instance
                .state()
                .and_then(|s| s.name())
                .cloned()
                .unwrap_or_else(|| InstanceStateName::from("unknown")),
            public_ip: instance.public_ip_address().map(str::to_string),
            private_ip: instance.private_ip_address().map(str::to_string),
            public_dns: instance
                .public_dns_name()
                .filter(|d| !d.is_empty())
                .map(str::to_string),
            hibernation: instance
                .hibernation_options()
                .and_then(|h| h.configured())
                .unwrap_or(false),
        }
    }
}

/// The first wait between two looks at a changing instance, and the longest.
const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(15);

impl Ec2Backend {
    pub fn new(service: &str, config: Ec2) -> Ec2Backend {
        let (notes, notes_rx) = mpsc::unbounded_channel();
        Ec2Backend {
            service: service.to_string(),
            dns: config.dns.clone().map(Record::new),
            config,
            client: None,
            notes,
            notes_rx: Some(notes_rx),
        }
    }

    async fn client(&mut self) -> &aws_sdk_ec2::Client {
        if self.client.is_none() {
            let sdk = sdk::load(&self.config.api).await;
            self.client = Some(aws_sdk_ec2::Client::new(&sdk));
        }
        self.client.as_ref().unwrap()
    }

    fn note(&self, kind: Kind, reason: String, detail: serde_json::Value) {
        let _ = self.notes.send(Note {
            kind,
            reason,
            detail,
        });
    }

    /// Looks the instance up: by id, or the one instance (not terminated) whose tags match.
    async fn find(&mut self) -> Result<Found, BackendError> {
        self.lookup().await?
    }

    /// Like [`find`](Self::find), with the two errors apart: the outer one when AWS could not
    /// be asked, the inner one when no single instance matches the selection.
    async fn lookup(&mut self) -> Result<Result<Found, BackendError>, BackendError> {
        let target = self.config.target.clone();
        let request = match &target {
            Ec2Target::Id(id) => self.client().await.describe_instances().instance_ids(id),
            Ec2Target::Tags(tags) => {
                let mut request = self.client().await.describe_instances();
                for (key, value) in tags {
                    request = request.filters(
                        Filter::builder()
                            .name(format!("tag:{key}"))
                            .values(value)
                            .build(),
                    );
                }
                request
            }
        };
        let out = request.send().await.map_err(|e| {
            BackendError::Other(format!(
                "cannot describe {target}: {}; check the credentials, the region and ec2:DescribeInstances (see `wakegate iam-policy`)",
                sdk::describe(&e)
            ))
        })?;
        let all: Vec<Found> = out
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .map(Found::of)
            .collect();
        Ok(match target {
            Ec2Target::Id(id) => all.into_iter().find(|f| f.id == id).ok_or_else(|| {
                BackendError::Other(format!(
                    "instance {id} does not exist in this region; check `instance_id` and `region`"
                ))
            }),
            Ec2Target::Tags(_) => {
                // Terminated instances stay listed for a while; they are never the one meant.
                let (gone, live): (Vec<Found>, Vec<Found>) = all
                    .into_iter()
                    .partition(|f| f.state == InstanceStateName::Terminated);
                match live.len() {
                    1 => Ok(live.into_iter().next().unwrap()),
                    0 => {
                        let gone = if gone.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} ignored: terminated)", list(&gone))
                        };
                        Err(BackendError::Other(format!(
                            "no instance matches: {target} was not found{gone}; check the tags and the region"
                        )))
                    }
                    n => Err(BackendError::Other(format!(
                        "{n} instances match where one must: {target} found {}; add a tag that tells them apart, or use `instance_id`",
                        list(&live)
                    ))),
                }
            }
        })
    }

    /// Looks until `done` holds for the instance's state, waiting longer each time.
    async fn wait_until(
        &mut self,
        what: &str,
        timeout: Option<Duration>,
        done: impl Fn(&InstanceStateName) -> bool,
    ) -> Result<Found, BackendError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut wait = FIRST_WAIT;
        loop {
            let found = self.find().await?;
            if done(&found.state) {
                return Ok(found);
            }
            if matches!(
                found.state,
                InstanceStateName::Terminated | InstanceStateName::ShuttingDown
            ) {
                return Err(gone(&found));
            }
            if let (Some(deadline), Some(timeout)) = (deadline, timeout)
                && Instant::now() >= deadline
            {
                return Err(BackendError::Other(format!(
                    "instance {} was still {} after {}, waiting for it to be {what}; look at it in the EC2 console",
                    found.id,
                    found.state.as_str(),
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LONGEST_WAIT);
        }
    }

    /// The IP the DNS record gets.
    fn record_ip(found: &Found, value: DnsValue) -> Option<Ipv4Addr> {
        let ip = match value {
            DnsValue::Public => found.public_ip.as_deref(),
            DnsValue::Private => found.private_ip.as_deref(),
        };
        ip.and_then(|ip| ip.parse().ok())
    }

    async fn stop_instance(&mut self, found: &Found) -> Result<(), BackendError> {
        let id = found.id.clone();
        let mut hibernate = self.config.hibernate;
        if hibernate && !found.hibernation {
            hibernate = false;
            self.note(
                Kind::Warning,
                format!("instance {id} is not configured for hibernation; stopping it without hibernating"),
                json!({ "instance": id, "hibernate": false }),
            );
        }
        let sent = self
            .client()
            .await
            .stop_instances()
            .instance_ids(&id)
            .hibernate(hibernate)
            .send()
            .await;
        match sent {
            Ok(_) => {}
            Err(e) if hibernate && cannot_hibernate(&e) => {
                self.note(
                    Kind::Warning,
                    format!(
                        "instance {id} cannot hibernate ({}); stopping it without hibernating",
                        sdk::describe(&e)
                    ),
                    json!({ "instance": id, "hibernate": false }),
                );
                hibernate = false;
                self.client()
                    .await
                    .stop_instances()
                    .instance_ids(&id)
                    .send()
                    .await
                    .map_err(|e| stop_error(&id, &e))?;
            }
            Err(e) => return Err(stop_error(&id, &e)),
        }
        let how = if hibernate { "hibernating" } else { "stopping" };
        self.note(
            Kind::Progress,
            format!("instance {id} is {how}; waiting for it to be stopped"),
            json!({ "instance": id, "step": "stopping", "hibernate": hibernate }),
        );
        info!(service = %self.service, instance = %id, hibernate, "Instance asked to stop.");
        Ok(())
    }
}

fn list(found: &[Found]) -> String {
    found
        .iter()
        .map(|f| format!("{} ({})", f.id, f.state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn gone(found: &Found) -> BackendError {
    BackendError::Other(format!(
        "instance {} is {}: it cannot be started again; launch a new instance and select it by its tags or id",
        found.id,
        found.state.as_str()
    ))
}

fn cannot_hibernate<E, R>(e: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> bool
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    sdk::code(e).is_some_and(|c| c.contains("Hibernation") || c == "UnsupportedOperation")
}

fn stop_error<E, R>(
    id: &str,
    e: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> BackendError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    BackendError::Other(format!(
        "cannot stop instance {id}: {}; check ec2:StopInstances (see `wakegate iam-policy`)",
        sdk::describe(e)
    ))
}

#[async_trait]
impl Backend for Ec2Backend {
    fn kind(&self) -> &'static str {
        "ec2"
    }

    async fn remove(&mut self) -> Result<(), BackendError> {
        if let Some(dns) = &mut self.dns {
            dns.remove(&self.notes).await;
        }
        Ok(())
    }

    fn state_poll(&self) -> StatePoll {
        self.config.state_poll
    }

    fn reboots(&self) -> Option<Duration> {
        (self.config.restart == Restart::Reboot).then_some(self.config.reboot_grace)
    }

    async fn reboot(&mut self) -> Result<(), BackendError> {
        let found = self.find().await?;
        if found.state != InstanceStateName::Running {
            // Not running: a reboot would do nothing; a start is what it needs.
            return self.start().await;
        }
        let id = found.id.clone();
        self.client()
            .await
            .reboot_instances()
            .instance_ids(&id)
            .send()
            .await
            .map_err(|e| {
                BackendError::Other(format!(
                    "cannot reboot instance {id}: {}; check ec2:RebootInstances (see `wakegate iam-policy`)",
                    sdk::describe(&e)
                ))
            })?;
        info!(service = %self.service, instance = %id, "Instance asked to reboot.");
        self.note(
            Kind::Progress,
            format!("instance {id} is rebooting"),
            json!({ "instance": id, "step": "rebooting" }),
        );
        Ok(())
    }

    fn notes(&mut self) -> Option<mpsc::UnboundedReceiver<Note>> {
        self.notes_rx.take()
    }

    async fn start(&mut self) -> Result<(), BackendError> {
        let mut found = self.find().await?;
        if found.state == InstanceStateName::Stopping {
            self.note(
                Kind::Progress,
                format!(
                    "instance {} is still stopping; it is started once stopped",
                    found.id
                ),
                json!({ "instance": found.id, "step": "waiting for stopped" }),
            );
            found = self
                .wait_until("stopped", None, |s| *s == InstanceStateName::Stopped)
                .await?;
        }
        match found.state {
            InstanceStateName::Running => return Ok(()),
            InstanceStateName::Pending => {}
            InstanceStateName::Stopped => {
                let id = found.id.clone();
                self.client()
                    .await
                    .start_instances()
                    .instance_ids(&id)
                    .send()
                    .await
                    .map_err(|e| {
                        BackendError::Other(format!(
                            "cannot start instance {id}: {}; check ec2:StartInstances (see `wakegate iam-policy`) and the instance's limits",
                            sdk::describe(&e)
                        ))
                    })?;
                info!(service = %self.service, instance = %id, "Instance asked to start.");
                self.note(
                    Kind::Progress,
                    format!("instance {id} is starting"),
                    json!({ "instance": id, "step": "starting" }),
                );
            }
            InstanceStateName::Terminated | InstanceStateName::ShuttingDown => {
                return Err(gone(&found));
            }
            other => {
                return Err(BackendError::Other(format!(
                    "instance {} is in state `{}`, which wakegate does not know; look at it in the EC2 console",
                    found.id,
                    other.as_str()
                )));
            }
        }
        self.wait_until("running", None, |s| *s == InstanceStateName::Running)
            .await
            .map(drop)
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        let timeout = self.config.stop_timeout;
        // When no single instance matches, wakegate started none: there is nothing to stop.
        let mut found = match self.lookup().await? {
            Ok(found) => found,
            Err(unselected) => {
                info!(service = %self.service, reason = %unselected, "No instance to stop.");
                return Ok(());
            }
        };
        if found.state == InstanceStateName::Pending {
            // A pending instance cannot be stopped yet.
            found = self
                .wait_until("running", Some(timeout), |s| {
                    *s == InstanceStateName::Running
                })
                .await?;
        }
        match found.state {
            InstanceStateName::Running => {
                self.stop_instance(&found).await?;
                self.wait_until("stopped", Some(timeout), |s| {
                    *s == InstanceStateName::Stopped
                })
                .await?;
            }
            InstanceStateName::Stopping => {
                self.wait_until("stopped", Some(timeout), |s| {
                    *s == InstanceStateName::Stopped
                })
                .await?;
            }
            // Stopped, or gone for good: nothing runs (a wake says what is wrong).
            _ => {}
        }
        if let Some(mut dns) = self.dns.take() {
            dns.rest(&self.notes).await;
            self.dns = Some(dns);
        }
        Ok(())
    }

    async fn status(&mut self) -> Result<Status, BackendError> {
        let found = self.find().await?;
        let status = match found.state {
            InstanceStateName::Running | InstanceStateName::Pending => Status::Running,
            InstanceStateName::Terminated | InstanceStateName::ShuttingDown => {
                Status::Gone(gone(&found).to_string())
            }
            _ => Status::Stopped,
        };
        // A wakegate that died between the stop and the DNS change left the record pointing
        // at a server that is gone: put it back now.
        if matches!(status, Status::Stopped | Status::Gone(_))
            && let Some(mut dns) = self.dns.take()
        {
            dns.rest(&self.notes).await;
            self.dns = Some(dns);
        }
        Ok(status)
    }

    async fn address(&mut self) -> Result<String, BackendError> {
        let found = self.find().await?;
        if let Some(mut dns) = self.dns.take() {
            let value = dns.config().value;
            match Self::record_ip(&found, value) {
                Some(ip) => dns.follow(ip, &self.notes).await,
                None => self.note(
                    Kind::Warning,
                    format!(
                        "instance {} has no {} IP for DNS record {}; the record is left as it is",
                        found.id,
                        if value == DnsValue::Public {
                            "public"
                        } else {
                            "private"
                        },
                        dns.config().name
                    ),
                    json!({ "instance": found.id }),
                ),
            }
            self.dns = Some(dns);
        }
        let missing = |what: &str, hint: &str| {
            BackendError::Other(format!("instance {} has no {what}; {hint}", found.id))
        };
        match &self.config.address {
            Address::Fixed(address) => Ok(address.clone()),
            Address::Public(port) => found
                .public_ip
                .as_ref()
                .map(|ip| format!("{ip}:{port}"))
                .ok_or_else(|| {
                    missing(
                        "public IP",
                        "give it one (the subnet's auto-assign setting or an Elastic IP), or set address = \"private\"",
                    )
                }),
            Address::Private(port) => found
                .private_ip
                .as_ref()
                .map(|ip| format!("{ip}:{port}"))
                .ok_or_else(|| missing("private IP", "is it running?")),
            Address::Dns(port) => found
                .public_dns
                .as_ref()
                .map(|name| format!("{name}:{port}"))
                .ok_or_else(|| {
                    missing(
                        "public DNS name",
                        "enable DNS hostnames in its VPC, or set address = \"public\"",
                    )
                }),
        }
    }
}
