//! Token buckets kept in the store (`kv.take-tokens`): the arithmetic of one take, which the
//! memory backend runs under its namespace lock and the Redis backend runs as the same steps in
//! Lua (`redis.rs`, `TAKE_TOKENS`), by the server's clock.
//!
//! A bucket's stored value is `<milli-tokens>,<refilled-until-ms>`: tokens are counted in
//! thousandths so that slow rates keep the part of a token still refilling, and the clock moves
//! on only by the time the added tokens account for.

use super::KvError;

/// Thousandths of a token.
pub(crate) const MILLI: u64 = 1000;

/// Largest capacity and rate (tokens): keeps the Redis backend's arithmetic, done in doubles,
/// within a thousandth of a token.
pub const MAX_BUCKET_TOKENS: u64 = 1_000_000_000;

/// Longest refill period: a year.
pub const MAX_BUCKET_PERIOD_MS: u64 = 366 * 24 * 3600 * 1000;

/// Slack on a bucket key's expiry past the time it would be full again.
pub(crate) const EXPIRY_SLACK_MS: u64 = 1000;

/// What one take asks for, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    /// Most tokens held.
    pub capacity: u64,
    /// Tokens refilled per period.
    pub rate: u64,
    /// The refill period, in milliseconds.
    pub period_ms: u64,
    /// Tokens this take asks for.
    pub cost: u64,
}

/// A bucket after a take: what the guest is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Whether the tokens were taken.
    pub taken: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub full_in_ms: u64,
    /// When refused, milliseconds until the tokens asked for are there.
    pub retry_in_ms: u64,
}

/// A take's outcome: the answer, and the value to store (none when refused: nothing changes)
/// with its time to live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Take {
    pub(crate) bucket: Bucket,
    pub(crate) store: Option<(String, u64)>,
}

impl BucketSpec {
    /// Checks the bounds the WIT states.
    pub fn new(capacity: u64, rate: u64, period_ms: u64, cost: u64) -> Result<Self, KvError> {
        let invalid = |what: String| Err(KvError::InvalidArgument(what));
        if !(1..=MAX_BUCKET_TOKENS).contains(&capacity) {
            return invalid(format!("capacity {capacity} is not 1 to {MAX_BUCKET_TOKENS}"));
        }
        if !(1..=MAX_BUCKET_TOKENS).contains(&rate) {
            return invalid(format!("rate {rate} is not 1 to {MAX_BUCKET_TOKENS}"));
        }
        if !(1..=MAX_BUCKET_PERIOD_MS).contains(&period_ms) {
            return invalid(format!("period {period_ms} ms is not 1 ms to a year"));
        }
        if cost > capacity {
            return invalid(format!("cost {cost} is more than the capacity {capacity}"));
        }
        Ok(Self { capacity, rate, period_ms, cost })
    }

    /// Milli-tokens refilled in `elapsed_ms`.
    fn refill(&self, elapsed_ms: u64) -> u64 {
        let added = u128::from(elapsed_ms) * u128::from(self.rate) * u128::from(MILLI) / u128::from(self.period_ms);
        u64::try_from(added).unwrap_or(u64::MAX)
    }

    /// Milliseconds until `missing` milli-tokens are refilled, rounded up.
    fn refill_time(&self, missing: u64) -> u64 {
        let time =
            (u128::from(missing) * u128::from(self.period_ms)).div_ceil(u128::from(self.rate) * u128::from(MILLI));
        u64::try_from(time).unwrap_or(u64::MAX)
    }

    /// Milliseconds that refilling `milli_tokens` takes, rounded down.
    fn time_for(&self, milli_tokens: u64) -> u64 {
        let time = u128::from(milli_tokens) * u128::from(self.period_ms) / (u128::from(self.rate) * u128::from(MILLI));
        u64::try_from(time).unwrap_or(u64::MAX)
    }

    /// One take at `now_ms` from the bucket stored as `stored` (none: a full one).
    pub(crate) fn take(&self, stored: Option<&[u8]>, now_ms: u64) -> Result<Take, KvError> {
        let capacity = self.capacity * MILLI;
        let (stored_tokens, last) = match stored {
            None => (capacity, now_ms),
            Some(value) => parse(value).ok_or(KvError::NotANumber)?,
        };
        let elapsed = now_ms.saturating_sub(last);
        let added = if elapsed >= self.refill_time(capacity) { capacity } else { self.refill(elapsed) };
        let tokens = stored_tokens.saturating_add(added).min(capacity);
        let refilled_until =
            if tokens == capacity { now_ms.max(last) } else { last.saturating_add(self.time_for(added)) };
        let cost = self.cost * MILLI;
        if tokens < cost {
            let bucket = Bucket {
                taken: false,
                remaining: tokens / MILLI,
                full_in_ms: self.refill_time(capacity - tokens),
                retry_in_ms: self.refill_time(cost - tokens),
            };
            return Ok(Take { bucket, store: None });
        }
        let left = tokens - cost;
        let full_in_ms = self.refill_time(capacity - left);
        let bucket = Bucket { taken: true, remaining: left / MILLI, full_in_ms, retry_in_ms: 0 };
        let ttl_ms = full_in_ms.saturating_add(EXPIRY_SLACK_MS);
        Ok(Take { bucket, store: Some((format!("{left},{refilled_until}"), ttl_ms)) })
    }
}

fn parse(value: &[u8]) -> Option<(u64, u64)> {
    let (tokens, time) = std::str::from_utf8(value).ok()?.split_once(',')?;
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(tokens) || !digits(time) {
        return None;
    }
    Some((tokens.parse().ok()?, time.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs takes against one stored value, as a backend does.
    struct Held {
        spec: BucketSpec,
        value: Option<String>,
    }

    impl Held {
        fn new(capacity: u64, rate: u64, period_ms: u64) -> Self {
            Self { spec: BucketSpec::new(capacity, rate, period_ms, 1).unwrap(), value: None }
        }

        fn take(&mut self, now_ms: u64) -> Bucket {
            let take = self.spec.take(self.value.as_deref().map(str::as_bytes), now_ms).unwrap();
            if let Some((value, _)) = take.store {
                self.value = Some(value);
            }
            take.bucket
        }
    }

    #[test]
    fn a_bucket_allows_its_capacity_then_refills_at_its_rate() {
        // 10 per second, bursts of 5.
        let mut bucket = Held::new(5, 10, 1000);
        for left in (0..5).rev() {
            let taken = bucket.take(0);
            assert!(taken.taken);
            assert_eq!(taken.remaining, left);
        }
        let refused = bucket.take(0);
        assert!(!refused.taken);
        assert_eq!(refused.retry_in_ms, 100);
        assert_eq!(refused.full_in_ms, 500);
        assert!(!bucket.take(99).taken, "a token takes 100 ms");
        assert!(bucket.take(100).taken);
        // Long after, the bucket is full again, never fuller.
        assert_eq!(bucket.take(1_000_000).remaining, 4);
    }

    #[test]
    fn slow_rates_keep_fractions_of_tokens() {
        // One a minute: requests every 10 s must still earn one token per minute.
        let mut bucket = Held::new(1, 1, 60_000);
        assert!(bucket.take(0).taken);
        let admitted = (1..=12).filter(|step| bucket.take(step * 10_000).taken).count();
        assert_eq!(admitted, 2, "two minutes, two tokens");
    }

    #[test]
    fn frequent_requests_at_a_slow_rate_still_refill() {
        // One token per 10 s, bursts of 2, a request every 3 s: the fractions must add up.
        let mut bucket = Held::new(2, 6, 60_000);
        let admitted = (0..=20).filter(|step| bucket.take(step * 3000).taken).count();
        assert_eq!(admitted, 2 + 6, "2 at first, then one per 10 s over 60 s");
    }

    #[test]
    fn refused_takes_change_nothing_and_the_expiry_follows_the_refill() {
        let spec = BucketSpec::new(2, 1, 1000, 2).unwrap();
        let first = spec.take(None, 5).unwrap();
        assert_eq!(first.store, Some(("0,5".to_owned(), 2000 + EXPIRY_SLACK_MS)));
        let refused = spec.take(Some(b"0,5"), 6).unwrap();
        assert!(!refused.bucket.taken);
        assert_eq!(refused.store, None);
    }

    #[test]
    fn other_values_and_bad_arguments_are_refused() {
        let spec = BucketSpec::new(2, 1, 1000, 1).unwrap();
        assert_eq!(spec.take(Some(b"hello"), 0), Err(KvError::NotANumber));
        assert_eq!(spec.take(Some(b"1,-2"), 0), Err(KvError::NotANumber));
        assert!(matches!(BucketSpec::new(0, 1, 1, 0), Err(KvError::InvalidArgument(_))));
        assert!(matches!(BucketSpec::new(1, 0, 1, 0), Err(KvError::InvalidArgument(_))));
        assert!(matches!(BucketSpec::new(1, 1, 0, 0), Err(KvError::InvalidArgument(_))));
        assert!(matches!(BucketSpec::new(1, 1, 1, 2), Err(KvError::InvalidArgument(_))));
        assert!(matches!(BucketSpec::new(MAX_BUCKET_TOKENS + 1, 1, 1, 0), Err(KvError::InvalidArgument(_))));
    }

    #[test]
    fn the_largest_buckets_do_not_overflow() {
        let spec =
            BucketSpec::new(MAX_BUCKET_TOKENS, MAX_BUCKET_TOKENS, MAX_BUCKET_PERIOD_MS, MAX_BUCKET_TOKENS).unwrap();
        let take = spec.take(None, u64::MAX / 2).unwrap();
        assert!(take.bucket.taken);
        let later = spec.take(take.store.as_ref().map(|(value, _)| value.as_bytes()), u64::MAX).unwrap();
        assert!(later.bucket.taken);
    }
}
