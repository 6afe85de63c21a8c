-- Read rate-limit state without consuming anything (for `gateway policies explain`).
-- KEYS: limit keys; ARGV[i]: the field of KEYS[i] in a token's state hash, or '' for a
-- limit in its own key. Returns {now, TAT or false for each limit}, in microseconds since
-- the epoch of admit.lua, as strings.
local t = redis.call('TIME')
local out = {string.format('%d', (tonumber(t[1]) - 1700000000) * 1000000 + tonumber(t[2]))}
for i = 1, #KEYS do
  if ARGV[i] == '' then
    out[i + 1] = redis.call('GET', KEYS[i])
  else
    out[i + 1] = redis.call('HGET', KEYS[i], ARGV[i])
  end
end
return out
