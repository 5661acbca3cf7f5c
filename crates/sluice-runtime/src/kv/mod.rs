//! The key-value store behind the `kv` host interface: one namespace per tenant, quotas on keys
//! and bytes, and a backend per tenant: [`memory`] (in the process, the default) or [`redis`]
//! (shared by every instance that uses the same Redis).

pub mod bucket;
pub mod memory;
pub mod redis;

use std::sync::Arc;

pub use bucket::{Bucket, BucketSpec};
pub use memory::KvStore;
pub use redis::{RedisKv, RedisSettings};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a key-value operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The tenant's key or byte quota would be exceeded.
    #[error("key-value quota exceeded")]
    QuotaExceeded,
    /// `increment` on a value that is not a decimal 64-bit integer.
    #[error("value is not a 64-bit integer")]
    NotANumber,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("key longer than {MAX_KEY_BYTES} bytes")]
    KeyTooLong,
    /// Arguments outside what the operation accepts (a token bucket's bounds).
    #[error("{0}")]
    InvalidArgument(String),
    /// The backend did not answer in time, or failed (Redis down, say).
    #[error("key-value backend unavailable: {0}")]
    Unavailable(String),
}

/// Limits on one tenant's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    /// Most keys.
    pub max_keys: usize,
    /// Most bytes of keys and values together.
    pub max_bytes: usize,
}

impl KvQuota {
    /// Whether a value of `len` bytes could be stored at all: checked before it is copied.
    pub fn admits_value(&self, key: &str, len: usize) -> Result<(), KvError> {
        check_key(key)?;
        if key.len().saturating_add(len) > self.max_bytes {
            return Err(KvError::QuotaExceeded);
        }
        Ok(())
    }
}

pub(crate) fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES { Err(KvError::KeyTooLong) } else { Ok(()) }
}

/// Where a tenant's key-value namespace lives.
#[derive(Debug, Clone, Default)]
pub enum KvBackend {
    /// In this process (the runtime's [`KvStore`]).
    #[default]
    Memory,
    /// In Redis, shared with every instance that uses it.
    Redis(Arc<RedisKv>),
}

impl KvBackend {
    /// Whether calls may wait on the network.
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Redis(_))
    }
}

impl PartialEq for KvBackend {
    /// The same place: memory, or a backend with the same settings.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Memory, Self::Memory) => true,
            (Self::Redis(ours), Self::Redis(theirs)) => ours.settings() == theirs.settings(),
            _ => false,
        }
    }
}

impl Eq for KvBackend {}
