//! The AWS SDK's shared config: credentials and region from the standard chain (environment,
//! profile, instance role), one HTTPS client on rustls with ring, and the SDK's standard retry
//! mode, which retries throttling and transient errors with exponential backoff and jitter.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::config::Api;

/// The HTTP client of every AWS call: HTTPS with rustls and ring (plain HTTP for a local
/// `endpoint_url`).
pub fn http_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Loads the SDK config for one backend (or its DNS record).
pub async fn load(api: &Api) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(6)
                .with_initial_backoff(std::time::Duration::from_millis(200)),
        );
    if let Some(region) = &api.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &api.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An SDK error in words: the service's code and message when it answered, else the cause.
pub fn describe<E, R>(error: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> String
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match error {
        SdkError::ServiceError(e) => {
            let err = e.err();
            match (err.code(), err.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_string(),
                _ => err.to_string(),
            }
        }
        SdkError::DispatchFailure(e) => {
            let mut text = "cannot reach the AWS API".to_string();
            if let Some(cause) = e.as_connector_error() {
                text.push_str(&format!(": {cause}"));
            }
            text
        }
        SdkError::TimeoutError(_) => "the AWS API did not answer in time".into(),
        other => {
            // The full chain: the SDK's top-level message alone says little.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            text
        }
    }
}

/// The error code of a service error, to tell a missing permission or hibernation apart.
pub fn code<E, R>(error: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Option<&str>
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata,
{
    match error {
        aws_smithy_runtime_api::client::result::SdkError::ServiceError(e) => e.err().code(),
        _ => None,
    }
}
