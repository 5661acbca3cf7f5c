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
pub mod inspection;
pub mod normalize;
pub mod request;
pub mod rule_set;
pub mod rules;
pub mod seclang;

use std::sync::Arc;

use engine::{Config, Engine, Mode};
use inspection::{Head, Inspection};
use seclang::RuleSet;
use sluice_sdk::{BodyAction, Decision, Filter, LocalResponse, Phases, Request, export_filter, log, metrics};

/// One instance: the engines, and the inspection of the request whose body is awaited.
pub struct Waf {
    engine: Engine,
    rule_set: Option<Arc<RuleSet>>,
    pending: Option<Inspection>,
}

impl Filter for Waf {
    type Config = Config;

    fn new(mut config: Config) -> Result<Self, String> {
        let files = std::mem::take(&mut config.files);
        let rule_set = match &config.rule_set {
            Some(rule_set) => {
                Some(rule_set::compile(rule_set, files, config.paranoia_level, config.anomaly_threshold)?)
            }
            None if !files.is_empty() => return Err("files given but no rule_set loads them".into()),
            None => None,
        };
        if !config.builtin_rules && rule_set.is_none() {
            return Err("builtin_rules = false needs a rule_set".into());
        }
        Ok(Self { engine: Engine::new(config)?, rule_set, pending: None })
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
        let (method, path_with_query, authority) = (request.method(), request.path_with_query(), request.authority());
        let head = Head {
            method: &method,
            path_with_query: &path_with_query,
            authority: &authority,
            headers: request.headers(),
            client_ip: request.client_ip(),
            request_id: request.request_id(),
        };
        let inspection = Inspection::head(&self.engine, self.rule_set.as_ref(), head);
        if inspection.blocks(&self.engine) {
            return Decision::Respond(self.verdict(request, &inspection));
        }
        if inspection.awaits_body {
            self.pending = Some(inspection);
        } else {
            self.pass(request, &inspection);
        }
        Decision::Continue
    }

    fn on_request_body(&mut self, request: &Request, body: Vec<u8>, end_of_stream: bool) -> BodyAction {
        let Some(mut inspection) = self.pending.take() else { return BodyAction::Pass };
        inspection.body(&self.engine, &request.path_with_query(), body);
        if inspection.blocks(&self.engine) {
            return BodyAction::Respond(self.verdict(request, &inspection));
        }
        if !end_of_stream {
            // The host delivers request bodies whole; keep the inspection if that ever changes.
            self.pending = Some(inspection);
            return BodyAction::Pass;
        }
        self.pass(request, &inspection);
        BodyAction::Pass
    }
}

impl Waf {
    fn count(&self, inspection: &Inspection, action: &str) {
        metrics::counter_add("waf_requests_total", &[("action", action)], 1);
        for rule in inspection.rule_ids() {
            metrics::counter_add("waf_rule_hits_total", &[("rule", &rule.to_string())], 1);
        }
    }

    /// A request the engines let through: note what matched, if anything.
    fn pass(&self, request: &Request, inspection: &Inspection) {
        if let Some(header) = &self.engine.config.score_header {
            let _ = request.set_header(header, inspection.assessment.score.to_string());
        }
        if !inspection.matched_anything() {
            self.count(inspection, "pass");
            return;
        }
        let detected = self.engine.config.mode == Mode::Detect && inspection.flagged(&self.engine);
        let action = if detected { "detected" } else { "below_threshold" };
        let line =
            format!("waf: {action} {} {}: {}", request.method(), request.path(), inspection.describe(&self.engine));
        // What would have been blocked is worth a warning; lone low-score hits (an IP as Host)
        // would flood the log at that level.
        if detected {
            log::warn(&line)
        } else {
            log::debug(&line)
        }
        self.count(inspection, action);
    }

    /// The answer to a blocked request, logged with the rules that matched; a repeat offender
    /// is banned when the config says so.
    fn verdict(&self, request: &Request, inspection: &Inspection) -> LocalResponse {
        log::warn(&format!(
            "waf: blocked {} {}: {}",
            request.method(),
            request.path(),
            inspection.describe(&self.engine)
        ));
        self.count(inspection, "blocked");
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
        LocalResponse::new(inspection.status(&self.engine)).header("content-type", "text/plain; charset=utf-8").body(
            format!(
                "Forbidden: the request was blocked by the web application firewall (request {}).\n",
                request.request_id()
            ),
        )
    }
}

export_filter!(Waf);
