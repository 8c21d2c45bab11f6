//! wakegate: one daemon that stands in front of servers that cost money while they run. It
//! answers clients on their behalf, wakes a server when a real client arrives, forwards its
//! traffic once ready, and puts it back to sleep when nobody has used it for a while.
#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod app;
pub mod backend;
pub mod bedrock;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod discord;
pub mod discovery;
pub mod event;
pub mod health;
pub mod human;
pub mod launch;
pub mod listener;
pub mod metrics;
pub mod minecraft;
pub mod notify;
pub mod probe;
pub mod reload;
pub mod schedule;
pub mod service;
pub mod store;
pub mod systemd;
pub mod template;
