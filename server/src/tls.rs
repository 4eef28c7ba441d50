//! TLS termination with rustls (ring). Certificates and keys are PEM files read
//! with `rustls-pki-types`; start-up refuses unreadable files, an empty chain and
//! a key that does not belong to the certificate, naming the file.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{InitError, TlsConfig};

/// The rustls server configuration for `tls` (cert and key both set).
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, InitError> {
    let bad = |m: String| InitError::Other(format!("server.tls: {m}"));
    let (Some(cert_file), Some(key_file)) = (&tls.cert_file, &tls.key_file) else {
        return Err(bad("cert_file and key_file must both be set".to_owned()));
    };
    let certs = read_certs(cert_file).map_err(bad)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| bad(format!("key_file {}: {e}", key_file.display())))?;
    let versions = tls.min_version.unwrap_or_default().and_newer();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(format!(
                "{} and {} do not form a usable certificate and key: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    // HTTP/1.1 only, like the plaintext listener.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cert_file {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert_file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}
