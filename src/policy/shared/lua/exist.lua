-- Which of the keys exist: 1 or 0 for each, in order.
-- KEYS: the keys.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('EXISTS', key)
end
return out
