-- ARGV: token, run, now, lease key prefix, idx...
-- Give back recipients this token claimed but never sent: queued again, or deferred
-- (due now) if they had been deferred before. Returns how many were given back, or -1 when
-- the run no longer holds the token's lease (nothing is given back: the run holding it now
-- may be sending them).
local token, run, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not holds_lease(ARGV[4], token, run) then return -1 end
local released = 0
for i = 5, #ARGV do
  local idx = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], idx)
  local rec = raw and cjson.decode(raw)
  if rec and rec.s == STATUS.SENDING and rec.t == token then
    local status = STATUS.QUEUED
    if (rec.d or 0) > 0 then status = STATUS.DEFERRED end
    leave(STATUS.SENDING, idx)
    rec.s = status
    rec.t = nil
    rec.u = now
    if status == STATUS.DEFERRED then
      rec.n = now
      schedule(idx, now)
    end
    redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
    enter(status, idx)
    released = released + 1
  end
end
return released
