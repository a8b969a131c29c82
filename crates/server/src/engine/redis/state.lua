-- A keyed channel's state with the position it corresponds to; writes nothing for a channel
-- without a stream.
-- KEYS: meta, hist, state, epoch seed
-- ARGV: new_epoch (seed candidate), meta_ttl_ms
-- Returns {epoch, offset, flat state}
local epoch, offset, existed = read_meta(KEYS[1], KEYS[4], ARGV[1], tonumber(ARGV[2]))
if not existed then
  return { epoch, '0', {} }
end
return { epoch, string.format('%d', offset), redis.call('HGETALL', KEYS[3]) }
