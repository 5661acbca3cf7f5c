-- Lua shared by the write scripts of the Redis key-value backend (see `redis.rs`). A tenant's
-- namespace is four kinds of keys under its prefix: `k:<key>` holds each value (with Redis's own
-- expiry), `sizes` the bytes each key counts for, `expiry` the keys by when they expire
-- (`+inf`: never), and `usage` the namespace's totals (`keys`, `bytes`). Every script is given
-- KEYS = [value key, sizes, expiry, usage] and ARGV[1..3] = [key, max keys, max bytes], and
-- keeps the totals right, so that the quota is counted on the server, by every instance alike.
local member = ARGV[1]
local max_keys = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function forget(name, size)
  redis.call('HDEL', KEYS[2], name)
  redis.call('ZREM', KEYS[3], name)
  redis.call('HINCRBY', KEYS[4], 'keys', -1)
  redis.call('HINCRBY', KEYS[4], 'bytes', -tonumber(size or '0'))
end

-- Takes expired keys out of the totals (their values Redis has expired already).
local function sweep(limit)
  local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)
  for _, name in ipairs(expired) do
    forget(name, redis.call('HGET', KEYS[2], name))
  end
end

local function usage()
  local totals = redis.call('HMGET', KEYS[4], 'keys', 'bytes')
  return tonumber(totals[1] or '0'), tonumber(totals[2] or '0')
end

-- The size the key counts for now, forgetting it first if its value is gone.
local function counted_size()
  local size = redis.call('HGET', KEYS[2], member)
  if size and redis.call('EXISTS', KEYS[1]) == 0 then
    forget(member, size)
    return nil
  end
  return size
end

-- Whether the namespace has room for the key at `size` bytes (sweeping harder when it looks full).
local function fits(old, size)
  for _, limit in ipairs({100, 10000}) do
    sweep(limit)
    local keys, bytes = usage()
    local new_keys = keys + (old and 0 or 1)
    local new_bytes = bytes - tonumber(old or '0') + size
    if new_keys <= max_keys and new_bytes <= max_bytes then
      return true
    end
  end
  return false
end

local function account(old, size)
  redis.call('HSET', KEYS[2], member, size)
  if not old then
    redis.call('HINCRBY', KEYS[4], 'keys', 1)
  end
  redis.call('HINCRBY', KEYS[4], 'bytes', size - tonumber(old or '0'))
end

-- Writes the value and its expiry, quota and totals aside.
local function put(value, ttl)
  if ttl > 0 then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
    redis.call('ZADD', KEYS[3], now + ttl, member)
  else
    redis.call('SET', KEYS[1], value)
    redis.call('ZADD', KEYS[3], '+inf', member)
  end
end

-- Stores `value`, expiring after `ttl` ms (0: never). Returns 1, or -1 past the quota.
local function store(value, ttl)
  local old = counted_size()
  local size = #member + #value
  if not fits(old, size) then
    return -1
  end
  put(value, ttl)
  account(old, size)
  return 1
end
