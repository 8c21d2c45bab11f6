//! Services discovered at run time rather than configured: `[discovery.docker]` makes a service
//! of each container labelled `wakegate.enable=true` (`labels.rs` reads its labels into a
//! `[[service]]`, `docker.rs` follows the engine's events), run beside the configured ones.

pub mod config;
pub mod docker;
pub mod labels;
