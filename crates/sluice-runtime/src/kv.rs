//! The in-process key-value store behind the `kv` host interface: one namespace per tenant,
//! values with optional expiry, and per-tenant quotas on keys and bytes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a key-value operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The tenant's key or byte quota would be exceeded.
    #[error("key-value quota exceeded")]
    QuotaExceeded,
    /// `increment` on a value that is not a decimal 64-bit integer.
    #[error("value is not a 64-bit integer")]
    NotANumber,
}

/// Limits on one tenant's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Most keys.
    pub max_keys: usize,
    /// Most bytes of keys and values together.
    pub max_bytes: usize,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| expires > now)
    }
}

#[derive(Debug, Default)]
struct Namespace {
    entries: HashMap<String, Entry>,
    bytes: usize,
}

impl Namespace {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.bytes -= key.len() + entry.value.len();
        Some(entry)
    }

    /// Drops expired entries when the namespace is at its key quota, so that expired keys never
    /// block new ones.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.entries.iter().filter(|(_, entry)| !entry.live(now)).map(|(key, _)| key.clone()).collect();
        for key in expired {
            self.remove(&key);
        }
    }

    fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        expires: Option<Instant>,
        quota: KvQuota,
        now: Instant,
    ) -> Result<(), KvError> {
        let old_size = self.entries.get(key).map_or(0, |entry| key.len() + entry.value.len());
        let new_size = key.len() + value.len();
        let is_new = old_size == 0 && !self.entries.contains_key(key);
        if is_new && self.entries.len() >= quota.max_keys {
            self.sweep(now);
        }
        if (is_new && self.entries.len() >= quota.max_keys) || self.bytes - old_size + new_size > quota.max_bytes {
            return Err(KvError::QuotaExceeded);
        }
        self.bytes = self.bytes - old_size + new_size;
        self.entries.insert(key.to_owned(), Entry { value, expires });
        Ok(())
    }
}

/// Every tenant's namespace.
#[derive(Debug, Default)]
pub struct KvStore {
    namespaces: Mutex<HashMap<String, Namespace>>,
}

fn expiry(now: Instant, ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| now + Duration::from_millis(ttl_ms))
}

impl KvStore {
    fn with_namespace<R>(&self, tenant: &str, run: impl FnOnce(&mut Namespace, Instant) -> R) -> R {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let namespace = namespaces.entry(tenant.to_owned()).or_default();
        run(namespace, Instant::now())
    }

    /// The live value under `key` in `tenant`'s namespace.
    pub fn get(&self, tenant: &str, key: &str) -> Option<Vec<u8>> {
        self.with_namespace(tenant, |namespace, now| match namespace.entries.get(key) {
            Some(entry) if entry.live(now) => Some(entry.value.clone()),
            Some(_) => {
                namespace.remove(key);
                None
            }
            None => None,
        })
    }

    /// Stores `value` under `key`.
    pub fn set(&self, tenant: &str, quota: KvQuota, key: &str, value: Vec<u8>, ttl_ms: u64) -> Result<(), KvError> {
        self.with_namespace(tenant, |namespace, now| namespace.put(key, value, expiry(now, ttl_ms), quota, now))
    }

    /// Adds `delta` to the integer under `key` (absent or expired counts as 0).
    pub fn increment(&self, tenant: &str, quota: KvQuota, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, KvError> {
        self.with_namespace(tenant, |namespace, now| {
            let (current, expires) = match namespace.entries.get(key) {
                Some(entry) if entry.live(now) => {
                    let number = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|text| text.parse::<i64>().ok())
                        .ok_or(KvError::NotANumber)?;
                    (number, entry.expires)
                }
                _ => (0, expiry(now, ttl_ms)),
            };
            let next = current.saturating_add(delta);
            namespace.put(key, next.to_string().into_bytes(), expires, quota, now)?;
            Ok(next)
        })
    }

    /// Stores `value` under `key` if its live value is `expected` (`None`: absent or expired);
    /// true if stored. One lock covers the comparison and the write.
    pub fn compare_and_swap(
        &self,
        tenant: &str,
        quota: KvQuota,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Result<bool, KvError> {
        self.with_namespace(tenant, |namespace, now| {
            let current =
                namespace.entries.get(key).filter(|entry| entry.live(now)).map(|entry| entry.value.as_slice());
            if current != expected {
                return Ok(false);
            }
            namespace.put(key, value, expiry(now, ttl_ms), quota, now)?;
            Ok(true)
        })
    }

    /// Removes `key`; true if a live value was there.
    pub fn delete(&self, tenant: &str, key: &str) -> bool {
        self.with_namespace(tenant, |namespace, now| namespace.remove(key).is_some_and(|entry| entry.live(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: KvQuota = KvQuota { max_keys: 2, max_bytes: 32 };

    #[test]
    fn tenants_do_not_see_each_other() {
        let store = KvStore::default();
        store.set("a", QUOTA, "k", b"1".to_vec(), 0).unwrap();
        assert_eq!(store.get("a", "k").as_deref(), Some(&b"1"[..]));
        assert_eq!(store.get("b", "k"), None);
        assert!(!store.delete("b", "k"));
        assert!(store.delete("a", "k"));
    }

    #[test]
    fn quotas_hold() {
        let store = KvStore::default();
        store.set("a", QUOTA, "k1", b"v".to_vec(), 0).unwrap();
        store.set("a", QUOTA, "k2", b"v".to_vec(), 0).unwrap();
        assert_eq!(store.set("a", QUOTA, "k3", b"v".to_vec(), 0), Err(KvError::QuotaExceeded));
        // Overwriting an existing key is not a new key.
        store.set("a", QUOTA, "k1", b"w".to_vec(), 0).unwrap();
        assert_eq!(store.set("a", QUOTA, "k1", vec![0; 64], 0), Err(KvError::QuotaExceeded));
    }

    #[test]
    fn compare_and_swap_writes_only_over_the_expected_value() {
        let store = KvStore::default();
        let quota = KvQuota { max_keys: 8, max_bytes: 256 };
        assert_eq!(store.compare_and_swap("a", quota, "k", Some(b"x"), b"1".to_vec(), 0), Ok(false));
        assert_eq!(store.compare_and_swap("a", quota, "k", None, b"1".to_vec(), 0), Ok(true));
        assert_eq!(store.compare_and_swap("a", quota, "k", None, b"2".to_vec(), 0), Ok(false));
        assert_eq!(store.compare_and_swap("a", quota, "k", Some(b"1"), b"2".to_vec(), 0), Ok(true));
        assert_eq!(store.get("a", "k"), Some(b"2".to_vec()));
        // Another tenant's namespace is separate.
        assert_eq!(store.compare_and_swap("b", quota, "k", None, b"9".to_vec(), 0), Ok(true));
        assert_eq!(
            store.compare_and_swap("b", KvQuota { max_keys: 1, max_bytes: 2 }, "k", Some(b"9"), b"long".to_vec(), 0),
            Err(KvError::QuotaExceeded)
        );
    }

    #[test]
    fn increments_count_and_refuse_text() {
        let store = KvStore::default();
        assert_eq!(store.increment("a", QUOTA, "n", 2, 0), Ok(2));
        assert_eq!(store.increment("a", QUOTA, "n", -5, 0), Ok(-3));
        store.set("a", QUOTA, "t", b"x".to_vec(), 0).unwrap();
        assert_eq!(store.increment("a", QUOTA, "t", 1, 0), Err(KvError::NotANumber));
    }
}
