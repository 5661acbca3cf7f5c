//! Live figures for the dashboard and `GET /live`: per route and per filter counters and latency
//! histograms, kept in the process so that no Prometheus is needed to see what traffic does now.
//!
//! The request path only adds to cumulative counters (a few relaxed atomic additions per
//! request and per filter call). Rates and percentiles are differences between two readings of
//! those counters: the board keeps the readings taken when `/live` was asked in the last
//! [`WINDOW`] (at most one per [`READING_EVERY`]), and answers with the difference between now
//! and the oldest of them. Nobody watching costs nothing beyond the counters, and counters are
//! kept by route name, so they carry over reloads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How far back rates and percentiles look.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The least time between two kept readings.
const READING_EVERY: Duration = Duration::from_millis(900);

/// Histogram buckets per doubling of a microsecond: quarters, so a bucket is at most 25% wide.
const STEPS_PER_DOUBLING: usize = 4;

/// Doublings of a microsecond the histogram covers: up to 2^28 us, about 4.5 minutes; longer
/// times count in the last bucket.
const DOUBLINGS: usize = 28;

const BUCKETS: usize = DOUBLINGS * STEPS_PER_DOUBLING;

/// Latencies in log-spaced buckets (at most 25% wide), counted with relaxed atomics.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64; BUCKETS]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { buckets: Box::new(std::array::from_fn(|_| AtomicU64::new(0))) }
    }
}

/// The bucket a latency of `micros` falls in.
fn bucket_of(micros: u64) -> usize {
    if micros < 2 {
        return 0;
    }
    let doubling = 63 - micros.leading_zeros() as usize;
    // The two bits below the top one pick the step within the doubling.
    let step = if doubling >= 2 { ((micros >> (doubling - 2)) & 0b11) as usize } else { (micros & 1) as usize * 2 };
    (doubling * STEPS_PER_DOUBLING + step).min(BUCKETS - 1)
}

/// The latency, in microseconds, that stands for bucket `index`: its middle.
fn bucket_middle_us(index: usize) -> f64 {
    let doubling = index / STEPS_PER_DOUBLING;
    let step = index % STEPS_PER_DOUBLING;
    2f64.powi(doubling as i32) * (1.0 + (step as f64 + 0.5) / STEPS_PER_DOUBLING as f64)
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now, from the first to the last bucket that holds any.
    fn read(&self) -> Counts {
        let counts: Vec<u64> = self.buckets.iter().map(|bucket| bucket.load(Ordering::Relaxed)).collect();
        let Some(first) = counts.iter().position(|&count| count > 0) else { return Counts::default() };
        let last = counts.iter().rposition(|&count| count > 0).unwrap_or(first);
        Counts { first, counts: counts[first..=last].to_vec() }
    }
}

/// A histogram reading, trimmed to the buckets that hold anything (most hold nothing).
#[derive(Debug, Clone, Default)]
struct Counts {
    first: usize,
    counts: Vec<u64>,
}

impl Counts {
    fn get(&self, index: usize) -> u64 {
        index.checked_sub(self.first).and_then(|at| self.counts.get(at)).copied().unwrap_or(0)
    }

    fn end(&self) -> usize {
        self.first + self.counts.len()
    }

    /// What was added between `earlier` and this reading (a counter that went back, after a
    /// restart of its route's figures, counts from zero).
    fn since(&self, earlier: &Counts) -> Counts {
        if self.counts.is_empty() {
            return Counts::default();
        }
        let counts = (self.first..self.end()).map(|index| self.get(index).saturating_sub(earlier.get(index))).collect();
        Counts { first: self.first, counts }
    }

    fn add(&mut self, other: &Counts) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        let first = self.first.min(other.first);
        let end = self.end().max(other.end());
        let counts = (first..end).map(|index| self.get(index) + other.get(index)).collect();
        *self = Counts { first, counts };
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The latency below which `quantile` of the counted ones fell, in microseconds.
    fn quantile_us(&self, quantile: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = (quantile * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (offset, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(bucket_middle_us(self.first + offset));
            }
        }
        Some(bucket_middle_us(self.end() - 1))
    }
}

/// One filter's live figures (one version of it: a canary has its own).
#[derive(Debug, Default)]
pub struct FilterLive {
    calls: AtomicU64,
    failures: AtomicU64,
    latency: LatencyHistogram,
}

impl FilterLive {
    /// Counts one call that took `elapsed` (wall time, waits included) and whether it failed.
    pub fn record_call(&self, elapsed: Duration, failed: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(elapsed);
    }
}

/// One route's live figures.
#[derive(Debug, Default)]
pub struct RouteLive {
    requests: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    cache_lookups: AtomicU64,
    cache_hits: AtomicU64,
    latency: LatencyHistogram,
    /// Its filters' figures by place in the chain (`filters[0]`, `filters[0].canary`).
    filters: Mutex<FiltersByPlace>,
}

/// Each place in a chain: the plugin it runs and that filter's figures.
type FiltersByPlace = BTreeMap<String, (Arc<str>, Arc<FilterLive>)>;

impl RouteLive {
    /// Counts one answered request.
    pub fn record_request(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match status {
            400..=499 => {
                self.client_errors.fetch_add(1, Ordering::Relaxed);
            }
            500.. => {
                self.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.latency.record(elapsed);
    }

    /// Counts one cache lookup by its result (`hit`, `stale`, `miss`, `bypass`, ...); bypasses
    /// are not lookups.
    pub fn record_cache(&self, result: &str) {
        if result == "bypass" {
            return;
        }
        self.cache_lookups.fetch_add(1, Ordering::Relaxed);
        if matches!(result, "hit" | "stale" | "stale_if_error" | "revalidated") {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The figures of the filter at `place` in the chain, running `plugin`. A place that now runs
    /// another plugin starts from zero.
    pub fn filter(&self, place: &str, plugin: &Arc<str>) -> Arc<FilterLive> {
        let mut filters = self.filters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = filters.entry(place.to_owned()).or_insert_with(|| (plugin.clone(), Arc::default()));
        if entry.0 != *plugin {
            *entry = (plugin.clone(), Arc::default());
        }
        entry.1.clone()
    }

    /// Forgets filters no longer at a place in the chain.
    fn keep_filters(&self, places: &[String]) {
        let mut filters = self.filters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        filters.retain(|place, _| places.contains(place));
    }

    fn read(&self) -> RouteReading {
        let filters = self.filters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        RouteReading {
            requests: self.requests.load(Ordering::Relaxed),
            client_errors: self.client_errors.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            cache_lookups: self.cache_lookups.load(Ordering::Relaxed),
            cache_hits: self.cache_hits.load(Ordering::Relaxed),
            latency: self.latency.read(),
            filters: filters
                .iter()
                .map(|(place, (plugin, live))| FilterReading {
                    place: place.clone(),
                    plugin: plugin.clone(),
                    calls: live.calls.load(Ordering::Relaxed),
                    failures: live.failures.load(Ordering::Relaxed),
                    latency: live.latency.read(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct RouteReading {
    requests: u64,
    client_errors: u64,
    server_errors: u64,
    cache_lookups: u64,
    cache_hits: u64,
    latency: Counts,
    filters: Vec<FilterReading>,
}

#[derive(Debug, Clone)]
struct FilterReading {
    place: String,
    plugin: Arc<str>,
    calls: u64,
    failures: u64,
    latency: Counts,
}

/// Every route's counters at one moment.
#[derive(Debug)]
struct Reading {
    at: Instant,
    routes: BTreeMap<Arc<str>, RouteReading>,
}

/// Every route's live figures, by route name, and the readings `/live` answers from.
#[derive(Debug, Default)]
pub struct LiveBoard {
    routes: Mutex<BTreeMap<Arc<str>, Arc<RouteLive>>>,
    readings: Mutex<VecDeque<Reading>>,
}

impl LiveBoard {
    /// The figures of route `name` (the same ones across reloads).
    pub fn route(&self, name: &Arc<str>) -> Arc<RouteLive> {
        let mut routes = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.entry(name.clone()).or_default().clone()
    }

    /// Forgets routes a new configuration no longer has, and filters their chains no longer
    /// hold (`routes`: each route's name and its chain's places).
    pub fn keep_only(&self, routes: &[(Arc<str>, Vec<String>)]) {
        let mut kept = self.routes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.retain(|name, _| routes.iter().any(|(kept_name, _)| kept_name == name));
        for (name, places) in routes {
            if let Some(live) = kept.get(name) {
                live.keep_filters(places);
            }
        }
    }

    fn read(&self, at: Instant) -> Reading {
        let routes: Vec<(Arc<str>, Arc<RouteLive>)> = self
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(name, live)| (name.clone(), live.clone()))
            .collect();
        Reading { at, routes: routes.into_iter().map(|(name, live)| (name, live.read())).collect() }
    }

    /// The figures now: totals since start, and rates and percentiles over the last
    /// [`WINDOW`] (none on the first ask after a quiet spell: there is nothing to compare with).
    pub fn figures(&self) -> LiveFigures {
        let now = Instant::now();
        let current = self.read(now);
        let mut readings = self.readings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while readings.front().is_some_and(|oldest| now.duration_since(oldest.at) > WINDOW) {
            readings.pop_front();
        }
        let figures = LiveFigures::between(readings.front(), &current);
        if readings.back().is_none_or(|newest| now.duration_since(newest.at) >= READING_EVERY) {
            readings.push_back(current);
        }
        figures
    }
}

/// What `GET /live` answers: per route and in total.
#[derive(Debug, serde::Serialize)]
pub struct LiveFigures {
    /// Seconds the rates cover (0 when there was no earlier reading to compare with).
    pub window_seconds: f64,
    /// All routes together.
    pub totals: Figures,
    /// Each route, by name.
    pub routes: Vec<RouteFigures>,
}

/// Figures of a route, or of all of them.
#[derive(Debug, Default, serde::Serialize)]
pub struct Figures {
    /// Requests answered since the start.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub server_errors: u64,
    /// Of those, answered 4xx.
    pub client_errors: u64,
    /// Requests per second over the window.
    pub requests_per_second: Option<f64>,
    /// Share of the window's requests answered 5xx.
    pub error_rate: Option<f64>,
    /// Median time to the end of the response, over the window, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile, over the window, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Share of the window's cache lookups answered from the cache (none: no lookups).
    pub cache_hit_ratio: Option<f64>,
}

/// One route's figures and its filters'.
#[derive(Debug, serde::Serialize)]
pub struct RouteFigures {
    /// The route.
    pub name: String,
    /// Its figures.
    #[serde(flatten)]
    pub figures: Figures,
    /// Each filter in its chain.
    pub filters: Vec<FilterFigures>,
}

/// One filter's figures.
#[derive(Debug, serde::Serialize)]
pub struct FilterFigures {
    /// Its place in the chain, `filters[0]` or `filters[0].canary`.
    pub place: String,
    /// The plugin it runs.
    pub plugin: String,
    /// Calls since the start (every phase counts one).
    pub calls: u64,
    /// Of those, failed.
    pub failures: u64,
    /// Calls per second over the window.
    pub calls_per_second: Option<f64>,
    /// Failures over the window.
    pub window_failures: u64,
    /// Median call time over the window, in microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile, in microseconds.
    pub p99_us: Option<f64>,
}

impl LiveFigures {
    fn between(earlier: Option<&Reading>, now: &Reading) -> Self {
        let seconds = earlier.map_or(0.0, |earlier| now.at.duration_since(earlier.at).as_secs_f64());
        let per_second = |count: u64| (seconds > 0.0).then(|| count as f64 / seconds);
        let empty = RouteReading::default();
        let mut totals = Figures::default();
        let mut total_latency = Counts::default();
        let (mut window_requests, mut window_errors, mut window_lookups, mut window_hits) = (0, 0, 0, 0);
        let mut routes = Vec::with_capacity(now.routes.len());
        for (name, reading) in &now.routes {
            let before = earlier.and_then(|earlier| earlier.routes.get(name));
            let base = before.unwrap_or(&empty);
            let requests = reading.requests.saturating_sub(base.requests);
            let errors = reading.server_errors.saturating_sub(base.server_errors);
            let lookups = reading.cache_lookups.saturating_sub(base.cache_lookups);
            let hits = reading.cache_hits.saturating_sub(base.cache_hits);
            let latency = if earlier.is_some() { reading.latency.since(&base.latency) } else { Counts::default() };
            totals.requests += reading.requests;
            totals.server_errors += reading.server_errors;
            totals.client_errors += reading.client_errors;
            window_requests += requests;
            window_errors += errors;
            window_lookups += lookups;
            window_hits += hits;
            total_latency.add(&latency);
            let filters = reading
                .filters
                .iter()
                .map(|filter| {
                    let base = before.and_then(|before| {
                        before.filters.iter().find(|old| old.place == filter.place && old.plugin == filter.plugin)
                    });
                    let calls = filter.calls.saturating_sub(base.map_or(0, |base| base.calls));
                    let latency = match (earlier, base) {
                        (None, _) => Counts::default(),
                        (Some(_), Some(base)) => filter.latency.since(&base.latency),
                        (Some(_), None) => filter.latency.clone(),
                    };
                    FilterFigures {
                        place: filter.place.clone(),
                        plugin: filter.plugin.to_string(),
                        calls: filter.calls,
                        failures: filter.failures,
                        calls_per_second: per_second(calls),
                        window_failures: filter.failures.saturating_sub(base.map_or(0, |base| base.failures)),
                        p50_us: latency.quantile_us(0.5),
                        p99_us: latency.quantile_us(0.99),
                    }
                })
                .collect();
            routes.push(RouteFigures {
                name: name.to_string(),
                figures: Figures {
                    requests: reading.requests,
                    server_errors: reading.server_errors,
                    client_errors: reading.client_errors,
                    requests_per_second: per_second(requests),
                    error_rate: (requests > 0).then(|| errors as f64 / requests as f64),
                    p50_ms: latency.quantile_us(0.5).map(|us| us / 1000.0),
                    p99_ms: latency.quantile_us(0.99).map(|us| us / 1000.0),
                    cache_hit_ratio: (lookups > 0).then(|| hits as f64 / lookups as f64),
                },
                filters,
            });
        }
        totals.requests_per_second = per_second(window_requests);
        totals.error_rate = (window_requests > 0).then(|| window_errors as f64 / window_requests as f64);
        totals.p50_ms = total_latency.quantile_us(0.5).map(|us| us / 1000.0);
        totals.p99_ms = total_latency.quantile_us(0.99).map(|us| us / 1000.0);
        totals.cache_hit_ratio = (window_lookups > 0).then(|| window_hits as f64 / window_lookups as f64);
        Self { window_seconds: seconds, totals, routes }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_rise_with_latency_and_stay_in_range() {
        let mut last = 0;
        for micros in [0, 1, 2, 3, 4, 5, 7, 8, 100, 1000, 10_000, 1_000_000, u64::MAX] {
            let bucket = bucket_of(micros);
            assert!(bucket >= last, "{micros} us went to bucket {bucket}, below {last}");
            assert!(bucket < BUCKETS);
            last = bucket;
        }
        // A bucket's middle lies within a bucket's width of what went into it.
        for micros in [10u64, 333, 4096, 50_000, 2_000_000] {
            let middle = bucket_middle_us(bucket_of(micros));
            let ratio = middle / micros as f64;
            assert!((0.84..1.19).contains(&ratio), "{micros} us reads back as {middle}");
        }
    }

    #[test]
    fn percentiles_come_from_the_window_only() {
        let board = LiveBoard::default();
        let route = board.route(&Arc::from("api"));
        for _ in 0..1000 {
            route.record_request(200, Duration::from_millis(100));
        }
        let first = board.figures();
        assert_eq!(first.window_seconds, 0.0);
        assert_eq!(first.totals.requests, 1000);
        assert_eq!(first.totals.p99_ms, None, "nothing to compare with yet");

        // Make the first reading look older, then send faster requests.
        board.readings.lock().unwrap()[0].at -= Duration::from_secs(2);
        for index in 0..100 {
            route.record_request(if index < 10 { 503 } else { 200 }, Duration::from_millis(1));
        }
        let second = board.figures();
        let api = &second.routes[0];
        assert_eq!(api.figures.requests, 1100);
        assert_eq!(api.figures.server_errors, 10);
        assert_eq!(api.figures.error_rate, Some(0.1));
        let p99 = api.figures.p99_ms.expect("requests in the window");
        assert!((0.84..1.19).contains(&p99), "the window's p99 is 1 ms, not the earlier 100 ms: {p99}");
        let rate = api.figures.requests_per_second.expect("a window");
        assert!(rate > 0.0 && rate <= 100.0 / 1.9, "{rate}");
    }

    #[test]
    fn a_filter_place_that_runs_another_plugin_starts_from_zero() {
        let route = RouteLive::default();
        let first = route.filter("filters[0]", &Arc::from("waf"));
        first.record_call(Duration::from_micros(20), true);
        assert_eq!(route.filter("filters[0]", &Arc::from("waf")).failures.load(Ordering::Relaxed), 1);
        assert_eq!(route.filter("filters[0]", &Arc::from("auth")).calls.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn cache_bypasses_are_not_lookups() {
        let route = RouteLive::default();
        for result in ["hit", "miss", "bypass", "stale", "revalidated"] {
            route.record_cache(result);
        }
        let reading = route.read();
        assert_eq!((reading.cache_lookups, reading.cache_hits), (4, 3));
    }
}
