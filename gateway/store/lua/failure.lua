-- Count one failure for a penalty-box subject; past the threshold, box it.
-- KEYS[1] failure counter, KEYS[2] penalty block key
-- ARGV[1] window ms, ARGV[2] threshold, ARGV[3] cool-down ms
-- Returns the cool-down in ms when the subject was just boxed, else 0.
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
