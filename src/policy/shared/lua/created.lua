-- A lease's upload was created: the upload holds the room until it expires, under its own id, and
-- the upload id names its member (to forget it by id alone).
-- KEYS: the member's entries, their expiries, the upload's owner key.
-- ARGV: lease id, upload id, bytes, expiry (Unix ms), member.
local lease, upload, bytes, expires, member = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
set_entry(KEYS[1], lease, nil)
redis.call('ZREM', KEYS[2], lease)
if expires > now_ms then
  set_entry(KEYS[1], upload, bytes)
  redis.call('ZADD', KEYS[2], expires, upload)
  redis.call('SET', KEYS[3], member, 'PX', expires - now_ms)
end
keep_until_last(KEYS[1], KEYS[2])
return 1
