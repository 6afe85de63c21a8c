-- Mark a token record revoked, keeping its fingerprints and its expiry.
-- KEYS[1] token record key; ARGV[1] ttl ms when the record does not exist yet
local rec = redis.call('GET', KEYS[1])
if rec then
  if string.sub(rec, 1, 1) ~= '!' then
    redis.call('SET', KEYS[1], '!' .. rec, 'KEEPTTL')
  end
else
  redis.call('SET', KEYS[1], '!', 'PX', ARGV[1])
end
return 1
