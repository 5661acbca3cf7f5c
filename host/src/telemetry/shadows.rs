//! What shadow filters are counted by: how a shadow's decision compares with the filter's
//! ([`Outcome`], [`Disagreement`]), each shadow's tally ([`ShadowTally`], kept by route and place
//! in the [`ShadowBoard`] across reloads), `GET /shadows` and the
//! `sluice_filter_shadow_*` series ([`ShadowCollector`]). The runs themselves are the pipeline's
//! (`pipeline::shadow`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use sluice_runtime::{BodyOutcome, HeadOutcome};

/// Shadow runs of one filter going at once; past it, requests are not shadowed (and counted).
pub const MAX_RUNS_IN_FLIGHT: usize = 64;

/// How long a shadow rests after it failed a call.
pub const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Disagreements kept per shadow for `GET /shadows`.
const KEPT_DISAGREEMENTS: usize = 32;

/// Least time between two logged disagreements of one shadow.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// How two decisions differed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disagreement {
    /// One continued (or passed the body) where the other answered, or replaced the body where
    /// the other passed it.
    Decision,
    /// Both answered, with different statuses.
    Status,
    /// The same decision, but different headers set or removed.
    Headers,
    /// Both replaced the body, with different bodies.
    Body,
}

impl Disagreement {
    const ALL: [Disagreement; 4] =
        [Disagreement::Decision, Disagreement::Status, Disagreement::Headers, Disagreement::Body];

    fn name(self) -> &'static str {
        match self {
            Disagreement::Decision => "decision",
            Disagreement::Status => "status",
            Disagreement::Headers => "headers",
            Disagreement::Body => "body",
        }
    }
}

/// What a call decided, as far as comparing it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decided {
    /// Head phases: went on.
    Continue,
    /// Body phases: let the body through.
    Pass,
    /// Body phases: replaced the body.
    Replace(Bytes),
    /// Answered with this status.
    Respond(u16),
}

impl Decided {
    fn describe(&self) -> String {
        match self {
            Decided::Continue => "continue".to_owned(),
            Decided::Pass => "pass".to_owned(),
            Decided::Replace(body) => format!("replace ({} bytes)", body.len()),
            Decided::Respond(status) => format!("respond {status}"),
        }
    }
}

/// A call's outcome: its decision, and the headers it left (the request's or the response's,
/// by phase).
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    decided: Decided,
    headers: HeaderMap,
}

impl Outcome {
    pub(crate) fn of_head(outcome: &HeadOutcome, headers: &HeaderMap) -> Self {
        let decided = match outcome {
            HeadOutcome::Continue => Decided::Continue,
            HeadOutcome::Respond(response) => Decided::Respond(response.status().as_u16()),
        };
        Self { decided, headers: headers.clone() }
    }

    pub(crate) fn of_body(outcome: &BodyOutcome, headers: &HeaderMap) -> Self {
        let decided = match outcome {
            BodyOutcome::Pass => Decided::Pass,
            BodyOutcome::Replace(body) => Decided::Replace(body.clone()),
            BodyOutcome::Respond(response) => Decided::Respond(response.status().as_u16()),
        };
        Self { decided, headers: headers.clone() }
    }

    /// How `shadow` differs from this (the real filter's) outcome, if it does.
    fn compare(&self, shadow: &Outcome) -> Option<Disagreement> {
        match (&self.decided, &shadow.decided) {
            (Decided::Respond(real), Decided::Respond(other)) if real != other => Some(Disagreement::Status),
            (Decided::Replace(real), Decided::Replace(other)) if real != other => Some(Disagreement::Body),
            (real, other) if std::mem::discriminant(real) != std::mem::discriminant(other) => {
                Some(Disagreement::Decision)
            }
            _ if !same_headers(&self.headers, &shadow.headers) => Some(Disagreement::Headers),
            _ => None,
        }
    }
}

/// Whether two header maps hold the same values under the same names, in any order of names.
fn same_headers(a: &HeaderMap, b: &HeaderMap) -> bool {
    a.keys_len() == b.keys_len() && a.keys().all(|name| a.get_all(name).iter().eq(b.get_all(name).iter()))
}

/// A disagreement kept for the admin API.
#[derive(Debug, Clone)]
struct Kept {
    at: SystemTime,
    request_id: Arc<str>,
    phase: &'static str,
    kind: Disagreement,
    real: String,
    shadow: String,
}

/// One shadow's comparisons with the filter it shadows.
#[derive(Debug)]
pub struct ShadowTally {
    pub(crate) route: Arc<str>,
    pub(crate) place: String,
    pub(crate) plugin: Arc<str>,
    pub(crate) runs: Arc<Semaphore>,
    agreed: AtomicU64,
    disagreed: [AtomicU64; 4],
    skipped: AtomicU64,
    failed: AtomicU64,
    paused_until: Mutex<Option<Instant>>,
    last_logged: Mutex<Option<Instant>>,
    recent: Mutex<VecDeque<Kept>>,
}

impl ShadowTally {
    fn new(route: Arc<str>, place: String, plugin: Arc<str>) -> Self {
        Self {
            route,
            place,
            plugin,
            runs: Arc::new(Semaphore::new(MAX_RUNS_IN_FLIGHT)),
            agreed: AtomicU64::new(0),
            disagreed: Default::default(),
            skipped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            paused_until: Mutex::new(None),
            last_logged: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Counts a request that was to be shadowed but was not compared.
    pub(crate) fn skip(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn paused(&self) -> bool {
        let paused = self.paused_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        paused.is_some_and(|until| Instant::now() < until)
    }

    pub(crate) fn failed_now(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.paused_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Instant::now() + PAUSE_AFTER_FAILURE);
    }

    pub(crate) fn record(&self, request_id: &Arc<str>, phase: &'static str, real: &Outcome, shadow: &Outcome) {
        let Some(kind) = real.compare(shadow) else {
            self.agreed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.disagreed[kind as usize].fetch_add(1, Ordering::Relaxed);
        let kept = Kept {
            at: SystemTime::now(),
            request_id: request_id.clone(),
            phase,
            kind,
            real: real.decided.describe(),
            shadow: shadow.decided.describe(),
        };
        let log_now = {
            let mut last = self.last_logged.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let due = last.is_none_or(|at| at.elapsed() >= LOG_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if log_now {
            tracing::info!(
                target: "sluice::shadow",
                route = %self.route,
                filter = %self.place,
                shadow = %self.plugin,
                request_id = %request_id,
                phase,
                disagreement = kind.name(),
                real = %kept.real,
                shadow_decided = %kept.shadow,
                "the shadow disagreed"
            );
        }
        let mut recent = self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if recent.len() == KEPT_DISAGREEMENTS {
            recent.pop_front();
        }
        recent.push_back(kept);
    }

    fn report(&self) -> Value {
        let disagreed: serde_json::Map<String, Value> = Disagreement::ALL
            .iter()
            .map(|kind| (kind.name().to_owned(), json!(self.disagreed[*kind as usize].load(Ordering::Relaxed))))
            .collect();
        let recent: Vec<Value> = self
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .rev()
            .map(|kept| {
                json!({
                    "at": humantime::format_rfc3339_millis(kept.at).to_string(),
                    "request_id": &*kept.request_id,
                    "phase": kept.phase,
                    "disagreement": kept.kind.name(),
                    "real": kept.real,
                    "shadow": kept.shadow,
                })
            })
            .collect();
        json!({
            "route": &*self.route,
            "place": self.place,
            "plugin": &*self.plugin,
            "agreed": self.agreed.load(Ordering::Relaxed),
            "disagreed": disagreed,
            "skipped": self.skipped.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "recent_disagreements": recent,
        })
    }
}

/// Every shadow's tally, by route and place, kept across reloads.
#[derive(Debug, Default)]
pub struct ShadowBoard {
    tallies: Mutex<TalliesByPlace>,
}

/// Each shadow's tally by its route and its place in the chain.
type TalliesByPlace = BTreeMap<(Arc<str>, String), Arc<ShadowTally>>;

impl ShadowBoard {
    /// The tally of the shadow at `place` (`filters[0].shadow`) of `route`, running `plugin`; a
    /// place that starts running another plugin starts from zero.
    pub fn tally(&self, route: &Arc<str>, place: &str, plugin: &Arc<str>) -> Arc<ShadowTally> {
        let mut tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = tallies
            .entry((route.clone(), place.to_owned()))
            .or_insert_with(|| Arc::new(ShadowTally::new(route.clone(), place.to_owned(), plugin.clone())));
        if entry.plugin != *plugin {
            *entry = Arc::new(ShadowTally::new(route.clone(), place.to_owned(), plugin.clone()));
        }
        entry.clone()
    }

    /// Forgets shadows a new configuration no longer has (`places`: each route's name and its
    /// chain's places).
    pub fn keep_only(&self, places: &[(Arc<str>, Vec<String>)]) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tallies.retain(|(route, place), _| {
            places.iter().any(|(name, kept)| name == route && kept.iter().any(|kept| kept == place))
        });
    }

    fn all(&self) -> Vec<Arc<ShadowTally>> {
        self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).values().cloned().collect()
    }

    /// `GET /shadows`: every shadow's counts and its latest disagreements.
    pub fn report(&self) -> Value {
        json!({ "shadows": self.all().iter().map(|tally| tally.report()).collect::<Vec<_>>() })
    }
}

/// Writes `sluice_filter_shadow_comparisons_total{route, filter, shadow, result, disagreement}`
/// and the skipped and failed runs at each scrape.
#[derive(Debug)]
pub struct ShadowCollector(pub Arc<ShadowBoard>);

impl Collector for ShadowCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let tallies = self.0.all();
        let counter = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "filter_shadow_comparisons",
            "Filter calls a shadow version decided on too, by whether it agreed (and how it did not)",
            None,
            counter.metric_type(),
        )?;
        for tally in &tallies {
            let labels = |result: &str, kind: &str| {
                vec![
                    ("route", tally.route.to_string()),
                    ("filter", tally.place.clone()),
                    ("shadow", tally.plugin.to_string()),
                    ("result", result.to_owned()),
                    ("disagreement", kind.to_owned()),
                ]
            };
            ConstCounter::new(tally.agreed.load(Ordering::Relaxed))
                .encode(family.encode_family(&labels("agree", ""))?)?;
            for kind in Disagreement::ALL {
                let count = tally.disagreed[kind as usize].load(Ordering::Relaxed);
                ConstCounter::new(count).encode(family.encode_family(&labels("disagree", kind.name()))?)?;
            }
        }
        for (name, help, read) in [
            (
                "filter_shadow_skipped",
                "Requests a shadow was to see but did not compare (busy, behind, paused, or the filter failed)",
                (|tally: &ShadowTally| tally.skipped.load(Ordering::Relaxed)) as fn(&ShadowTally) -> u64,
            ),
            ("filter_shadow_failed", "Shadow calls that failed (trap, limit, bad answer)", |tally: &ShadowTally| {
                tally.failed.load(Ordering::Relaxed)
            }),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            for tally in &tallies {
                let labels = vec![
                    ("route", tally.route.to_string()),
                    ("filter", tally.place.clone()),
                    ("shadow", tally.plugin.to_string()),
                ];
                ConstCounter::new(read(tally)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), http::HeaderValue::from_static(value)))
            .collect()
    }

    fn outcome(decided: Decided, pairs: &[(&'static str, &'static str)]) -> Outcome {
        Outcome { decided, headers: headers(pairs) }
    }

    #[test]
    fn outcomes_differ_by_decision_status_headers_or_body() {
        let base = outcome(Decided::Continue, &[("a", "1")]);
        assert_eq!(base.compare(&outcome(Decided::Continue, &[("a", "1")])), None);
        assert_eq!(base.compare(&outcome(Decided::Respond(403), &[("a", "1")])), Some(Disagreement::Decision));
        assert_eq!(base.compare(&outcome(Decided::Continue, &[("a", "2")])), Some(Disagreement::Headers));
        assert_eq!(base.compare(&outcome(Decided::Continue, &[])), Some(Disagreement::Headers));
        let denied = outcome(Decided::Respond(403), &[]);
        assert_eq!(denied.compare(&outcome(Decided::Respond(429), &[])), Some(Disagreement::Status));
        let replaced = outcome(Decided::Replace(Bytes::from_static(b"x")), &[]);
        assert_eq!(
            replaced.compare(&outcome(Decided::Replace(Bytes::from_static(b"y")), &[])),
            Some(Disagreement::Body)
        );
        assert_eq!(replaced.compare(&outcome(Decided::Pass, &[])), Some(Disagreement::Decision));
    }

    #[test]
    fn header_order_does_not_matter_but_values_do() {
        let one = headers(&[("a", "1"), ("b", "2")]);
        let other = headers(&[("b", "2"), ("a", "1")]);
        assert!(same_headers(&one, &other));
        let mut doubled = one.clone();
        doubled.append("a", http::HeaderValue::from_static("1"));
        assert!(!same_headers(&one, &doubled));
    }

    #[test]
    fn a_tally_keeps_the_latest_disagreements_only() {
        let tally = ShadowTally::new(Arc::from("r"), "filters[0].shadow".into(), Arc::from("p"));
        let id: Arc<str> = Arc::from("req");
        for _ in 0..KEPT_DISAGREEMENTS + 5 {
            tally.record(
                &id,
                "request_headers",
                &outcome(Decided::Continue, &[]),
                &outcome(Decided::Respond(403), &[]),
            );
        }
        tally.record(&id, "request_headers", &outcome(Decided::Continue, &[]), &outcome(Decided::Continue, &[]));
        let report = tally.report();
        assert_eq!(report["disagreed"]["decision"], (KEPT_DISAGREEMENTS + 5) as u64);
        assert_eq!(report["agreed"], 1);
        assert_eq!(report["recent_disagreements"].as_array().map(Vec::len), Some(KEPT_DISAGREEMENTS));
    }
}
