-- Read rate-limit state without consuming anything (for `gateway policies explain`).
-- KEYS: limit keys. Returns {now ms as a string, TAT or false for each key}.
local t = redis.call('TIME')
local out = {string.format('%.3f', tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000)}
for i = 1, #KEYS do
  out[i + 1] = redis.call('GET', KEYS[i])
end
return out
