//! `wakegate iam-policy`: the least-privilege IAM policy for exactly what a config uses. Start
//! and stop only the selected instances (by ARN, or by the selecting tags as a condition),
//! scale or run only the named ECS services and task definitions in their clusters, pass
//! roles only to ECS tasks, and change only the named records of the named hosted zones.
//!
//! Read-only calls that AWS does not scope to a resource (ec2:DescribeInstances,
//! ec2:DescribeNetworkInterfaces) get `"Resource": "*"`, as AWS requires. The account id is
//! not in the config, so ARNs carry `*` in its place; the region does too when the config
//! leaves it to the standard chain.

use serde_json::{Value, json};

use super::config::{Address, DnsValue, Ec2Target, EcsMode, OnSleep};
use crate::backend::config::Backend;
use crate::service::config::Service;

/// The policy document, or `None` when no service uses an AWS backend.
pub fn policy(services: &[Service]) -> Option<Value> {
    let mut statements: Vec<Value> = Vec::new();
    let mut describe_instances = false;
    let mut describe_enis = false;
    for service in services {
        let sid = sid(&service.name);
        let dns = match &service.backend {
            Backend::Ec2(ec2) => {
                describe_instances = true;
                let region = region(&ec2.api.region);
                let mut actions = vec!["ec2:StartInstances", "ec2:StopInstances"];
                if ec2.restart == crate::backend::aws::config::Restart::Reboot {
                    actions.push("ec2:RebootInstances");
                }
                let actions = json!(actions);
                statements.push(match &ec2.target {
                    Ec2Target::Id(id) => json!({
                        "Sid": format!("{sid}StartStop"),
                        "Effect": "Allow",
                        "Action": actions,
                        "Resource": format!("arn:aws:ec2:{region}:*:instance/{id}"),
                    }),
                    Ec2Target::Tags(tags) => {
                        let mut equals = serde_json::Map::new();
                        for (key, value) in tags {
                            equals.insert(format!("aws:ResourceTag/{key}"), json!(value));
                        }
                        json!({
                            "Sid": format!("{sid}StartStop"),
                            "Effect": "Allow",
                            "Action": actions,
                            "Resource": format!("arn:aws:ec2:{region}:*:instance/*"),
                            "Condition": { "StringEquals": equals },
                        })
                    }
                });
                &ec2.dns
            }
            Backend::Ecs(ecs) => {
                let region = region(&ecs.api.region);
                let cluster_arn = if ecs.cluster.starts_with("arn:") {
                    ecs.cluster.clone()
                } else {
                    format!("arn:aws:ecs:{region}:*:cluster/{}", ecs.cluster)
                };
                let cluster_name = ecs.cluster.rsplit('/').next().unwrap_or(&ecs.cluster);
                let tasks = format!("arn:aws:ecs:{region}:*:task/{cluster_name}/*");
                let public = matches!(ecs.address, Address::Public(_))
                    || ecs
                        .dns
                        .as_ref()
                        .is_some_and(|d| d.value == DnsValue::Public);
                describe_enis |= public;
                match &ecs.mode {
                    EcsMode::Service { service: name } => {
                        let service_arn = if name.starts_with("arn:") {
                            name.clone()
                        } else {
                            format!("arn:aws:ecs:{region}:*:service/{cluster_name}/{name}")
                        };
                        statements.push(json!({
                            "Sid": format!("{sid}Scale"),
                            "Effect": "Allow",
                            "Action": ["ecs:UpdateService", "ecs:DescribeServices"],
                            "Resource": service_arn,
                        }));
                        if !matches!(ecs.address, Address::Fixed(_)) || ecs.dns.is_some() {
                            statements.push(json!({
                                "Sid": format!("{sid}FindTask"),
                                "Effect": "Allow",
                                "Action": "ecs:ListTasks",
                                "Resource": "*",
                                "Condition": { "ArnLike": { "ecs:cluster": cluster_arn } },
                            }));
                            statements.push(json!({
                                "Sid": format!("{sid}DescribeTasks"),
                                "Effect": "Allow",
                                "Action": "ecs:DescribeTasks",
                                "Resource": tasks,
                            }));
                        }
                    }
                    EcsMode::Task(run) => {
                        let definition = if run.task_definition.starts_with("arn:") {
                            run.task_definition.clone()
                        } else if run.task_definition.contains(':') {
                            format!(
                                "arn:aws:ecs:{region}:*:task-definition/{}",
                                run.task_definition
                            )
                        } else {
                            format!(
                                "arn:aws:ecs:{region}:*:task-definition/{}:*",
                                run.task_definition
                            )
                        };
                        statements.push(json!({
                            "Sid": format!("{sid}RunTask"),
                            "Effect": "Allow",
                            "Action": "ecs:RunTask",
                            "Resource": definition,
                            "Condition": { "ArnLike": { "ecs:cluster": cluster_arn } },
                        }));
                        statements.push(json!({
                            "Sid": format!("{sid}StopTask"),
                            "Effect": "Allow",
                            "Action": ["ecs:StopTask", "ecs:DescribeTasks"],
                            "Resource": tasks,
                        }));
                        // RunTask hands the task definition's roles to ECS.
                        let roles = if run.pass_roles.is_empty() {
                            json!("*")
                        } else {
                            json!(run.pass_roles)
                        };
                        statements.push(json!({
                            "Sid": format!("{sid}PassRole"),
                            "Effect": "Allow",
                            "Action": "iam:PassRole",
                            "Resource": roles,
                            "Condition": { "StringEquals": { "iam:PassedToService": "ecs-tasks.amazonaws.com" } },
                        }));
                    }
                }
                &ecs.dns
            }
            _ => continue,
        };
        if let Some(dns) = dns {
            let zone = format!("arn:aws:route53:::hostedzone/{}", dns.zone_id);
            statements.push(json!({
                "Sid": format!("{sid}Dns"),
                "Effect": "Allow",
                "Action": "route53:ChangeResourceRecordSets",
                "Resource": zone,
                "Condition": {
                    "ForAllValues:StringEquals": {
                        "route53:ChangeResourceRecordSetsNormalizedRecordNames": [dns.name],
                        "route53:ChangeResourceRecordSetsRecordTypes": ["A"],
                    }
                },
            }));
            if dns.on_sleep == OnSleep::Delete {
                statements.push(json!({
                    "Sid": format!("{sid}DnsRead"),
                    "Effect": "Allow",
                    "Action": "route53:ListResourceRecordSets",
                    "Resource": zone,
                }));
            }
        }
    }
    if statements.is_empty() {
        return None;
    }
    let mut reads = Vec::new();
    if describe_instances {
        reads.push("ec2:DescribeInstances");
    }
    if describe_enis {
        reads.push("ec2:DescribeNetworkInterfaces");
    }
    if !reads.is_empty() {
        statements.insert(
            0,
            json!({
                "Sid": "DescribeEc2",
                "Effect": "Allow",
                "Action": reads,
                "Resource": "*",
            }),
        );
    }
    Some(json!({ "Version": "2012-10-17", "Statement": statements }))
}

fn region(region: &Option<String>) -> &str {
    region.as_deref().unwrap_or("*")
}

/// A statement id from a service name: letters and digits only, words capitalised.
fn sid(name: &str) -> String {
    name.split('-')
        .map(|w| {
            let mut chars = w.chars();
            chars.next().map_or(String::new(), |c| {
                c.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_alphanumeric() {
        assert_eq!(sid("mc-survival-2"), "McSurvival2");
    }
}
