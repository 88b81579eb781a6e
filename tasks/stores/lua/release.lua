-- ARGV: token, now, idx...
-- Give back recipients this token claimed but never sent: queued again, or deferred
-- (due now) if they had been deferred before. Returns how many were given back.
local token, now = ARGV[1], tonumber(ARGV[2])
local released = 0
for i = 3, #ARGV do
  local idx = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], idx)
  local rec = raw and cjson.decode(raw)
  if rec and rec.s == 'sending' and rec.t == token then
    local status = 'queued'
    if (rec.d or 0) > 0 then status = 'deferred' end
    leave('sending', idx)
    rec.s = status
    rec.t = nil
    rec.u = now
    if status == 'deferred' then
      rec.n = now
      schedule(idx, now)
    end
    redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
    enter(status, idx)
    released = released + 1
  end
end
return released
