-- Gives a plan's calls back. KEYS: plans, plan expiries. ARGV: plan id.
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
