-- The token of the data this Redis holds, made when missing. A sidecar that finds another token
-- than the one it saw last knows the data was lost meanwhile (a restart without persistence, a
-- flush) and writes back what it knows.
-- KEYS: the token's key. ARGV: a fresh token, the token's life (ms), renewed at every look.
local token = redis.call('GET', KEYS[1])
if not token then
  token = ARGV[1]
  redis.call('SET', KEYS[1], token)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return token
