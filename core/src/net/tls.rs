//! `wss://` and `https://`: the certificate and key are read by the worker at start and on
//! reload (realtime.ssl_cert_file / ssl_key_file, else PostgreSQL's own), and every new
//! connection is accepted with the configuration current when it arrives.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use tokio_rustls::rustls::{self, crypto::ring::default_provider, ServerConfig};

pub use tokio_rustls::TlsAcceptor;

/// A TLS acceptor for the PEM certificate chain and private key in these files.
pub fn acceptor(cert_file: &str, key_file: &str) -> Result<TlsAcceptor, String> {
    let open = |path: &str, what: &str| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| format!("could not open {what} file \"{path}\": {e}"))
    };
    let certs = rustls_pemfile::certs(&mut open(cert_file, "certificate")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("could not read certificate file \"{cert_file}\": {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in \"{cert_file}\""));
    }
    let key = rustls_pemfile::private_key(&mut open(key_file, "private key")?)
        .map_err(|e| format!("could not read private key file \"{key_file}\": {e}"))?
        .ok_or_else(|| format!("no private key in \"{key_file}\""))?;
    let config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e: rustls::Error| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate \"{cert_file}\" and key \"{key_file}\": {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
