-- Count one failure for a penalty-box subject; past the threshold, box it.
-- KEYS[1] failure counter, KEYS[2] penalty block key, KEYS[3] attempts in flight
-- ARGV[1] window ms, ARGV[2] threshold, ARGV[3] cool-down ms, ARGV[4] reserved (0/1):
-- the failure of an attempt counted in flight by reserve.lua, which it replaces there.
-- Returns the cool-down in ms when the subject was just boxed, else 0.
-- The count is a fixed window: it starts at the first failure and lasts ARGV[1] ms.
if ARGV[4] == '1' then
  local in_flight = tonumber(redis.call('GET', KEYS[3])) or 0
  if in_flight > 1 then
    redis.call('DECR', KEYS[3])
  elseif in_flight == 1 then
    redis.call('DEL', KEYS[3])
  end
end
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if count >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  return tonumber(ARGV[3])
end
return 0
