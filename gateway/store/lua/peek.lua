-- Read rate-limit state without consuming anything (for `gateway policies explain`).
-- KEYS: limit keys; ARGV[i]: the field of KEYS[i] in a token's state hash, or '' for a
-- limit in its own key. Returns {now ms as a string, TAT or false for each limit}.
local t = redis.call('TIME')
local out = {string.format('%.3f', tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000)}
for i = 1, #KEYS do
  if ARGV[i] == '' then
    out[i + 1] = redis.call('GET', KEYS[i])
  else
    out[i + 1] = redis.call('HGET', KEYS[i], ARGV[i])
  end
end
return out
