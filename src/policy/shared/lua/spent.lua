-- Calls a sidecar made from its own share while Redis could not be reached, within the last burst
-- window: the burst limiter's theoretical arrival time moves on by them, so that the calls made
-- meanwhile and those made from now on do not each get a whole burst window.
-- KEYS: burst state (theoretical arrival time). ARGV: period ms, calls.
-- Returns 1.
local period, calls = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now_exact then
  tat = now_exact
end
tat = tat + calls * period
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now_exact) + 1000)
return 1
