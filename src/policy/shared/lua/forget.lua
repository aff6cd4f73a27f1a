-- Uploads used or deleted: their room goes back to their members. Also a resize, when ARGV[2] is
-- a byte count rather than "forget".
-- A forget by a member also leaves a tombstone for the upload under that member: a creation
-- written after it (from a sidecar whose write was late, or writing back what a Redis that lost its
-- data forgot) does not bring the upload back. It lives as long as the upload could; for an upload
-- Redis does not know (lost with its data, or written late), for `unknown_ms`, long enough for
-- those writes to come (a renewal, a replay): an id named by any body is not kept for an hour.
-- KEYS: the owner key of each upload. ARGV: key prefix, "forget" | bytes, the member whose call it
-- was ("": any; an upload of another member is left as it is), unknown_ms, upload ids...
-- Returns {uploads, bytes} the calling member holds after it ({0, 0} without one).
local prefix, what, caller, unknown_ms = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
for i = 1, #KEYS do
  local member = redis.call('GET', KEYS[i])
  local id = ARGV[i + 4]
  if what == 'forget' and caller ~= '' and (not member or member == caller) then
    local life = redis.call('PTTL', KEYS[i])
    redis.call('SET', prefix .. ':g:' .. caller .. ':' .. id, 1, 'PX', life > 0 and life or unknown_ms)
  end
  if member and (caller == '' or caller == member) then
    local entries, expiries = prefix .. ':m:' .. member .. ':e', prefix .. ':m:' .. member .. ':x'
    if what == 'forget' then
      set_entry(entries, id, nil)
      redis.call('ZREM', expiries, id)
      redis.call('DEL', KEYS[i])
    elseif redis.call('HEXISTS', entries, id) == 1 then
      set_entry(entries, id, tonumber(what))
    end
  end
end
if caller == '' then
  return {0, 0}
end
return held_by(prefix, caller)
