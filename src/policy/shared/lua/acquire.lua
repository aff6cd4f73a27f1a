-- Permits for calls: the account's pause, then its hourly budget (from the plan while it holds
-- more than `keep`, else the free budget; "granted": reserved elsewhere), then the burst limiter
-- (GCRA: `period` ms per call, `tau` ms of burst). A free draw may take up to `count` calls at once
-- (a sidecar's batch), as many as the budget and the limiter allow; it may also give back `unused`
-- calls of an earlier batch, taken in clock hour `unused_hour`.
-- KEYS: hourly count, plans, plan expiries, burst state (theoretical arrival time), pause.
-- ARGV: hourly limit, draw ("free" | "plan" | "granted"), plan id, keep, period ms, tau ms, count,
-- unused, unused_hour.
-- Returns {status (0 taken, 1 sleep, 2 blocked), wait ms, used, reserved, ms to the next hour,
-- calls taken, clock hour}.
local limit, draw, id, keep = tonumber(ARGV[1]), ARGV[2], ARGV[3], tonumber(ARGV[4])
local period, tau = tonumber(ARGV[5]), tonumber(ARGV[6])
local count = math.max(1, tonumber(ARGV[7] or '1'))
local unused, unused_hour = tonumber(ARGV[8] or '0'), tonumber(ARGV[9] or '-1')
local used = used_this_hour(KEYS[1])
local reserved = live_total(KEYS[2], KEYS[3])
local tat = tonumber(redis.call('GET', KEYS[4]) or '0')
if unused > 0 then
  if unused_hour == hour and used > 0 then
    local back = math.min(unused, used)
    used = tonumber(redis.call('HINCRBY', KEYS[1], 'used', -back))
  end
  if tat > now_exact then
    tat = math.max(now_exact, tat - unused * period)
    redis.call('SET', KEYS[4], string.format('%.3f', tat), 'PX', math.ceil(tat - now_exact) + 1000)
  end
end
local paused = tonumber(redis.call('GET', KEYS[5]) or '0')
if paused > now_ms then
  return {1, paused - now_ms, used, reserved, to_next_hour_ms, 0, hour}
end
local from_plan = false
if draw == 'plan' then
  from_plan = (tonumber(redis.call('HGET', KEYS[2], id) or '0')) > keep
end
local room = limit - used - reserved
if not from_plan and draw ~= 'granted' and room <= 0 then
  return {2, 0, used, reserved, to_next_hour_ms, 0, hour}
end
if tat < now_exact then
  tat = now_exact
end
if tat - now_exact > tau then
  return {1, math.ceil(tat - now_exact - tau), used, reserved, to_next_hour_ms, 0, hour}
end
local n = 1
if draw == 'free' then
  n = math.min(count, room, math.floor((now_exact + tau - tat) / period) + 1)
end
local next_tat = tat + n * period
redis.call('SET', KEYS[4], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now_exact) + 1000)
used = tonumber(redis.call('HINCRBY', KEYS[1], 'used', n))
if from_plan then
  redis.call('HINCRBY', KEYS[2], id, -1)
  reserved = reserved - 1
end
return {0, 0, used, reserved, to_next_hour_ms, n, hour}
