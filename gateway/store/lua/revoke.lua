-- Mark a token record revoked, keeping its fingerprints, its limits' state and its expiry.
-- KEYS[1] token state key (a hash, see admit.lua), KEYS[2] legacy token record key;
-- ARGV[1] ttl ms when it has no record yet
local rec = redis.call('HGET', KEYS[1], 'r')
if not rec then
  rec = redis.call('GET', KEYS[2])
  if rec then
    redis.call('HSET', KEYS[1], 'r', rec)
    if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
      redis.call('PEXPIRE', KEYS[1], ARGV[1])
    end
  end
end
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
