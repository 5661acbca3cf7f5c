//! `sluice:filter/kv`: the tenant's key-value namespace.

use super::*;
use crate::bindings::sluice::filter::kv;

fn kv_error(error: KvError) -> kv::KvError {
    match error {
        KvError::QuotaExceeded => kv::KvError::QuotaExceeded,
        KvError::NotANumber => kv::KvError::NotANumber,
    }
}

impl kv::Host for FilterState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(Ok(self.services.kv.get(&tenant.name, &key)))
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<Result<(), kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(self.services.kv.set(&tenant.name, tenant.kv, &key, value, ttl_ms).map_err(kv_error))
    }

    fn increment(&mut self, key: String, delta: i64, ttl_ms: u64) -> wasmtime::Result<Result<i64, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(self.services.kv.increment(&tenant.name, tenant.kv, &key, delta, ttl_ms).map_err(kv_error))
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(Ok(self.services.kv.delete(&tenant.name, &key)))
    }

    fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let tenant = self.context()?.tenant.clone();
        Ok(self
            .services
            .kv
            .compare_and_swap(&tenant.name, tenant.kv, &key, expected.as_deref(), value, ttl_ms)
            .map_err(kv_error))
    }
}
