//! TLS termination for `http` listeners: certificates and keys read from PEM files, and a
//! resolver that picks, by the name the client asks for (SNI), the certificate of the service
//! on a shared port that owns that name.

use std::path::PathBuf;
use std::sync::Arc;

use toml::Spanned;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::config::diag::Problems;
use crate::listener::route::host_matches;

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate {path}: {why}")]
    Cert { path: String, why: String },
    #[error("cannot read the private key {path}: {why}")]
    Key { path: String, why: String },
    #[error("the private key {key} does not belong to the certificate {cert}: {why}")]
    Mismatch {
        cert: String,
        key: String,
        why: String,
    },
}

/// Reads `tls_cert` and `tls_key` of a table: both or neither, readable and belonging
/// together. `None` when a problem was reported; `Some(None)` for plain HTTP.
pub(crate) fn read_files(
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    problems: &mut Problems<'_>,
) -> Option<Option<TlsFiles>> {
    match (cert, key) {
        (None, None) => Some(None),
        (Some(cert), None) => {
            problems.add(
                Some(cert.span()),
                "`tls_cert` is set without `tls_key`",
                "give the certificate's private key too: tls_key = \"/etc/ssl/private/app.key\"",
            );
            None
        }
        (None, Some(key)) => {
            problems.add(
                Some(key.span()),
                "`tls_key` is set without `tls_cert`",
                "give the certificate chain too: tls_cert = \"/etc/ssl/certs/app.pem\"",
            );
            None
        }
        (Some(cert), Some(key)) => {
            let files = TlsFiles {
                cert: cert.get_ref().clone(),
                key: key.get_ref().clone(),
            };
            match load(&files) {
                Ok(_) => Some(Some(files)),
                Err(e) => {
                    problems.add(
                        Some(cert.span()),
                        e.to_string(),
                        "give a PEM certificate chain and the PEM private key that belongs to it",
                    );
                    None
                }
            }
        }
    }
}

/// Reads a certificate chain and its key, and checks that they belong together.
pub fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_path = files.cert.display().to_string();
    let key_path = files.key.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert_path.clone(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: cert_path,
            why: "it holds no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: key_path.clone(),
        why: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Mismatch {
            cert: cert_path,
            key: key_path,
            why: e.to_string(),
        })?;
    Ok(Arc::new(certified))
}

/// Chooses the certificate by SNI among the services of one port: the one whose hostnames
/// match the name asked for, else the default's (also for clients that send no name).
#[derive(Debug)]
pub struct SniResolver {
    /// Each entry's hostnames with its certificate, in the order of the routes.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    pub fn new(certs: Vec<(Vec<String>, Arc<CertifiedKey>)>, default: Arc<CertifiedKey>) -> Self {
        SniResolver { certs, default }
    }

    fn find(&self, name: &str) -> Arc<CertifiedKey> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let exact = self.certs.iter().find(|(hosts, _)| hosts.contains(&name));
        let wildcard = || {
            self.certs
                .iter()
                .find(|(hosts, _)| hosts.iter().any(|h| host_matches(h, &name)))
        };
        exact
            .or_else(wildcard)
            .map_or_else(|| self.default.clone(), |(_, cert)| cert.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match hello.server_name() {
            Some(name) => self.find(name),
            None => self.default.clone(),
        })
    }
}

/// A server config for a port: HTTP/2 and HTTP/1.1 offered by ALPN.
pub fn server_config(resolver: SniResolver) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
