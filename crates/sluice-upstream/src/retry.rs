//! When a failed try is sent again (to another server), and the budget that keeps retries from
//! multiplying an outage: retries may add at most a configured share to the requests, plus a
//! small floor per second so that a quiet upstream can still retry.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};

/// What a try ended with, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryFailure {
    /// No connection could be made (nothing reached the server).
    Connect,
    /// No response head within the per-try timeout.
    Timeout,
    /// The server answered with this status.
    Status(StatusCode),
    /// The connection broke after the request was sent.
    Reset,
}

/// An upstream's retry settings.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries after the first.
    pub retries: u32,
    /// Retry after a connection failure.
    pub on_connect_failure: bool,
    /// Retry after a per-try timeout.
    pub on_timeout: bool,
    /// Retry after a broken connection.
    pub on_reset: bool,
    /// Retry when the server answers one of these.
    pub on_statuses: Vec<StatusCode>,
    /// Methods that may be retried (idempotent ones by default).
    pub methods: Vec<Method>,
    /// Time allowed for each try's response head; the route's timeout still bounds the whole.
    pub per_try_timeout: Option<Duration>,
    /// Retries may add at most this share of the upstream's requests.
    pub budget_ratio: f64,
    /// Retries allowed per second regardless of the ratio.
    pub budget_min_per_second: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 1,
            on_connect_failure: true,
            on_timeout: false,
            // Safe for idempotent methods only, which `retries_after` checks.
            on_reset: true,
            on_statuses: Vec::new(),
            methods: vec![Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE, Method::TRACE],
            per_try_timeout: None,
            budget_ratio: 0.2,
            budget_min_per_second: 10.0,
        }
    }
}

impl RetryPolicy {
    /// Whether a try that failed this way may be retried for this method. A connection that
    /// was never made is safe to retry for any method: the server saw nothing.
    pub fn retries_after(&self, failure: TryFailure, method: &Method) -> bool {
        let idempotent = self.methods.contains(method);
        match failure {
            TryFailure::Connect => self.on_connect_failure,
            TryFailure::Timeout => self.on_timeout && idempotent,
            TryFailure::Reset => self.on_reset && idempotent,
            TryFailure::Status(status) => self.on_statuses.contains(&status) && idempotent,
        }
    }
}

/// The retry budget: a bucket that every request fills by `ratio` and every retry empties by
/// one, refilled by `min_per_second` over time and capped so that a quiet spell cannot bank a
/// burst.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: f64,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    refilled: Instant,
}

impl RetryBudget {
    /// A budget starting with room for one second's floor of retries.
    pub fn new(ratio: f64, min_per_second: f64) -> Self {
        let state = BudgetState { tokens: min_per_second.max(1.0), refilled: Instant::now() };
        Self { ratio, min_per_second, state: Mutex::new(state) }
    }

    fn cap(&self) -> f64 {
        // About ten seconds' worth of the floor, and at least a few retries.
        (self.min_per_second * 10.0).max(10.0)
    }

    /// Counts a first try.
    pub fn deposit(&self) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.tokens = (state.tokens + self.ratio).min(self.cap());
    }

    /// Takes one retry from the budget, if it has one.
    pub fn withdraw(&self, now: Instant) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.refilled = now;
        state.tokens = (state.tokens + elapsed * self.min_per_second).min(self.cap());
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_retry_after_the_server_saw_the_request() {
        let policy = RetryPolicy { on_statuses: vec![StatusCode::SERVICE_UNAVAILABLE], ..RetryPolicy::default() };
        assert!(policy.retries_after(TryFailure::Connect, &Method::POST));
        assert!(policy.retries_after(TryFailure::Status(StatusCode::SERVICE_UNAVAILABLE), &Method::GET));
        assert!(!policy.retries_after(TryFailure::Status(StatusCode::SERVICE_UNAVAILABLE), &Method::POST));
        assert!(!policy.retries_after(TryFailure::Status(StatusCode::BAD_GATEWAY), &Method::GET));
        assert!(!policy.retries_after(TryFailure::Timeout, &Method::GET));
        assert!(policy.retries_after(TryFailure::Reset, &Method::GET));
        assert!(!policy.retries_after(TryFailure::Reset, &Method::POST));
    }

    #[test]
    fn the_budget_allows_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 0.0);
        let now = Instant::now();
        // The starting token.
        assert!(budget.withdraw(now));
        let mut allowed = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw(now) {
                allowed += 1;
            }
        }
        assert!((199..=200).contains(&allowed), "{allowed}");
    }

    #[test]
    fn the_floor_refills_with_time() {
        let budget = RetryBudget::new(0.0, 5.0);
        let start = Instant::now();
        let mut allowed = 0;
        while budget.withdraw(start) {
            allowed += 1;
        }
        assert_eq!(allowed, 5);
        assert!(budget.withdraw(start + Duration::from_millis(250)));
        assert!(!budget.withdraw(start + Duration::from_millis(260)));
    }
}
