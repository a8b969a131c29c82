-- One read of a channel's stream: its position, the lowest kept offset, a window of its history
-- and (when asked) its keyed records, in one atomic step so that they agree. It decides nothing:
-- what the read means for a subscriber (the recover verdict, history paging) is decided by the
-- node (rules.rs), the same for every engine. Writes nothing for a channel without a stream (its
-- empty epoch, offset 0, nothing kept), unless the node witnessed more of it: then the writes
-- it saw were lost and a new epoch starts (lost_writes), so that a resume is told epoch_changed.
-- KEYS: meta, hist, state, epoch seed
-- ARGV: new_epoch (seed candidate), history_size, history_ttl_ms, meta_ttl_ms, window (nothing |
--       after | before | latest), bound (after: the offset to read after; before: the offset to
--       read below), limit, want_records ('1'/'0'), witnessed epoch ('' none) and offset
-- Returns {epoch, offset, earliest, publications, flat records, lost} (lost: the stored offset
--       when this read started a new epoch, else '')
local hsize, httl, mttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local window, bound, limit = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local lost = lost_writes(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[9], tonumber(ARGV[10]))
lost = lost and string.format('%d', lost) or ''
local epoch, offset, existed = read_meta(KEYS[1], KEYS[4], ARGV[1], mttl)
if not existed then
  return { epoch, '0', '0', {}, {}, lost }
end
trim(KEYS[2], hsize, httl, now_ms())
local len = redis.call('LLEN', KEYS[2])
local earliest = 0
if len > 0 then
  earliest = entry_parts(redis.call('LINDEX', KEYS[2], 0))
end
local pubs = {}
if len > 0 and limit > 0 then
  if window == 'after' then
    local start = math.max(0, bound + 1 - earliest)
    if start < len then
      pubs = redis.call('LRANGE', KEYS[2], start, start + limit - 1)
    end
  elseif window == 'before' or window == 'latest' then
    local stop = len
    if window == 'before' then
      stop = math.max(0, math.min(len, bound - earliest))
    end
    local start = math.max(0, stop - limit)
    if stop > start then
      pubs = redis.call('LRANGE', KEYS[2], start, stop - 1)
    end
  end
end
local records = {}
if ARGV[8] == '1' then
  records = redis.call('HGETALL', KEYS[3])
end
return { epoch, string.format('%d', offset), string.format('%d', earliest), pubs, records, lost }
