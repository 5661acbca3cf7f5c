//! The `waf` filter: a web application firewall with two engines side by side.
//!
//! The built-in rules: requests are taken apart into targets ([`request`]), normalised
//! ([`normalize`]), matched against the built-in rule set ([`rules`]) and scored ([`engine`]).
//! The SecLang engine ([`seclang`]) runs rule sets written for ModSecurity, the OWASP Core
//! Rule Set first of all, loaded from the filter's data files ([`rule_set`]). All of it is
//! tested natively, including against the corpora under `tests/corpus` and Debian's CRS. This
//! file connects the engines to the request: the head is inspected first (phase 1), the body
//! (when inspected) after (phase 2); either engine can block.

pub mod engine;
pub mod normalize;
pub mod request;
pub mod rule_set;
pub mod rules;
pub mod seclang;

use std::sync::Arc;

use engine::{Assessment, Config, Engine, Mode};
use request::{Facts, Inspected};
use seclang::RuleSet;
use seclang::eval::Transaction;
use seclang::input::RequestInput;
use sluice_sdk::{BodyAction, Decision, Filter, LocalResponse, Phases, Request, export_filter, log, metrics};

/// One instance: the engines, and what the head's inspection found while its body is awaited.
pub struct Waf {
    engine: Engine,
    rule_set: Option<Arc<RuleSet>>,
    pending: Option<(Facts, Assessment)>,
    transaction: Option<Transaction>,
}

impl Filter for Waf {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, String> {
        let files = std::mem::take(&mut config.files);
        let rule_set = match &config.rule_set {
            Some(rule_set) => {
                Some(rule_set::compile(rule_set, &files, config.paranoia_level, config.anomaly_threshold)?)
            }
            None if !files.is_empty() => return Err("files given but no rule_set loads them".into()),
            None => None,
        };
        if !config.builtin_rules && rule_set.is_none() {
            return Err("builtin_rules = false needs a rule_set".into());
        }
        Ok(Self { engine: Engine::new(config)?, rule_set, pending: None, transaction: None })
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
        self.transaction = None;
        let path_with_query = request.path_with_query();
        let headers = request.headers();
        let inspected = Inspected::from_head(&request.method(), &path_with_query, &request.authority(), &headers);
        let assessment = if self.engine.config.builtin_rules {
            self.engine.assess(&inspected, &path_with_query)
        } else {
            Assessment::default()
        };
        let has_body = inspected.facts.content_length.is_some_and(|length| length > 0)
            || request.header("transfer-encoding").is_some();
        let awaits_body = self.engine.config.inspect_body && has_body;
        if let Some(rule_set) = &self.rule_set {
            let mut input = RequestInput::from_head(&request.method(), &path_with_query, headers);
            input.remote_addr = request.client_ip();
            input.server_name = request.authority();
            input.unique_id = request.request_id();
            let mut transaction = Transaction::new(rule_set.clone(), input);
            transaction.run_phase(1);
            if !(awaits_body && transaction.wants_body()) {
                transaction.run_phase(2);
            }
            self.transaction = Some(transaction);
        }
        if self.blocks(&assessment) {
            return Decision::Respond(self.verdict(request, &assessment));
        }
        if awaits_body {
            self.pending = Some((inspected.facts, assessment));
        } else {
            self.pass(request, &assessment);
        }
        Decision::Continue
    }

    fn on_request_body(&mut self, request: &Request, body: Vec<u8>, end_of_stream: bool) -> BodyAction {
        let Some((facts, mut assessment)) = self.pending.take() else { return BodyAction::Pass };
        if self.engine.config.builtin_rules {
            let mut inspected = Inspected::for_body(&facts);
            inspected.add_body(&body);
            assessment.merge(self.engine.assess(&inspected, &request.path_with_query()));
        }
        if let Some(transaction) = &mut self.transaction
            && transaction.wants_body()
        {
            transaction.add_body(body);
            transaction.run_phase(2);
        }
        if self.blocks(&assessment) {
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
    /// Whether either engine blocks: the built-in score at its threshold, or a rule set's
    /// disruptive action (the CRS's blocking evaluation), in `block` mode.
    fn blocks(&self, assessment: &Assessment) -> bool {
        let rule_set_blocks = self.transaction.as_ref().is_some_and(|transaction| transaction.interruption.is_some());
        self.engine.blocks(assessment) || (self.engine.config.mode == Mode::Block && rule_set_blocks)
    }

    fn rule_set_flagged(&self) -> bool {
        self.transaction
            .as_ref()
            .is_some_and(|transaction| transaction.interruption.is_some() || transaction.detected.is_some())
    }

    fn describe(&self, assessment: &Assessment) -> String {
        let mut parts = Vec::new();
        if self.engine.config.builtin_rules {
            let hits: Vec<String> = assessment
                .hits
                .iter()
                .map(|hit| format!("{} {} ({}, +{})", hit.rule, hit.message, hit.target, hit.score))
                .collect();
            parts.push(format!("score {}: {}", assessment.score, hits.join("; ")));
        }
        if let Some(transaction) = &self.transaction {
            let hits: Vec<String> = transaction
                .matches
                .iter()
                .map(|hit| {
                    if hit.data.is_empty() {
                        format!("{} {} ({})", hit.id, hit.message, hit.variable)
                    } else {
                        format!("{} {} ({}: {})", hit.id, hit.message, hit.variable, hit.data)
                    }
                })
                .collect();
            parts.push(format!("rule set score {}: {}", transaction.number("tx", "anomaly_score"), hits.join("; ")));
        }
        parts.join(" | ")
    }

    fn count(&self, assessment: &Assessment, action: &str) {
        metrics::counter_add("waf_requests_total", &[("action", action)], 1);
        for hit in &assessment.hits {
            metrics::counter_add("waf_rule_hits_total", &[("rule", &hit.rule.to_string())], 1);
        }
        if let Some(transaction) = &self.transaction {
            for hit in &transaction.matches {
                metrics::counter_add("waf_rule_hits_total", &[("rule", &hit.id.to_string())], 1);
            }
        }
    }

    /// A request the engine let through: note what matched, if anything.
    fn pass(&self, request: &Request, assessment: &Assessment) {
        if let Some(header) = &self.engine.config.score_header {
            let _ = request.set_header(header, assessment.score.to_string());
        }
        let rule_set_matched = self.transaction.as_ref().is_some_and(|transaction| !transaction.matches.is_empty());
        if assessment.hits.is_empty() && !rule_set_matched {
            self.count(assessment, "pass");
            return;
        }
        let detected = self.engine.config.mode == Mode::Detect
            && (assessment.score >= self.engine.config.anomaly_threshold || self.rule_set_flagged());
        let action = if detected { "detected" } else { "below_threshold" };
        let line = format!("waf: {action} {} {}: {}", request.method(), request.path(), self.describe(assessment));
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
        log::warn(&format!("waf: blocked {} {}: {}", request.method(), request.path(), self.describe(assessment)));
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
        let status = self
            .transaction
            .as_ref()
            .and_then(|transaction| transaction.interruption.as_ref())
            .filter(|_| !self.engine.blocks(assessment))
            .map_or(403, |interruption| interruption.status);
        let status = if (400..600).contains(&status) { status } else { 403 };
        LocalResponse::new(status).header("content-type", "text/plain; charset=utf-8").body(format!(
            "Forbidden: the request was blocked by the web application firewall (request {}).\n",
            request.request_id()
        ))
    }
}

export_filter!(Waf);
