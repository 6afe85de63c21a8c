-- Before an attempt that costs (an argon2 verification): the penalty check and, when the
-- subject may still fail, one more attempt in flight, atomically. Counting the attempt
-- before it runs is what bounds the cost of a flood: N parallel wrong keys from one
-- subject get at most `threshold` places, the others are refused without any work.
-- KEYS[1] penalty block key, KEYS[2] failure counter, KEYS[3] attempts in flight
-- ARGV[1] window ms, ARGV[2] threshold
-- Returns {penalized_ms, granted (0/1)}.
--
-- The failure counter is a fixed window (see failure.lua); attempts in flight have a key
-- of their own rather than taking a share of it, so that releasing one never subtracts
-- from a window it was not counted in. They expire a window after the last reservation:
-- the places of a replica that died mid-verification are freed then.
local left = redis.call('PTTL', KEYS[1])
if left > 0 then
  return {left, 0}
end
local failures = tonumber(redis.call('GET', KEYS[2])) or 0
local in_flight = tonumber(redis.call('GET', KEYS[3])) or 0
if failures + in_flight >= tonumber(ARGV[2]) then
  return {0, 0}
end
redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[1])
return {0, 1}
