-- Shared by every script (prepended): the server's clock, the clock hour, and the account's
-- hourly count and plans with expired plans dropped.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_exact = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local hour = math.floor(tonumber(t[1]) / 3600)
local to_next_hour_ms = (hour + 1) * 3600000 - now_ms

-- The hourly count: {hour, used}, reset when the clock hour turns.
local function used_this_hour(key)
  local h = redis.call('HMGET', key, 'hour', 'used')
  if tonumber(h[1]) ~= hour then
    redis.call('HSET', key, 'hour', hour, 'used', 0)
    redis.call('PEXPIRE', key, to_next_hour_ms + 60000)
    return 0
  end
  return tonumber(h[2]) or 0
end

-- The total of a hash's values (plans' calls, a member's bytes) is kept beside it, in
-- `<hash>:sum`, and changed with every write through `set_entry` and `add_to_entry`, so that no
-- script sums the hash. It is summed again from the hash when missing, at most every few seconds:
-- a write made without it (by an older sidecar) mends on its own.
local SUM_LIFE_MS = 5000

local function stored_total(hash)
  local key = hash .. ':sum'
  local t = redis.call('GET', key)
  if t and redis.call('EXISTS', hash) == 1 then
    return tonumber(t)
  end
  local total = 0
  for _, v in ipairs(redis.call('HVALS', hash)) do
    total = total + tonumber(v)
  end
  redis.call('SET', key, total, 'PX', SUM_LIFE_MS)
  return total
end

-- Sets entry `id` of `hash` to `value` (nil: deletes it), and the total with it.
local function set_entry(hash, id, value)
  local total = stored_total(hash)
  local old = tonumber(redis.call('HGET', hash, id) or '0')
  if value then
    redis.call('HSET', hash, id, value)
  else
    redis.call('HDEL', hash, id)
  end
  redis.call('SET', hash .. ':sum', total - old + (value or 0), 'KEEPTTL')
end

-- Adds `delta` to entry `id` of `hash`, and to the total; returns the entry's new value.
local function add_to_entry(hash, id, delta)
  local total = stored_total(hash)
  local value = redis.call('HINCRBY', hash, id, delta)
  redis.call('SET', hash .. ':sum', total + delta, 'KEEPTTL')
  return value
end

-- Drops entries whose expiry (the zset's score, ms) has passed; returns the hash's remaining total.
local function live_total(hash, expiries)
  local dead = redis.call('ZRANGEBYSCORE', expiries, '-inf', now_ms)
  for _, id in ipairs(dead) do
    set_entry(hash, id, nil)
  end
  if #dead > 0 then
    redis.call('ZREMRANGEBYSCORE', expiries, '-inf', now_ms)
  end
  return stored_total(hash)
end

-- Both keys live as long as their longest-lived entry.
local function keep_until_last(hash, expiries)
  local last = redis.call('ZRANGE', expiries, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('DEL', hash, expiries, hash .. ':sum')
    return
  end
  local ttl = math.max(1000, math.ceil(tonumber(last[2]) - now_ms) + 1000)
  redis.call('PEXPIRE', hash, ttl)
  redis.call('PEXPIRE', expiries, ttl)
end

-- What a member holds: {uploads, bytes} in its ledger, expired entries dropped.
local function held_by(prefix, member)
  local entries, expiries = prefix .. ':m:' .. member .. ':e', prefix .. ':m:' .. member .. ':x'
  local bytes = live_total(entries, expiries)
  return {redis.call('HLEN', entries), bytes}
end
