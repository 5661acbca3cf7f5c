//! What a tenant's filters are granted: memory, CPU time, instances, callouts, key-value quota.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::kv::KvQuota;

/// The largest memory any tenant may grant an instance; the pooling allocator reserves this much
/// address space per slot.
pub(crate) const MAX_MEMORY_BYTES: usize = 1 << 30;

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
    /// The plugins its routes may run (`None`: any).
    pub plugins: Option<BTreeSet<String>>,
}

impl Tenant {
    /// The tenant of routes that name none: modest limits and no callouts.
    pub fn default_tenant() -> Self {
        Self {
            name: "default".into(),
            memory_bytes: 64 << 20,
            cpu_per_call: Duration::from_millis(50),
            max_instances: 64,
            callouts: BTreeSet::new(),
            kv: KvQuota { max_keys: 100_000, max_bytes: 64 << 20 },
            plugins: None,
        }
    }
}
