-- ARGV: from, to, now, limit
-- Move up to `limit` recipients from one status to another; return how many.
-- Moving to 'queued' starts a recipient afresh (no attempts, no deferrals).
local from, to, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGE', KEYS[3] .. from, 0, tonumber(ARGV[4]) - 1)
for _, idx in ipairs(ids) do
  local rec = cjson.decode(redis.call('HGET', KEYS[1], idx))
  rec.s = to
  rec.u = now
  rec.t = nil
  rec.n = nil
  if to == STATUS.QUEUED then
    rec.a = nil
    rec.d = nil
  end
  redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
  leave(from, idx)
  enter(to, idx)
end
return #ids
