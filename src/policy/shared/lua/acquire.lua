-- A permit for one call: the account's pause, then its hourly budget (from the plan while it holds
-- more than `keep`, else the free budget; "granted": reserved elsewhere), then the burst limiter
-- (GCRA: `period` ms per call, `tau` ms of burst).
-- KEYS: hourly count, plans, plan expiries, burst state (theoretical arrival time), pause.
-- ARGV: hourly limit, draw ("free" | "plan" | "granted"), plan id, keep, period ms, tau ms.
-- Returns {status (0 taken, 1 sleep, 2 blocked), wait ms, used, reserved, ms to the next hour}.
local limit, draw, id, keep = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local period, tau = tonumber(ARGV[5]), tonumber(ARGV[6])
local used = used_this_hour(KEYS[1])
local reserved = live_total(KEYS[2], KEYS[3])
local paused = tonumber(redis.call('GET', KEYS[5]) or '0')
if paused > now_ms then
  return {1, paused - now_ms, used, reserved, to_next_hour_ms}
end
local from_plan = false
if draw == 'plan' then
  from_plan = (tonumber(redis.call('HGET', KEYS[2], id) or '0')) > keep
end
if not from_plan and draw ~= 'granted' and limit - used - reserved <= 0 then
  return {2, 0, used, reserved, to_next_hour_ms}
end
local tat = tonumber(redis.call('GET', KEYS[4]) or '0')
if tat < now_exact then
  tat = now_exact
end
if tat - now_exact > tau then
  return {1, math.ceil(tat - now_exact - tau), used, reserved, to_next_hour_ms}
end
local next_tat = tat + period
redis.call('SET', KEYS[4], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now_exact) + 1000)
used = tonumber(redis.call('HINCRBY', KEYS[1], 'used', 1))
if from_plan then
  redis.call('HINCRBY', KEYS[2], id, -1)
  reserved = reserved - 1
end
return {0, 0, used, reserved, to_next_hour_ms}
