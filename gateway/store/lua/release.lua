-- An attempt counted by reserve.lua succeeded (or never ran): give its place back.
-- KEYS[1] attempts in flight. Never below zero: the count may have expired meanwhile.
local in_flight = tonumber(redis.call('GET', KEYS[1])) or 0
if in_flight > 1 then
  redis.call('DECR', KEYS[1])
elseif in_flight == 1 then
  redis.call('DEL', KEYS[1])
end
return 0
