-- A lease's upload was created: the upload holds the room until it expires, under its own id, and
-- the upload id names its member (to forget it by id alone). Not when its member has already
-- used or deleted it (its tombstone: a forget that came first, through another sidecar or while
-- this write was kept for a Redis that had lost its data, is not undone by it).
-- KEYS: the member's entries, their expiries, the upload's owner key, its tombstone.
-- ARGV: lease id, upload id, bytes, expiry (Unix ms), member.
-- Returns 1 when the upload counts, 0 when it had ended.
local lease, upload, bytes, expires, member = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
set_entry(KEYS[1], lease, nil)
redis.call('ZREM', KEYS[2], lease)
local counts = 0
if expires > now_ms and redis.call('EXISTS', KEYS[4]) == 0 then
  set_entry(KEYS[1], upload, bytes)
  redis.call('ZADD', KEYS[2], expires, upload)
  redis.call('SET', KEYS[3], member, 'PX', expires - now_ms)
  counts = 1
end
keep_until_last(KEYS[1], KEYS[2])
return counts
