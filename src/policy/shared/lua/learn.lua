-- What an answer said of the account's limits: when the upstream has seen more calls in the clock
-- hour it speaks of than are counted here (made by clients that do not share this count), the
-- count is re-based to them, with the calls the sidecar holds in batches (counted here, not yet
-- made) on top; never down. Only then: calls held in batches, or given back meanwhile, are no
-- reason to re-base (the count would end above the calls made); and a pause.
-- KEYS: hourly count, pause. ARGV: hourly limit, calls left (-1: not said), the hour it speaks of,
-- pause ms (0: none), calls held in batches.
local limit, left, speaks_of, pause = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ahead = tonumber(ARGV[5] or '0')
local used = used_this_hour(KEYS[1])
if left >= 0 and speaks_of == hour and limit - left > used then
  redis.call('HSET', KEYS[1], 'used', limit - left + ahead)
end
if pause > 0 then
  local until_ms = now_ms + pause
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if until_ms > current then
    redis.call('SET', KEYS[2], until_ms, 'PX', pause)
  end
end
return 1
