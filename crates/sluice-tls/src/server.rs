//! TLS termination with rustls: certificates chosen by SNI (exact names, then wildcards, then the
//! default), TLS 1.2 and 1.3 only, ALPN for h2 and http/1.1, session resumption (a stateful cache
//! and rotating ticket keys), optional client certificates, and certificates reloaded from disk
//! when their files change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

/// A certificate and its key, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A listener's TLS settings, validated.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Certificates; the first is served when no name matches.
    pub certificates: Vec<CertificatePaths>,
    /// CA bundle that client certificates must chain to, when clients must (or may) present one.
    pub client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (otherwise it is optional but verified).
    pub client_auth_required: bool,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<Vec<u8>>,
    /// Sessions kept for stateful resumption.
    pub session_cache: usize,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
}

/// A certificate could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("the key in {key} does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
    },
}

/// The crypto provider: ring, with rustls's safe defaults.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key, checked to belong together.
pub(crate) fn load_certified_key(paths: &CertificatePaths) -> Result<Arc<CertifiedKey>, TlsError> {
    load_certificate(paths).map(|loaded| loaded.key)
}

/// One loaded certificate with the names it serves.
struct LoadedCertificate {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// Reads a certificate chain and its key, checks that they belong together, and warns when the
/// certificate has expired or is not yet valid.
fn load_certificate(paths: &CertificatePaths) -> Result<LoadedCertificate, TlsError> {
    let cert_text = paths.cert.display().to_string();
    let key_text = paths.key.display().to_string();
    let read_error = |path: &Path, err: &dyn std::fmt::Display| TlsError::Read {
        path: path.display().to_string(),
        reason: err.to_string(),
    };
    if !paths.cert.exists() {
        return Err(read_error(&paths.cert, &"no such file"));
    }
    if !paths.key.exists() {
        return Err(read_error(&paths.key, &"no such file"));
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .map_err(|err| read_error(&paths.cert, &err))?
        .collect::<Result<_, _>>()
        .map_err(|err| TlsError::Invalid { path: cert_text.clone(), reason: err.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Invalid { path: cert_text, reason: "no PEM certificate in the file".into() });
    }
    let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|err| TlsError::Invalid {
        path: key_text.clone(),
        reason: format!("no usable PEM private key: {err}"),
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|err| match err {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch { cert: cert_text.clone(), key: key_text.clone() },
        other => TlsError::Invalid { path: key_text.clone(), reason: other.to_string() },
    })?;

    let (_, parsed) = x509_parser::parse_x509_certificate(&certified.cert[0])
        .map_err(|err| TlsError::Invalid { path: cert_text.clone(), reason: err.to_string() })?;
    let validity = parsed.validity();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|since| since.as_secs() as i64).unwrap_or(0);
    if validity.not_after.timestamp() < now {
        tracing::warn!(certificate = %cert_text, not_after = %validity.not_after, "certificate has expired");
    } else if validity.not_before.timestamp() > now {
        tracing::warn!(certificate = %cert_text, not_before = %validity.not_before, "certificate is not valid yet");
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        // Certificates without SANs name their host in the subject's common name.
        names
            .extend(parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    Ok(LoadedCertificate { key: Arc::new(certified), names })
}

/// The certificates of one listener, by the names they serve.
struct CertificateSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl CertificateSet {
    fn load(certificates: &[CertificatePaths]) -> Result<Self, TlsError> {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for paths in certificates {
            let loaded = load_certificate(paths)?;
            for name in &loaded.names {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.entry(suffix.to_owned()).or_insert_with(|| loaded.key.clone()),
                    None => exact.entry(name.clone()).or_insert_with(|| loaded.key.clone()),
                };
            }
            default.get_or_insert(loaded.key);
        }
        let default = default
            .ok_or_else(|| TlsError::Invalid { path: String::new(), reason: "no certificate configured".into() })?;
        Ok(Self { exact, wildcard, default })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else { return self.default.clone() };
        if let Some(key) = self.exact.get(&name) {
            return key.clone();
        }
        // A wildcard covers exactly one label: *.example.com serves a.example.com, not a.b.example.com.
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return key.clone();
        }
        self.default.clone()
    }
}

/// Chooses the certificate for each handshake from the current set, which reloads replace.
#[derive(Clone)]
pub struct CertificateResolver {
    current: Arc<ArcSwap<CertificateSet>>,
}

impl std::fmt::Debug for CertificateResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()))
    }
}

/// Checks that every certificate of `settings` loads (for the configuration's validation).
pub fn check(settings: &TlsSettings) -> Result<(), TlsError> {
    CertificateSet::load(&settings.certificates).map(|_| ())?;
    if let Some(ca) = &settings.client_ca {
        roots_from_pem(ca)?;
    }
    Ok(())
}

/// The CA certificates of a PEM bundle, as trust roots.
pub(crate) fn roots_from_pem(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca)
        .map_err(|err| TlsError::Read { path: ca.display().to_string(), reason: err.to_string() })?;
    for certificate in certificates {
        let certificate =
            certificate.map_err(|err| TlsError::Invalid { path: ca.display().to_string(), reason: err.to_string() })?;
        roots
            .add(certificate)
            .map_err(|err| TlsError::Invalid { path: ca.display().to_string(), reason: err.to_string() })?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            path: ca.display().to_string(),
            reason: "no CA certificate in the file".into(),
        });
    }
    Ok(roots)
}

/// The rustls configuration of a listener, and the resolver that reloads replace certificates in.
pub fn server_config(settings: &TlsSettings) -> Result<(Arc<ServerConfig>, CertificateResolver), TlsError> {
    let resolver =
        CertificateResolver { current: Arc::new(ArcSwap::from_pointee(CertificateSet::load(&settings.certificates)?)) };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|err| TlsError::Invalid { path: String::new(), reason: err.to_string() })?;
    let builder = match &settings.client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots_from_pem(ca)?), provider());
            let verifier = if settings.client_auth_required { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier
                .build()
                .map_err(|err| TlsError::Invalid { path: ca.display().to_string(), reason: err.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver.clone()));
    config.alpn_protocols = settings.alpn.clone();
    config.session_storage = ServerSessionMemoryCache::new(settings.session_cache.max(1));
    // Ticket keys rotate on their own (every six hours); a ticket stays valid across one rotation.
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|err| TlsError::Invalid { path: String::new(), reason: err.to_string() })?;
    Ok((Arc::new(config), resolver))
}

/// The TLS settings of a listener's HTTP/3 side: the same certificates through `resolver` (so a
/// reload reaches QUIC handshakes too), TLS 1.3 only as QUIC requires, ALPN `h3`, and no 0-RTT
/// (early data could be replayed). Client certificates are not offered over QUIC.
pub fn quic_server_config(
    settings: &TlsSettings,
    resolver: &CertificateResolver,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| TlsError::Invalid { path: String::new(), reason: err.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver.clone()));
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = 0;
    config.session_storage = ServerSessionMemoryCache::new(settings.session_cache.max(1));
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|err| TlsError::Invalid { path: String::new(), reason: err.to_string() })?;
    Ok(Arc::new(config))
}

/// Watches the certificate files of a listener and swaps in a new set when any changes; a set
/// that fails to load is logged and the old one keeps serving.
pub fn spawn_reloader(
    listener: Arc<str>,
    settings: TlsSettings,
    resolver: CertificateResolver,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut seen = modification_times(&settings.certificates);
        let mut interval = tokio::time::interval(settings.reload_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            let now = modification_times(&settings.certificates);
            if now == seen {
                continue;
            }
            match CertificateSet::load(&settings.certificates) {
                Ok(set) => {
                    resolver.current.store(Arc::new(set));
                    seen = now;
                    tracing::info!(listener = %listener, "certificates reloaded");
                }
                Err(error) => {
                    // Files are often replaced one at a time: try again on the next change.
                    seen = now;
                    tracing::error!(listener = %listener, error = %error, "certificate reload failed; the previous certificates keep serving");
                }
            }
        }
    });
}

fn modification_times(certificates: &[CertificatePaths]) -> Vec<Option<SystemTime>> {
    certificates
        .iter()
        .flat_map(|paths| [&paths.cert, &paths.key])
        .map(|path| std::fs::metadata(path).and_then(|meta| meta.modified()).ok())
        .collect()
}

/// The verified client certificate's identity: its first DNS or URI SAN, else its subject CN.
pub fn client_identity(certificates: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
    let leaf = certificates?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).ok()?;
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(name)
                | x509_parser::extensions::GeneralName::URI(name) => {
                    return Some(Arc::from(*name));
                }
                _ => {}
            }
        }
    }
    parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(Arc::from)
}
