//! The in-process key-value backend (the default): one namespace per tenant, values with
//! optional expiry, and per-tenant quotas on keys and bytes.
//!
//! Each namespace has a lock of its own, so one tenant's traffic never waits on another's.
//! Expired entries are found through an expiry queue, so removing them costs only what expired
//! (never a scan of the namespace), and they are removed on every write: a namespace at its
//! quota frees its expired keys before it refuses a new one. Values are taken as slices and
//! copied only once the quota has admitted them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::bucket::{Bucket, BucketSpec};
use super::{KvError, KvQuota, check_key};

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
    /// When entries expire, soonest first. An item whose key has since been removed or given
    /// another expiry is stale and skipped; the queue is rebuilt when stale items pile up.
    expiries: BinaryHeap<Reverse<(Instant, String)>>,
}

impl Namespace {
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.bytes -= key.len() + entry.value.len();
        Some(entry)
    }

    /// Removes what has expired by `now`, at the cost of what expired.
    fn sweep(&mut self, now: Instant) {
        while let Some(Reverse((when, _))) = self.expiries.peek()
            && *when <= now
        {
            let Some(Reverse((when, key))) = self.expiries.pop() else { break };
            if self.entries.get(&key).is_some_and(|entry| entry.expires == Some(when)) {
                self.remove(&key);
            }
        }
    }

    fn put(
        &mut self,
        key: &str,
        value: &[u8],
        expires: Option<Instant>,
        quota: KvQuota,
        now: Instant,
    ) -> Result<(), KvError> {
        check_key(key)?;
        self.sweep(now);
        let old_size = self.entries.get(key).map_or(0, |entry| key.len() + entry.value.len());
        let new_size = key.len() + value.len();
        let is_new = !self.entries.contains_key(key);
        if (is_new && self.entries.len() >= quota.max_keys) || self.bytes - old_size + new_size > quota.max_bytes {
            return Err(KvError::QuotaExceeded);
        }
        self.bytes = self.bytes - old_size + new_size;
        if let Some(when) = expires {
            self.expiries.push(Reverse((when, key.to_owned())));
            if self.expiries.len() > 2 * self.entries.len() + 64 {
                self.rebuild_expiries();
            }
        }
        match self.entries.get_mut(key) {
            Some(entry) => {
                entry.value.clear();
                entry.value.extend_from_slice(value);
                entry.expires = expires;
            }
            None => {
                self.entries.insert(key.to_owned(), Entry { value: value.to_vec(), expires });
            }
        }
        Ok(())
    }

    fn rebuild_expiries(&mut self) {
        self.expiries = self
            .entries
            .iter()
            .filter_map(|(key, entry)| entry.expires.map(|when| Reverse((when, key.clone()))))
            .collect();
    }
}

/// Every tenant's namespace, each behind its own lock.
#[derive(Debug, Default)]
pub struct KvStore {
    namespaces: RwLock<HashMap<String, Arc<Mutex<Namespace>>>>,
}

fn expiry(now: Instant, ttl_ms: u64) -> Option<Instant> {
    (ttl_ms > 0).then(|| now.checked_add(Duration::from_millis(ttl_ms))).flatten()
}

/// Milliseconds since this process's first bucket: the memory backend's bucket clock.
fn monotonic_ms(now: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| now);
    u64::try_from(now.saturating_duration_since(start).as_millis()).unwrap_or(u64::MAX)
}

impl KvStore {
    fn namespace(&self, tenant: &str) -> Arc<Mutex<Namespace>> {
        if let Some(namespace) = self.namespaces.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(tenant) {
            return namespace.clone();
        }
        let mut namespaces = self.namespaces.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        namespaces.entry(tenant.to_owned()).or_default().clone()
    }

    fn with_namespace<R>(&self, tenant: &str, run: impl FnOnce(&mut Namespace, Instant) -> R) -> R {
        let namespace = self.namespace(tenant);
        let mut namespace = namespace.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        run(&mut namespace, Instant::now())
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
    pub fn set(&self, tenant: &str, quota: KvQuota, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), KvError> {
        quota.admits_value(key, value.len())?;
        self.with_namespace(tenant, |namespace, now| namespace.put(key, value, expiry(now, ttl_ms), quota, now))
    }

    /// Adds `delta` to the integer under `key` (absent or expired counts as 0).
    pub fn increment(&self, tenant: &str, quota: KvQuota, key: &str, delta: i64, ttl_ms: u64) -> Result<i64, KvError> {
        check_key(key)?;
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
            namespace.put(key, next.to_string().as_bytes(), expires, quota, now)?;
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
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, KvError> {
        quota.admits_value(key, value.len())?;
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

    /// Takes tokens from the bucket under `key`, by this process's monotonic clock; one lock
    /// covers the read and the write.
    pub fn take_tokens(&self, tenant: &str, quota: KvQuota, key: &str, spec: BucketSpec) -> Result<Bucket, KvError> {
        check_key(key)?;
        self.with_namespace(tenant, |namespace, now| {
            let stored = namespace.entries.get(key).filter(|entry| entry.live(now)).map(|entry| entry.value.as_slice());
            let take = spec.take(stored, monotonic_ms(now))?;
            if let Some((value, ttl_ms)) = take.store {
                namespace.put(key, value.as_bytes(), expiry(now, ttl_ms), quota, now)?;
            }
            Ok(take.bucket)
        })
    }

    /// Removes `key`; true if a live value was there.
    pub fn delete(&self, tenant: &str, key: &str) -> bool {
        self.with_namespace(tenant, |namespace, now| namespace.remove(key).is_some_and(|entry| entry.live(now)))
    }

    /// How many keys `tenant` holds (expired ones not yet removed included).
    pub fn len(&self, tenant: &str) -> usize {
        self.with_namespace(tenant, |namespace, _| namespace.entries.len())
    }

    /// Whether `tenant` holds no keys.
    pub fn is_empty(&self, tenant: &str) -> bool {
        self.len(tenant) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MAX_KEY_BYTES;

    const QUOTA: KvQuota = KvQuota { max_keys: 2, max_bytes: 32 };

    #[test]
    fn tenants_do_not_see_each_other() {
        let store = KvStore::default();
        store.set("a", QUOTA, "k", b"1", 0).unwrap();
        assert_eq!(store.get("a", "k").as_deref(), Some(&b"1"[..]));
        assert_eq!(store.get("b", "k"), None);
        assert!(!store.delete("b", "k"));
        assert!(store.delete("a", "k"));
    }

    #[test]
    fn quotas_hold() {
        let store = KvStore::default();
        store.set("a", QUOTA, "k1", b"v", 0).unwrap();
        store.set("a", QUOTA, "k2", b"v", 0).unwrap();
        assert_eq!(store.set("a", QUOTA, "k3", b"v", 0), Err(KvError::QuotaExceeded));
        // Overwriting an existing key is not a new key.
        store.set("a", QUOTA, "k1", b"w", 0).unwrap();
        assert_eq!(store.set("a", QUOTA, "k1", &[0; 64], 0), Err(KvError::QuotaExceeded));
    }

    #[test]
    fn compare_and_swap_writes_only_over_the_expected_value() {
        let store = KvStore::default();
        let quota = KvQuota { max_keys: 8, max_bytes: 256 };
        assert_eq!(store.compare_and_swap("a", quota, "k", Some(b"x"), b"1", 0), Ok(false));
        assert_eq!(store.compare_and_swap("a", quota, "k", None, b"1", 0), Ok(true));
        assert_eq!(store.compare_and_swap("a", quota, "k", None, b"2", 0), Ok(false));
        assert_eq!(store.compare_and_swap("a", quota, "k", Some(b"1"), b"2", 0), Ok(true));
        assert_eq!(store.get("a", "k"), Some(b"2".to_vec()));
        // Another tenant's namespace is separate.
        assert_eq!(store.compare_and_swap("b", quota, "k", None, b"9", 0), Ok(true));
        assert_eq!(
            store.compare_and_swap("b", KvQuota { max_keys: 1, max_bytes: 2 }, "k", Some(b"9"), b"long", 0),
            Err(KvError::QuotaExceeded)
        );
    }

    #[test]
    fn increments_count_and_refuse_text() {
        let store = KvStore::default();
        assert_eq!(store.increment("a", QUOTA, "n", 2, 0), Ok(2));
        assert_eq!(store.increment("a", QUOTA, "n", -5, 0), Ok(-3));
        store.set("a", QUOTA, "t", b"x", 0).unwrap();
        assert_eq!(store.increment("a", QUOTA, "t", 1, 0), Err(KvError::NotANumber));
    }

    #[test]
    fn buckets_are_counted_and_kept_like_other_keys() {
        let store = KvStore::default();
        let spec = BucketSpec::new(2, 1, 60_000, 1).unwrap();
        assert!(store.take_tokens("a", QUOTA, "b", spec).unwrap().taken);
        assert!(store.take_tokens("a", QUOTA, "b", spec).unwrap().taken);
        let refused = store.take_tokens("a", QUOTA, "b", spec).unwrap();
        assert!(!refused.taken);
        assert!(refused.retry_in_ms > 0);
        // Another tenant's bucket of the same name is its own.
        assert!(store.take_tokens("other", QUOTA, "b", spec).unwrap().taken);
        // A bucket is a key: it counts towards the quota.
        store.set("a", QUOTA, "k", b"v", 0).unwrap();
        assert_eq!(store.take_tokens("a", QUOTA, "c", spec), Err(KvError::QuotaExceeded));
        assert_eq!(store.take_tokens("a", QUOTA, "k", spec), Err(KvError::NotANumber));
    }

    #[test]
    fn expired_keys_make_room_without_a_scan() {
        let quota = KvQuota { max_keys: 3, max_bytes: 1024 };
        let mut namespace = Namespace::default();
        let now = Instant::now();
        let soon = Some(now + Duration::from_millis(1));
        namespace.put("short", b"1", soon, quota, now).unwrap();
        namespace.put("kept", b"1", None, quota, now).unwrap();
        namespace.put("long", b"1", Some(now + Duration::from_secs(60)), quota, now).unwrap();
        // Later, the expired key goes; the others stay.
        let later = now + Duration::from_millis(5);
        namespace.put("new", b"1", None, quota, later).unwrap();
        assert_eq!(namespace.entries.len(), 3);
        assert!(namespace.entries.contains_key("long"));
        assert_eq!(namespace.put("more", b"1", None, quota, later), Err(KvError::QuotaExceeded));
    }

    #[test]
    fn rewriting_a_key_with_a_ttl_keeps_the_expiry_queue_bounded() {
        let store = KvStore::default();
        let quota = KvQuota { max_keys: 8, max_bytes: 1024 };
        for _ in 0..10_000 {
            store.set("a", quota, "k", b"1", 60_000).unwrap();
        }
        let namespace = store.namespace("a");
        assert!(namespace.lock().unwrap().expiries.len() <= 66);
    }

    #[test]
    fn oversized_values_and_keys_are_refused_before_the_store_is_touched() {
        let store = KvStore::default();
        let quota = KvQuota { max_keys: 8, max_bytes: 64 };
        assert_eq!(quota.admits_value("k", 100), Err(KvError::QuotaExceeded));
        assert_eq!(store.set("a", quota, &"k".repeat(MAX_KEY_BYTES + 1), b"", 0), Err(KvError::KeyTooLong));
        assert!(store.is_empty("a"));
    }
}
