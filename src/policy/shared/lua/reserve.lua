-- Reserves calls for a plan (new or growing) once the free budget holds them; a new plan may also
-- draw its first `first` calls at once (a batch: the create follows at once), as many as the burst
-- limiter has room for, when the account is not paused.
-- KEYS: hourly count, plans (id -> calls left), plan expiries, burst state, pause.
-- ARGV: hourly limit, calls, plan id, ttl ms, period ms, tau ms, first.
-- Returns {taken (1/0), used, reserved, ms to the next hour, calls drawn, clock hour, calls left
-- in the plan}.
local limit, calls, id, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local period, tau, first = tonumber(ARGV[5] or '1'), tonumber(ARGV[6] or '0'), tonumber(ARGV[7] or '0')
local used = used_this_hour(KEYS[1])
local reserved = live_total(KEYS[2], KEYS[3])
local taken, drawn = 0, 0
local left = tonumber(redis.call('HGET', KEYS[2], id) or '0')
if limit - used - reserved >= calls then
  left = tonumber(add_to_entry(KEYS[2], id, calls))
  redis.call('ZADD', KEYS[3], now_ms + ttl, id)
  reserved = reserved + calls
  taken = 1
  local paused = tonumber(redis.call('GET', KEYS[5]) or '0')
  local tat = math.max(now_exact, tonumber(redis.call('GET', KEYS[4]) or '0'))
  if first > 0 and paused <= now_ms and tat - now_exact <= tau then
    drawn = math.min(first, left, math.floor((now_exact + tau - tat) / period) + 1)
    local next_tat = tat + drawn * period
    redis.call('SET', KEYS[4], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now_exact) + 1000)
    used = tonumber(redis.call('HINCRBY', KEYS[1], 'used', drawn))
    left = tonumber(add_to_entry(KEYS[2], id, -drawn))
    reserved = reserved - drawn
  end
end
keep_until_last(KEYS[2], KEYS[3])
return {taken, used, reserved, to_next_hour_ms, drawn, hour, left}
