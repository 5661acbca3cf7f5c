//! What a tenant's filters are granted: memory, CPU time, instances, callouts, key-value quota.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::kv::{KvBackend, KvQuota};

/// The largest memory any tenant may grant an instance; the pooling allocator reserves this much
/// address space per slot.
pub(crate) const MAX_MEMORY_BYTES: usize = 1 << 30;

/// Metric series a tenant's filters may create unless its section says otherwise.
pub const DEFAULT_METRIC_SERIES: usize = 1000;
/// Log lines per second and instance unless the tenant's section says otherwise.
pub const DEFAULT_LOG_LINES_PER_SECOND: u32 = 100;
/// Wall-clock time per filter call unless the tenant's section says otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Bans a tenant's filters may hold at once unless its section says otherwise.
pub const DEFAULT_BAN_ENTRIES: usize = 10_000;

/// A tenant's grant to ban the clients its filters serve (the `client.ban` host call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanGrant {
    /// The longest ban; longer requests are cut to it.
    pub max_duration: Duration,
    /// Most bans the tenant holds at once.
    pub max_entries: usize,
}

/// A tenant and its grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Name, used as the key-value namespace and in logs and metrics.
    pub name: Arc<str>,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Guest execution time one call may take.
    pub cpu_per_call: Duration,
    /// Most instances of one filter alive at once (warm and busy together).
    pub max_instances: usize,
    /// Upstreams its filters may call out to.
    pub callouts: BTreeSet<String>,
    /// Its key-value quota.
    pub kv: KvQuota,
    /// Where its key-value namespace lives.
    pub kv_backend: KvBackend,
    /// The plugins its routes may run (`None`: any).
    pub plugins: Option<BTreeSet<String>>,
    /// Guest CPU time all its instances together may use per second (`None`: no limit).
    pub cpu_rate: Option<CpuRate>,
    /// Its lane for long calls: one at a time.
    pub long_calls: LongCallLane,
    /// Most metric series its filters may create, all of them together; observations of new
    /// series past it are dropped and counted.
    pub metric_series: usize,
    /// Log lines one instance may write per second (WASI stdout and stderr included), with a
    /// burst of twice that; lines past it are dropped and counted.
    pub log_lines_per_second: u32,
    /// Wall-clock time one filter call may take, callouts and pauses included.
    pub call_timeout: Duration,
    /// Whether, and for how long, its filters may ban the clients they serve (`None`: not).
    pub bans: Option<BanGrant>,
}

/// Calls that run past their first milliseconds of CPU ("long calls") move to the long-call
/// threads and take a lane: one per tenant, and all tenants together one per long-call thread
/// (`Runtime`'s lanes). A long call waits, paused, for its lanes, so a tenant whose filters spin
/// runs one long call at a time and tenants share the long-call threads, whatever their CPU
/// rates, while short calls (the usual filter call, microseconds) never wait. The lane is held
/// until the call returns; it carries over a reload with its tenant.
#[derive(Debug, Clone)]
pub struct LongCallLane(pub(crate) Arc<tokio::sync::Semaphore>);

impl LongCallLane {
    /// Whether the lane is free (1) or held by a long call (0).
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }

    /// Whether `other` is this very lane (the same running state), not only an equal one.
    pub fn is_same_lane(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Default for LongCallLane {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(1)))
    }
}

impl PartialEq for LongCallLane {
    /// Lanes are the tenant's running state, not its grants: two tenants with the same grants
    /// are equal whatever their lanes are doing.
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Eq for LongCallLane {}

/// A tenant's share of CPU: guest time per second of wall time, all its instances together.
///
/// Guests are charged at each epoch tick (1 ms) they run through, with the CPU time the kernel
/// counted for them since the last (a whole tick for a call's first). Past the rate, the
/// tenant's calls pause (they are not failed) until the budget has refilled, so a tenant that
/// spins cannot take more than its share of the CPU.
#[derive(Debug, Clone)]
pub struct CpuRate {
    /// Milliseconds of guest time per second.
    pub ms_per_second: u64,
    /// When the budget is next fully spent: a GCRA "theoretical arrival time".
    spent_until: Arc<Mutex<Instant>>,
}

impl PartialEq for CpuRate {
    fn eq(&self, other: &Self) -> bool {
        self.ms_per_second == other.ms_per_second
    }
}

impl Eq for CpuRate {}

/// How much unused budget may be saved up: a short burst at full speed after a quiet spell.
const CPU_BURST: Duration = Duration::from_millis(20);

impl CpuRate {
    /// A budget of `ms_per_second` (at least 1).
    pub fn new(ms_per_second: u64) -> Self {
        Self { ms_per_second: ms_per_second.max(1), spent_until: Arc::new(Mutex::new(Instant::now())) }
    }

    /// Charges `used` guest time; returns how long the guest must pause before going on (zero
    /// while within the budget).
    pub fn charge(&self, used: Duration) -> Duration {
        let cost = used.mul_f64(1000.0 / self.ms_per_second as f64);
        let now = Instant::now();
        let mut spent_until = self.spent_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *spent_until = (*spent_until).max(now) + cost;
        spent_until.saturating_duration_since(now + CPU_BURST)
    }
}

impl Tenant {
    /// Shares `running`'s lane and CPU budget: the same tenant, in the configuration a reload
    /// replaces.
    pub fn take_running_state_from(&mut self, running: &Tenant) {
        self.long_calls = running.long_calls.clone();
        if let (Some(rate), Some(running_rate)) = (&mut self.cpu_rate, &running.cpu_rate) {
            rate.spent_until = running_rate.spent_until.clone();
        }
    }

    /// The tenant of routes that name none: modest limits and no callouts.
    pub fn default_tenant() -> Self {
        Self {
            name: "default".into(),
            memory_bytes: 64 << 20,
            cpu_per_call: Duration::from_millis(50),
            max_instances: 64,
            callouts: BTreeSet::new(),
            kv: KvQuota { max_keys: 100_000, max_bytes: 64 << 20 },
            kv_backend: KvBackend::Memory,
            plugins: None,
            cpu_rate: None,
            long_calls: LongCallLane::default(),
            metric_series: DEFAULT_METRIC_SERIES,
            log_lines_per_second: DEFAULT_LOG_LINES_PER_SECOND,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            bans: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_rate_lets_a_burst_through_then_asks_for_pauses() {
        // 100 ms per second: each millisecond of guest time costs 10 ms of budget.
        let rate = CpuRate::new(100);
        let paused: Vec<bool> = (0..4).map(|_| !rate.charge(Duration::from_millis(1)).is_zero()).collect();
        // The 20 ms burst covers two ticks; the third must wait about 10 ms, the fourth 20 ms.
        assert_eq!(paused, [false, false, true, true]);
        let wait = rate.charge(Duration::from_millis(1));
        assert!(wait > Duration::from_millis(20) && wait <= Duration::from_millis(30), "{wait:?}");
    }
}
