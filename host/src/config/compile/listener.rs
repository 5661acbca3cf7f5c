//! `[[listener]]`: where Sluice accepts connections, and the TLS each listener terminates.

use super::*;

impl Compiler<'_> {
    /// Every `[[listener]]`: at least one, names unique, TLS or an HTTPS redirect but not both.
    pub(super) fn listeners(&self, file: &ConfigFile) -> Result<Vec<ListenerSpec>, ConfigError> {
        if file.listener.is_empty() {
            return Err(self.error(None, "listener", "at least one [[listener]] is required"));
        }
        let mut listeners = Vec::new();
        let mut listener_names = HashSet::new();
        for (index, listener) in file.listener.iter().enumerate() {
            let key = format!("listener[{index}]");
            let bind = self.socket_addr(&listener.get_ref().bind, &format!("{key}.bind"))?;
            let name: Arc<str> = listener.get_ref().name.clone().unwrap_or_else(|| bind.to_string()).into();
            if !listener_names.insert(name.clone()) {
                return Err(self.error(Some(listener.span()), &key, format!("listener name {name:?} is used twice")));
            }
            let tls = match &listener.get_ref().tls {
                Some(tls) => Some(self.tls(&key, tls)?),
                None => None,
            };
            let hsts = listener.get_ref().tls.as_ref().and_then(|tls| tls.get_ref().hsts.as_ref()).map(|hsts| {
                let mut value = format!("max-age={}", hsts.max_age.0.as_secs());
                if hsts.include_subdomains {
                    value.push_str("; includeSubDomains");
                }
                if hsts.preload {
                    value.push_str("; preload");
                }
                HeaderValue::try_from(value).expect("digits and ASCII words form a valid header value")
            });
            let redirect_to_https = listener.get_ref().redirect_to_https;
            if redirect_to_https.is_some() && tls.is_some() {
                return Err(self.error(
                    None,
                    &format!("{key}.redirect_to_https"),
                    "is for plain HTTP listeners; this one has `tls`",
                ));
            }
            let access = self.access_rules(&key, listener.get_ref().access.as_ref(), None, false)?;
            let http3 = self.http3(&key, listener.get_ref().http3.as_ref(), tls.as_ref())?;
            listeners.push(ListenerSpec { name, bind, tls, hsts, redirect_to_https, access, http3 });
        }
        Ok(listeners)
    }

    /// A listener's `http3`: only beside TLS (QUIC is always encrypted), and not with client
    /// certificates, which its HTTP/3 side does not ask for.
    fn http3(
        &self,
        key: &str,
        written: Option<&Spanned<Http3Field>>,
        tls: Option<&TlsSettings>,
    ) -> Result<Option<Http3Settings>, ConfigError> {
        let Some(written) = written else { return Ok(None) };
        let section = match written.get_ref() {
            Http3Field::Switch(false) => return Ok(None),
            Http3Field::Switch(true) => Http3Section::default(),
            Http3Field::Settings(section) => {
                Http3Section { alt_svc_max_age: section.alt_svc_max_age, max_streams: section.max_streams }
            }
        };
        let key = format!("{key}.http3");
        let Some(tls) = tls else {
            return Err(self.spanned_error(written, &key, "needs `tls` on the listener: HTTP/3 is always encrypted"));
        };
        if tls.client_ca.is_some() {
            return Err(self.spanned_error(
                written,
                &key,
                "is not offered with client certificates (`tls.client_ca`): its QUIC side does not ask for them",
            ));
        }
        if section.max_streams == 0 {
            return Err(self.spanned_error(written, &format!("{key}.max_streams"), "must be at least 1"));
        }
        Ok(Some(Http3Settings { alt_svc_max_age: section.alt_svc_max_age.0, max_streams: section.max_streams }))
    }

    pub(super) fn tls(&self, key: &str, written: &Spanned<TlsSection>) -> Result<TlsSettings, ConfigError> {
        let section = written.get_ref();
        if section.certificates.is_empty() {
            return Err(self.spanned_error(
                written,
                &format!("{key}.tls.certificates"),
                "at least one certificate is required",
            ));
        }
        let certificates: Vec<CertificatePaths> = section
            .certificates
            .iter()
            .map(|entry| CertificatePaths {
                cert: self.base_dir.join(entry.get_ref().cert.get_ref()),
                key: self.base_dir.join(entry.get_ref().key.get_ref()),
            })
            .collect();
        let alpn = section.alpn.iter().map(|protocol| protocol.as_bytes().to_vec()).collect();
        let settings = TlsSettings {
            certificates,
            client_ca: section.client_ca.as_ref().map(|ca| self.base_dir.join(ca.get_ref())),
            client_auth_required: section.client_auth_required,
            alpn,
            session_cache: section.session_cache,
            reload_interval: section.reload_interval.0.max(std::time::Duration::from_millis(100)),
        };
        if let Err(error) = tls::check(&settings) {
            // Point at the certificate entry the error is about, when it names a file of one.
            let message = error.to_string();
            let entry = section.certificates.iter().enumerate().find(|(_, entry)| {
                let written = entry.get_ref();
                message.contains(written.cert.get_ref().as_str()) || message.contains(written.key.get_ref().as_str())
            });
            return Err(match entry {
                Some((index, entry)) => self.spanned_error(entry, &format!("{key}.tls.certificates[{index}]"), message),
                None => self.spanned_error(written, &format!("{key}.tls"), message),
            });
        }
        Ok(settings)
    }
}
