//! TLS for loadgen's MQTT connections: a rustls client configuration (ring provider,
//! TLS 1.2 and 1.3) that trusts the CA certificates of one PEM file, and the server name
//! every connection verifies the certificate against. The connections drive the
//! [`rustls::ClientConnection`] it makes themselves (sans-IO, see the scenarios'
//! `lean_conn`), so this module holds no socket.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Why the TLS client could not be set up; each names what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no usable PEM certificate.
    #[error("reading CA certificates from {path}: {reason}")]
    Ca { path: String, reason: String },
    /// The server name is neither a DNS name nor an IP address.
    #[error("{name:?} is not a valid TLS server name (a DNS name or an IP address)")]
    ServerName { name: String },
    /// rustls refused the settings.
    #[error("building the TLS client configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What every TLS connection of a process shares: the configuration (roots, session
/// cache) and the name the server's certificate must carry.
#[derive(Debug, Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts every certificate in the PEM file `ca_path`; verifies servers as `server_name`.
    pub fn from_ca_file(ca_path: &Path, server_name: &str) -> Result<TlsClient, TlsSetupError> {
        let ca_error = |reason: String| TlsSetupError::Ca { path: ca_path.display().to_string(), reason };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_path)
            .and_then(|iter| iter.collect())
            .map_err(|e| ca_error(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        let (added, _ignored) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(ca_error("no usable certificate".into()));
        }
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsSetupError::ServerName { name: server_name.to_string() })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient { config: Arc::new(config), server_name })
    }

    /// A new client connection, handshake not started (its first flight is queued).
    pub fn connection(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(self.config.clone(), self.server_name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_files_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("loadgen-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let err = TlsClient::from_ca_file(&missing, "localhost").unwrap_err();
        assert!(matches!(err, TlsSetupError::Ca { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsClient::from_ca_file(&empty, "localhost").unwrap_err();
        assert!(matches!(err, TlsSetupError::Ca { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
