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
    pub use crate::bindings::sluice::filter::kv::KvError;

    fn millis(ttl: Option<Duration>) -> u64 {
        ttl.map_or(0, |ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
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
