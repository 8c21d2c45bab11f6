//! Listeners: where clients arrive. One accept loop per bound socket; each client gets its own
//! task on the connections tracker.

pub mod config;
pub mod copy;
pub mod hostnames;
pub mod http;
pub mod minecraft;
pub mod tcp;
