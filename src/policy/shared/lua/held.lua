-- What a member holds: {uploads, bytes} in its ledger, expired entries dropped.
-- ARGV: key prefix, member.
return held_by(ARGV[1], ARGV[2])
