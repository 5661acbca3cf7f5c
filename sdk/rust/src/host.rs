//! The host's capabilities. Each call is checked against what the filter's tenant was granted.

/// Writing to Sluice's log; lines carry route, filter, tenant and request id.
pub mod log {
    use crate::bindings::sluice::filter::log::log;
    use crate::bindings::sluice::filter::types::Level;

    /// Logs at trace level.
    pub fn trace(message: &str) {
        log(Level::Trace, message)
    }
    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Key-value storage in the tenant's namespace.
pub mod kv {
    use std::time::Duration;

    use crate::bindings::sluice::filter::kv as host;
    pub use crate::bindings::sluice::filter::kv::{Bucket, KvError};

    fn millis(ttl: Option<Duration>) -> u64 {
        ttl.map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
    }

    /// Whether `error` says the tenant's backend (Redis) failed or did not answer within its
    /// timeout: a later call may succeed, and what a request does meanwhile (let it through,
    /// refuse it) is the filter's choice.
    pub fn is_unavailable(error: &KvError) -> bool {
        matches!(error, KvError::Other(reason) if reason.starts_with("unavailable: "))
    }

    /// The value under `key`.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        host::get(key)
    }
    /// Stores `value` under `key`, expiring after `ttl` (never with `None`).
    pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), KvError> {
        host::set(key, value.as_ref(), millis(ttl))
    }
    /// Adds `delta` to the integer under `key` and returns the new value; a new key expires
    /// after `ttl`.
    pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        host::increment(key, delta, millis(ttl))
    }
    /// Removes `key`; true if it was present.
    pub fn delete(key: &str) -> Result<bool, KvError> {
        host::delete(key)
    }
    /// Stores `value` under `key` only if its current value is `expected` (`None`: absent), as
    /// one atomic step; false if another instance changed it first (read again and retry).
    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Option<Duration>,
    ) -> Result<bool, KvError> {
        host::compare_and_swap(key, expected, value.as_ref(), millis(ttl))
    }
    /// Takes `cost` tokens from the token bucket under `key` (at most `capacity` tokens, starting
    /// full, refilled by `rate` tokens every `period`), as one atomic step in the store and by its
    /// clock: with a Redis backend, every instance sharing it takes from one bucket in one round
    /// trip, without retries. A refused take changes nothing.
    pub fn take_tokens(key: &str, capacity: u64, rate: u64, period: Duration, cost: u64) -> Result<Bucket, KvError> {
        host::take_tokens(key, capacity, rate, millis(Some(period)), cost)
    }
}

/// Metrics on the admin listener, labelled with tenant and plugin.
pub mod metrics {
    use crate::bindings::sluice::filter::metrics as host;

    fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        labels.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    /// Adds to a counter.
    pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
        host::counter_add(name, &owned(labels), value)
    }
    /// Sets a gauge.
    pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: i64) {
        host::gauge_set(name, &owned(labels), value)
    }
    /// Records a histogram observation.
    pub fn histogram_record(name: &str, labels: &[(&str, &str)], value: f64) {
        host::histogram_record(name, &owned(labels), value)
    }
}

/// HTTP requests to upstreams the tenant was granted.
pub mod callout {
    use crate::bindings::sluice::filter::callout as host;
    pub use crate::bindings::sluice::filter::callout::{CalloutError, CalloutRequest, CalloutResponse};

    /// A GET of `path_with_query` with no headers and the host's default timeout.
    pub fn get(upstream: &str, path_with_query: &str) -> Result<CalloutResponse, CalloutError> {
        send(
            upstream,
            &CalloutRequest {
                method: "GET".into(),
                path_with_query: path_with_query.into(),
                headers: Vec::new(),
                body: Vec::new(),
                timeout_ms: 0,
            },
        )
    }

    /// Sends `request` to the upstream named `upstream`.
    pub fn send(upstream: &str, request: &CalloutRequest) -> Result<CalloutResponse, CalloutError> {
        host::send(upstream, request)
    }
}

/// Time.
pub mod clock {
    use crate::bindings::sluice::filter::clock as host;

    /// Milliseconds since the Unix epoch.
    pub fn now_unix_ms() -> u64 {
        host::now_unix_ms()
    }
    /// Nanoseconds on a monotonic clock.
    pub fn monotonic_ns() -> u64 {
        host::monotonic_ns()
    }
}

/// Randomness from the host's cryptographic generator.
pub mod random {
    use crate::bindings::sluice::filter::random as host;

    /// `len` random bytes.
    pub fn bytes(len: u32) -> Vec<u8> {
        host::bytes(len)
    }
    /// A random 64-bit number.
    pub fn next_u64() -> u64 {
        host::next_u64()
    }
}

/// The request's distributed trace: each filter call has a span of its own (`filter NAME`) under
/// the request's. Does nothing, and [`trace::trace_id`] is `None`, when the request is not traced.
pub mod trace {
    use crate::bindings::sluice::filter::trace as host;

    /// The request's W3C trace id (32 lowercase hex digits), when it is traced: for log lines
    /// and for systems that join on it.
    pub fn trace_id() -> Option<String> {
        host::trace_id()
    }

    /// Sets an attribute on this call's span (keys up to 128 bytes, not starting `sluice.`;
    /// values up to 1 KiB; up to 32 per call).
    pub fn set_attribute(key: &str, value: &str) {
        host::set_attribute(key, value);
    }

    /// Adds an event with attributes to this call's span (up to 32 per call, 16 attributes each).
    pub fn add_event(name: &str, attributes: &[(&str, &str)]) {
        let attributes: Vec<(String, String)> =
            attributes.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
        host::add_event(name, &attributes);
    }
}

/// The client of the request being served: where it is, and banning it from the tenant's routes.
pub mod client {
    use std::time::Duration;

    use crate::bindings::sluice::filter::client as host;
    pub use crate::bindings::sluice::filter::client::{BanError, ClientLocation};

    /// Where the client is, from the proxy's GeoIP databases; fields are `None` where unknown.
    pub fn location() -> ClientLocation {
        host::location()
    }

    /// Bans the client from the tenant's routes for `duration` (at most the tenant's
    /// `ban_max_duration`): its requests are refused with 403 before any filter runs. Returns the
    /// duration applied.
    pub fn ban(duration: Duration, reason: &str) -> Result<Duration, BanError> {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        host::ban(millis, reason).map(Duration::from_millis)
    }

    /// "Ban a client after N offences within a window", as filter configs write it:
    /// `{ "after": 5, "within": "1m", "duration": "10m" }`.
    #[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct BanPolicy {
        /// Offences that earn a ban.
        pub after: u32,
        /// The window they are counted in, such as `"1m"` (counts expire with it).
        pub within: String,
        /// How long the ban lasts, such as `"10m"`.
        pub duration: String,
    }

    impl BanPolicy {
        /// Checks the policy: `after` at least 1, both durations readable.
        pub fn validate(&self) -> Result<(), String> {
            if self.after == 0 {
                return Err("ban.after must be at least 1".into());
            }
            parse_duration(&self.within).map_err(|err| format!("ban.within: {err}"))?;
            parse_duration(&self.duration).map_err(|err| format!("ban.duration: {err}"))?;
            Ok(())
        }

        /// Counts one offence of the client `subject` (its address) under `scope` in the
        /// tenant's key-value store, and bans the client once it has `after` of them within the
        /// window. Returns whether this offence earned the ban.
        pub fn offence(&self, scope: &str, subject: &str, reason: &str) -> Result<bool, String> {
            let within = parse_duration(&self.within)?;
            let key = format!("ban:{scope}:{subject}");
            let count = super::kv::increment(&key, 1, Some(within)).map_err(|err| format!("{err:?}"))?;
            if count < i64::from(self.after) {
                return Ok(false);
            }
            let _ = super::kv::delete(&key);
            ban(parse_duration(&self.duration)?, reason).map_err(|err| format!("{err:?}"))?;
            Ok(true)
        }
    }

    /// A duration as configs write it: a number and a unit, `ms`, `s`, `m`, `h` or `d`
    /// (`"500ms"`, `"10m"`).
    pub fn parse_duration(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(digits);
        let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as \"10m\""))?;
        let millis = match unit.trim() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(format!("{text:?}: the unit must be ms, s, m, h or d")),
        };
        if number == 0 {
            return Err(format!("{text:?} must be more than zero"));
        }
        Ok(Duration::from_millis(number.saturating_mul(millis)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn durations_read_as_configs_write_them() {
            assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
            assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
            assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
            assert!(parse_duration("10").is_err());
            assert!(parse_duration("0s").is_err());
            assert!(parse_duration("m").is_err());
        }

        #[test]
        fn policies_are_checked() {
            let policy = |after, within: &str| BanPolicy { after, within: within.into(), duration: "10m".into() };
            assert!(policy(3, "1m").validate().is_ok());
            assert!(policy(0, "1m").validate().is_err());
            assert!(policy(3, "soon").validate().is_err());
        }
    }
}
