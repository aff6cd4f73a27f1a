-- A part taken through the passthrough: its upload holds `bytes` more, when it is `member`'s.
-- KEYS: the upload's owner key. ARGV: key prefix, the member whose call it was, upload id, bytes.
-- Returns {uploads, bytes} the member holds after it.
local prefix, caller, id, bytes = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local member = redis.call('GET', KEYS[1])
if member and member == caller then
  local entries = prefix .. ':m:' .. member .. ':e'
  if redis.call('HEXISTS', entries, id) == 1 then
    add_to_entry(entries, id, bytes)
  end
end
return held_by(prefix, caller)
