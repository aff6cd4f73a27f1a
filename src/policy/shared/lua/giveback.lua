-- Gives back the free calls a sidecar's batch took but did not spend: off the hourly count if
-- they were counted in this clock hour, and off the burst limiter's theoretical arrival time.
-- KEYS: hourly count, plans, plan expiries, burst state (theoretical arrival time), pause.
-- ARGV: period ms, unused, unused_hour.
-- Returns 1.
local period, unused, unused_hour = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used = used_this_hour(KEYS[1])
if unused_hour == hour and used > 0 then
  redis.call('HINCRBY', KEYS[1], 'used', -math.min(unused, used))
end
local tat = tonumber(redis.call('GET', KEYS[4]) or '0')
if tat > now_exact then
  tat = math.max(now_exact, tat - unused * period)
  redis.call('SET', KEYS[4], string.format('%.3f', tat), 'PX', math.ceil(tat - now_exact) + 1000)
end
return 1
