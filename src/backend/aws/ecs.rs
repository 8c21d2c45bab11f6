//! `ecs` backend, two modes. `service`: a service scaled to one task on a wake and to none on
//! sleep. `task`: one task run from a task definition (RunTask) on a wake and stopped
//! (StopTask) on sleep; its ARN is kept in the store, so a restarted wakegate finds its task
//! again instead of running a second one. The address is the task's IP, read on every wake.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ecs::types::{
    AssignPublicIp, AwsVpcConfiguration, DesiredStatus, LaunchType, NetworkConfiguration, Task,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

use super::config::{Address, DnsValue, Ecs, EcsMode, RunTask};
use super::dns::Record;
use super::sdk;
use crate::backend::{Backend, BackendError, Note, Notes, StatePoll, Status};
use crate::event::Kind;
use crate::store::Store;

/// The store key of the task this backend ran (task mode).
const TASK_KEY: &str = "ecs_task_arn";

const FIRST_WAIT: Duration = Duration::from_millis(250);
const LONGEST_WAIT: Duration = Duration::from_secs(15);

pub struct EcsBackend {
    service: String,
    config: Ecs,
    store: Arc<Store>,
    clients: Option<(aws_sdk_ecs::Client, aws_sdk_ec2::Client)>,
    dns: Option<Record>,
    notes: Notes,
    notes_rx: Option<mpsc::UnboundedReceiver<Note>>,
}

/// What wakegate needs of a task.
#[derive(Debug, Clone)]
struct TaskInfo {
    arn: String,
    last_status: String,
    desired_status: String,
    stopped_reason: Option<String>,
    private_ip: Option<String>,
    eni: Option<String>,
}

impl TaskInfo {
    fn of(task: &Task) -> TaskInfo {
        let detail = |name: &str| {
            task.attachments()
                .iter()
                .flat_map(|a| a.details())
                .find(|d| d.name() == Some(name))
                .and_then(|d| d.value())
                .map(str::to_string)
        };
        let container_ip = task
            .containers()
            .iter()
            .flat_map(|c| c.network_interfaces())
            .find_map(|n| n.private_ipv4_address())
            .map(str::to_string);
        TaskInfo {
            arn: task.task_arn().unwrap_or("?").to_string(),
            last_status: task.last_status().unwrap_or("UNKNOWN").to_string(),
            desired_status: task.desired_status().unwrap_or("UNKNOWN").to_string(),
            stopped_reason: task.stopped_reason().map(str::to_string),
            private_ip: detail("privateIPv4Address").or(container_ip),
            eni: detail("networkInterfaceId"),
        }
    }

    fn stopped(&self) -> bool {
        matches!(self.last_status.as_str(), "STOPPED" | "DELETED")
    }

    fn why_stopped(&self) -> String {
        self.stopped_reason
            .clone()
            .unwrap_or_else(|| "no reason given".into())
    }
}

impl EcsBackend {
    pub fn new(service: &str, config: Ecs, store: Arc<Store>) -> EcsBackend {
        let (notes, notes_rx) = mpsc::unbounded_channel();
        EcsBackend {
            service: service.to_string(),
            dns: config.dns.clone().map(Record::new),
            config,
            store,
            clients: None,
            notes,
            notes_rx: Some(notes_rx),
        }
    }

    async fn ecs(&mut self) -> &aws_sdk_ecs::Client {
        self.init().await;
        &self.clients.as_ref().unwrap().0
    }

    async fn ec2(&mut self) -> &aws_sdk_ec2::Client {
        self.init().await;
        &self.clients.as_ref().unwrap().1
    }

    async fn init(&mut self) {
        if self.clients.is_none() {
            let sdk = sdk::load(&self.config.api).await;
            self.clients = Some((
                aws_sdk_ecs::Client::new(&sdk),
                aws_sdk_ec2::Client::new(&sdk),
            ));
        }
    }

    fn note(&self, kind: Kind, reason: String, detail: serde_json::Value) {
        let _ = self.notes.send(Note {
            kind,
            reason,
            detail,
        });
    }

    async fn stored_task(&self) -> Option<String> {
        let service = self.service.clone();
        self.store
            .read(move |s| s.backend_value(&service, TASK_KEY))
            .await
            .ok()
            .flatten()
    }

    async fn remember_task(&self, arn: Option<&str>) -> Result<(), BackendError> {
        self.store
            .set_backend_value(&self.service, TASK_KEY, arn)
            .await
            .map_err(|e| BackendError::Other(format!("cannot record the task's ARN: {e:#}")))
    }

    async fn describe_task(&mut self, arn: &str) -> Result<Option<TaskInfo>, BackendError> {
        let cluster = self.config.cluster.clone();
        let out = self
            .ecs()
            .await
            .describe_tasks()
            .cluster(&cluster)
            .tasks(arn)
            .send()
            .await
            .map_err(|e| {
                BackendError::Other(format!(
                    "cannot describe task {arn}: {}; check ecs:DescribeTasks (see `wakegate iam-policy`)",
                    sdk::describe(&e)
                ))
            })?;
        Ok(out.tasks().iter().map(TaskInfo::of).find(|t| t.arn == arn))
    }

    /// Looks at a task until it runs; a task that stops meanwhile fails the wake.
    async fn wait_running(&mut self, arn: &str) -> Result<TaskInfo, BackendError> {
        let mut wait = FIRST_WAIT;
        loop {
            let Some(task) = self.describe_task(arn).await? else {
                return Err(BackendError::Other(format!(
                    "task {arn} is gone; it may have been stopped by hand"
                )));
            };
            if task.last_status == "RUNNING" {
                return Ok(task);
            }
            if task.stopped() || task.desired_status == "STOPPED" {
                return Err(BackendError::Other(format!(
                    "task {arn} stopped before it ran: {}; look at its logs and its task definition",
                    task.why_stopped()
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LONGEST_WAIT);
        }
    }

    async fn wait_stopped(&mut self, arn: &str) -> Result<(), BackendError> {
        let timeout = self.config.stop_timeout;
        let deadline = Instant::now() + timeout;
        let mut wait = FIRST_WAIT;
        loop {
            match self.describe_task(arn).await? {
                None => return Ok(()),
                Some(task) if task.stopped() => return Ok(()),
                Some(task) if Instant::now() >= deadline => {
                    return Err(BackendError::Other(format!(
                        "task {arn} was still {} after {}; look at it in the ECS console",
                        task.last_status,
                        humantime::format_duration(timeout)
                    )));
                }
                Some(_) => {}
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LONGEST_WAIT);
        }
    }

    async fn run_task(&mut self, run: &RunTask) -> Result<String, BackendError> {
        let cluster = self.config.cluster.clone();
        let mut request = self
            .ecs()
            .await
            .run_task()
            .cluster(&cluster)
            .task_definition(&run.task_definition)
            .launch_type(LaunchType::from(run.launch_type.as_str()))
            .count(1)
            .started_by("wakegate")
            .group(format!("wakegate:{}", self.service));
        if !run.subnets.is_empty() {
            let vpc = AwsVpcConfiguration::builder()
                .set_subnets(Some(run.subnets.clone()))
                .set_security_groups(Some(run.security_groups.clone()))
                .assign_public_ip(if run.assign_public_ip {
                    AssignPublicIp::Enabled
                } else {
                    AssignPublicIp::Disabled
                })
                .build()
                .map_err(|e| BackendError::Other(e.to_string()))?;
            request = request.network_configuration(
                NetworkConfiguration::builder()
                    .awsvpc_configuration(vpc)
                    .build(),
            );
        }
        let out = request.send().await.map_err(|e| {
            BackendError::Other(format!(
                "cannot run task {}: {}; check ecs:RunTask and iam:PassRole (see `wakegate iam-policy`)",
                run.task_definition,
                sdk::describe(&e)
            ))
        })?;
        if let Some(failure) = out.failures().first() {
            return Err(BackendError::Other(format!(
                "ECS could not run task {}: {}{}",
                run.task_definition,
                failure.reason().unwrap_or("no reason given"),
                failure
                    .detail()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )));
        }
        out.tasks()
            .first()
            .and_then(|t| t.task_arn())
            .map(str::to_string)
            .ok_or_else(|| BackendError::Other("RunTask started no task".into()))
    }

    async fn scale(&mut self, service: &str, count: i32) -> Result<(), BackendError> {
        let cluster = self.config.cluster.clone();
        self.ecs()
            .await
            .update_service()
            .cluster(&cluster)
            .service(service)
            .desired_count(count)
            .send()
            .await
            .map_err(|e| {
                BackendError::Other(format!(
                    "cannot set the desired count of service {service} to {count}: {}; check ecs:UpdateService (see `wakegate iam-policy`)",
                    sdk::describe(&e)
                ))
            })?;
        info!(service = %self.service, ecs_service = %service, count, "Service scaled.");
        self.note(
            Kind::Progress,
            format!("ECS service {service} scaled to {count}"),
            json!({ "ecs_service": service, "desired_count": count }),
        );
        Ok(())
    }

    /// (desired, running) tasks of a service.
    async fn counts(&mut self, service: &str) -> Result<(i32, i32), BackendError> {
        let cluster = self.config.cluster.clone();
        let out = self
            .ecs()
            .await
            .describe_services()
            .cluster(&cluster)
            .services(service)
            .send()
            .await
            .map_err(|e| {
                BackendError::Other(format!(
                    "cannot describe service {service}: {}; check ecs:DescribeServices (see `wakegate iam-policy`)",
                    sdk::describe(&e)
                ))
            })?;
        let found = out
            .services()
            .iter()
            .find(|s| s.service_name() == Some(service) || s.service_arn() == Some(service));
        match found {
            Some(s) if s.status() != Some("INACTIVE") => Ok((s.desired_count(), s.running_count())),
            _ => Err(BackendError::Other(format!(
                "service {service} does not exist in cluster {cluster}; check `service` and `cluster`"
            ))),
        }
    }

    async fn wait_counts(
        &mut self,
        service: &str,
        done: impl Fn(i32) -> bool,
        timeout: Option<Duration>,
    ) -> Result<(), BackendError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut wait = FIRST_WAIT;
        loop {
            let (_, running) = self.counts(service).await?;
            if done(running) {
                return Ok(());
            }
            if let (Some(deadline), Some(timeout)) = (deadline, timeout)
                && Instant::now() >= deadline
            {
                return Err(BackendError::Other(format!(
                    "service {service} still ran {running} task(s) after {}; look at it in the ECS console",
                    humantime::format_duration(timeout)
                )));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LONGEST_WAIT);
        }
    }

    /// The running task: ours (task mode), or one the service started (service mode).
    async fn current_task(&mut self) -> Result<TaskInfo, BackendError> {
        match self.config.mode.clone() {
            EcsMode::Task(_) => {
                let arn = self.stored_task().await.ok_or_else(|| {
                    BackendError::Other("no task is running for this service".into())
                })?;
                self.describe_task(&arn)
                    .await?
                    .ok_or_else(|| BackendError::Other(format!("task {arn} is gone")))
            }
            EcsMode::Service { service } => {
                let cluster = self.config.cluster.clone();
                let listed = self
                    .ecs()
                    .await
                    .list_tasks()
                    .cluster(&cluster)
                    .service_name(&service)
                    .desired_status(DesiredStatus::Running)
                    .send()
                    .await
                    .map_err(|e| {
                        BackendError::Other(format!(
                            "cannot list the tasks of service {service}: {}; check ecs:ListTasks",
                            sdk::describe(&e)
                        ))
                    })?;
                let arns: Vec<String> = listed.task_arns().to_vec();
                if arns.is_empty() {
                    return Err(BackendError::Other(format!(
                        "service {service} has no running task yet"
                    )));
                }
                let out = self
                    .ecs()
                    .await
                    .describe_tasks()
                    .cluster(&cluster)
                    .set_tasks(Some(arns))
                    .send()
                    .await
                    .map_err(|e| BackendError::Other(sdk::describe(&e)))?;
                // ECS names the group of a service's tasks "service:NAME".
                let group = format!("service:{}", service.rsplit('/').next().unwrap_or(&service));
                out.tasks()
                    .iter()
                    .filter(|t| t.group() == Some(group.as_str()))
                    .map(TaskInfo::of)
                    .find(|t| t.last_status == "RUNNING")
                    .ok_or_else(|| {
                        BackendError::Other(format!("service {service} has no running task yet"))
                    })
            }
        }
    }

    /// What really runs: a service with tasks wanted or running, or our task not stopped.
    async fn real_status(&mut self) -> Result<Status, BackendError> {
        match self.config.mode.clone() {
            EcsMode::Service { service } => {
                let (desired, running) = self.counts(&service).await?;
                Ok(if desired > 0 || running > 0 {
                    Status::Running
                } else {
                    Status::Stopped
                })
            }
            EcsMode::Task(_) => {
                let Some(arn) = self.stored_task().await else {
                    return Ok(Status::Stopped);
                };
                match self.describe_task(&arn).await? {
                    Some(task) if !task.stopped() && task.desired_status != "STOPPED" => {
                        Ok(Status::Running)
                    }
                    _ => {
                        self.remember_task(None).await?;
                        Ok(Status::Stopped)
                    }
                }
            }
        }
    }

    async fn public_ip(&mut self, task: &TaskInfo) -> Result<Option<String>, BackendError> {
        let Some(eni) = task.eni.clone() else {
            return Ok(None);
        };
        let out = self
            .ec2()
            .await
            .describe_network_interfaces()
            .network_interface_ids(&eni)
            .send()
            .await
            .map_err(|e| {
                BackendError::Other(format!(
                    "cannot describe network interface {eni}: {}; check ec2:DescribeNetworkInterfaces",
                    sdk::describe(&e)
                ))
            })?;
        Ok(out
            .network_interfaces()
            .iter()
            .find_map(|n| n.association().and_then(|a| a.public_ip()))
            .map(str::to_string))
    }
}

#[async_trait]
impl Backend for EcsBackend {
    fn kind(&self) -> &'static str {
        "ecs"
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

    fn notes(&mut self) -> Option<mpsc::UnboundedReceiver<Note>> {
        self.notes_rx.take()
    }

    async fn start(&mut self) -> Result<(), BackendError> {
        match self.config.mode.clone() {
            EcsMode::Service { service } => {
                self.scale(&service, 1).await?;
                self.wait_counts(&service, |running| running >= 1, None)
                    .await
            }
            EcsMode::Task(run) => {
                // A task we ran before that still runs is used again, never doubled.
                if let Some(arn) = self.stored_task().await {
                    match self.describe_task(&arn).await? {
                        Some(task) if !task.stopped() && task.desired_status != "STOPPED" => {
                            self.wait_running(&arn).await?;
                            return Ok(());
                        }
                        _ => self.remember_task(None).await?,
                    }
                }
                let arn = self.run_task(&run).await?;
                // Recorded before anything else can fail, so a crash now cannot lose it.
                self.remember_task(Some(&arn)).await?;
                info!(service = %self.service, task = %arn, "Task started.");
                self.note(
                    Kind::Progress,
                    format!("ECS task {arn} started from {}", run.task_definition),
                    json!({ "task": arn, "step": "starting" }),
                );
                self.wait_running(&arn).await.map(drop)
            }
        }
    }

    async fn stop(&mut self) -> Result<(), BackendError> {
        match self.config.mode.clone() {
            EcsMode::Service { service } => {
                self.scale(&service, 0).await?;
                let timeout = self.config.stop_timeout;
                self.wait_counts(&service, |running| running == 0, Some(timeout))
                    .await?;
            }
            EcsMode::Task(_) => {
                if let Some(arn) = self.stored_task().await {
                    let cluster = self.config.cluster.clone();
                    let stopped = self
                        .ecs()
                        .await
                        .stop_task()
                        .cluster(&cluster)
                        .task(&arn)
                        .reason("wakegate: the service went to sleep")
                        .send()
                        .await;
                    match stopped {
                        Ok(_) => {
                            self.note(
                                Kind::Progress,
                                format!("ECS task {arn} asked to stop"),
                                json!({ "task": arn, "step": "stopping" }),
                            );
                            self.wait_stopped(&arn).await?;
                        }
                        // Already gone: nothing to stop.
                        Err(e) if self.describe_task(&arn).await.ok().flatten().is_none() => {
                            info!(task = %arn, error = %sdk::describe(&e), "The task is gone already.");
                        }
                        Err(e) => {
                            return Err(BackendError::Other(format!(
                                "cannot stop task {arn}: {}; check ecs:StopTask (see `wakegate iam-policy`)",
                                sdk::describe(&e)
                            )));
                        }
                    }
                    self.remember_task(None).await?;
                }
            }
        }
        if let Some(mut dns) = self.dns.take() {
            dns.rest(&self.notes).await;
            self.dns = Some(dns);
        }
        Ok(())
    }

    async fn status(&mut self) -> Result<Status, BackendError> {
        let status = self.real_status().await?;
        // A wakegate that died between the stop and the DNS change left the record pointing
        // at a task that is gone: put it back now.
        if status == Status::Stopped
            && let Some(mut dns) = self.dns.take()
        {
            dns.rest(&self.notes).await;
            self.dns = Some(dns);
        }
        Ok(status)
    }

    async fn address(&mut self) -> Result<String, BackendError> {
        let needs_task = self.dns.is_some() || !matches!(self.config.address, Address::Fixed(_));
        let task = if needs_task {
            Some(self.current_task().await?)
        } else {
            None
        };
        let mut public = None;
        let wants_public = matches!(self.config.address, Address::Public(_))
            || self
                .dns
                .as_ref()
                .is_some_and(|d| d.config().value == DnsValue::Public);
        if let (Some(task), true) = (&task, wants_public) {
            public = self.public_ip(task).await?;
        }
        let private = task.as_ref().and_then(|t| t.private_ip.clone());
        if let Some(mut dns) = self.dns.take() {
            let ip = match dns.config().value {
                DnsValue::Public => public.as_deref(),
                DnsValue::Private => private.as_deref(),
            };
            match ip.and_then(|ip| ip.parse::<Ipv4Addr>().ok()) {
                Some(ip) => dns.follow(ip, &self.notes).await,
                None => self.note(
                    Kind::Warning,
                    format!(
                        "the task has no {} IP for DNS record {}; the record is left as it is",
                        if dns.config().value == DnsValue::Public {
                            "public"
                        } else {
                            "private"
                        },
                        dns.config().name
                    ),
                    serde_json::Value::Null,
                ),
            }
            self.dns = Some(dns);
        }
        let arn = task.as_ref().map_or("?", |t| t.arn.as_str());
        match &self.config.address {
            Address::Fixed(address) => Ok(address.clone()),
            Address::Public(port) => public.map(|ip| format!("{ip}:{port}")).ok_or_else(|| {
                BackendError::Other(format!(
                    "task {arn} has no public IP; set assign_public_ip = true, or address = \"private\""
                ))
            }),
            Address::Private(port) | Address::Dns(port) => {
                private.map(|ip| format!("{ip}:{port}")).ok_or_else(|| {
                    BackendError::Other(format!(
                        "task {arn} has no private IP yet; does its task definition use awsvpc networking?"
                    ))
                })
            }
        }
    }
}
