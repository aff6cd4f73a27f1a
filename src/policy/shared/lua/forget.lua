-- Uploads used or deleted: their room goes back to their members. Also a resize, when ARGV[2] is
-- a byte count rather than "forget".
-- KEYS: the owner key of each upload. ARGV: key prefix, "forget" | bytes, the member whose call it
-- was ("": any; an upload of another member is left as it is), upload ids...
local prefix, what, caller = ARGV[1], ARGV[2], ARGV[3]
for i = 1, #KEYS do
  local member = redis.call('GET', KEYS[i])
  local id = ARGV[i + 3]
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
return 1
