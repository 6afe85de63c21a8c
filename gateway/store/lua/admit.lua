-- One request's admission, atomically: penalty box, token record, token family, every
-- rate limit, and a renewal's rotation. A denied request writes nothing (except the
-- revocation of a token, or of its family, caught in reuse).
--
-- KEYS: [penalty block key] [token state key] [family key] [proof key] limit keys...
-- ARGV[1] has_penalty (0/1)   ARGV[2] has_token (0/1)   ARGV[3] number of limits
-- token (when has_token): ARGV[4] fingerprint ('' = binding off), ARGV[5] fingerprint
--   bound at issue ('' = bind at first use), ARGV[6] max fingerprints,
--   ARGV[7] reuse action (0 deny, 1 revoke, 2 flag), ARGV[8] record ttl ms
-- family (when ARGV[9] is 1, only with a token): ARGV[10] the token's jti, ARGV[11]
--   rotation overlap ms, ARGV[12] family record ttl ms, ARGV[13] a renewal's successor
--   jti ('' when not renewing)
-- proof (see the delimited block below): ARGV[14] '0' none, '1' a DPoP proof to check
--   against replay (its key present), '2' a valid proof by another key than the
--   token's (no key); ARGV[15] how long to remember the proof, ms
-- then per limit i (from ARGV[16]): interval us, burst, shadow (0/1), field
--
-- The family record (a hash, kept from each write as long as a token issued then can pass): 'c' the newest token's
-- jti, 'p' the jti it retired, 't' when (ms), 'x' present once the family is revoked. No
-- record: the conversation's first token, never renewed. A token of the family that is
-- not the newest is retired: it passes only while it is 'p' and within the overlap;
-- after that it is reuse, and the family is revoked. A renewal of the newest token
-- rotates (c = successor, p = it, t = now) once every limit allows it; a renewal of 'p'
-- within the overlap writes nothing and gets 'c' and 't' (idempotent).
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
-- Returns {penalized_ms, token_verdict, successor jti, successor issued ms,
--          allowed_1, remaining_1, reset_1, retry_1, ...}
-- token_verdict: '' (no token), 'ok', 'bound', 'flagged', 'revoked', 'reuse',
--   'replayed' (a retired token after the overlap: the family is revoked now),
--   'family_revoked', 'proof_replayed' (a DPoP proof seen before); the successor is '' and 0 unless a renewal was admitted.

local FP = 16
local TAG = 4
local EPOCH = 1700000000
local LIMITS = 16
local has_penalty = ARGV[1] == '1'
local has_token = ARGV[2] == '1'
local has_family = has_token and ARGV[9] == '1'
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
    return {left, '', '', 0}
  end
  k = k + 1
end

-- the family's record is revoked (kept as long as any of its tokens can pass)
local function revoke_family(family_key)
  redis.call('HSET', family_key, 'x', '1')
  keep_for(family_key, tonumber(ARGV[12]))
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
    return {0, 'revoked', '', 0}
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
        if has_family then revoke_family(KEYS[k]) end
      end
      return {0, 'reuse', '', 0}
    end
  end
end

local family_key = nil
local successor, successor_at = '', 0
local rotate = false
if has_family then
  family_key = KEYS[k]
  k = k + 1
  local jti, overlap, wanted = ARGV[10], tonumber(ARGV[11]), ARGV[13]
  local f = redis.call('HMGET', family_key, 'c', 'p', 't', 'x')
  if f[4] then
    return {0, 'family_revoked', '', 0}
  end
  if f[1] and f[1] ~= jti then
    if f[2] == jti and now_ms - tonumber(f[3]) <= overlap then
      if wanted ~= '' then  -- the same renewal again: the successor already made
        successor, successor_at = f[1], tonumber(f[3])
      end
    else
      revoke_family(family_key)
      return {0, 'replayed', '', 0}
    end
  elseif wanted ~= '' then
    successor, successor_at, rotate = wanted, now_ms, true
  end
end

-- proof of possession (RFC 9449) -------------------------------------------------
-- '2': the token was presented with a valid proof by another key: it was copied; its
-- family (every token of the conversation, this one included) is revoked, or the token
-- alone when it has none. '1': a proof (its key and jti) seen within its window is a
-- replay; else it is remembered once the request is admitted.
local proof_key = nil
if ARGV[14] == '2' and has_token then
  if has_family then
    revoke_family(family_key)
  else
    redis.call('HSET', token_key, 'r', '!' .. (redis.call('HGET', token_key, 'r') or ''))
    keep_for(token_key, tonumber(ARGV[8]))
  end
  return {0, 'reuse', '', 0}
elseif ARGV[14] == '1' then
  proof_key = KEYS[k]
  k = k + 1
  if redis.call('EXISTS', proof_key) == 1 then
    return {0, 'proof_replayed', '', 0}
  end
end
-- end of proof of possession -----------------------------------------------------

local out = {0, verdict, successor, successor_at}
local tats = {}
local denied = false
local a = LIMITS
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
  out[3], out[4] = '', 0
  return out
end
local hash_ttl = {}
a = LIMITS
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
if proof_key then  -- proof of possession: the proof is used
  redis.call('SET', proof_key, '1', 'PX', tonumber(ARGV[15]))
end
if rotate then
  redis.call('HSET', family_key, 'c', successor, 'p', ARGV[10], 't', now_ms)
  keep_for(family_key, tonumber(ARGV[12]))
end
return out
