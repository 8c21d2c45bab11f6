//! AWS: the `ec2` and `ecs` backends, the Route53 record that follows their server
//! (`[service.dns]`), the config they read and the least-privilege IAM policy they need. The
//! whole folder is the `aws` feature; without it, `backend/aws_missing.rs` stands in for it.

pub mod config;
pub mod dns;
pub mod ec2;
pub mod ecs;
pub mod iam;
pub mod sdk;
