-- Room in a member's quota for one more upload of `bytes`.
-- KEYS: the member's entries (id -> bytes), their expiries.
-- ARGV: lease id, bytes, uploads allowed, bytes allowed, ttl ms.
-- Returns {taken (1/0), uploads held, bytes held}.
local id, bytes, max_uploads, max_bytes, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local held_bytes = live_total(KEYS[1], KEYS[2])
local held = redis.call('HLEN', KEYS[1])
local taken = 0
if held < max_uploads and held_bytes + bytes <= max_bytes then
  set_entry(KEYS[1], id, bytes)
  redis.call('ZADD', KEYS[2], now_ms + ttl, id)
  held, held_bytes, taken = held + 1, held_bytes + bytes, 1
end
keep_until_last(KEYS[1], KEYS[2])
return {taken, held, held_bytes}
