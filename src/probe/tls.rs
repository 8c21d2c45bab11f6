//! TLS for `https://` probes: the Mozilla roots by default, the authorities of a `ca_file`
//! instead (a private CA, a self-signed certificate), or, with `insecure = true`, any
//! certificate at all (the signature of the handshake is still checked, so the connection is
//! encrypted; only who answers is not). `config check` warns about the last.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How a probe checks the certificate of an `https://` URL.
#[derive(Clone)]
pub struct Https {
    connector: TlsConnector,
    /// Every certificate is accepted.
    pub insecure: bool,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Https")
            .field("insecure", &self.insecure)
            .finish_non_exhaustive()
    }
}

impl Https {
    /// Trusts the Mozilla roots, or only the authorities in `ca_file`, or (`insecure`) anyone.
    pub fn new(ca_file: Option<&Path>, insecure: bool) -> Result<Https, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions");
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            match ca_file {
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                Some(path) => {
                    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                        .and_then(|certs| certs.collect::<Result<_, _>>())
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    if certs.is_empty() {
                        return Err(format!("{} holds no CERTIFICATE block", path.display()));
                    }
                    for cert in certs {
                        roots.add(cert).map_err(|e| {
                            format!(
                                "{} holds a certificate rustls cannot use: {e}",
                                path.display()
                            )
                        })?;
                    }
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Https {
            connector: TlsConnector::from(Arc::new(config)),
            insecure,
        })
    }

    /// The TLS handshake with `host` over `tcp`; the error says what to change.
    pub async fn connect(
        &self,
        host: &str,
        tcp: tokio::net::TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("`{host}` is not a valid TLS server name"))?;
        self.connector.connect(name, tcp).await.map_err(|e| {
            let why = e.to_string();
            let hint = if why.contains("UnknownIssuer") {
                "; its certificate is not signed by an authority the probe trusts: set ca_file to the certificate of its CA"
            } else if why.contains("NotValidForName") {
                "; its certificate does not name this host: use a name it names in the URL"
            } else if why.contains("Expired") {
                "; its certificate has expired: renew it"
            } else {
                ""
            };
            format!("TLS with {host} failed: {why}{hint}")
        })
    }
}

/// Accepts every certificate, checking only the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
