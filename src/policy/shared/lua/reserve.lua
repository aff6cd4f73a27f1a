-- Reserves calls for a plan (new or growing) once the free budget holds them.
-- KEYS: hourly count, plans (id -> calls left), plan expiries.
-- ARGV: hourly limit, calls, plan id, ttl ms.
-- Returns {taken (1/0), used, reserved, ms to the next hour}.
local limit, calls, id, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local used = used_this_hour(KEYS[1])
local reserved = live_total(KEYS[2], KEYS[3])
local taken = 0
if limit - used - reserved >= calls then
  redis.call('HINCRBY', KEYS[2], id, calls)
  redis.call('ZADD', KEYS[3], now_ms + ttl, id)
  reserved = reserved + calls
  taken = 1
end
keep_until_last(KEYS[2], KEYS[3])
return {taken, used, reserved, to_next_hour_ms}
