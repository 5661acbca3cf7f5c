//! The Redis key-value backend: a tenant's namespace kept in Redis, so that several Sluice
//! instances sharing one Redis see one state, one rate limit and one quota.
//!
//! Every operation keeps the meaning it has in memory: `get` is a `GET`; `set`, `increment`,
//! `delete` and `compare-and-swap` are Lua scripts (loaded once, run by digest), each one atomic
//! on the server and each keeping the tenant's key and byte totals, so that quotas are counted on
//! the server by every instance alike (`redis_common.lua` says how). Keys are the host's:
//! `<prefix>:t:<tenant, hex>:k:<key>`; the tenant part is hex-encoded, so no key a guest writes
//! can reach into another tenant's namespace.
//!
//! A call waits at most the backend's `timeout` (a few milliseconds): past it, or with Redis
//! down, it fails with [`KvError::Unavailable`], counted and logged (once per ten seconds per
//! backend), and the filter decides what that means. Connections are multiplexed, made on first
//! use and remade in the background when they break.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::bucket::{Bucket, BucketSpec};
use super::{KvError, KvQuota, check_key};

/// What a `[redis.NAME]` section says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// Its name in the configuration, for logs and metrics.
    pub name: String,
    /// `redis://[user:password@]host:port/db`, or `rediss://` for TLS.
    pub url: String,
    /// The longest one operation may take, connecting included.
    pub timeout: Duration,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// Multiplexed connections kept.
    pub pool_size: usize,
    /// Prefix of every key Sluice writes, so that several deployments can share one Redis.
    pub key_prefix: String,
}

const COMMON: &str = include_str!("redis_common.lua");

const SET: &str = "return store(ARGV[4], tonumber(ARGV[5]))";

const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[6] == '0' then
  if current then return 0 end
elseif current ~= ARGV[7] then
  return 0
end
local stored = store(ARGV[4], tonumber(ARGV[5]))
if stored < 0 then return stored end
return 1
";

const INCREMENT: &str = r"
local old = counted_size()
local current = redis.call('GET', KEYS[1])
local delta = ARGV[4]
if not current then
  local size = #member + #delta
  if not fits(nil, size) then return {-1, '0'} end
  put(delta, tonumber(ARGV[5]))
  account(nil, size)
  return {1, delta}
end
local ok, failure = pcall(redis.call, 'INCRBY', KEYS[1], delta)
if not ok then
  local message = type(failure) == 'table' and failure.err or tostring(failure)
  if not string.find(message, 'overflow') then return {-2, '0'} end
  local limit = '9223372036854775807'
  if string.sub(delta, 1, 1) == '-' then limit = '-9223372036854775808' end
  redis.call('SET', KEYS[1], limit, 'KEEPTTL')
end
local value = redis.call('GET', KEYS[1])
local size = #member + #value
if not fits(old, size) then
  redis.call('SET', KEYS[1], current, 'KEEPTTL')
  return {-1, '0'}
end
account(old, size)
return {1, value}
";

/// The steps of `bucket.rs` by the server's clock, in milli-tokens (Lua numbers are doubles: the
/// bounds on capacity and rate keep them within a thousandth of a token). ARGV[4..7] =
/// [capacity, rate, period ms, cost]; returns {status, taken, remaining, full in, retry in}.
const TAKE_TOKENS: &str = r"
local capacity = tonumber(ARGV[4]) * 1000
local rate = tonumber(ARGV[5]) * 1000
local period = tonumber(ARGV[6])
local cost = tonumber(ARGV[7]) * 1000
local function refill_time(missing) return math.ceil(missing * period / rate) end
local tokens, last = capacity, now
local current = redis.call('GET', KEYS[1])
if current then
  local stored_tokens, stored_time = string.match(current, '^(%d+),(%d+)$')
  if not stored_tokens then return {-2, 0, 0, 0, 0} end
  tokens, last = tonumber(stored_tokens), tonumber(stored_time)
end
local elapsed = math.max(now - last, 0)
local added = capacity
if elapsed < refill_time(capacity) then added = math.floor(elapsed * rate / period) end
tokens = math.min(tokens + added, capacity)
local refilled_until = last + math.floor(added * period / rate)
if tokens == capacity then refilled_until = math.max(now, last) end
if tokens < cost then
  return {1, 0, math.floor(tokens / 1000), refill_time(capacity - tokens), refill_time(cost - tokens)}
end
local left = tokens - cost
local full_in = refill_time(capacity - left)
local value = string.format('%.0f,%.0f', left, refilled_until)
if store(value, full_in + 1000) < 0 then return {-1, 0, 0, 0, 0} end
return {1, 1, math.floor(left / 1000), full_in, 0}
";

const DELETE: &str = r"
local size = redis.call('HGET', KEYS[2], member)
local existed = redis.call('DEL', KEYS[1])
if size then forget(member, size) end
return existed
";

/// What a script's negative status says: -1 past the quota, -2 a value of another kind.
fn refusal(status: i64) -> Result<(), KvError> {
    match status {
        -1 => Err(KvError::QuotaExceeded),
        -2 => Err(KvError::NotANumber),
        _ => Ok(()),
    }
}

struct Scripts {
    set: redis::Script,
    compare_and_swap: redis::Script,
    increment: redis::Script,
    delete: redis::Script,
    take_tokens: redis::Script,
}

impl Scripts {
    fn new() -> Self {
        let script = |body: &str| redis::Script::new(&format!("{COMMON}\n{body}"));
        Self {
            set: script(SET),
            compare_and_swap: script(COMPARE_AND_SWAP),
            increment: script(INCREMENT),
            delete: script(DELETE),
            take_tokens: script(TAKE_TOKENS),
        }
    }
}

/// A Redis backend, shared by every tenant that names it and by every configuration generation
/// with the same settings.
pub struct RedisKv {
    settings: RedisSettings,
    client: redis::Client,
    connections: OnceLock<Vec<ConnectionManager>>,
    next: AtomicUsize,
    scripts: Scripts,
    last_warning: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").field("name", &self.settings.name).finish_non_exhaustive()
    }
}

/// A tenant's place in the backend: the four keys of its namespace, minus the value's.
struct Namespace {
    values: String,
    sizes: String,
    expiry: String,
    usage: String,
}

impl RedisKv {
    /// A backend for `settings`; nothing connects until the first operation.
    pub fn new(settings: RedisSettings) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|err| format!("url: {err}"))?;
        Ok(Self {
            settings,
            client,
            connections: OnceLock::new(),
            next: AtomicUsize::new(0),
            scripts: Scripts::new(),
            last_warning: Mutex::new(None),
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &RedisSettings {
        &self.settings
    }

    /// The client, for what else instances share through this Redis (purges, bans).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    fn namespace(&self, tenant: &str) -> Namespace {
        let base = format!("{}:t:{}:", self.settings.key_prefix, hex::encode(tenant));
        Namespace {
            values: format!("{base}k:"),
            sizes: format!("{base}sizes"),
            expiry: format!("{base}expiry"),
            usage: format!("{base}usage"),
        }
    }

    /// A connection: made (lazily, in the background) on first use, in the runtime of the
    /// caller, which is always the proxy's.
    fn connection(&self) -> Result<ConnectionManager, KvError> {
        let connections = match self.connections.get() {
            Some(connections) => connections,
            None => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.connect_timeout))
                    .set_response_timeout(Some(self.settings.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                let made: Result<Vec<_>, _> = (0..self.settings.pool_size.max(1))
                    .map(|_| ConnectionManager::new_lazy_with_config(self.client.clone(), config.clone()))
                    .collect();
                let made = made.map_err(|err| KvError::Unavailable(err.to_string()))?;
                self.connections.get_or_init(|| made)
            }
        };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % connections.len();
        Ok(connections[index].clone())
    }

    /// Runs `operation` within the backend's timeout; a failure is counted by the caller and
    /// logged here, at most once per ten seconds.
    async fn within_timeout<T>(
        &self,
        tenant: &str,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, KvError> {
        let outcome = match tokio::time::timeout(self.settings.timeout, operation).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {} ms", self.settings.timeout.as_millis()),
        };
        let mut last = self.last_warning.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(backend = %self.settings.name, tenant, error = %outcome, "key-value backend unavailable; calls fail until it answers");
        }
        Err(KvError::Unavailable(outcome))
    }

    fn invocation<'s>(
        &self,
        script: &'s redis::Script,
        namespace: &Namespace,
        key: &str,
        quota: KvQuota,
    ) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(format!("{}{key}", namespace.values))
            .key(&namespace.sizes)
            .key(&namespace.expiry)
            .key(&namespace.usage)
            .arg(key)
            .arg(quota.max_keys)
            .arg(quota.max_bytes);
        invocation
    }

    /// The live value under `key`.
    pub async fn get(&self, tenant: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        let mut connection = self.connection()?;
        let name = format!("{}{key}", self.namespace(tenant).values);
        self.within_timeout(tenant, async move { redis::cmd("GET").arg(name).query_async(&mut connection).await }).await
    }

    /// Stores `value` under `key`, expiring after `ttl_ms` (0: never).
    pub async fn set(&self, tenant: &str, quota: KvQuota, key: &str, value: &[u8], ttl_ms: u64) -> Result<(), KvError> {
        quota.admits_value(key, value.len())?;
        let mut connection = self.connection()?;
        let namespace = self.namespace(tenant);
        let mut invocation = self.invocation(&self.scripts.set, &namespace, key, quota);
        invocation.arg(value).arg(ttl_ms);
        let status: i64 =
            self.within_timeout(tenant, async move { invocation.invoke_async(&mut connection).await }).await?;
        if status < 0 { Err(KvError::QuotaExceeded) } else { Ok(()) }
    }

    /// Adds `delta` to the integer under `key` (absent counts as 0); a new key expires after
    /// `ttl_ms`, an existing one keeps its expiry.
    pub async fn increment(
        &self,
        tenant: &str,
        quota: KvQuota,
        key: &str,
        delta: i64,
        ttl_ms: u64,
    ) -> Result<i64, KvError> {
        check_key(key)?;
        let mut connection = self.connection()?;
        let namespace = self.namespace(tenant);
        let mut invocation = self.invocation(&self.scripts.increment, &namespace, key, quota);
        invocation.arg(delta.to_string()).arg(ttl_ms);
        let (status, value): (i64, String) =
            self.within_timeout(tenant, async move { invocation.invoke_async(&mut connection).await }).await?;
        refusal(status)?;
        value.parse().map_err(|_| KvError::NotANumber)
    }

    /// Removes `key`; true if it was present.
    pub async fn delete(&self, tenant: &str, key: &str) -> Result<bool, KvError> {
        check_key(key)?;
        let mut connection = self.connection()?;
        let namespace = self.namespace(tenant);
        let invocation = self.invocation(&self.scripts.delete, &namespace, key, KvQuota { max_keys: 0, max_bytes: 0 });
        let removed: i64 =
            self.within_timeout(tenant, async move { invocation.invoke_async(&mut connection).await }).await?;
        Ok(removed > 0)
    }

    /// Stores `value` only if the key's value is `expected` (`None`: absent), atomically.
    pub async fn compare_and_swap(
        &self,
        tenant: &str,
        quota: KvQuota,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<bool, KvError> {
        quota.admits_value(key, value.len())?;
        let mut connection = self.connection()?;
        let namespace = self.namespace(tenant);
        let mut invocation = self.invocation(&self.scripts.compare_and_swap, &namespace, key, quota);
        invocation.arg(value).arg(ttl_ms).arg(if expected.is_some() { "1" } else { "0" }).arg(expected.unwrap_or(b""));
        let status: i64 =
            self.within_timeout(tenant, async move { invocation.invoke_async(&mut connection).await }).await?;
        match status {
            -1 => Err(KvError::QuotaExceeded),
            0 => Ok(false),
            _ => Ok(true),
        }
    }

    /// Takes tokens from the bucket under `key`, atomically and by the server's clock.
    pub async fn take_tokens(
        &self,
        tenant: &str,
        quota: KvQuota,
        key: &str,
        spec: BucketSpec,
    ) -> Result<Bucket, KvError> {
        check_key(key)?;
        let mut connection = self.connection()?;
        let namespace = self.namespace(tenant);
        let mut invocation = self.invocation(&self.scripts.take_tokens, &namespace, key, quota);
        invocation.arg(spec.capacity).arg(spec.rate).arg(spec.period_ms).arg(spec.cost);
        let (status, taken, remaining, full_in_ms, retry_in_ms): (i64, i64, u64, u64, u64) =
            self.within_timeout(tenant, async move { invocation.invoke_async(&mut connection).await }).await?;
        refusal(status)?;
        Ok(Bucket { taken: taken == 1, remaining, full_in_ms, retry_in_ms })
    }
}
