-- Shared by every ledger script.
-- KEYS: records (hash), counts (hash), status-index prefix, retry schedule (zset)
-- A record is compact JSON: e email, s status, a attempts the relay answered, d deferrals,
-- v template variables, c SMTP code, r reason, t claim token, u updated at, n retry at.

-- A sorted set made after the ledger was given a TTL takes the same TTL.
local function zadd_like_records(name, score, idx)
  redis.call('ZADD', name, score, idx)
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', name, ttl) end
end

local function index(status, idx)
  zadd_like_records(KEYS[3] .. status, idx, idx)
end

-- A deferred recipient is due again at `at`.
local function schedule(idx, at)
  zadd_like_records(KEYS[4], at, idx)
end

local function leave(status, idx)
  redis.call('ZREM', KEYS[3] .. status, idx)
  redis.call('HINCRBY', KEYS[2], status, -1)
  if status == STATUS.DEFERRED then redis.call('ZREM', KEYS[4], idx) end
end

local function enter(status, idx)
  index(status, idx)
  redis.call('HINCRBY', KEYS[2], status, 1)
end

-- Fencing: the caller's run holds the lease of the claim token (lease key = prefix .. token).
-- A run whose lease another run took over (or that ran out) may change nothing.
local function holds_lease(prefix, token, run)
  return redis.call('GET', prefix .. token) == run
end
