-- One request's admission, atomically: penalty box, token record, every rate limit.
-- A denied request writes nothing (except the revocation of a token caught in reuse).
--
-- KEYS: [penalty block key] [token record key] limit keys...
-- ARGV[1] has_penalty (0/1)   ARGV[2] has_token (0/1)   ARGV[3] number of limits
-- token (when has_token): ARGV[4] fingerprint ('' = binding off), ARGV[5] fingerprint
--   bound at issue ('' = bind at first use), ARGV[6] max fingerprints,
--   ARGV[7] reuse action (0 deny, 1 revoke, 2 flag), ARGV[8] record ttl ms
-- then per limit i (from ARGV[9]): interval ms, burst, shadow (0/1)
--
-- Returns {penalized_ms, token_verdict, allowed_1, remaining_1, reset_1, retry_1, ...}
-- token_verdict: '' (no token), 'ok', 'bound', 'flagged', 'revoked', 'reuse'.
-- Rate-limit state is the theoretical arrival time (TAT) in milliseconds (3 decimals).
-- Token records hold 16-character fingerprints back to back; '!' first means revoked.

local FP = 16
local has_penalty = ARGV[1] == '1'
local has_token = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local k = 1

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

if has_penalty then
  local left = redis.call('PTTL', KEYS[k])
  if left > 0 then
    return {left, ''}
  end
  k = k + 1
end

local verdict = ''
local bind = nil
local token_key = nil
if has_token then
  token_key = KEYS[k]
  k = k + 1
  local fp, issued = ARGV[4], ARGV[5]
  local max_fps, action, ttl = tonumber(ARGV[6]), ARGV[7], ARGV[8]
  local rec = redis.call('GET', token_key)
  if rec and string.sub(rec, 1, 1) == '!' then
    return {0, 'revoked'}
  end
  if fp == '' then
    verdict = 'ok'
  else
    local known = rec
    if not known then
      known = issued
    end
    local found = false
    for i = 1, #known, FP do
      if string.sub(known, i, i + FP - 1) == fp then
        found = true
        break
      end
    end
    if found and rec then
      verdict = 'ok'
    elseif found or #known / FP < max_fps then
      verdict = 'bound'
      if found then bind = known else bind = known .. fp end
    elseif action == '2' then
      verdict = 'flagged'
    else
      if action == '1' then
        if rec then
          redis.call('SET', token_key, '!' .. known, 'KEEPTTL')
        else
          redis.call('SET', token_key, '!' .. known, 'PX', ttl)
        end
      end
      return {0, 'reuse'}
    end
  end
end

local out = {0, verdict}
local tats = {}
local denied = false
local a = 9
for i = 1, n do
  local interval, burst, shadow = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), ARGV[a + 2] == '1'
  a = a + 3
  local tat = tonumber(redis.call('GET', KEYS[k + i - 1]))
  local base = now
  if tat and tat > now then base = tat end
  local new_tat = base + interval
  local ahead = new_tat - now
  local tolerance = interval * burst
  local j = #out
  if ahead <= tolerance then
    out[j + 1] = 1
    out[j + 2] = math.floor((tolerance - ahead) / interval)
    out[j + 3] = math.ceil(ahead)
    out[j + 4] = 0
    tats[i] = new_tat
  else
    local current = base - now
    out[j + 1] = 0
    out[j + 2] = math.max(math.floor((tolerance - current) / interval), 0)
    out[j + 3] = math.ceil(current)
    out[j + 4] = math.ceil(ahead - tolerance)
    tats[i] = false
    if not shadow then denied = true end
  end
end

if denied then
  return out
end
for i = 1, n do
  if tats[i] then
    local ttl = math.ceil(tats[i] - now)
    redis.call('SET', KEYS[k + i - 1], string.format('%.3f', tats[i]), 'PX', math.max(ttl, 1))
  end
end
if bind then
  if redis.call('EXISTS', token_key) == 1 then
    redis.call('SET', token_key, bind, 'KEEPTTL')
  else
    redis.call('SET', token_key, bind, 'PX', ARGV[8])
  end
end
return out
