//! The `waf` filter: a web application firewall in the spirit of the OWASP Core Rule Set.
//!
//! Requests are taken apart into targets ([`request`]), normalised ([`normalize`]), matched
//! against the rule set ([`rules`]) and scored ([`engine`]); all of it is tested natively,
//! including against the attack and benign corpora under `tests/corpus`. This file connects the
//! engine to the request: the head is scored first, the body (when inspected) adds to the score.

pub mod engine;
pub mod normalize;
pub mod request;
pub mod rules;
pub mod seclang;

use engine::{Assessment, Config, Engine, Mode};
use request::{Facts, Inspected};
use sluice_sdk::{BodyAction, Decision, Filter, LocalResponse, Phases, Request, export_filter, log, metrics};

/// One instance: the engine, and the head's assessment while its body is awaited.
pub struct Waf {
    engine: Engine,
    pending: Option<(Facts, Assessment)>,
}

impl Filter for Waf {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self { engine: Engine::new(config)?, pending: None })
    }

    fn phases(&self) -> Phases {
        if self.engine.config.inspect_body {
            Phases::REQUEST_HEADERS | Phases::REQUEST_BODY
        } else {
            Phases::REQUEST_HEADERS
        }
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        self.pending = None;
        let path_with_query = request.path_with_query();
        let inspected =
            Inspected::from_head(&request.method(), &path_with_query, &request.authority(), &request.headers());
        let assessment = self.engine.assess(&inspected, &path_with_query);
        if self.engine.blocks(&assessment) {
            return Decision::Respond(self.verdict(request, &assessment));
        }
        let has_body = inspected.facts.content_length.is_some_and(|length| length > 0)
            || request.header("transfer-encoding").is_some();
        if self.engine.config.inspect_body && has_body {
            self.pending = Some((inspected.facts, assessment));
        } else {
            self.pass(request, &assessment);
        }
        Decision::Continue
    }

    fn on_request_body(&mut self, request: &Request, body: Vec<u8>, end_of_stream: bool) -> BodyAction {
        let Some((facts, mut assessment)) = self.pending.take() else { return BodyAction::Pass };
        let mut inspected = Inspected::for_body(&facts);
        inspected.add_body(&body);
        assessment.merge(self.engine.assess(&inspected, &request.path_with_query()));
        if self.engine.blocks(&assessment) {
            return BodyAction::Respond(self.verdict(request, &assessment));
        }
        if !end_of_stream {
            // The host delivers request bodies whole; keep scoring if that ever changes.
            self.pending = Some((facts, assessment));
            return BodyAction::Pass;
        }
        self.pass(request, &assessment);
        BodyAction::Pass
    }
}

impl Waf {
    fn describe(assessment: &Assessment) -> String {
        let hits: Vec<String> = assessment
            .hits
            .iter()
            .map(|hit| format!("{} {} ({}, +{})", hit.rule, hit.message, hit.target, hit.score))
            .collect();
        format!("score {}: {}", assessment.score, hits.join("; "))
    }

    fn count(&self, assessment: &Assessment, action: &str) {
        metrics::counter_add("waf_requests_total", &[("action", action)], 1);
        for hit in &assessment.hits {
            metrics::counter_add("waf_rule_hits_total", &[("rule", &hit.rule.to_string())], 1);
        }
    }

    /// A request the engine let through: note what matched, if anything.
    fn pass(&self, request: &Request, assessment: &Assessment) {
        if let Some(header) = &self.engine.config.score_header {
            let _ = request.set_header(header, assessment.score.to_string());
        }
        if assessment.hits.is_empty() {
            self.count(assessment, "pass");
            return;
        }
        let detected =
            self.engine.config.mode == Mode::Detect && assessment.score >= self.engine.config.anomaly_threshold;
        let action = if detected { "detected" } else { "below_threshold" };
        let line = format!("waf: {action} {} {}: {}", request.method(), request.path(), Self::describe(assessment));
        // What would have been blocked is worth a warning; lone low-score hits (an IP as Host)
        // would flood the log at that level.
        if detected {
            log::warn(&line)
        } else {
            log::debug(&line)
        }
        self.count(assessment, action);
    }

    /// The 403 for a blocked request, logged with the rules that matched; a repeat offender is
    /// banned when the config says so.
    fn verdict(&self, request: &Request, assessment: &Assessment) -> LocalResponse {
        log::warn(&format!("waf: blocked {} {}: {}", request.method(), request.path(), Self::describe(assessment)));
        self.count(assessment, "blocked");
        if let Some(policy) = &self.engine.config.ban {
            let reason = format!("waf: {} blocked requests", policy.after);
            match policy.offence("waf", &request.client_ip(), &reason) {
                Ok(true) => {
                    log::warn(&format!("waf: banned {} for {} after {reason}", request.client_ip(), policy.duration));
                    metrics::counter_add("waf_bans_total", &[], 1);
                }
                Ok(false) => {}
                Err(error) => log::warn(&format!("waf: could not count the offence or ban the client: {error}")),
            }
        }
        LocalResponse::new(403).header("content-type", "text/plain; charset=utf-8").body(format!(
            "Forbidden: the request was blocked by the web application firewall (request {}).\n",
            request.request_id()
        ))
    }
}

export_filter!(Waf);
