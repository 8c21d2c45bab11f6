//! `[service.dns]`: a Route53 A record that follows the server. On a wake it is UPSERTed to the
//! server's new address, so clients that resolve the name reach the server directly; on sleep
//! it points back at the gateway (or is deleted). When its service ends for good (a created
//! service), it is deleted. Each change is an event.
//!
//! A record that cannot be changed does not fail the wake or the stop: the gateway still
//! forwards clients that reach it. It is a warning event instead, and the next change tries again.

use std::net::Ipv4Addr;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use serde_json::json;
use tracing::warn;

use super::config::{Dns, OnSleep};
use super::sdk;
use crate::backend::{Note, Notes};
use crate::event::Kind;

/// One service's record.
pub struct Record {
    config: Dns,
    client: Option<aws_sdk_route53::Client>,
    /// What we last set it to (`None` after a delete, or before the first change).
    current: Option<Ipv4Addr>,
}

impl Record {
    pub fn new(config: Dns) -> Record {
        Record {
            config,
            client: None,
            current: None,
        }
    }

    pub fn config(&self) -> &Dns {
        &self.config
    }

    async fn client(&mut self) -> &aws_sdk_route53::Client {
        if self.client.is_none() {
            let sdk = sdk::load(&self.config.api).await;
            self.client = Some(aws_sdk_route53::Client::new(&sdk));
        }
        self.client.as_ref().unwrap()
    }

    /// Points the record at the awake server.
    pub async fn follow(&mut self, ip: Ipv4Addr, notes: &Notes) {
        if self.current == Some(ip) {
            return;
        }
        let why = "the server is awake";
        self.upsert(ip, why, notes).await;
    }

    /// Points the record back at the gateway, or deletes it.
    pub async fn rest(&mut self, notes: &Notes) {
        match self.config.on_sleep {
            OnSleep::Gateway(ip) => {
                if self.current != Some(ip) {
                    self.upsert(ip, "the server sleeps; clients reach wakegate", notes)
                        .await;
                }
            }
            OnSleep::Delete => self.delete("the server sleeps", notes).await,
        }
    }

    /// Deletes the record for good: its service has ended.
    pub async fn remove(&mut self, notes: &Notes) {
        self.delete("the server has ended", notes).await;
    }

    async fn upsert(&mut self, ip: Ipv4Addr, why: &str, notes: &Notes) {
        let (name, ttl) = (self.config.name.clone(), self.config.ttl);
        let set = record_set(&name, ttl, ip);
        match self.change(ChangeAction::Upsert, set).await {
            Ok(()) => {
                self.current = Some(ip);
                let _ = notes.send(Note {
                    kind: Kind::Progress,
                    reason: format!("DNS record {name} now points at {ip} ({why})"),
                    detail: json!({ "dns": { "name": name, "value": ip.to_string(), "ttl": ttl, "action": "upsert" } }),
                });
            }
            Err(e) => self.failed(&format!("point {name} at {ip}"), &e, notes),
        }
    }

    async fn delete(&mut self, why: &str, notes: &Notes) {
        let name = self.config.name.clone();
        let zone = self.config.zone_id.clone();
        // A DELETE must repeat the record exactly as it is: read it first.
        let listed = self
            .client()
            .await
            .list_resource_record_sets()
            .hosted_zone_id(&zone)
            .start_record_name(&name)
            .start_record_type(RrType::A)
            .max_items(1)
            .send()
            .await;
        let existing = match listed {
            Ok(out) => out.resource_record_sets.into_iter().find(|set| {
                set.r#type == RrType::A
                    && set.name.trim_end_matches('.').eq_ignore_ascii_case(&name)
            }),
            Err(e) => return self.failed(&format!("read {name}"), &sdk::describe(&e), notes),
        };
        let Some(existing) = existing else {
            self.current = None;
            return;
        };
        match self.change(ChangeAction::Delete, existing).await {
            Ok(()) => {
                self.current = None;
                let _ = notes.send(Note {
                    kind: Kind::Progress,
                    reason: format!("DNS record {name} deleted ({why})"),
                    detail: json!({ "dns": { "name": name, "action": "delete" } }),
                });
            }
            Err(e) => self.failed(&format!("delete {name}"), &e, notes),
        }
    }

    async fn change(&mut self, action: ChangeAction, set: ResourceRecordSet) -> Result<(), String> {
        let zone = self.config.zone_id.clone();
        let change = Change::builder()
            .action(action)
            .resource_record_set(set)
            .build()
            .map_err(|e| e.to_string())?;
        let batch = ChangeBatch::builder()
            .comment("wakegate")
            .changes(change)
            .build()
            .map_err(|e| e.to_string())?;
        self.client()
            .await
            .change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(batch)
            .send()
            .await
            .map(drop)
            .map_err(|e| sdk::describe(&e))
    }

    fn failed(&mut self, what: &str, error: &str, notes: &Notes) {
        // Unknown now: the next change is sent whatever we think the record holds.
        self.current = None;
        let zone = &self.config.zone_id;
        warn!(error = %error, zone = %zone, "Cannot {what}.");
        let _ = notes.send(Note {
            kind: Kind::Warning,
            reason: format!(
                "cannot {what} in hosted zone {zone}: {error}; check route53:ChangeResourceRecordSets (see `wakegate iam-policy`)"
            ),
            detail: json!({ "dns": { "name": self.config.name, "error": error } }),
        });
    }
}

fn record_set(name: &str, ttl: i64, ip: Ipv4Addr) -> ResourceRecordSet {
    let record = ResourceRecord::builder()
        .value(ip.to_string())
        .build()
        .expect("the value is set");
    ResourceRecordSet::builder()
        .name(name)
        .r#type(RrType::A)
        .ttl(ttl)
        .resource_records(record)
        .build()
        .expect("name and type are set")
}
