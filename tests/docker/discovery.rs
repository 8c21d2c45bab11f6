//! `[discovery.docker]`: services from container labels.
