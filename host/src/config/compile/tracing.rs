//! `[tracing]`: where spans are exported and what share of requests is recorded.

use super::*;
use crate::config::file::TracingSection;
use crate::telemetry::traces::{OtlpProtocol, Tracing, TracingSettings};

impl Compiler<'_> {
    /// `[tracing]`; the running tracer (its export thread and connections) is kept while the
    /// section stays the same.
    pub(super) fn tracing(
        &self,
        written: &Spanned<TracingSection>,
        previous: Option<&Snapshot>,
    ) -> Result<Arc<Tracing>, ConfigError> {
        let section = written.get_ref();
        let protocol = match section.protocol.get_ref().as_str() {
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            "grpc" => OtlpProtocol::Grpc,
            other => {
                return Err(self.spanned_error(
                    &section.protocol,
                    "tracing.protocol",
                    format!("unknown protocol {other:?} (use \"http/protobuf\" or \"grpc\")"),
                ));
            }
        };
        let endpoint = section.endpoint.get_ref();
        let uri: http::Uri = endpoint
            .parse()
            .ok()
            .filter(|uri: &http::Uri| matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some())
            .ok_or_else(|| {
                self.spanned_error(&section.endpoint, "tracing.endpoint", "must be an http:// or https:// URL")
            })?;
        // OTLP/HTTP's traces path is added to a bare collector address, as the OpenTelemetry
        // environment variables do.
        let endpoint = match (protocol, uri.path()) {
            (OtlpProtocol::HttpProtobuf, "" | "/") => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
            _ => endpoint.clone(),
        };
        let ratio = *section.sampling_ratio.get_ref();
        if !(0.0..=1.0).contains(&ratio) {
            return Err(self.spanned_error(&section.sampling_ratio, "tracing.sampling_ratio", "must be 0 to 1"));
        }
        if section.service_name.is_empty() {
            return Err(self.spanned_error(written, "tracing.service_name", "must not be empty"));
        }
        if section.export_timeout.0.is_zero() || section.export_interval.0.is_zero() {
            return Err(self.spanned_error(
                written,
                "tracing.export_timeout",
                "export_timeout and export_interval must be more than zero",
            ));
        }
        if !(1..=1_000_000).contains(&section.max_queue) || !(1..=100_000).contains(&section.max_batch) {
            return Err(self.spanned_error(
                written,
                "tracing.max_queue",
                "max_queue must be 1 to 1000000 and max_batch 1 to 100000",
            ));
        }
        for (name, value) in &section.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || http::HeaderValue::try_from(value).is_err() {
                return Err(self.spanned_error(
                    written,
                    &format!("tracing.headers.{name}"),
                    "is not a valid header name and value",
                ));
            }
        }
        let settings = TracingSettings {
            endpoint,
            protocol,
            sampling_ratio: ratio,
            service_name: section.service_name.clone(),
            headers: section.headers.iter().map(|(name, value)| (name.clone(), value.clone())).collect(),
            export_timeout: section.export_timeout.0,
            export_interval: section.export_interval.0,
            max_queue: section.max_queue,
            max_batch: section.max_batch,
        };
        if let Some(running) =
            previous.and_then(|previous| previous.tracing.as_ref()).filter(|running| *running.settings() == settings)
        {
            return Ok(running.clone());
        }
        Tracing::new(settings)
            .map(Arc::new)
            .map_err(|message| self.spanned_error(&section.endpoint, "tracing.endpoint", message))
    }
}
