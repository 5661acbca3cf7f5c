//! Per-tenant metering: what each tenant's code and routes cost, for billing.
//!
//! Each (tenant, route, filter) has a [`Usage`]: guest CPU time (the kernel's count for the
//! thread a call ran on, see `long_calls::CallClock`), calls, instances started, linear memory
//! (its peak and its integral over time, in byte-seconds), callouts and their bytes, key-value
//! operations and their bytes. Each (tenant, route) has one more for requests and response
//! bytes. Figures are atomic counters: a call adds to them without a lock, and the meters are
//! found once, when a filter's pool or a route is compiled, never per request.
//!
//! The [`UsageLedger`] owns every meter and lives as long as the [`Runtime`](crate::Runtime), so
//! usage carries on across reloads: a route or filter that a reload keeps gets the same meter
//! back. A thread of its own closes a bucket every [`UsageLedger::resolution`], keeping what was
//! used in it (only the meters that moved) for [`HISTORY_BUCKETS`] buckets, from which
//! `GET /tenants/usage` reports per interval.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long one bucket of history covers.
pub const DEFAULT_RESOLUTION: Duration = Duration::from_secs(60);

/// Buckets of history kept: a day at the default resolution.
pub const HISTORY_BUCKETS: usize = 24 * 60;

/// Whose usage a meter counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterKey {
    /// The tenant.
    pub tenant: Arc<str>,
    /// The route.
    pub route: Arc<str>,
    /// The filter in the route; `None` for the route's own figures (requests, response bytes).
    pub filter: Option<Arc<str>>,
}

/// One meter's running totals.
#[derive(Debug)]
pub struct Usage {
    guest_cpu_ns: AtomicU64,
    calls: AtomicU64,
    instances_started: AtomicU64,
    callouts: AtomicU64,
    callout_bytes: AtomicU64,
    kv_operations: AtomicU64,
    kv_bytes: AtomicU64,
    requests: AtomicU64,
    response_bytes: AtomicU64,
    memory: Mutex<MemoryIntegral>,
    /// A moving average of the filter's calls' guest time, in ns: whether they are long enough
    /// to read the kernel's count at their start ([`Usage::measures_exactly`]).
    typical_call_ns: AtomicU64,
}

/// Calls of a filter that usually take this long read the kernel's CPU count when they start:
/// the half-microsecond that costs is 1% of such a call.
const EXACT_FROM: Duration = Duration::from_micros(50);

/// The linear memory the meter's live instances hold, integrated over time. It changes only when
/// an instance starts, grows or goes, never per call.
#[derive(Debug)]
struct MemoryIntegral {
    live_bytes: u64,
    /// Byte-nanoseconds up to `since`.
    byte_ns: u128,
    since: Instant,
    /// The most `live_bytes` has been since the last bucket closed.
    peak_bytes: u64,
}

impl Default for Usage {
    fn default() -> Self {
        Self {
            guest_cpu_ns: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            instances_started: AtomicU64::new(0),
            callouts: AtomicU64::new(0),
            callout_bytes: AtomicU64::new(0),
            kv_operations: AtomicU64::new(0),
            kv_bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            response_bytes: AtomicU64::new(0),
            memory: Mutex::new(MemoryIntegral { live_bytes: 0, byte_ns: 0, since: Instant::now(), peak_bytes: 0 }),
            typical_call_ns: AtomicU64::new(0),
        }
    }
}

fn add(counter: &AtomicU64, amount: u64) {
    counter.fetch_add(amount, Ordering::Relaxed);
}

/// `duration` in whole nanoseconds, saturating.
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Usage {
    /// One guest call that took `cpu`.
    pub fn record_call(&self, cpu: Duration) {
        add(&self.calls, 1);
        add(&self.guest_cpu_ns, nanos(cpu));
        // An average over about the last eight calls; concurrent updates may lose one, which an
        // average shrugs off.
        let typical = self.typical_call_ns.load(Ordering::Relaxed);
        let updated = typical - typical / 8 + nanos(cpu) / 8;
        self.typical_call_ns.store(updated, Ordering::Relaxed);
    }

    /// Whether the filter's calls usually take long enough (50 µs) to be measured by the
    /// kernel's count from their start (see `long_calls::CallClock::restart`).
    pub(crate) fn measures_exactly(&self) -> bool {
        self.typical_call_ns.load(Ordering::Relaxed) >= nanos(EXACT_FROM)
    }

    /// An instance started (and configured), which took `cpu`.
    pub fn record_instance_start(&self, cpu: Duration) {
        add(&self.instances_started, 1);
        add(&self.guest_cpu_ns, nanos(cpu));
    }

    /// A callout that sent and received `bytes` of bodies.
    pub fn record_callout(&self, bytes: u64) {
        add(&self.callouts, 1);
        add(&self.callout_bytes, bytes);
    }

    /// A key-value operation that moved `bytes` of keys and values.
    pub fn record_kv(&self, bytes: u64) {
        add(&self.kv_operations, 1);
        add(&self.kv_bytes, bytes);
    }

    /// A request answered with `response_bytes` of body.
    pub fn record_request(&self, response_bytes: u64) {
        add(&self.requests, 1);
        add(&self.response_bytes, response_bytes);
    }

    /// Linear memory of a live instance grew (or appeared) by `bytes`.
    pub fn memory_grew(&self, bytes: u64) {
        self.change_memory(|live| live.saturating_add(bytes));
    }

    /// An instance holding `bytes` of linear memory went.
    pub fn memory_released(&self, bytes: u64) {
        self.change_memory(|live| live.saturating_sub(bytes));
    }

    fn change_memory(&self, change: impl FnOnce(u64) -> u64) {
        let mut memory = self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        memory.accrue(Instant::now());
        memory.live_bytes = change(memory.live_bytes);
        memory.peak_bytes = memory.peak_bytes.max(memory.live_bytes);
    }

    /// The totals now. `reset_peak`: the peak starts over from the live memory (a bucket closed).
    fn figures(&self, now: Instant, reset_peak: bool) -> UsageFigures {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let (memory_peak_bytes, memory_byte_ns, memory_live_bytes) = {
            let mut memory = self.memory.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            memory.accrue(now);
            let peak = memory.peak_bytes;
            if reset_peak {
                memory.peak_bytes = memory.live_bytes;
            }
            (peak, memory.byte_ns, memory.live_bytes)
        };
        UsageFigures {
            guest_cpu_ns: load(&self.guest_cpu_ns),
            calls: load(&self.calls),
            instances_started: load(&self.instances_started),
            memory_peak_bytes,
            memory_byte_ns,
            memory_live_bytes,
            callouts: load(&self.callouts),
            callout_bytes: load(&self.callout_bytes),
            kv_operations: load(&self.kv_operations),
            kv_bytes: load(&self.kv_bytes),
            requests: load(&self.requests),
            response_bytes: load(&self.response_bytes),
        }
    }
}

impl MemoryIntegral {
    fn accrue(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.since);
        self.byte_ns += u128::from(self.live_bytes) * elapsed.as_nanos();
        self.since = now;
    }
}

/// A meter's figures: running totals, or what was used over a span of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageFigures {
    /// Guest CPU time, in nanoseconds.
    pub guest_cpu_ns: u64,
    /// Guest calls (one per filter phase call).
    pub calls: u64,
    /// Instances started.
    pub instances_started: u64,
    /// The most linear memory the meter's instances held at once, in bytes (over a span: its
    /// largest bucket peak).
    pub memory_peak_bytes: u64,
    /// Linear memory held over time, in byte-nanoseconds.
    pub memory_byte_ns: u128,
    /// Linear memory the meter's instances hold now (a reading, not a use: left out of
    /// comparisons of use).
    pub memory_live_bytes: u64,
    /// Callouts sent.
    pub callouts: u64,
    /// Callout request and response body bytes.
    pub callout_bytes: u64,
    /// Key-value operations.
    pub kv_operations: u64,
    /// Key and value bytes the key-value operations moved.
    pub kv_bytes: u64,
    /// Requests answered (route meters).
    pub requests: u64,
    /// Response body bytes sent (route meters).
    pub response_bytes: u64,
}

impl UsageFigures {
    /// What was used between `earlier` totals and these.
    fn since(&self, earlier: &Self) -> Self {
        Self {
            guest_cpu_ns: self.guest_cpu_ns.saturating_sub(earlier.guest_cpu_ns),
            calls: self.calls.saturating_sub(earlier.calls),
            instances_started: self.instances_started.saturating_sub(earlier.instances_started),
            memory_peak_bytes: self.memory_peak_bytes,
            memory_byte_ns: self.memory_byte_ns.saturating_sub(earlier.memory_byte_ns),
            memory_live_bytes: self.memory_live_bytes,
            callouts: self.callouts.saturating_sub(earlier.callouts),
            callout_bytes: self.callout_bytes.saturating_sub(earlier.callout_bytes),
            kv_operations: self.kv_operations.saturating_sub(earlier.kv_operations),
            kv_bytes: self.kv_bytes.saturating_sub(earlier.kv_bytes),
            requests: self.requests.saturating_sub(earlier.requests),
            response_bytes: self.response_bytes.saturating_sub(earlier.response_bytes),
        }
    }

    /// Adds `other`'s use to this (peaks: the larger).
    pub fn absorb(&mut self, other: &Self) {
        self.guest_cpu_ns += other.guest_cpu_ns;
        self.calls += other.calls;
        self.instances_started += other.instances_started;
        self.memory_peak_bytes = self.memory_peak_bytes.max(other.memory_peak_bytes);
        self.memory_byte_ns += other.memory_byte_ns;
        self.memory_live_bytes = self.memory_live_bytes.max(other.memory_live_bytes);
        self.callouts += other.callouts;
        self.callout_bytes += other.callout_bytes;
        self.kv_operations += other.kv_operations;
        self.kv_bytes += other.kv_bytes;
        self.requests += other.requests;
        self.response_bytes += other.response_bytes;
    }

    /// Whether nothing was used (memory held counts as use).
    fn is_idle(&self) -> bool {
        Self { memory_live_bytes: 0, ..*self } == Self::default()
    }

    /// Linear memory held over time, in byte-seconds.
    pub fn memory_byte_seconds(&self) -> f64 {
        self.memory_byte_ns as f64 / 1e9
    }

    /// Guest CPU time, in seconds.
    pub fn guest_cpu_seconds(&self) -> f64 {
        self.guest_cpu_ns as f64 / 1e9
    }
}

/// What was used in one closed bucket, by meter (only those that moved).
#[derive(Debug)]
struct Bucket {
    start_unix: u64,
    used: BTreeMap<MeterKey, UsageFigures>,
}

#[derive(Debug)]
struct History {
    buckets: VecDeque<Bucket>,
    /// When the open bucket began (unix seconds).
    open_since_unix: u64,
    /// Every meter's totals when the open bucket began.
    totals_then: HashMap<MeterKey, UsageFigures>,
}

/// Every meter, and what they counted bucket by bucket. One per [`Runtime`](crate::Runtime).
#[derive(Debug)]
pub struct UsageLedger {
    meters: RwLock<HashMap<MeterKey, Arc<Usage>>>,
    history: Mutex<History>,
    resolution: Duration,
    /// When the ledger began (unix seconds): no usage is reported before.
    started_unix: u64,
    closer: std::sync::Once,
}

impl Default for UsageLedger {
    fn default() -> Self {
        Self::new(DEFAULT_RESOLUTION)
    }
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs())
}

impl UsageLedger {
    /// A ledger closing a bucket every `resolution` (whole seconds, at least one).
    pub fn new(resolution: Duration) -> Self {
        let resolution = Duration::from_secs(resolution.as_secs().max(1));
        let now = unix_seconds(SystemTime::now());
        let open_since_unix = now - now % resolution.as_secs();
        Self {
            meters: RwLock::default(),
            history: Mutex::new(History { buckets: VecDeque::new(), open_since_unix, totals_then: HashMap::new() }),
            resolution,
            started_unix: now,
            closer: std::sync::Once::new(),
        }
    }

    /// How long one bucket covers.
    pub fn resolution(&self) -> Duration {
        self.resolution
    }

    /// The meter for `key`: the one it already has (across reloads), or a new one.
    pub fn meter(self: &Arc<Self>, key: MeterKey) -> Arc<Usage> {
        self.start_closer();
        if let Some(usage) = self.meters.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&key) {
            return usage.clone();
        }
        let mut meters = self.meters.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        meters.entry(key).or_default().clone()
    }

    /// Every meter's running totals, in key order.
    pub fn totals(&self) -> Vec<(MeterKey, UsageFigures)> {
        let now = Instant::now();
        let meters = self.meters.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut totals: Vec<_> = meters.iter().map(|(key, usage)| (key.clone(), usage.figures(now, false))).collect();
        totals.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        totals
    }

    /// Closes the open bucket if its time is up at `now` (unix seconds). A closer that woke late
    /// puts what was used meanwhile in the first of the buckets it closes.
    pub fn close_due_buckets(&self, now_unix: u64) {
        let step = self.resolution.as_secs();
        let mut history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if now_unix < history.open_since_unix + step {
            return;
        }
        let now = Instant::now();
        let totals: Vec<(MeterKey, UsageFigures)> = {
            let meters = self.meters.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            meters.iter().map(|(key, usage)| (key.clone(), usage.figures(now, true))).collect()
        };
        let mut used = BTreeMap::new();
        for (key, figures) in &totals {
            let then = history.totals_then.get(key).copied().unwrap_or_default();
            let delta = figures.since(&then);
            if !delta.is_idle() {
                used.insert(key.clone(), delta);
            }
        }
        let start_unix = history.open_since_unix;
        history.buckets.push_back(Bucket { start_unix, used });
        while history.buckets.len() > HISTORY_BUCKETS {
            history.buckets.pop_front();
        }
        history.totals_then = totals.into_iter().collect();
        history.open_since_unix = now_unix - now_unix % step;
    }

    /// Starts the thread that closes buckets on time; it ends when the ledger goes.
    fn start_closer(self: &Arc<Self>) {
        self.closer.call_once(|| {
            let ledger: Weak<Self> = Arc::downgrade(self);
            let step = self.resolution.as_secs();
            let started = std::thread::Builder::new().name("sluice-usage".into()).spawn(move || {
                loop {
                    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                    let next_boundary = (now.as_secs() / step + 1) * step;
                    std::thread::sleep(
                        Duration::from_secs(next_boundary) - now.min(Duration::from_secs(next_boundary)),
                    );
                    let Some(ledger) = ledger.upgrade() else { return };
                    ledger.close_due_buckets(unix_seconds(SystemTime::now()));
                }
            });
            if let Err(err) = started {
                tracing::error!(error = %err, "cannot start the usage ledger's thread: usage history is not kept");
            }
        });
    }

    /// What was used from `since` (at the earliest, the oldest bucket kept) to now, per
    /// `interval` (whole buckets; `None`: one interval), each interval's figures by meter. The
    /// open bucket counts up to now.
    pub fn report(&self, since: SystemTime, interval: Option<Duration>) -> UsageReport {
        let step = self.resolution.as_secs();
        let now_unix = unix_seconds(SystemTime::now());
        let history = self.history.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let available_from =
            history.buckets.front().map_or(history.open_since_unix, |bucket| bucket.start_unix).max(self.started_unix);
        // Nothing is kept from before `available_from`: the first interval starts there at the
        // earliest, which also bounds how many intervals a report has.
        let since_unix = unix_seconds(since).max(available_from);
        let since_unix = since_unix - since_unix % step;
        let until_unix = now_unix.max(since_unix).max(history.open_since_unix);
        let interval_seconds =
            interval.map_or(until_unix - since_unix + step, |interval| interval.as_secs().div_ceil(step).max(1) * step);
        let mut intervals: Vec<UsageInterval> = Vec::new();
        let mut interval_for = |start_unix: u64| -> Option<usize> {
            if start_unix < since_unix {
                return None;
            }
            let index = usize::try_from((start_unix - since_unix) / interval_seconds).ok()?;
            while intervals.len() <= index {
                let start = since_unix + interval_seconds * intervals.len() as u64;
                intervals.push(UsageInterval {
                    start_unix: start,
                    end_unix: (start + interval_seconds).min(until_unix),
                    used: BTreeMap::new(),
                });
            }
            Some(index)
        };
        let mut slots: Vec<(usize, &MeterKey, UsageFigures)> = Vec::new();
        for bucket in &history.buckets {
            if let Some(index) = interval_for(bucket.start_unix) {
                slots.extend(bucket.used.iter().map(|(key, figures)| (index, key, *figures)));
            }
        }
        let open = interval_for(history.open_since_unix);
        let now = Instant::now();
        let meters = self.meters.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let open_used: Vec<(MeterKey, UsageFigures)> = meters
            .iter()
            .map(|(key, usage)| {
                let then = history.totals_then.get(key).copied().unwrap_or_default();
                (key.clone(), usage.figures(now, false).since(&then))
            })
            .filter(|(_, used)| !used.is_idle())
            .collect();
        drop(meters);
        for (index, key, figures) in slots {
            intervals[index].used.entry(key.clone()).or_default().absorb(&figures);
        }
        if let Some(index) = open {
            for (key, figures) in open_used {
                intervals[index].used.entry(key).or_default().absorb(&figures);
            }
        }
        UsageReport {
            since_unix,
            until_unix,
            interval_seconds,
            resolution_seconds: step,
            available_from_unix: available_from,
            intervals,
        }
    }
}

/// What [`UsageLedger::report`] found.
#[derive(Debug)]
pub struct UsageReport {
    /// Start of the first interval (unix seconds, on a bucket boundary).
    pub since_unix: u64,
    /// When the report was made.
    pub until_unix: u64,
    /// Length of each interval.
    pub interval_seconds: u64,
    /// Length of a bucket: the finest interval there is.
    pub resolution_seconds: u64,
    /// The earliest time the ledger still has usage for.
    pub available_from_unix: u64,
    /// The intervals, oldest first.
    pub intervals: Vec<UsageInterval>,
}

/// One interval of a [`UsageReport`].
#[derive(Debug)]
pub struct UsageInterval {
    /// Its start (unix seconds).
    pub start_unix: u64,
    /// Its end (unix seconds; now, for the last one).
    pub end_unix: u64,
    /// What each meter used in it (only those that moved).
    pub used: BTreeMap<MeterKey, UsageFigures>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, filter: Option<&str>) -> MeterKey {
        MeterKey { tenant: tenant.into(), route: "r".into(), filter: filter.map(Into::into) }
    }

    #[test]
    fn a_meter_outlives_its_holders_and_is_found_again() {
        let ledger = Arc::new(UsageLedger::new(Duration::from_secs(60)));
        let meter = ledger.meter(key("a", Some("f")));
        meter.record_call(Duration::from_micros(5));
        drop(meter);
        let again = ledger.meter(key("a", Some("f")));
        again.record_call(Duration::from_micros(7));
        let totals = ledger.totals();
        assert_eq!(totals.len(), 1);
        assert_eq!(totals[0].1.calls, 2);
        assert_eq!(totals[0].1.guest_cpu_ns, 12_000);
    }

    #[test]
    fn buckets_keep_what_each_meter_used_in_them() {
        let ledger = Arc::new(UsageLedger::new(Duration::from_secs(60)));
        let a = ledger.meter(key("a", Some("f")));
        let b = ledger.meter(key("b", None));
        let opened = ledger.history.lock().unwrap().open_since_unix;
        a.record_call(Duration::from_millis(1));
        b.record_request(100);
        ledger.close_due_buckets(opened + 60);
        a.record_call(Duration::from_millis(2));
        ledger.close_due_buckets(opened + 120);
        {
            let history = ledger.history.lock().unwrap();
            assert_eq!(history.buckets.len(), 2);
            assert_eq!(history.buckets[0].used[&key("a", Some("f"))].guest_cpu_ns, 1_000_000);
            assert_eq!(history.buckets[0].used[&key("b", None)].response_bytes, 100);
            assert_eq!(history.buckets[1].used[&key("a", Some("f"))].guest_cpu_ns, 2_000_000);
            assert!(!history.buckets[1].used.contains_key(&key("b", None)), "an idle meter is not kept");
        }
        a.record_call(Duration::from_millis(4));
        let since = UNIX_EPOCH + Duration::from_secs(opened);
        let whole = ledger.report(since, None);
        assert_eq!(whole.intervals.len(), 1);
        assert_eq!(whole.intervals[0].used[&key("a", Some("f"))].guest_cpu_ns, 7_000_000);
        let per_minute = ledger.report(since, Some(Duration::from_secs(60)));
        let cpu: Vec<u64> = per_minute
            .intervals
            .iter()
            .map(|interval| interval.used.get(&key("a", Some("f"))).map_or(0, |used| used.guest_cpu_ns))
            .collect();
        assert_eq!(cpu[..2], [1_000_000, 2_000_000]);
        assert_eq!(cpu.iter().sum::<u64>(), 7_000_000, "the open bucket counts up to now");
    }

    #[test]
    fn memory_is_integrated_over_time_and_peaks_per_bucket() {
        let usage = Usage::default();
        let start = Instant::now();
        usage.memory.lock().unwrap().since = start;
        usage.memory_grew(1000);
        usage.memory_grew(1000);
        usage.memory_released(1500);
        let figures = usage.figures(start + Duration::from_secs(10), true);
        assert_eq!(figures.memory_peak_bytes, 2000);
        // At most 2000 bytes for the ~0 s before the release, then 500 for the rest of 10 s.
        assert!(figures.memory_byte_seconds() >= 4999.0 && figures.memory_byte_seconds() < 5100.0);
        assert_eq!(usage.figures(start + Duration::from_secs(10), false).memory_peak_bytes, 500);
    }
}
