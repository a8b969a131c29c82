//! TLS of the listener (`[tls]`): the certificate and key files become a rustls acceptor whose
//! certificate can be replaced while the node runs ([`Tls::reload`], on SIGHUP in
//! `herald serve`). Each handshake asks the resolver for the current certificate, so a reload
//! changes what new connections see and leaves established ones as they are.

use crate::config::TlsConfig;
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or not PEM of the expected kind.
    #[error("{}: {message}", path.display())]
    File {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The key is of an unsupported type or does not belong to the certificate.
    #[error("{} with {}: {source}", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// `[tls]` names no files.
    #[error("tls.cert_file and tls.key_file are not set")]
    NotConfigured,
}

/// The listener's TLS: an acceptor and the certificate it presents, replaceable in place.
pub struct Tls {
    /// Handshakes of new connections; shares `resolver`.
    acceptor: TlsAcceptor,
    /// The certificate every new handshake gets.
    resolver: Arc<CurrentCert>,
}

impl Tls {
    /// Loads `[tls]`'s files; `None` when TLS is not configured.
    pub fn from_config(config: &TlsConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Tls::from_files(cert, key).map(|t| Some(Arc::new(t))),
            (None, None) => Ok(None),
            _ => Err(TlsError::NotConfigured),
        }
    }

    /// Loads a certificate chain and its key from PEM files.
    pub fn from_files(cert_file: &Path, key_file: &Path) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let files = CertFiles { cert: cert_file.to_path_buf(), key: key_file.to_path_buf() };
        let current = RwLock::new(Arc::new(files.load(&provider)?));
        let resolver = Arc::new(CurrentCert { files, provider: provider.clone(), current });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Pair {
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // The listener speaks HTTP/1.1 only: a client offering h2 must not pick it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), resolver })
    }

    /// Reads the files again and presents the new certificate to connections from now on. On
    /// an error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = self.resolver.files.load(&self.resolver.provider)?;
        *self.resolver.current.write() = Arc::new(loaded);
        Ok(())
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The certificate file, for log lines.
    pub fn cert_file(&self) -> &Path {
        &self.resolver.files.cert
    }
}

/// Where the certificate and key are read from.
#[derive(Debug)]
struct CertFiles {
    /// PEM certificate chain, leaf first.
    cert: PathBuf,
    /// PEM private key.
    key: PathBuf,
}

impl CertFiles {
    fn load(&self, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let bad = |path: &Path, message: String| TlsError::File { path: path.into(), message };
        let chain = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| bad(&self.cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(bad(&self.cert, "no CERTIFICATE in the file".into()));
        }
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| bad(&self.key, e.to_string()))?;
        CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }
}

/// Hands every handshake the certificate loaded last.
#[derive(Debug)]
struct CurrentCert {
    /// Read again by [`Tls::reload`].
    files: CertFiles,
    /// Parses the private key.
    provider: Arc<CryptoProvider>,
    /// Swapped whole by a reload; a handshake clones the `Arc` and holds the lock no longer.
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}
