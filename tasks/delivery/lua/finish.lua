-- ARGV: token, run, now, max_attempts, deadline (0: none), lease key prefix,
--       then per recipient: idx, status, smtp_code, error, counted (1/0), retry_at
-- Record outcomes for recipients this token still holds, for the run that holds the token's
-- lease. 'counted' outcomes are the relay's answer about the recipient and use up one
-- attempt; a deferral past max_attempts or past the deadline fails. Returns the status set
-- per recipient, 'lost:<idx>' for a recipient another claim took over, or 'fenced:<idx>'
-- for each recipient when the run no longer holds the lease (nothing is recorded).
local token, run, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local max_attempts, deadline = tonumber(ARGV[4]), tonumber(ARGV[5])
local final = {}
if not holds_lease(ARGV[6], token, run) then
  for i = 7, #ARGV, 6 do table.insert(final, 'fenced:' .. ARGV[i]) end
  return final
end
for i = 7, #ARGV, 6 do
  local idx, status, code, err = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local raw = redis.call('HGET', KEYS[1], idx)
  local rec = raw and cjson.decode(raw)
  if not rec or rec.s ~= STATUS.SENDING or rec.t ~= token then
    table.insert(final, 'lost:' .. idx)
  else
    if ARGV[i + 4] == '1' then rec.a = (rec.a or 0) + 1 end
    rec.r = nil
    rec.n = nil
    if err ~= '' then rec.r = err end
    if status == STATUS.DEFERRED then
      rec.d = (rec.d or 0) + 1
      if (rec.a or 0) >= max_attempts then
        status = STATUS.FAILED
        rec.r = 'retries exhausted after ' .. rec.a .. ' attempts: ' .. err
      elseif deadline > 0 and now >= deadline then
        status = STATUS.FAILED
        rec.r = 'not delivered before the delivery deadline (DELIVERY_MAX_AGE): ' .. err
      else
        rec.n = tonumber(ARGV[i + 5])
      end
    end
    rec.c = nil
    if code ~= '' then rec.c = tonumber(code) end
    leave(STATUS.SENDING, idx)
    rec.s = status
    rec.t = nil
    rec.u = now
    redis.call('HSET', KEYS[1], idx, cjson.encode(rec))
    enter(status, idx)
    if status == STATUS.DEFERRED then schedule(idx, rec.n) end
    table.insert(final, status)
  end
end
return final
