//! The TLS acceptor of an `http` socket: the certificates of its entries, chosen by SNI.

use tokio_rustls::TlsAcceptor;

use super::config::Http;
use super::tls::{SniResolver, TlsError, load, server_config};

/// Builds the TLS acceptor of a socket whose entries have certificates: each entry's own for
/// its hostnames, the default entry's (or the first) for other names and clients without SNI.
pub fn tls_acceptor<'a>(
    entries: impl IntoIterator<Item = &'a Http>,
) -> Result<Option<TlsAcceptor>, TlsError> {
    let mut certs = Vec::new();
    let mut default = None;
    for entry in entries {
        let Some(files) = &entry.tls else { continue };
        let cert = load(files)?;
        if default.is_none() && (entry.default || entry.hostnames.is_empty()) {
            default = Some(cert.clone());
        }
        certs.push((entry.hostnames.clone(), cert));
    }
    let Some(first) = certs.first().map(|(_, c)| c.clone()) else {
        return Ok(None);
    };
    let resolver = SniResolver::new(certs, default.unwrap_or(first));
    Ok(Some(TlsAcceptor::from(server_config(resolver))))
}
