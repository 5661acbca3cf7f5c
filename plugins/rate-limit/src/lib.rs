//! The `rate-limit` filter: counts requests per key in the tenant's key-value store and answers
//! 429 past the limit, with `Retry-After` and the `RateLimit-*` headers.
//!
//! The algorithms are in [`limiter`] and the key sources in [`key`], both tested natively.

pub mod key;
pub mod limiter;

use std::time::Duration;

use key::KeySource;
use limiter::{Algorithm, Limit, Store, TokenTake, Verdict};
use serde::Deserialize;
use sluice_sdk::{Decision, Filter, LocalResponse, Phases, Request, Response, clock, export_filter, kv, log, metrics};

/// The filter's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `token-bucket` (default) or `sliding-window`.
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
    /// Requests per period.
    pub limit: u64,
    /// The period: `"1s"`, `"1m"`, `"1h"`.
    pub period: String,
    /// Token bucket capacity: how many requests may come at once after a quiet spell
    /// (default: `limit`).
    pub burst: Option<u64>,
    /// What to count by: `client-ip` (default), `header:NAME` or `claim:NAME`.
    #[serde(default = "default_key")]
    pub key: String,
    /// Requests without the key (no such header or claim) are counted by client IP instead
    /// (default); `false` refuses them with 400.
    #[serde(default = "yes")]
    pub missing_key_uses_client_ip: bool,
    /// Names the counters: routes with the same scope share their limits (default: the route).
    pub scope: Option<String>,
    /// Send `RateLimit-*` headers on allowed responses too (they are always on 429s).
    #[serde(default = "yes")]
    pub headers: bool,
    /// When the store refuses (its quota is full), let requests through (default) rather than
    /// answering 503.
    #[serde(default = "yes")]
    pub allow_on_store_error: bool,
    /// `exact` (default: every request counted in the store) or `approximate` (counted locally
    /// and flushed to the store every `flush_interval`; for high volume on a Redis backend, with
    /// a bounded overshoot: see the README).
    #[serde(default)]
    pub mode: Mode,
    /// How often `approximate` adds its local counts to the shared one (default `"10ms"`).
    pub flush_interval: Option<String>,
    /// Ban clients that keep overrunning: after `after` refused requests within `within`, the
    /// client is banned from the tenant's routes for `duration` (needs the tenant's
    /// `ban_max_duration` grant).
    pub ban: Option<sluice_sdk::client::BanPolicy>,
}

/// Exact or approximate counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every request counted in the store.
    #[default]
    Exact,
    /// Counted locally in fixed windows, flushed to the store now and then.
    Approximate,
}

fn default_algorithm() -> Algorithm {
    Algorithm::TokenBucket
}
fn default_key() -> String {
    "client-ip".into()
}
fn yes() -> bool {
    true
}

/// Largest token-bucket limit and burst the store takes.
const MAX_TOKENS: u64 = 1_000_000_000;
/// Longest token-bucket period the store takes.
const MAX_PERIOD_MS: u64 = 366 * 86_400_000;

/// One instance: the limit, and the verdict owed to the response in flight.
pub struct RateLimit {
    limit: Limit,
    source: KeySource,
    config: Config,
    policy: String,
    pending: Option<Verdict>,
    approximate: Option<limiter::Approximate>,
}

impl Filter for RateLimit {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.limit == 0 {
            return Err("limit must be at least 1".into());
        }
        let period_ms = limiter::parse_period(&config.period)?;
        let burst = config.burst.unwrap_or(config.limit);
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        // The store's token buckets go to a billion tokens over at most a year.
        if config.algorithm == Algorithm::TokenBucket {
            if config.limit > MAX_TOKENS || burst > MAX_TOKENS {
                return Err(format!("limit and burst must be at most {MAX_TOKENS} for the token bucket"));
            }
            if period_ms > MAX_PERIOD_MS {
                return Err("period must be at most a year (366d) for the token bucket".into());
            }
        }
        if config.algorithm == Algorithm::SlidingWindow && config.burst.is_some() {
            return Err("burst applies to the token bucket only".into());
        }
        let source = KeySource::parse(&config.key)?;
        if let Some(ban) = &config.ban {
            ban.validate()?;
        }
        let limit = Limit { algorithm: config.algorithm, limit: config.limit, period_ms, burst };
        let policy = format!("{};w={}", config.limit, period_ms.div_ceil(1000));
        let approximate = match config.mode {
            Mode::Exact if config.flush_interval.is_some() => {
                return Err("flush_interval applies to mode = \"approximate\" only".into());
            }
            Mode::Exact => None,
            Mode::Approximate if config.burst.is_some() => {
                return Err("burst applies to the token bucket; approximate counts in fixed windows".into());
            }
            Mode::Approximate => {
                let flush_ms = limiter::parse_period(config.flush_interval.as_deref().unwrap_or("10ms"))?;
                if flush_ms >= period_ms {
                    return Err("flush_interval must be shorter than the period".into());
                }
                Some(limiter::Approximate::new(flush_ms))
            }
        };
        Ok(Self { limit, source, config, policy, pending: None, approximate })
    }

    fn phases(&self) -> Phases {
        if self.config.headers { Phases::REQUEST_HEADERS | Phases::RESPONSE_HEADERS } else { Phases::REQUEST_HEADERS }
    }

    fn on_request(&mut self, request: &Request) -> Decision {
        self.pending = None;
        let subject = match &self.source {
            KeySource::ClientIp => Some(request.client_ip()),
            KeySource::Header(name) => request.header_str(name).filter(|value| !value.is_empty()),
            KeySource::Claim(name) => {
                request.header_str("authorization").and_then(|auth| key::bearer_claim(&auth, name))
            }
        };
        let (label, subject) = match subject {
            Some(subject) => (self.source.label(), subject),
            None if self.config.missing_key_uses_client_ip => ("ip".to_owned(), request.client_ip()),
            None => {
                return Decision::Respond(
                    LocalResponse::new(400).header("content-type", "text/plain; charset=utf-8").body(format!(
                        "the rate limit key ({}) is missing (request {})\n",
                        self.config.key,
                        request.request_id()
                    )),
                );
            }
        };
        let scope = self.config.scope.clone().unwrap_or_else(|| request.route());
        let store_key = format!("rl:{scope}:{label}:{subject}");
        let now = clock::now_unix_ms();
        let taken = match &mut self.approximate {
            Some(counter) => counter.take(&self.limit, &mut HostStore, &store_key, now),
            None => self.limit.take(&mut HostStore, &store_key, now),
        };
        match taken {
            Ok(verdict) if verdict.allowed => {
                metrics::counter_add("rate_limit_requests_total", &[("scope", &scope), ("result", "allowed")], 1);
                self.pending = Some(verdict);
                Decision::Continue
            }
            Ok(verdict) => {
                metrics::counter_add("rate_limit_requests_total", &[("scope", &scope), ("result", "limited")], 1);
                if let Some(policy) = &self.config.ban {
                    let reason = format!("rate-limit {scope}: {} refused requests", policy.after);
                    match policy.offence(&format!("rl:{scope}"), &request.client_ip(), &reason) {
                        Ok(true) => log::warn(&format!(
                            "rate-limit: banned {} for {} after {reason}",
                            request.client_ip(),
                            policy.duration
                        )),
                        Ok(false) => {}
                        Err(error) => log::warn(&format!("rate-limit: could not count the overrun or ban: {error}")),
                    }
                }
                let response = LocalResponse::new(429)
                    .header("retry-after", verdict.retry_after_secs.to_string())
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(format!(
                        "rate limit exceeded; retry in {} s (request {})\n",
                        verdict.retry_after_secs,
                        request.request_id()
                    ));
                Decision::Respond(
                    self.headers(verdict)
                        .into_iter()
                        .fold(response, |response, (name, value)| response.header(name, value)),
                )
            }
            Err(reason) => {
                log::warn(&format!("rate-limit: store refused ({reason}); scope {scope}"));
                metrics::counter_add("rate_limit_requests_total", &[("scope", &scope), ("result", "store_error")], 1);
                if self.config.allow_on_store_error {
                    Decision::Continue
                } else {
                    Decision::Respond(
                        LocalResponse::new(503)
                            .body(format!("rate limit unavailable (request {})\n", request.request_id())),
                    )
                }
            }
        }
    }

    fn on_response(&mut self, _request: &Request, response: &Response) -> Decision {
        if let Some(verdict) = self.pending.take() {
            for (name, value) in self.headers(verdict) {
                let _ = response.set_header(name, value);
            }
        }
        Decision::Continue
    }
}

impl RateLimit {
    /// The `RateLimit-*` header fields (draft-ietf-httpapi-ratelimit-headers).
    fn headers(&self, verdict: Verdict) -> [(&'static str, String); 4] {
        [
            ("ratelimit-limit", self.limit.limit.to_string()),
            ("ratelimit-remaining", verdict.remaining.to_string()),
            ("ratelimit-reset", verdict.reset_secs.to_string()),
            ("ratelimit-policy", self.policy.clone()),
        ]
    }
}

export_filter!(RateLimit);

/// The tenant's key-value store.
struct HostStore;

impl Store for HostStore {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        kv::get(key).map_err(|err| format!("{err:?}"))
    }
    fn increment(&mut self, key: &str, delta: i64, lifetime: Duration) -> Result<i64, String> {
        kv::increment(key, delta, Some(lifetime)).map_err(|err| format!("{err:?}"))
    }
    fn take_tokens(&mut self, key: &str, capacity: u64, rate: u64, period_ms: u64) -> Result<TokenTake, String> {
        let bucket = kv::take_tokens(key, capacity, rate, Duration::from_millis(period_ms), 1)
            .map_err(|err| format!("{err:?}"))?;
        Ok(TokenTake {
            taken: bucket.taken,
            remaining: bucket.remaining,
            full_in_ms: bucket.full_in_ms,
            retry_in_ms: bucket.retry_in_ms,
        })
    }
}
