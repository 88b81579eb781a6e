-- ARGV: now, idx, smtp_code or '', reason
-- A recipient the relay had accepted (or was still retrying) bounced or complained:
-- 'bounced', with the report's code and diagnostic. Returns the status it had, or false.
local raw = redis.call('HGET', KEYS[1], ARGV[2])
if not raw then return false end
local rec = cjson.decode(raw)
local was = rec.s
if was ~= STATUS.SENT and was ~= STATUS.DEFERRED and was ~= STATUS.BOUNCED then return false end
if was ~= STATUS.BOUNCED then
  leave(was, ARGV[2])
  enter(STATUS.BOUNCED, ARGV[2])
end
rec.s = STATUS.BOUNCED
rec.u = tonumber(ARGV[1])
rec.n = nil
rec.c = nil
if ARGV[3] ~= '' then rec.c = tonumber(ARGV[3]) end
rec.r = ARGV[4]
redis.call('HSET', KEYS[1], ARGV[2], cjson.encode(rec))
return was
