//! The two limiting algorithms, over a [`Store`] that is the host's key-value store in a
//! filter and a map in tests. Time comes in as an argument, so the arithmetic is tested without
//! clocks.
//!
//! Every instance of the filter, on every worker, shares the tenant's store: the limits hold for
//! the proxy as a whole, not per instance. The token bucket is the store's own (`kv.take-tokens`:
//! one atomic step by the store's clock, one round trip to Redis); the sliding window needs only
//! atomic increments.

use std::time::Duration;

/// Which algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Refills `limit` tokens per period, up to `burst`; each request takes one.
    TokenBucket,
    /// At most `limit` requests in any period, estimated from this window's count and the
    /// previous window's, weighted by how much of it still overlaps.
    SlidingWindow,
}

/// The shared store, as the limiter needs it.
pub trait Store {
    /// The value under `key`.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Adds `delta` and returns the new value; a new key lives for `ttl`.
    fn increment(&mut self, key: &str, delta: i64, ttl: Duration) -> Result<i64, String>;
    /// Takes one token from the bucket under `key` (at most `capacity`, refilled by `rate` every
    /// `period_ms`), atomically in the store.
    fn take_tokens(&mut self, key: &str, capacity: u64, rate: u64, period_ms: u64) -> Result<TokenTake, String>;
}

/// A bucket after a take, as the store reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTake {
    /// Whether the token was taken.
    pub taken: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub full_in_ms: u64,
    /// When refused, milliseconds until a token is there.
    pub retry_in_ms: u64,
}

/// A limit: how many requests per period.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Requests per period.
    pub limit: u64,
    /// The period, in milliseconds.
    pub period_ms: u64,
    /// Token bucket capacity.
    pub burst: u64,
}

/// The decision for one request, with what the `RateLimit-*` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// Requests left right now.
    pub remaining: u64,
    /// Seconds until the limit is fully available again.
    pub reset_secs: u64,
    /// Seconds to wait before trying again (when refused).
    pub retry_after_secs: u64,
}

fn seconds_ceil(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl Limit {
    /// Takes one request from the limit for `key` at time `now_ms` (the sliding window's clock;
    /// the token bucket goes by the store's).
    pub fn take(&self, store: &mut dyn Store, key: &str, now_ms: u64) -> Result<Verdict, String> {
        match self.algorithm {
            Algorithm::TokenBucket => self.take_token(store, key),
            Algorithm::SlidingWindow => self.take_window(store, key, now_ms),
        }
    }

    fn take_token(&self, store: &mut dyn Store, key: &str) -> Result<Verdict, String> {
        let bucket = store.take_tokens(key, self.burst, self.limit, self.period_ms)?;
        Ok(Verdict {
            allowed: bucket.taken,
            remaining: bucket.remaining,
            reset_secs: seconds_ceil(bucket.full_in_ms),
            retry_after_secs: if bucket.taken { 0 } else { seconds_ceil(bucket.retry_in_ms).max(1) },
        })
    }

    fn take_window(&self, store: &mut dyn Store, key: &str, now_ms: u64) -> Result<Verdict, String> {
        let window = now_ms / self.period_ms;
        let into_window = now_ms % self.period_ms;
        let ttl = Duration::from_millis(self.period_ms * 2 + 1000);
        let current = store.increment(&format!("{key}:{window}"), 1, ttl)?.max(0) as u64;
        let previous = match window.checked_sub(1) {
            Some(previous) => store
                .get(&format!("{key}:{previous}"))?
                .and_then(|value| String::from_utf8(value).ok()?.parse::<u64>().ok())
                .unwrap_or(0),
            None => 0,
        };
        // The previous window's requests still count for the part of it inside the last period.
        let overlap = (self.period_ms - into_window) as f64 / self.period_ms as f64;
        let estimate = previous as f64 * overlap + current as f64;
        let until_next_window = self.period_ms - into_window;
        if estimate > self.limit as f64 {
            // A refused request does not use up the limit.
            store.increment(&format!("{key}:{window}"), -1, ttl)?;
            let counted = current - 1;
            let wait_ms = if counted >= self.limit || previous == 0 {
                until_next_window
            } else {
                // When the previous window's weight has fallen enough for one more request.
                let excess = previous as f64 * overlap + counted as f64 + 1.0 - self.limit as f64;
                ((excess / previous as f64) * self.period_ms as f64).ceil() as u64
            };
            return Ok(Verdict {
                allowed: false,
                remaining: 0,
                reset_secs: seconds_ceil(until_next_window),
                retry_after_secs: seconds_ceil(wait_ms.min(until_next_window)).max(1),
            });
        }
        Ok(Verdict {
            allowed: true,
            remaining: (self.limit as f64 - estimate).floor().max(0.0) as u64,
            reset_secs: seconds_ceil(until_next_window),
            retry_after_secs: 0,
        })
    }
}

/// Most keys one instance counts locally at once; past it, counts of other windows are dropped
/// first, then everything (the next request of each key reads the shared count again).
const MAX_LOCAL_KEYS: usize = 10_000;

/// Approximate counting, for high volume on a shared (Redis) store: each filter instance counts
/// in fixed windows locally and adds its count to the shared one at most once per
/// `flush_ms` (reading the total back), instead of one round trip per request.
///
/// The price is a bounded overshoot: between two flushes an instance decides on the total it
/// read last plus its own requests, so with `n` instances (across all proxies) each admitting at
/// most `r` requests per flush interval, a window admits at most `limit + (n - 1) * r` (and never
/// more than `n * limit`). Fixed windows also let up to twice the limit through across a window
/// boundary, as any fixed-window limiter does.
#[derive(Debug)]
pub struct Approximate {
    flush_ms: u64,
    counts: std::collections::HashMap<String, LocalCount>,
}

#[derive(Debug, Clone, Copy)]
struct LocalCount {
    window: u64,
    /// Admitted here, not yet added to the shared count.
    pending: u64,
    /// The shared count as last read.
    shared: u64,
    flushed_at_ms: u64,
}

impl Approximate {
    /// Counting that flushes at most every `flush_ms`.
    pub fn new(flush_ms: u64) -> Self {
        Self { flush_ms, counts: std::collections::HashMap::new() }
    }

    /// Takes one request from `limit` for `key` at `now_ms`.
    pub fn take(&mut self, limit: &Limit, store: &mut dyn Store, key: &str, now_ms: u64) -> Result<Verdict, String> {
        let window = now_ms / limit.period_ms;
        let until_next_window = limit.period_ms - now_ms % limit.period_ms;
        if self.counts.len() >= MAX_LOCAL_KEYS && !self.counts.contains_key(key) {
            self.counts.retain(|_, count| count.window == window);
            if self.counts.len() >= MAX_LOCAL_KEYS {
                self.counts.clear();
            }
        }
        let count =
            self.counts.entry(key.to_owned()).or_insert(LocalCount { window, pending: 0, shared: 0, flushed_at_ms: 0 });
        if count.window != window {
            // A new window: what was pending belonged to the old one, which no longer matters.
            *count = LocalCount { window, pending: 0, shared: 0, flushed_at_ms: 0 };
        }
        let refused = Verdict {
            allowed: false,
            remaining: 0,
            reset_secs: seconds_ceil(until_next_window),
            retry_after_secs: seconds_ceil(until_next_window).max(1),
        };
        let due = count.flushed_at_ms == 0 || now_ms >= count.flushed_at_ms.saturating_add(self.flush_ms);
        let shared_key = format!("{key}:a:{window}");
        let ttl = Duration::from_millis(limit.period_ms + 1000);
        let total = if due {
            // Flush, counting this request too; take it back if it is one too many.
            let added = i64::try_from(count.pending + 1).unwrap_or(i64::MAX);
            let total = store.increment(&shared_key, added, ttl)?.max(0) as u64;
            count.pending = 0;
            count.flushed_at_ms = now_ms.max(1);
            count.shared = total;
            if total > limit.limit {
                store.increment(&shared_key, -1, ttl)?;
                count.shared = total - 1;
                return Ok(refused);
            }
            total
        } else {
            let total = count.shared + count.pending + 1;
            if total > limit.limit {
                return Ok(refused);
            }
            count.pending += 1;
            total
        };
        Ok(Verdict {
            allowed: true,
            remaining: limit.limit.saturating_sub(total),
            reset_secs: seconds_ceil(until_next_window),
            retry_after_secs: 0,
        })
    }
}

/// Parses a period such as `"1s"`, `"500ms"`, `"1m"`, `"1h"`, `"1d"`.
pub fn parse_period(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("period {text:?} must look like \"1s\", \"10m\" or \"1h\""))?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("period {text:?}: unknown unit {other:?} (ms, s, m, h or d)")),
    };
    match number.checked_mul(unit_ms) {
        Some(0) | None => Err(format!("period {text:?} must be above zero")),
        Some(ms) => Ok(ms),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A store in memory, ignoring expiry (the tests move time explicitly).
    #[derive(Default)]
    pub(crate) struct MemoryStore(pub(crate) HashMap<String, Vec<u8>>);

    impl Store for MemoryStore {
        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.0.get(key).cloned())
        }
        fn increment(&mut self, key: &str, delta: i64, _ttl: Duration) -> Result<i64, String> {
            let value = self.0.get(key).map_or(0, |v| String::from_utf8_lossy(v).parse::<i64>().unwrap()) + delta;
            self.0.insert(key.into(), value.to_string().into_bytes());
            Ok(value)
        }
        /// A bucket that never refills (the refill arithmetic is the host's, tested there):
        /// the tokens taken are counted under the key.
        fn take_tokens(&mut self, key: &str, capacity: u64, rate: u64, period_ms: u64) -> Result<TokenTake, String> {
            let taken = u64::try_from(self.increment(key, 0, Duration::ZERO)?).unwrap();
            let per_token_ms = period_ms.div_ceil(rate);
            if taken >= capacity {
                return Ok(TokenTake {
                    taken: false,
                    remaining: 0,
                    full_in_ms: capacity * per_token_ms,
                    retry_in_ms: per_token_ms,
                });
            }
            self.increment(key, 1, Duration::ZERO)?;
            let left = capacity - taken - 1;
            Ok(TokenTake { taken: true, remaining: left, full_in_ms: (taken + 1) * per_token_ms, retry_in_ms: 0 })
        }
    }

    fn window_limit(limit: u64) -> Limit {
        Limit { algorithm: Algorithm::SlidingWindow, limit, period_ms: 60_000, burst: limit }
    }

    #[test]
    fn approximate_counting_alone_admits_exactly_the_limit_and_flushes_rarely() {
        struct Counting(MemoryStore, usize);
        impl Store for Counting {
            fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
                self.0.get(key)
            }
            fn increment(&mut self, key: &str, delta: i64, ttl: Duration) -> Result<i64, String> {
                self.1 += 1;
                self.0.increment(key, delta, ttl)
            }
            fn take_tokens(&mut self, key: &str, capacity: u64, rate: u64, period: u64) -> Result<TokenTake, String> {
                self.0.take_tokens(key, capacity, rate, period)
            }
        }
        let limit = window_limit(100);
        let mut store = Counting(MemoryStore::default(), 0);
        let mut counter = Approximate::new(10);
        // 300 requests over 30 ms: one instance, so no overshoot at all.
        let admitted = (0..300u64)
            .filter(|index| counter.take(&limit, &mut store, "k", 1_000_000 + index / 10).unwrap().allowed)
            .count();
        assert_eq!(admitted, 100);
        assert!(store.1 <= 8, "{} round trips for 300 requests", store.1);
    }

    #[test]
    fn approximate_overshoot_stays_within_its_bound() {
        let limit = window_limit(100);
        let mut store = MemoryStore::default();
        let mut instances: Vec<Approximate> = (0..4).map(|_| Approximate::new(10)).collect();
        let mut admitted = 0;
        // Requests spread over the instances in turn, 4 per millisecond for 100 ms: each instance
        // gets 10 requests per 10 ms flush interval.
        for step in 0..400u64 {
            let now = 2_000_000 + step / 4;
            if instances[(step % 4) as usize].take(&limit, &mut store, "k", now).unwrap().allowed {
                admitted += 1;
            }
        }
        let bound = 100 + (4 - 1) * 10;
        assert!(admitted >= 100 && admitted as u64 <= bound, "admitted {admitted}, bound {bound}");
    }

    #[test]
    fn approximate_counts_start_over_each_window() {
        let limit = window_limit(2);
        let mut store = MemoryStore::default();
        let mut counter = Approximate::new(10);
        let taken: Vec<bool> =
            (0..3).map(|index| counter.take(&limit, &mut store, "k", 60_000 + index).unwrap().allowed).collect();
        assert_eq!(taken, [true, true, false]);
        assert!(counter.take(&limit, &mut store, "k", 120_000).unwrap().allowed, "the next window is fresh");
    }

    #[test]
    fn a_bucket_take_becomes_a_verdict_with_its_headers() {
        // 10 per second, bursts of 5: the store answers, the filter reports.
        let limit = Limit { algorithm: Algorithm::TokenBucket, limit: 10, period_ms: 1000, burst: 5 };
        let mut store = MemoryStore::default();
        for remaining in (0..5).rev() {
            let verdict = limit.take(&mut store, "k", 0).unwrap();
            assert!(verdict.allowed);
            assert_eq!(verdict.remaining, remaining);
            assert_eq!(verdict.retry_after_secs, 0);
        }
        let refused = limit.take(&mut store, "k", 0).unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_secs, 1, "a token every 100 ms, rounded up to a second");
        assert_eq!(refused.reset_secs, 1);
    }

    #[test]
    fn a_window_allows_its_limit_and_weighs_the_previous_window() {
        let limit = Limit { algorithm: Algorithm::SlidingWindow, limit: 10, period_ms: 60_000, burst: 10 };
        let mut store = MemoryStore::default();
        let allowed = (0..12).filter(|_| limit.take(&mut store, "k", 60_000).unwrap().allowed).count();
        assert_eq!(allowed, 10);
        assert_eq!(store.0["k:1"], b"10", "refused requests are not counted");
        // Half-way into the next window, half of the previous window's 10 still count.
        let allowed = (0..12).filter(|_| limit.take(&mut store, "k", 150_000).unwrap().allowed).count();
        assert_eq!(allowed, 5);
        let refused = limit.take(&mut store, "k", 150_000).unwrap();
        assert!(!refused.allowed);
        assert!(refused.retry_after_secs >= 1 && refused.retry_after_secs <= 30, "{refused:?}");
        // Two windows later the old counts have no weight.
        assert_eq!((0..12).filter(|_| limit.take(&mut store, "k", 300_000).unwrap().allowed).count(), 10);
    }

    #[test]
    fn periods_parse() {
        assert_eq!(parse_period("1s"), Ok(1000));
        assert_eq!(parse_period("250ms"), Ok(250));
        assert_eq!(parse_period("10m"), Ok(600_000));
        assert_eq!(parse_period("1h"), Ok(3_600_000));
        assert!(parse_period("0s").is_err());
        assert!(parse_period("5 fortnights").unwrap_err().contains("unknown unit"));
        assert!(parse_period("s").is_err());
    }
}
