//! TLS to `https://` upstreams: the system's trusted roots (OpenSSL's, as the Kafka client
//! and ingest's forecast polling use), plus the CAs of `--upstream-ca-file` for upstreams
//! signed by a private CA.

use std::path::{Path, PathBuf};

/// Why the upstream TLS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read.
    #[error("reading the upstream CA file {file}: {source}")]
    Read {
        /// The file named by `--upstream-ca-file`.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA file holds no certificate, or one that does not parse.
    #[error(
        "the upstream CA file {file} must hold one or more PEM certificates (-----BEGIN CERTIFICATE-----): {detail}"
    )]
    Certificate {
        /// The file named by `--upstream-ca-file`.
        file: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// OpenSSL refused the configuration.
    #[error("building the upstream TLS client: {0}")]
    Build(#[from] native_tls::Error),
}

/// The TLS client for upstreams: system roots, plus every certificate in `ca_file`.
pub fn upstream_tls(ca_file: Option<&Path>) -> Result<tokio_native_tls::TlsConnector, TlsError> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(file) = ca_file {
        let pem = std::fs::read(file).map_err(|source| TlsError::Read {
            file: file.into(),
            source,
        })?;
        let bad = |detail: String| TlsError::Certificate {
            file: file.into(),
            detail,
        };
        let certificates =
            openssl::x509::X509::stack_from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        if certificates.is_empty() {
            return Err(bad("no certificate found".into()));
        }
        for c in certificates {
            let der = c.to_der().map_err(|e| bad(e.to_string()))?;
            builder.add_root_certificate(
                native_tls::Certificate::from_der(&der).map_err(|e| bad(e.to_string()))?,
            );
        }
    }
    Ok(builder.build()?.into())
}
