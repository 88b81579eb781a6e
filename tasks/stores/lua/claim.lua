-- ARGV: token, now, lease key prefix, idx...
-- Move claimable recipients to 'sending' under the token. Claimable: queued, deferred, or
-- sending under a claim whose lease key is gone (its worker vanished) or under this very
-- token (an earlier run of this batch, which no longer holds the lease this run holds now).
-- Returns idx, record pairs; a recipient another live claim holds gives idx, 'busy:<ms left>'.
local token, now, leases = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV do
  local idx = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], idx)
  if raw then
    local rec = cjson.decode(raw)
    local s = rec.s
    local take = s == 'queued' or s == 'deferred'
    if s == 'sending' then
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
      if s ~= 'sending' then
        leave(s, idx)
        enter('sending', idx)
      end
      rec.s = 'sending'
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
