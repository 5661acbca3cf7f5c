//! TLS to upstream servers: the server's certificate verified against the system's roots or a
//! configured CA, SNI from the server's address or a configured name, an optional client
//! certificate, and ALPN offering h2 so that servers that speak it get HTTP/2.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};

use crate::server::{CertificatePaths, TlsError, load_certified_key, provider, roots_from_pem};

/// An upstream's TLS settings, as configured.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsSettings {
    /// CA bundle the servers' certificates must chain to; the system's roots when absent.
    pub ca: Option<PathBuf>,
    /// Name sent in SNI and checked against the certificate, instead of each server's host.
    pub server_name: Option<String>,
    /// Certificate and key presented to servers that ask for one.
    pub client_certificate: Option<CertificatePaths>,
    /// Whether to offer h2 in ALPN (http/1.1 is always offered).
    pub offer_h2: bool,
}

/// What the connector needs: the rustls configuration and the SNI override.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Roots, client certificate and protocol versions (ALPN is set by the connector).
    pub config: ClientConfig,
    /// SNI and verification name for every server, when configured.
    pub server_name: Option<ServerName<'static>>,
    /// Offer h2 in ALPN.
    pub offer_h2: bool,
}

impl UpstreamTls {
    /// Loads the CA bundle (or the system's roots) and the client certificate.
    pub fn load(settings: &UpstreamTlsSettings) -> Result<Self, TlsError> {
        let roots = match &settings.ca {
            Some(ca) => roots_from_pem(ca)?,
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|err| TlsError::Invalid { path: "upstream TLS".into(), reason: err.to_string() })?
            .with_root_certificates(roots);
        let config = match &settings.client_certificate {
            Some(paths) => {
                let key = load_certified_key(paths)?;
                builder.with_client_cert_resolver(Arc::new(FixedClientCertificate(key)))
            }
            None => builder.with_no_client_auth(),
        };
        let server_name = match &settings.server_name {
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|err| TlsError::Invalid {
                path: "server_name".into(),
                reason: format!("{name:?} is not a DNS name or IP address: {err}"),
            })?),
            None => None,
        };
        Ok(Self { config, server_name, offer_h2: settings.offer_h2 })
    }
}

/// The operating system's trusted roots (Debian: `/etc/ssl/certs`), loaded once per process.
fn system_roots() -> Result<RootCertStore, TlsError> {
    // Process-wide on purpose: it is the operating system's store, the same for every runtime in
    // the process, and reading it takes tens of milliseconds.
    static SYSTEM: std::sync::OnceLock<Result<RootCertStore, String>> = std::sync::OnceLock::new();
    let loaded = SYSTEM.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(error = %error, "skipping a system root certificate that cannot be read");
        }
        let mut roots = RootCertStore::empty();
        let (_added, ignored) = roots.add_parsable_certificates(found.certs);
        if ignored > 0 {
            tracing::warn!(ignored, "skipped system root certificates that cannot be parsed");
        }
        if roots.is_empty() {
            return Err("no system root certificates found: set `ca` for the upstream".to_owned());
        }
        Ok(roots)
    });
    loaded.clone().map_err(|reason| TlsError::Invalid { path: "system roots".into(), reason })
}

/// Presents the one configured certificate to every server that asks.
#[derive(Debug)]
struct FixedClientCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCertificate {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
