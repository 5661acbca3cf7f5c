//! `sluice:filter/kv`: the tenant's key-value namespace.
//!
//! `set` and `compare-and-swap` are linked by hand ([`link_unlifted`]) rather than through the
//! generated bindings: the generated ones copy the value out of the guest before the host sees
//! it, so a guest could make the host copy its whole memory only to be refused. These read the
//! value's length first and copy it only once the quota admits it.

use wasmtime::component::{LinkerInstance, WasmList, WasmStr};
use wasmtime::{AsContext, StoreContextMut};

use super::*;
use crate::bindings::sluice::filter::kv;

fn kv_error(error: KvError) -> kv::KvError {
    match error {
        KvError::QuotaExceeded => kv::KvError::QuotaExceeded,
        KvError::NotANumber => kv::KvError::NotANumber,
        KvError::KeyTooLong => kv::KvError::Other(error.to_string()),
    }
}

impl FilterState {
    pub(super) fn kv_set(&self, key: &str, value: &[u8], ttl_ms: u64) -> wasmtime::Result<Result<(), kv::KvError>> {
        let tenant = &self.context()?.tenant;
        Ok(self.services.kv.set(&tenant.name, tenant.kv, key, value, ttl_ms).map_err(kv_error))
    }

    fn kv_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let tenant = &self.context()?.tenant;
        Ok(self.services.kv.compare_and_swap(&tenant.name, tenant.kv, key, expected, value, ttl_ms).map_err(kv_error))
    }

    /// The tenant's quota, for checks made before anything is copied.
    fn kv_quota(&self) -> wasmtime::Result<crate::kv::KvQuota> {
        Ok(self.context()?.tenant.kv)
    }
}

/// Replaces the generated `set` and `compare-and-swap` with ones that check sizes before copying.
pub(crate) fn link_unlifted(kv: &mut LinkerInstance<'_, FilterState>) -> wasmtime::Result<()> {
    kv.func_wrap(
        "set",
        |store: StoreContextMut<'_, FilterState>, (key, value, ttl_ms): (WasmStr, WasmList<u8>, u64)| {
            let store = store.as_context();
            let key = key.to_str(&store)?;
            if let Err(refused) = store.data().kv_quota()?.admits_value(&key, value.len()) {
                return Ok((Err(kv_error(refused)),));
            }
            let value = value.as_le_slice(&store);
            Ok((store.data().kv_set(&key, value, ttl_ms)?,))
        },
    )?;
    kv.func_wrap(
        "compare-and-swap",
        |store: StoreContextMut<'_, FilterState>,
         (key, expected, value, ttl_ms): (WasmStr, Option<WasmList<u8>>, WasmList<u8>, u64)| {
            let store = store.as_context();
            let key = key.to_str(&store)?;
            let quota = store.data().kv_quota()?;
            if let Err(refused) = quota.admits_value(&key, value.len()) {
                return Ok((Err(kv_error(refused)),));
            }
            // No stored value is longer than the quota: such an expected value cannot match.
            if expected.as_ref().is_some_and(|expected| expected.len() > quota.max_bytes) {
                return Ok((Ok(false),));
            }
            let expected = expected.as_ref().map(|expected| expected.as_le_slice(&store));
            let value = value.as_le_slice(&store);
            Ok((store.data().kv_compare_and_swap(&key, expected, value, ttl_ms)?,))
        },
    )?;
    Ok(())
}

impl kv::Host for FilterState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let tenant = &self.context()?.tenant;
        Ok(Ok(self.services.kv.get(&tenant.name, &key)))
    }

    // Linked by hand (`link_unlifted`); these serve only a linker without it.
    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<Result<(), kv::KvError>> {
        self.kv_set(&key, &value, ttl_ms)
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: u64) -> wasmtime::Result<Result<i64, kv::KvError>> {
        let tenant = &self.context()?.tenant;
        Ok(self.services.kv.increment(&tenant.name, tenant.kv, &key, delta, ttl_ms).map_err(kv_error))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let tenant = &self.context()?.tenant;
        Ok(Ok(self.services.kv.delete(&tenant.name, &key)))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<bool, kv::KvError>> {
        self.kv_compare_and_swap(&key, expected.as_deref(), &value, ttl_ms)
    }
}
