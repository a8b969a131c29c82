-- The check of one witnessed position (see lost_writes), on its own: after a reused position came
-- over pub/sub (the witness is then poisoned), and for every witnessed channel when the pub/sub
-- connection comes back. Creates nothing for a channel without a stream.
-- KEYS: meta, hist, state, epoch seed
-- ARGV: new epoch (candidate), witnessed epoch, witnessed offset
-- Returns {epoch, lost} (lost: the stored offset when a new epoch started, else '')
if redis.call('EXISTS', KEYS[1]) == 0 then
  return { '', '' }
end
local lost = lost_writes(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], tonumber(ARGV[3]))
return { redis.call('HGET', KEYS[1], 'epoch'), lost and string.format('%d', lost) or '' }
