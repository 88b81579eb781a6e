-- ARGV: token, run, now, lease key prefix, idx...
-- Move claimable recipients to 'sending' under the token, for the run that holds the token's
-- lease. Claimable: queued, deferred, or sending under a claim whose lease key is gone (its
-- worker vanished) or under this very token (an earlier run of this batch, which lost the
-- lease this run holds now). Returns idx, record pairs; a recipient another live claim holds
-- gives idx, 'busy:<ms left>'. A run that does not hold the lease gets {-1, 'fenced'}.
local token, run, now, leases = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if not holds_lease(leases, token, run) then return {-1, 'fenced'} end
local out = {}
for i = 5, #ARGV do
  local idx = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], idx)
  if raw then
    local rec = cjson.decode(raw)
    local s = rec.s
    local take = s == STATUS.QUEUED or s == STATUS.DEFERRED
    if s == STATUS.SENDING then
      if rec.t == token then
        take = true
      else
        local left = redis.call('PTTL', leases .. rec.t)
        if left < 0 then
          take = true
        else
          table.insert(out, idx)
          table.insert(out, 'busy:' .. left)
        end
      end
    end
    if take then
      if s ~= STATUS.SENDING then
        leave(s, idx)
        enter(STATUS.SENDING, idx)
      end
      rec.s = STATUS.SENDING
      rec.t = token
      rec.n = nil
      rec.u = now
      redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
      table.insert(out, idx)
      table.insert(out, raw)
    end
  end
end
return out
