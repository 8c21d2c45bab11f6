//! Stands in for the `aws` folder in a wakegate built without the `aws` feature, under the same
//! names. An `ec2` or `ecs` backend is refused with a message that says how to get one; their
//! config types have no values, so the code that matches on them needs no `#[cfg]` of its own.

use async_trait::async_trait;

use super::{Backend, BackendError, Status};

/// No value of it exists. It sits in private fields, so that code outside this module that
/// builds a backend from a config does not read as unreachable to the compiler.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Never {}

/// The config of the AWS backends: without the feature, none can be read.
pub mod config {
    use std::ops::Range;

    use toml::Spanned;
    use toml::de::DeValue;

    use crate::config::diag::Problems;

    /// An EC2 instance; no value exists without the `aws` feature.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Ec2(pub(super) super::Never);

    /// An ECS service or task; no value exists without the `aws` feature.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Ecs(pub(super) super::Never);

    /// Refuses an `ec2` backend table: this wakegate has no SDK to run it.
    pub(crate) fn read_ec2(
        rest: Spanned<DeValue<'_>>,
        _dns: Option<Spanned<DeValue<'_>>>,
        problems: &mut Problems<'_>,
    ) -> Option<Ec2> {
        missing(rest.span(), problems)
    }

    /// Refuses an `ecs` backend table: this wakegate has no SDK to run it.
    pub(crate) fn read_ecs(
        rest: Spanned<DeValue<'_>>,
        _dns: Option<Spanned<DeValue<'_>>>,
        problems: &mut Problems<'_>,
    ) -> Option<Ecs> {
        missing(rest.span(), problems)
    }

    /// A `[service.dns]` beside another backend: the caller says that it needs an AWS one.
    pub(crate) fn check_dns(_table: Spanned<DeValue<'_>>, _problems: &mut Problems<'_>) {}

    fn missing<T>(span: Range<usize>, problems: &mut Problems<'_>) -> Option<T> {
        problems.add(
            Some(span),
            "this wakegate was built without the `aws` feature",
            "build it with the default features (`cargo build --release`) to use ec2 and ecs backends",
        );
        None
    }
}

/// The `ec2` backend, which cannot be built: there is no [`config::Ec2`] to build it from.
pub mod ec2 {
    use super::config::Ec2;

    /// Has no values, like [`Ec2`].
    pub struct Ec2Backend(pub(super) super::Never);

    impl Ec2Backend {
        pub fn new(_service: &str, config: Ec2) -> Ec2Backend {
            match config.0 {}
        }
    }
}

/// The `ecs` backend, which cannot be built: there is no [`config::Ecs`] to build it from.
pub mod ecs {
    use std::sync::Arc;

    use super::config::Ecs;
    use crate::store::Store;

    /// Has no values, like [`Ecs`].
    pub struct EcsBackend(pub(super) super::Never);

    impl EcsBackend {
        pub fn new(_service: &str, config: Ecs, _store: Arc<Store>) -> EcsBackend {
            match config.0 {}
        }
    }
}

/// `wakegate iam-policy`: no config read without the feature has an AWS backend.
pub mod iam {
    use serde_json::Value;

    use crate::service::config::Service;

    /// Always `None`: no service can have an AWS backend.
    pub fn policy(_services: &[Service]) -> Option<Value> {
        None
    }
}

/// The two backends above have no values: every method is unreachable by the type system.
macro_rules! no_backend {
    ($($name:ty),*) => {$(
        #[async_trait]
        impl Backend for $name {
            fn kind(&self) -> &'static str {
                match self.0 {}
            }
            async fn start(&mut self) -> Result<(), BackendError> {
                match self.0 {}
            }
            async fn stop(&mut self) -> Result<(), BackendError> {
                match self.0 {}
            }
            async fn status(&mut self) -> Result<Status, BackendError> {
                match self.0 {}
            }
            async fn address(&mut self) -> Result<String, BackendError> {
                match self.0 {}
            }
        }
    )*};
}

no_backend!(ec2::Ec2Backend, ecs::EcsBackend);
