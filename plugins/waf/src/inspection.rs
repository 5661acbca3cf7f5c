//! One request's inspection by both engines, apart from the SDK so that tests and benchmarks
//! run exactly what the filter runs: the head (the built-in rules' targets, the rule set's
//! phase 1, and phase 2 at once when no body follows), then the body, then the verdict.

use std::sync::Arc;

use crate::engine::{Assessment, Engine, Mode};
use crate::request::{Facts, Inspected};
use crate::seclang::RuleSet;
use crate::seclang::eval::Transaction;
use crate::seclang::input::RequestInput;

/// The request's head as the inspection needs it.
pub struct Head<'a> {
    pub method: &'a str,
    pub path_with_query: &'a str,
    pub authority: &'a str,
    pub headers: Vec<(String, Vec<u8>)>,
    pub client_ip: String,
    pub request_id: String,
}

/// What the engines found so far.
pub struct Inspection {
    pub assessment: Assessment,
    pub transaction: Option<Transaction>,
    facts: Facts,
    /// A body follows and is to be inspected.
    pub awaits_body: bool,
}

impl Inspection {
    pub fn head(engine: &Engine, rule_set: Option<&Arc<RuleSet>>, head: Head<'_>) -> Self {
        let inspected = Inspected::from_head(head.method, head.path_with_query, head.authority, &head.headers);
        let assessment = if engine.config.builtin_rules {
            engine.assess(&inspected, head.path_with_query)
        } else {
            Assessment::default()
        };
        let has_body = inspected.facts.content_length.is_some_and(|length| length > 0)
            || head.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"));
        let awaits_body = engine.config.inspect_body && has_body;
        let transaction = rule_set.map(|rule_set| {
            let mut input = RequestInput::from_head(head.method, head.path_with_query, head.headers);
            input.remote_addr = head.client_ip;
            input.server_name = head.authority.to_owned();
            input.unique_id = head.request_id;
            let mut transaction = Transaction::new(rule_set.clone(), input);
            transaction.run_phase(1);
            if !(awaits_body && transaction.wants_body()) {
                transaction.run_phase(2);
            }
            transaction
        });
        Self { assessment, transaction, facts: inspected.facts, awaits_body }
    }

    /// Adds the body: the built-in rules score it, the rule set runs phase 2 on it.
    pub fn body(&mut self, engine: &Engine, path_with_query: &str, body: Vec<u8>) {
        self.awaits_body = false;
        if engine.config.builtin_rules {
            let mut inspected = Inspected::for_body(&self.facts);
            inspected.add_body(&body);
            self.assessment.merge(engine.assess(&inspected, path_with_query));
        }
        if let Some(transaction) = &mut self.transaction
            && transaction.wants_body()
        {
            transaction.add_body(body);
            transaction.run_phase(2);
        }
    }

    /// Whether either engine blocks: the built-in score at its threshold, or a rule set's
    /// disruptive action (the CRS's blocking evaluation), in `block` mode.
    pub fn blocks(&self, engine: &Engine) -> bool {
        engine.blocks(&self.assessment) || (engine.config.mode == Mode::Block && self.rule_set_interrupts())
    }

    pub fn rule_set_interrupts(&self) -> bool {
        self.transaction.as_ref().is_some_and(|transaction| transaction.interruption.is_some())
    }

    /// Whether anything would have blocked (for `detect` mode's log line).
    pub fn flagged(&self, engine: &Engine) -> bool {
        self.assessment.score >= engine.config.anomaly_threshold
            || self
                .transaction
                .as_ref()
                .is_some_and(|transaction| transaction.interruption.is_some() || transaction.detected.is_some())
    }

    pub fn matched_anything(&self) -> bool {
        !self.assessment.hits.is_empty()
            || self.transaction.as_ref().is_some_and(|transaction| !transaction.matches.is_empty())
    }

    /// The status a block answers with: the rule set's (`deny,status:N`) when it alone blocks.
    pub fn status(&self, engine: &Engine) -> u16 {
        let status = self
            .transaction
            .as_ref()
            .and_then(|transaction| transaction.interruption.as_ref())
            .filter(|_| !engine.blocks(&self.assessment))
            .map_or(403, |interruption| interruption.status);
        if (400..600).contains(&status) { status } else { 403 }
    }

    /// Every rule that matched, for the log line: the built-in ones with their scores, the rule
    /// set's with what they matched.
    pub fn describe(&self, engine: &Engine) -> String {
        let mut parts = Vec::new();
        if engine.config.builtin_rules {
            let hits: Vec<String> = self
                .assessment
                .hits
                .iter()
                .map(|hit| format!("{} {} ({}, +{})", hit.rule, hit.message, hit.target, hit.score))
                .collect();
            parts.push(format!("score {}: {}", self.assessment.score, hits.join("; ")));
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

    /// The ids of every rule that matched (for the hit counters).
    pub fn rule_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.assessment.hits.iter().map(|hit| hit.rule).collect();
        if let Some(transaction) = &self.transaction {
            ids.extend(transaction.matches.iter().map(|hit| hit.id));
        }
        ids
    }
}
