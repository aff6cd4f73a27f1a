-- Permits for calls: the account's pause, then its hourly budget (from the plan while it holds
-- more than `keep`, else the free budget; "granted": reserved elsewhere), then the burst limiter
-- (GCRA: `period` ms per call, `tau` ms of burst). A free draw, or a plan draw while the plan holds
-- more than `keep`, may take up to `count` calls at once (a sidecar's batch), as many as the budget,
-- the plan (all of it) and the limiter allow; it may also give back `unused` calls of an earlier batch, taken
-- in clock hour `unused_hour` (a plan draw's go back to its plan, if it still lives).
-- An "ahead" draw is a plan's batch taken before its calls are due: from the plan alone (blocked
-- rather than from the free budget), leaving `keep` calls in it.
-- KEYS: hourly count, plans, plan expiries, burst state (theoretical arrival time), pause.
-- ARGV: hourly limit, draw ("free" | "plan" | "ahead" | "granted"), plan id, keep, period ms, tau
-- ms, count, unused, unused_hour.
-- Returns {status (0 taken, 1 sleep, 2 blocked), wait ms, used, reserved, ms to the next hour,
-- calls taken, clock hour, calls left in the plan (-1 for a draw not from a plan)}.
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
  if (draw == 'plan' or draw == 'ahead') and redis.call('HEXISTS', KEYS[2], id) == 1 then
    add_to_entry(KEYS[2], id, unused)
    reserved = reserved + unused
  end
end
local paused = tonumber(redis.call('GET', KEYS[5]) or '0')
if paused > now_ms then
  return {1, paused - now_ms, used, reserved, to_next_hour_ms, 0, hour, -1}
end
local from_plan, in_plan = false, -1
if draw == 'plan' or draw == 'ahead' then
  in_plan = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  from_plan = in_plan > keep
end
if draw == 'ahead' and not from_plan then
  return {2, 0, used, reserved, to_next_hour_ms, 0, hour, -1}
end
local room = limit - used - reserved
if not from_plan and draw ~= 'granted' and room <= 0 then
  return {2, 0, used, reserved, to_next_hour_ms, 0, hour, -1}
end
if tat < now_exact then
  tat = now_exact
end
if tat - now_exact > tau then
  return {1, math.ceil(tat - now_exact - tau), used, reserved, to_next_hour_ms, 0, hour, -1}
end
local n = 1
local fits = math.floor((now_exact + tau - tat) / period) + 1
if draw == 'free' then
  n = math.min(count, room, fits)
elseif draw == 'ahead' then
  n = math.min(count, in_plan - keep, fits)
elseif from_plan then
  -- Past `keep` too, to the plan's last call (the delete's, unless this is it): the calls of
  -- later stages. A draw takes from a batch only while the batch and the plan together hold more
  -- than its own `keep`; what later stages do not spend goes back.
  n = math.min(count, in_plan - math.min(keep, 1), fits)
end
local next_tat = tat + n * period
redis.call('SET', KEYS[4], string.format('%.3f', next_tat), 'PX', math.ceil(next_tat - now_exact) + 1000)
used = tonumber(redis.call('HINCRBY', KEYS[1], 'used', n))
local left = -1
if from_plan then
  left = tonumber(add_to_entry(KEYS[2], id, -n))
  reserved = reserved - n
end
return {0, 0, used, reserved, to_next_hour_ms, n, hour, left}
