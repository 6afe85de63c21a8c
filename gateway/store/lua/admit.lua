-- One request's admission, atomically: penalty box, token record, every rate limit.
-- A denied request writes nothing (except the revocation of a token caught in reuse).
--
-- KEYS: [penalty block key] [token state key] limit keys...
-- ARGV[1] has_penalty (0/1)   ARGV[2] has_token (0/1)   ARGV[3] number of limits
-- token (when has_token): ARGV[4] fingerprint ('' = binding off), ARGV[5] fingerprint
--   bound at issue ('' = bind at first use), ARGV[6] max fingerprints,
--   ARGV[7] reuse action (0 deny, 1 revoke, 2 flag), ARGV[8] record ttl ms
-- then per limit i (from ARGV[9]): interval us, burst, shadow (0/1), field
--
-- Times are whole microseconds since 2023-11-14T22:13:20Z (EPOCH below): below 2^53, so
-- exact in Lua's doubles, and the same numbers gateway/core/gcra.py computes.
-- A limit's state is the theoretical arrival time (TAT): in its own string key when its
-- field is '', else in field `field` of a token's state hash. A token's state hash holds
-- the token record (field 'r') and the TATs of the limits partitioned by that token or its
-- conversation, and expires when the last of them would: a stale TAT reads as no TAT, so
-- the limits behave as with one key each.
-- The record holds 16-character fingerprints back to back; '!' first means revoked. A
-- fingerprint's first 4 characters name the binding rule it was made under: a record
-- (or a fingerprint bound at issue) made under another rule is stale, and the token is
-- bound again rather than taken for stolen.
--
-- Returns {penalized_ms, token_verdict, allowed_1, remaining_1, reset_1, retry_1, ...}
-- token_verdict: '' (no token), 'ok', 'bound', 'flagged', 'revoked', 'reuse'.

local FP = 16
local TAG = 4
local EPOCH = 1700000000
local has_penalty = ARGV[1] == '1'
local has_token = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local k = 1

local t = redis.call('TIME')
local now = (tonumber(t[1]) - EPOCH) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)

-- a hash key's expiry becomes at least `ms` from now (never shortened)
local function keep_for(key, ms)
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, ms)
  end
end

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
  local max_fps, action, ttl = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[8])
  local rec = redis.call('HGET', token_key, 'r')
  if rec and string.sub(rec, 1, 1) == '!' then
    return {0, 'revoked'}
  end
  if fp == '' then
    verdict = 'ok'
  else
    local tag = string.sub(fp, 1, TAG)
    if rec and string.sub(rec, 1, TAG) ~= tag then
      rec = nil  -- bound under another binding rule: bind again
    end
    if issued ~= '' and string.sub(issued, 1, TAG) ~= tag then
      issued = ''
    end
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
        redis.call('HSET', token_key, 'r', '!' .. known)
        keep_for(token_key, ttl)
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
  local field = ARGV[a + 3]
  a = a + 4
  local key = KEYS[k + i - 1]
  local tat
  if field == '' then
    tat = tonumber(redis.call('GET', key))
  else
    tat = tonumber(redis.call('HGET', key, field))
  end
  local base = now
  if tat and tat > now then base = tat end
  local new_tat = base + interval
  local ahead = new_tat - now
  local tolerance = interval * burst
  local j = #out
  if ahead <= tolerance then
    out[j + 1] = 1
    out[j + 2] = math.floor((tolerance - ahead) / interval)
    out[j + 3] = math.ceil(ahead / 1000)
    out[j + 4] = 0
    tats[i] = new_tat
  else
    local current = base - now
    out[j + 1] = 0
    out[j + 2] = math.max(math.floor((tolerance - current) / interval), 0)
    out[j + 3] = math.ceil(current / 1000)
    out[j + 4] = math.ceil((ahead - tolerance) / 1000)
    tats[i] = false
    if not shadow then denied = true end
  end
end

if denied then
  return out
end
local hash_ttl = {}
a = 9
for i = 1, n do
  local field = ARGV[a + 3]
  a = a + 4
  if tats[i] then
    local key = KEYS[k + i - 1]
    local ttl = math.max(math.ceil((tats[i] - now) / 1000), 1)
    local value = string.format('%d', tats[i])
    if field == '' then
      redis.call('SET', key, value, 'PX', ttl)
    else
      redis.call('HSET', key, field, value)
      hash_ttl[key] = math.max(hash_ttl[key] or 0, ttl)
    end
  end
end
if bind then
  redis.call('HSET', token_key, 'r', bind)
  hash_ttl[token_key] = math.max(hash_ttl[token_key] or 0, tonumber(ARGV[8]))
end
for key, ttl in pairs(hash_ttl) do
  keep_for(key, ttl)
end
return out
