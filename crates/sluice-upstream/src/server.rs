//! What the proxy knows about one server of an upstream at this moment: whether its health
//! checks pass, whether passive outlier detection has ejected it, how many requests it is serving
//! and how fast it has been answering.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::uri::Authority;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use super::metrics::UpstreamMetrics;

/// One origin server as configured.
#[derive(Debug, Clone)]
pub struct UpstreamServer {
    /// `host:port`, as sent in the request URI.
    pub authority: Authority,
    /// Share of requests relative to the other servers.
    pub weight: u32,
}

/// A server with its live state.
#[derive(Debug)]
pub struct ServerState {
    /// The configured server.
    pub server: UpstreamServer,
    /// Its name in sticky-session cookies: derived from the address without revealing it.
    pub sticky_id: String,
    /// Active health: false once `fall` checks in a row failed, true again after `rise` passed.
    healthy: AtomicBool,
    /// Checks in a row that disagreed with `healthy`.
    check_streak: AtomicU32,
    /// Passive outlier detection.
    outlier: Mutex<OutlierState>,
    /// Whether an ejection may be running (set when ejecting): lets the per-request
    /// availability check skip the lock in the common case.
    maybe_ejected: AtomicBool,
    /// No failure since the last success and no ejection: a success has nothing to record.
    clean: AtomicBool,
    /// Requests sent and not yet finished (response body included); also its metric.
    in_flight: Gauge,
    /// The health metric (1 healthy, 0 not).
    healthy_metric: Gauge,
    /// The ejection counter metric.
    ejections_metric: Counter,
    /// Exponentially weighted moving average of response-head latency, in microseconds.
    latency_ewma_us: AtomicU64,
    /// When the server last became available, for slow start.
    available_since: Mutex<Option<Instant>>,
}

#[derive(Debug, Default)]
struct OutlierState {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// How many times it has been ejected in a row; each ejection lasts longer.
    ejections: u32,
}

/// Why a server is not taking requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    /// Takes requests.
    Available,
    /// Its active health checks fail.
    Unhealthy,
    /// Passive outlier detection ejected it.
    Ejected,
}

impl ServerState {
    /// A server of `upstream` that starts healthy (checks, when configured, may say otherwise).
    pub fn new(upstream: &str, server: UpstreamServer, metrics: &UpstreamMetrics) -> Self {
        let name = server.authority.as_str();
        let healthy_metric = metrics.healthy(upstream, name);
        healthy_metric.set(1);
        Self {
            in_flight: metrics.in_flight(upstream, name),
            ejections_metric: metrics.ejections(upstream, name),
            healthy_metric,
            sticky_id: sticky_id(upstream, name),
            server,
            healthy: AtomicBool::new(true),
            check_streak: AtomicU32::new(0),
            outlier: Mutex::new(OutlierState::default()),
            maybe_ejected: AtomicBool::new(false),
            clean: AtomicBool::new(true),
            latency_ewma_us: AtomicU64::new(0),
            available_since: Mutex::new(None),
        }
    }

    /// Whether it takes requests now.
    pub fn availability(&self, now: Instant) -> Availability {
        if !self.healthy.load(Ordering::Relaxed) {
            return Availability::Unhealthy;
        }
        if !self.maybe_ejected.load(Ordering::Relaxed) {
            return Availability::Available;
        }
        let outlier = self.outlier.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match outlier.ejected_until {
            Some(until) if until > now => Availability::Ejected,
            _ => Availability::Available,
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight.get().max(0) as usize
    }

    /// Times passive outlier detection has ejected it since the start.
    pub fn ejections(&self) -> u64 {
        self.ejections_metric.get()
    }

    /// The latency average in microseconds (0 before the first response).
    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// The weight to balance with now: ramps from a tenth to the full weight over `slow_start`
    /// after the server comes back, so a cold server is not flooded.
    pub fn effective_weight(&self, slow_start: Option<Duration>, now: Instant) -> f64 {
        let weight = f64::from(self.server.weight);
        let (Some(window), Some(since)) =
            (slow_start, *self.available_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
        else {
            return weight;
        };
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= window {
            return weight;
        }
        weight * (0.1 + 0.9 * elapsed.as_secs_f64() / window.as_secs_f64())
    }

    /// Counts a request as started; the guard counts it finished.
    pub(crate) fn start_request(&self) {
        self.in_flight.inc();
    }

    pub(crate) fn finish_request(&self) {
        self.in_flight.dec();
    }

    /// Folds a response-head latency into the average.
    pub(crate) fn record_latency(&self, latency: Duration) {
        let sample = latency.as_micros().min(u128::from(u64::MAX / 2)) as u64;
        let _ = self.latency_ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            // Weight 1/8 for the new sample: follows changes within tens of requests.
            Some(if old == 0 { sample } else { old - old / 8 + sample / 8 })
        });
    }

    /// Records one active check; returns the new health when it changed.
    pub(crate) fn record_check(&self, passed: bool, rise: u32, fall: u32, now: Instant) -> Option<bool> {
        let healthy = self.healthy.load(Ordering::Relaxed);
        if passed == healthy {
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if healthy { fall } else { rise };
        if streak < needed.max(1) {
            return None;
        }
        self.check_streak.store(0, Ordering::Relaxed);
        self.healthy.store(passed, Ordering::Relaxed);
        self.healthy_metric.set(i64::from(passed));
        if passed {
            self.mark_available(now);
        }
        Some(passed)
    }

    /// Records the outcome of a request for passive outlier detection. Returns the ejection's
    /// length when this failure ejects the server; `may_eject` says whether the upstream's cap on
    /// ejected servers allows it.
    pub(crate) fn record_outcome(
        &self,
        failed: bool,
        policy: &OutlierPolicy,
        may_eject: bool,
        now: Instant,
    ) -> Option<Duration> {
        if !failed && self.clean.load(Ordering::Relaxed) {
            return None;
        }
        let mut outlier = self.outlier.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !failed {
            outlier.consecutive_failures = 0;
            if outlier.ejected_until.is_none() {
                self.clean.store(true, Ordering::Relaxed);
            }
            if outlier.ejected_until.is_some_and(|until| until <= now) {
                // Served well after coming back: the next ejection starts from the base time.
                outlier.ejected_until = None;
                outlier.ejections = 0;
                self.maybe_ejected.store(false, Ordering::Relaxed);
                self.clean.store(true, Ordering::Relaxed);
            }
            return None;
        }
        self.clean.store(false, Ordering::Relaxed);
        outlier.consecutive_failures += 1;
        let already_ejected = outlier.ejected_until.is_some_and(|until| until > now);
        if outlier.consecutive_failures < policy.consecutive_failures || already_ejected || !may_eject {
            return None;
        }
        let factor = 1u32 << outlier.ejections.min(16);
        let length = policy.base_ejection.saturating_mul(factor).min(policy.max_ejection);
        outlier.ejections += 1;
        outlier.consecutive_failures = 0;
        outlier.ejected_until = Some(now + length);
        self.maybe_ejected.store(true, Ordering::Relaxed);
        drop(outlier);
        self.ejections_metric.inc();
        self.mark_available(now + length);
        Some(length)
    }

    fn mark_available(&self, at: Instant) {
        *self.available_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(at);
    }
}

fn sticky_id(upstream: &str, server: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{upstream}/{server}"));
    hex::encode(&digest[..8])
}

/// Passive outlier detection settings.
#[derive(Debug, Clone, Copy)]
pub struct OutlierPolicy {
    /// Failures in a row (5xx answers or connection failures) that eject a server.
    pub consecutive_failures: u32,
    /// The first ejection's length; each further one in a row doubles it.
    pub base_ejection: Duration,
    /// The longest ejection.
    pub max_ejection: Duration,
    /// Most servers of the upstream ejected at once, as a percentage (at least one may be).
    pub max_ejected_percent: u32,
}

impl Default for OutlierPolicy {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerState {
        ServerState::new(
            "test",
            UpstreamServer { authority: "127.0.0.1:1".parse().unwrap(), weight: 4 },
            &UpstreamMetrics::default(),
        )
    }

    #[test]
    fn health_flips_after_rise_and_fall_checks() {
        let state = server();
        let now = Instant::now();
        assert_eq!(state.record_check(false, 2, 3, now), None);
        assert_eq!(state.record_check(false, 2, 3, now), None);
        assert_eq!(state.record_check(false, 2, 3, now), Some(false));
        assert_eq!(state.availability(now), Availability::Unhealthy);
        assert_eq!(state.record_check(true, 2, 3, now), None);
        assert_eq!(state.record_check(true, 2, 3, now), Some(true));
        assert_eq!(state.availability(now), Availability::Available);
    }

    #[test]
    fn ejections_grow_and_end() {
        let state = server();
        let policy = OutlierPolicy {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(25),
            max_ejected_percent: 100,
        };
        let now = Instant::now();
        assert_eq!(state.record_outcome(true, &policy, true, now), None);
        assert_eq!(state.record_outcome(true, &policy, true, now), Some(Duration::from_secs(10)));
        assert_eq!(state.availability(now), Availability::Ejected);
        let later = now + Duration::from_secs(11);
        assert_eq!(state.availability(later), Availability::Available);
        state.record_outcome(true, &policy, true, later);
        assert_eq!(state.record_outcome(true, &policy, true, later), Some(Duration::from_secs(20)));
        let much_later = later + Duration::from_secs(21);
        state.record_outcome(true, &policy, true, much_later);
        assert_eq!(state.record_outcome(true, &policy, true, much_later), Some(Duration::from_secs(25)));
        // Refused by the cap: stays in.
        let fresh = server();
        fresh.record_outcome(true, &policy, false, now);
        assert_eq!(fresh.record_outcome(true, &policy, false, now), None);
    }

    #[test]
    fn slow_start_ramps_the_weight() {
        let state = server();
        let now = Instant::now();
        state.mark_available(now);
        let window = Some(Duration::from_secs(10));
        assert!((state.effective_weight(window, now) - 0.4).abs() < 1e-9);
        assert!((state.effective_weight(window, now + Duration::from_secs(5)) - 2.2).abs() < 1e-9);
        assert_eq!(state.effective_weight(window, now + Duration::from_secs(10)), 4.0);
        assert_eq!(state.effective_weight(None, now), 4.0);
    }
}
