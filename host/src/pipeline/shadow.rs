//! Shadow runs: a filter's `shadow` version decides on a copy of what the filter sees, in a task
//! of its own, and its decisions are compared with the filter's and counted. Nothing it decides
//! reaches the request or the response.
//!
//! What a shadowed request pays is bounded: per phase, a copy of the filter's input (the head,
//! and the body for a body phase) and of its result, and a send on a queue that never waits.
//! The shadow checks out its own instance (never waiting for one), runs on its own task, and is
//! dropped, uncompared, when it falls behind ([`QUEUED_STEPS`]) or when its filter already has
//! [`MAX_RUNS_IN_FLIGHT`] runs going. A shadow that fails (a trap, a loop stopped by its CPU
//! limit) is counted, logged, and not started again for [`PAUSE_AFTER_FAILURE`], so a broken
//! shadow costs the worker at most one failing call's first milliseconds per pause.

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
use tokio::sync::{Semaphore, mpsc};

use sluice_runtime::{BodyOutcome, CallContext, FilterInstance, FilterPool, HeadOutcome, RequestHead};

/// Shadow runs of one filter going at once; past it, requests are not shadowed (and counted).
pub const MAX_RUNS_IN_FLIGHT: usize = 64;

/// Phases a run may have waiting for its shadow; past it the run is dropped uncompared.
pub const QUEUED_STEPS: usize = 8;

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

/// The input of one phase, copied for the shadow.
pub(crate) enum Input {
    /// `on-request`.
    Request(RequestHead),
    /// `on-request-body`.
    RequestBody(RequestHead, Bytes),
    /// `on-response`.
    Response(RequestHead, http::response::Parts),
    /// `on-response-body`, buffered whole.
    ResponseBody(RequestHead, http::response::Parts, Bytes),
}

impl Input {
    fn phase(&self) -> &'static str {
        match self {
            Input::Request(_) => "request_headers",
            Input::RequestBody(..) => "request_body",
            Input::Response(..) => "response_headers",
            Input::ResponseBody(..) => "response_body",
        }
    }
}

/// A copy of a request head (`Parts` itself cannot be cloned: its extensions may not be).
pub(crate) fn copy_request(head: &RequestHead) -> RequestHead {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = head.parts.method.clone();
    parts.uri = head.parts.uri.clone();
    parts.version = head.parts.version;
    parts.headers = head.parts.headers.clone();
    RequestHead { parts, cache_key: head.cache_key.clone() }
}

/// A copy of a response head.
pub(crate) fn copy_response(parts: &http::response::Parts) -> http::response::Parts {
    let (mut copy, ()) = http::Response::new(()).into_parts();
    copy.status = parts.status;
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// One phase for the shadow: what the filter got, and what it made of it.
struct Step {
    input: Input,
    real: Outcome,
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
    route: Arc<str>,
    place: String,
    plugin: Arc<str>,
    runs: Arc<Semaphore>,
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

    fn paused(&self) -> bool {
        let paused = self.paused_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        paused.is_some_and(|until| Instant::now() < until)
    }

    fn failed_now(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.paused_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Instant::now() + PAUSE_AFTER_FAILURE);
    }

    fn record(&self, request_id: &Arc<str>, phase: &'static str, real: &Outcome, shadow: &Outcome) {
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

/// A request's shadow run: the queue to the task that runs the shadow.
pub(crate) struct ShadowRun {
    steps: mpsc::Sender<Step>,
    tally: Arc<ShadowTally>,
}

impl ShadowRun {
    /// Starts a run of `pool` (the shadow's) for one request, unless the shadow is resting after
    /// a failure or already has [`MAX_RUNS_IN_FLIGHT`] runs.
    pub(crate) fn start(pool: Arc<FilterPool>, context: CallContext, tally: Arc<ShadowTally>) -> Option<Self> {
        if tally.paused() {
            tally.skip();
            return None;
        }
        let Ok(slot) = tally.runs.clone().try_acquire_owned() else {
            tally.skip();
            return None;
        };
        let (steps, queue) = mpsc::channel(QUEUED_STEPS);
        let run_tally = tally.clone();
        tokio::spawn(async move {
            let _slot = slot;
            run(pool, context, queue, run_tally).await;
        });
        Some(Self { steps, tally })
    }

    /// Ends the run uncompared (the real call failed).
    pub(crate) fn skip(&self) {
        self.tally.skip();
    }

    /// Hands the shadow one phase: a copy of what the filter got, and what it made of it. Never
    /// waits; a shadow that has fallen behind is dropped (`false`).
    pub(crate) fn send(&self, input: Input, real: Outcome) -> bool {
        match self.steps.try_send(Step { input, real }) {
            Ok(()) => true,
            Err(_) => {
                self.tally.skip();
                false
            }
        }
    }
}

/// The shadow's side of a run: its own instance, each phase on its copy, each outcome compared.
async fn run(pool: Arc<FilterPool>, context: CallContext, mut queue: mpsc::Receiver<Step>, tally: Arc<ShadowTally>) {
    let request_id = context.request_id.clone();
    let mut instance = match pool.checkout_if_free(context).await {
        Some(Ok(instance)) => instance,
        Some(Err(error)) => {
            tally.failed_now();
            log_failure(&tally, &request_id, &error);
            return;
        }
        None => {
            tally.skip();
            return;
        }
    };
    while let Some(Step { input, real }) = queue.recv().await {
        let phase = input.phase();
        match call(&mut instance, input).await {
            Ok(shadow) => tally.record(&request_id, phase, &real, &shadow),
            Err(error) => {
                tally.failed_now();
                log_failure(&tally, &request_id, &error);
                return;
            }
        }
    }
}

async fn call(instance: &mut FilterInstance, input: Input) -> Result<Outcome, sluice_runtime::FilterError> {
    match input {
        Input::Request(mut head) => {
            let outcome = instance.on_request(&mut head).await?;
            Ok(Outcome::of_head(&outcome, &head.parts.headers))
        }
        Input::RequestBody(mut head, body) => {
            let outcome = instance.on_request_body(&mut head, body).await?;
            Ok(Outcome::of_body(&outcome, &head.parts.headers))
        }
        Input::Response(mut head, mut response) => {
            let outcome = instance.on_response(&mut head, &mut response).await?;
            Ok(Outcome::of_head(&outcome, &response.headers))
        }
        Input::ResponseBody(mut head, mut response, body) => {
            let outcome = instance.on_response_body(&mut head, &mut response, true, body, true).await?;
            Ok(Outcome::of_body(&outcome, &response.headers))
        }
    }
}

fn log_failure(tally: &ShadowTally, request_id: &str, error: &sluice_runtime::FilterError) {
    tracing::warn!(
        target: "sluice::shadow",
        route = %tally.route,
        filter = %tally.place,
        shadow = %tally.plugin,
        request_id,
        error.kind = error.kind_name(),
        guest_message = error.guest_message.as_deref().unwrap_or(""),
        "the shadow failed (the request is not affected; the shadow rests for {} s): {}",
        PAUSE_AFTER_FAILURE.as_secs(),
        error.kind
    );
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
