-- Mark a token record revoked, keeping its fingerprints, its limits' state and its expiry.
-- KEYS[1] token state key (a hash, see admit.lua); ARGV[1] ttl ms when it has no record yet
local rec = redis.call('HGET', KEYS[1], 'r')
if rec then
  if string.sub(rec, 1, 1) ~= '!' then
    redis.call('HSET', KEYS[1], 'r', '!' .. rec)
  end
else
  redis.call('HSET', KEYS[1], 'r', '!')
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
  end
end
return 1
