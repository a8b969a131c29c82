-- A keyed channel's state with the position it corresponds to.
-- KEYS: meta, hist, state
-- ARGV: new_epoch, meta_ttl_ms
-- Returns {epoch, offset, flat state}
local epoch, offset = ensure_meta(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]))
return { epoch, string.format('%d', offset), redis.call('HGETALL', KEYS[3]) }
