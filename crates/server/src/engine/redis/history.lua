-- A page of history. Writes nothing for a channel without a stream.
-- KEYS: meta, hist, state, epoch seed
-- ARGV: new_epoch (seed candidate), history_size, history_ttl_ms, meta_ttl_ms, mode (latest |
--       since | before), since_epoch, since_offset, before, limit
-- Returns {epoch, offset, earliest, reason ('' when none), publications}. A `since` of another
-- epoch or ahead of the stream is epoch_changed, as for subscribe.
local hsize, httl, mttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local mode, limit = ARGV[5], tonumber(ARGV[9])
local now = now_ms()
local epoch, offset, existed = read_meta(KEYS[1], KEYS[4], ARGV[1], mttl)
if not existed then
  local reason = ''
  if mode == 'since' and (ARGV[6] ~= epoch or tonumber(ARGV[7]) > 0) then
    reason = 'epoch_changed'
  end
  return { epoch, '0', '0', reason, {} }
end
trim(KEYS[2], hsize, httl, now)
local len = redis.call('LLEN', KEYS[2])
local earliest = 0
if len > 0 then
  earliest = entry_parts(redis.call('LINDEX', KEYS[2], 0))
end
local reason, pubs = '', {}
if mode == 'since' then
  local after = tonumber(ARGV[7])
  if ARGV[6] ~= epoch or after > offset then
    reason = 'epoch_changed'
  elseif after < offset then
    if len == 0 or earliest > after + 1 then
      reason = 'history_trimmed'
    elseif limit > 0 then
      local start = after + 1 - earliest
      pubs = redis.call('LRANGE', KEYS[2], start, start + limit - 1)
    end
  end
else
  local stop = len
  if mode == 'before' then
    if len == 0 then
      stop = 0
    else
      stop = math.max(0, math.min(len, tonumber(ARGV[8]) - earliest))
    end
  end
  local start = math.max(0, stop - limit)
  if stop > start then
    pubs = redis.call('LRANGE', KEYS[2], start, stop - 1)
  end
end
return { epoch, string.format('%d', offset), string.format('%d', earliest), reason, pubs }
