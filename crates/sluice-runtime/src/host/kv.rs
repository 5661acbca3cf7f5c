//! `sluice:filter/kv`: the tenant's key-value namespace, in its backend (memory or Redis).
//!
//! `set` and `compare-and-swap` are linked by hand ([`link_unlifted`]) rather than through the
//! generated bindings: the generated ones copy the value out of the guest before the host sees
//! it, so a guest could make the host copy its whole memory only to be refused. These read the
//! value's length first and copy it only once the quota admits it.
//!
//! Every call is asynchronous. With the memory backend it completes at once; with Redis it waits
//! on the network the way a callout does: the worker goes on with other requests, a long call
//! gives its lanes back meanwhile, and from a long-call thread the operation runs on the proxy's
//! workers (where the backend's connections live). A backend that fails or does not answer within
//! its timeout gives the guest `other("unavailable: ...")`, counted in
//! `sluice_filter_kv_unavailable_total`.

use std::future::Future;

use wasmtime::component::{LinkerInstance, WasmList, WasmStr};
use wasmtime::{AsContext, StoreContextMut};

use super::*;
use crate::bindings::sluice::filter::kv;
use crate::kv::{BucketSpec, KvBackend, KvQuota, RedisKv};

fn kv_error(error: KvError) -> kv::KvError {
    match error {
        KvError::QuotaExceeded => kv::KvError::QuotaExceeded,
        KvError::NotANumber => kv::KvError::NotANumber,
        KvError::KeyTooLong | KvError::InvalidArgument(_) => kv::KvError::Other(error.to_string()),
        KvError::Unavailable(reason) => kv::KvError::Other(format!("unavailable: {reason}")),
    }
}

/// Who is asking: the tenant's name, quota and backend, and what a remote call needs of the
/// instance (owned, so that nothing of the store is held while the call waits).
struct Asker {
    tenant: Arc<str>,
    quota: KvQuota,
    backend: KvBackend,
    services: Arc<HostServices>,
    clock: Arc<CallClock>,
    long_call: Arc<std::sync::Mutex<Option<LongCallPermits>>>,
}

impl FilterState {
    fn asker(&self) -> wasmtime::Result<Asker> {
        let tenant = &self.context()?.tenant;
        Ok(Asker {
            tenant: tenant.name.clone(),
            quota: tenant.kv,
            backend: tenant.kv_backend.clone(),
            services: self.services.clone(),
            clock: self.clock.clone(),
            long_call: self.long_call.clone(),
        })
    }

    /// The tenant's quota, for checks made before anything is copied.
    fn kv_quota(&self) -> wasmtime::Result<KvQuota> {
        Ok(self.context()?.tenant.kv)
    }
}

impl Asker {
    /// Runs a Redis operation as a callout runs: lanes given back while it waits, and on the
    /// proxy's workers when called from a long-call thread.
    async fn on_redis<T: Send + 'static>(
        &self,
        operation: impl Future<Output = Result<T, KvError>> + Send + 'static,
    ) -> Result<T, kv::KvError> {
        if let Ok(mut held) = self.long_call.lock() {
            held.take();
        }
        let outcome = match self.clock.home() {
            Some(home) => home
                .spawn(operation)
                .await
                .unwrap_or_else(|err| Err(KvError::Unavailable(format!("task failed: {err}")))),
            None => operation.await,
        };
        if let Err(KvError::Unavailable(_)) = &outcome {
            let labels = vec![("tenant".to_owned(), self.tenant.to_string())];
            self.services.kv_unavailable.get_or_create(&labels).inc();
        }
        outcome.map_err(kv_error)
    }

    /// A Redis call made with the backend and the tenant's name.
    async fn redis_call<T: Send + 'static, F>(
        &self,
        redis: &Arc<RedisKv>,
        call: impl FnOnce(Arc<RedisKv>, Arc<str>) -> F,
    ) -> Result<T, kv::KvError>
    where
        F: Future<Output = Result<T, KvError>> + Send + 'static,
    {
        self.on_redis(call(redis.clone(), self.tenant.clone())).await
    }

    /// `set`, with the value still in the guest's memory: the memory backend copies it once
    /// into the store, Redis once into the command.
    fn set_now_or_later(&self, key: &str, value: &[u8], ttl_ms: u64) -> NowOrLater<()> {
        match &self.backend {
            KvBackend::Memory => {
                NowOrLater::Now(self.services.kv.set(&self.tenant, self.quota, key, value, ttl_ms).map_err(kv_error))
            }
            KvBackend::Redis(redis) => {
                let (redis, tenant, key, value, quota) =
                    (redis.clone(), self.tenant.clone(), key.to_owned(), value.to_vec(), self.quota);
                NowOrLater::Later(Box::pin(async move { redis.set(&tenant, quota, &key, &value, ttl_ms).await }))
            }
        }
    }

    /// `compare-and-swap`, as [`Asker::set_now_or_later`].
    fn compare_and_swap_now_or_later(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> NowOrLater<bool> {
        match &self.backend {
            KvBackend::Memory => NowOrLater::Now(
                self.services
                    .kv
                    .compare_and_swap(&self.tenant, self.quota, key, expected, value, ttl_ms)
                    .map_err(kv_error),
            ),
            KvBackend::Redis(redis) => {
                let (redis, tenant, key, quota) = (redis.clone(), self.tenant.clone(), key.to_owned(), self.quota);
                let (expected, value) = (expected.map(<[u8]>::to_vec), value.to_vec());
                NowOrLater::Later(Box::pin(async move {
                    redis.compare_and_swap(&tenant, quota, &key, expected.as_deref(), &value, ttl_ms).await
                }))
            }
        }
    }
}

/// A backend operation: done at once (memory), or a Redis call to wait on.
enum NowOrLater<T> {
    Now(Result<T, kv::KvError>),
    Later(std::pin::Pin<Box<dyn Future<Output = Result<T, KvError>> + Send>>),
}

/// A call checked and started while the guest's memory is at hand, with what finishing it needs
/// owned (nothing of the store is held while it waits).
struct Prepared<T> {
    asker: Option<Asker>,
    operation: NowOrLater<T>,
}

impl<T: Send + 'static> Prepared<T> {
    fn done(outcome: Result<T, kv::KvError>) -> Self {
        Self { asker: None, operation: NowOrLater::Now(outcome) }
    }

    async fn finish(self) -> Result<T, kv::KvError> {
        match (self.operation, self.asker) {
            (NowOrLater::Now(done), _) => done,
            (NowOrLater::Later(later), Some(asker)) => asker.on_redis(later).await,
            (NowOrLater::Later(later), None) => later.await.map_err(kv_error),
        }
    }
}

fn prepare_set(
    store: StoreContextMut<'_, FilterState>,
    (key, value, ttl_ms): (WasmStr, WasmList<u8>, u64),
) -> wasmtime::Result<Prepared<()>> {
    let store = store.as_context();
    let key = key.to_str(&store)?;
    if let Err(refused) = store.data().kv_quota()?.admits_value(&key, value.len()) {
        return Ok(Prepared::done(Err(kv_error(refused))));
    }
    let asker = store.data().asker()?;
    store.data().usage.record_kv((key.len() + value.len()) as u64);
    let operation = asker.set_now_or_later(&key, value.as_le_slice(&store), ttl_ms);
    Ok(Prepared { asker: Some(asker), operation })
}

fn prepare_compare_and_swap(
    store: StoreContextMut<'_, FilterState>,
    (key, expected, value, ttl_ms): (WasmStr, Option<WasmList<u8>>, WasmList<u8>, u64),
) -> wasmtime::Result<Prepared<bool>> {
    let store = store.as_context();
    let key = key.to_str(&store)?;
    let quota = store.data().kv_quota()?;
    if let Err(refused) = quota.admits_value(&key, value.len()) {
        return Ok(Prepared::done(Err(kv_error(refused))));
    }
    // No stored value is longer than the quota: such an expected value cannot match.
    if expected.as_ref().is_some_and(|expected| expected.len() > quota.max_bytes) {
        return Ok(Prepared::done(Ok(false)));
    }
    let asker = store.data().asker()?;
    let moved = key.len() + value.len() + expected.as_ref().map_or(0, WasmList::len);
    store.data().usage.record_kv(moved as u64);
    let expected = expected.as_ref().map(|expected| expected.as_le_slice(&store));
    let operation = asker.compare_and_swap_now_or_later(&key, expected, value.as_le_slice(&store), ttl_ms);
    Ok(Prepared { asker: Some(asker), operation })
}

/// Replaces the generated `set` and `compare-and-swap` with ones that check sizes before copying.
pub(crate) fn link_unlifted(kv: &mut LinkerInstance<'_, FilterState>) -> wasmtime::Result<()> {
    kv.func_wrap_async("set", |store: StoreContextMut<'_, FilterState>, params: (WasmStr, WasmList<u8>, u64)| {
        let prepared = prepare_set(store, params);
        Box::new(async move { Ok((prepared?.finish().await,)) })
    })?;
    kv.func_wrap_async(
        "compare-and-swap",
        |store: StoreContextMut<'_, FilterState>, params: (WasmStr, Option<WasmList<u8>>, WasmList<u8>, u64)| {
            let prepared = prepare_compare_and_swap(store, params);
            Box::new(async move { Ok((prepared?.finish().await,)) })
        },
    )?;
    Ok(())
}

impl kv::Host for FilterState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, kv::KvError>> {
        let asker = self.asker()?;
        let key_bytes = key.len();
        let value = match &asker.backend {
            KvBackend::Memory => Ok(asker.services.kv.get(&asker.tenant, &key)),
            KvBackend::Redis(redis) => {
                asker.redis_call(redis, |redis, tenant| async move { redis.get(&tenant, &key).await }).await
            }
        };
        let value_bytes = value.as_ref().map_or(0, |value| value.as_ref().map_or(0, Vec::len));
        self.usage.record_kv((key_bytes + value_bytes) as u64);
        Ok(value)
    }

    // Linked by hand (`link_unlifted`); these serve only a linker without it.
    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> wasmtime::Result<Result<(), kv::KvError>> {
        let asker = self.asker()?;
        self.usage.record_kv((key.len() + value.len()) as u64);
        let operation = asker.set_now_or_later(&key, &value, ttl_ms);
        Ok(Prepared { asker: Some(asker), operation }.finish().await)
    }

    async fn increment(&mut self, key: String, delta: i64, ttl_ms: u64) -> wasmtime::Result<Result<i64, kv::KvError>> {
        let asker = self.asker()?;
        self.usage.record_kv(key.len() as u64 + 8);
        let quota = asker.quota;
        Ok(match &asker.backend {
            KvBackend::Memory => {
                asker.services.kv.increment(&asker.tenant, quota, &key, delta, ttl_ms).map_err(kv_error)
            }
            KvBackend::Redis(redis) => {
                asker
                    .redis_call(redis, |redis, tenant| async move {
                        redis.increment(&tenant, quota, &key, delta, ttl_ms).await
                    })
                    .await
            }
        })
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let asker = self.asker()?;
        self.usage.record_kv(key.len() as u64);
        Ok(match &asker.backend {
            KvBackend::Memory => Ok(asker.services.kv.delete(&asker.tenant, &key)),
            KvBackend::Redis(redis) => {
                asker.redis_call(redis, |redis, tenant| async move { redis.delete(&tenant, &key).await }).await
            }
        })
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> wasmtime::Result<Result<bool, kv::KvError>> {
        let asker = self.asker()?;
        let moved = key.len() + value.len() + expected.as_ref().map_or(0, Vec::len);
        self.usage.record_kv(moved as u64);
        let operation = asker.compare_and_swap_now_or_later(&key, expected.as_deref(), &value, ttl_ms);
        Ok(Prepared { asker: Some(asker), operation }.finish().await)
    }

    async fn take_tokens(
        &mut self,
        key: String,
        capacity: u64,
        rate: u64,
        period_ms: u64,
        cost: u64,
    ) -> wasmtime::Result<Result<kv::Bucket, kv::KvError>> {
        let asker = self.asker()?;
        self.usage.record_kv(key.len() as u64 + 8);
        let spec = match BucketSpec::new(capacity, rate, period_ms, cost) {
            Ok(spec) => spec,
            Err(refused) => return Ok(Err(kv_error(refused))),
        };
        let quota = asker.quota;
        let bucket = match &asker.backend {
            KvBackend::Memory => asker.services.kv.take_tokens(&asker.tenant, quota, &key, spec).map_err(kv_error),
            KvBackend::Redis(redis) => {
                asker
                    .redis_call(
                        redis,
                        |redis, tenant| async move { redis.take_tokens(&tenant, quota, &key, spec).await },
                    )
                    .await
            }
        };
        Ok(bucket.map(|bucket| kv::Bucket {
            taken: bucket.taken,
            remaining: bucket.remaining,
            full_in_ms: bucket.full_in_ms,
            retry_in_ms: bucket.retry_in_ms,
        }))
    }
}
