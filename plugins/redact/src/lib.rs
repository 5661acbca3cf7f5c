//! The `redact` filter: response-body data-loss prevention. It finds card numbers, SSNs,
//! e-mail addresses and API keys in text responses and masks them as they stream, or blocks the
//! whole response.
//!
//! Detection is in [`detect`], chunk-boundary handling in [`stream`]; both are tested natively.

pub mod detect;
pub mod stream;

use detect::{Detector, Kind};
use serde::Deserialize;
use sluice_sdk::{BodyAction, Decision, Filter, LocalResponse, Phases, Request, Response, export_filter, log, metrics};
use stream::{Counts, MaskStyle, Scanner};

/// The filter's configuration.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What to look for: `card`, `ssn`, `email`, `api-key`.
    pub detect: Vec<Kind>,
    /// Extra patterns (regular expressions).
    pub patterns: Vec<PatternConfig>,
    /// `mask` (stream, replacing findings) or `block` (buffer, and answer `block_status`
    /// instead of a response with findings).
    pub action: Action,
    /// The mask character.
    pub mask: char,
    /// Card digits left visible at the end.
    pub card_keep_last: usize,
    /// Content types scanned (prefixes, such as `text/`).
    pub content_types: Vec<String>,
    /// The status of a blocked response.
    pub block_status: u16,
    /// Ask the upstream for uncompressed bodies (compressed ones cannot be scanned).
    pub strip_accept_encoding: bool,
    /// The longest match a custom pattern can make, in bytes (the hold-back across chunks).
    pub max_match_bytes: usize,
}

/// A custom pattern.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatternConfig {
    /// Its name, in logs and metrics.
    pub name: String,
    /// A regular expression (Rust `regex` syntax).
    pub regex: String,
}

/// What happens to a response with findings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Mask the findings, streaming.
    Mask,
    /// Replace the response.
    Block,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            detect: vec![Kind::Card, Kind::Ssn, Kind::Email, Kind::ApiKey],
            patterns: Vec::new(),
            action: Action::Mask,
            mask: '*',
            card_keep_last: 4,
            content_types: [
                "text/",
                "application/json",
                "application/xml",
                "application/javascript",
                "application/x-ndjson",
            ]
            .map(String::from)
            .to_vec(),
            block_status: 502,
            strip_accept_encoding: true,
            max_match_bytes: detect::LONGEST_BUILT_IN_MATCH,
        }
    }
}

/// One instance: detectors, settings, and the state of the response in flight.
pub struct Redact {
    detectors: Vec<Detector>,
    config: Config,
    style: MaskStyle,
    /// The response in flight: a scanner when its body is scanned.
    scanner: Option<Scanner>,
    counts: Counts,
}

impl Filter for Redact {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.detect.contains(&Kind::Custom) {
            return Err("detect: custom patterns go in `patterns`".into());
        }
        let mut detectors: Vec<Detector> = config.detect.iter().map(|kind| Detector::built_in(*kind)).collect();
        for pattern in &config.patterns {
            detectors.push(Detector::custom(&pattern.name, &pattern.regex)?);
        }
        if detectors.is_empty() {
            return Err("nothing to detect: list detect kinds or patterns".into());
        }
        if !config.mask.is_ascii() || config.mask.is_ascii_control() {
            return Err("mask must be one printable ASCII character (masks keep the body's length)".into());
        }
        if !(400..=599).contains(&config.block_status) {
            return Err("block_status must be 400 to 599".into());
        }
        let style = MaskStyle { mask: config.mask as u8, card_keep_last: config.card_keep_last };
        Ok(Self { detectors, style, config, scanner: None, counts: Counts::new() })
    }

    fn phases(&self) -> Phases {
        let body = match self.config.action {
            Action::Mask => Phases::RESPONSE_BODY,
            Action::Block => Phases::RESPONSE_BODY | Phases::BUFFER_RESPONSE_BODY,
        };
        Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS | body
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        if self.config.strip_accept_encoding {
            request.remove_header("accept-encoding");
        }
        Decision::Continue
    }

    fn on_response(&mut self, request: &Request, response: &Response) -> Decision {
        self.counts.clear();
        let content_type = response.header_str("content-type").unwrap_or_default().to_ascii_lowercase();
        let scanned = self.config.content_types.iter().any(|prefix| content_type.starts_with(prefix.as_str()));
        let encoding = response.header_str("content-encoding").unwrap_or_default();
        self.scanner = if !scanned {
            None
        } else if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            log::warn(&format!(
                "redact: {encoding}-encoded response not scanned (request {}); keep strip_accept_encoding on",
                request.request_id()
            ));
            None
        } else {
            Some(Scanner::new(self.config.max_match_bytes))
        };
        Decision::Continue
    }

    fn on_response_body(
        &mut self,
        request: &Request,
        _response: &Response,
        body: Vec<u8>,
        end_of_stream: bool,
    ) -> BodyAction {
        let Some(scanner) = &mut self.scanner else { return BodyAction::Pass };
        let out = scanner.push(&self.detectors, self.style, &body, end_of_stream, &mut self.counts);
        if end_of_stream {
            self.scanner = None;
            self.report(request);
        }
        match self.config.action {
            Action::Block if !self.counts.is_empty() => BodyAction::Respond(
                LocalResponse::new(self.config.block_status).header("content-type", "text/plain; charset=utf-8").body(
                    format!("response withheld: it contained sensitive data (request {})\n", request.request_id()),
                ),
            ),
            _ if out == body => BodyAction::Pass,
            _ => BodyAction::Replace(out),
        }
    }
}

impl Redact {
    /// One log line and metric per kind found in the response.
    fn report(&self, request: &Request) {
        if self.counts.is_empty() {
            return;
        }
        let action = match self.config.action {
            Action::Mask => "masked",
            Action::Block => "blocked",
        };
        let summary: Vec<String> = self.counts.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
        log::info(&format!("redact: {action} {} in the response to {}", summary.join(", "), request.path()));
        for (kind, count) in &self.counts {
            metrics::counter_add("redact_findings_total", &[("kind", kind), ("action", action)], *count as u64);
        }
    }
}

export_filter!(Redact);
