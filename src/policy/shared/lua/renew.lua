-- Renews entries this sidecar still holds (plans of an account, or leases of a member).
-- KEYS: the hash, its expiries. ARGV: ttl ms, ids...
local ttl = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], 'XX', now_ms + ttl, ARGV[i])
    renewed = renewed + 1
  end
end
keep_until_last(KEYS[1], KEYS[2])
return renewed
