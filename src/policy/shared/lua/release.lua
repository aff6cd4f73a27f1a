-- Gives a plan's calls back. KEYS: plans, plan expiries. ARGV: plan id.
set_entry(KEYS[1], ARGV[1], nil)
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
