-- Position, plus what a subscriber resuming from `since` (or asking for a snapshot) needs, read
-- in one atomic step so the snapshot, the publications and the position agree. Writes nothing
-- for a channel without a stream (its empty epoch, offset 0, no history, no records).
-- KEYS: meta, hist, state, epoch seed
-- ARGV: new_epoch (seed candidate), history_size, history_ttl_ms, meta_ttl_ms, has_since
--       ('1'/'0'), since_epoch, since_offset, max_recover, want_state ('1'/'0'), keyed ('1'/'0')
-- Returns {epoch, offset, status, publications, flat state}; status is none | ok |
-- epoch_changed | history_trimmed | too_many. A `since` ahead of the stream (Redis restored from
-- an older snapshot) is the loss of the stream the client knew: epoch_changed.
local hsize, httl, mttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local epoch, offset, existed = read_meta(KEYS[1], KEYS[4], ARGV[1], mttl)
if existed then
  trim(KEYS[2], hsize, httl, now)
end
local status, pubs = 'none', {}
if ARGV[5] == '1' then
  local since = tonumber(ARGV[7])
  if ARGV[6] ~= epoch or since > offset then
    status = 'epoch_changed'
  elseif offset - since > tonumber(ARGV[8]) then
    status = 'too_many'
  elseif since == offset then
    status = 'ok'
  else
    local first = redis.call('LINDEX', KEYS[2], 0)
    if not first then
      status = 'history_trimmed'
    else
      local earliest = entry_parts(first)
      if earliest > since + 1 then
        status = 'history_trimmed'
      else
        status = 'ok'
        pubs = redis.call('LRANGE', KEYS[2], since + 1 - earliest, -1)
      end
    end
  end
end
local state = {}
local failed = status == 'epoch_changed' or status == 'history_trimmed' or status == 'too_many'
if existed and (ARGV[9] == '1' or (ARGV[10] == '1' and failed)) then
  state = redis.call('HGETALL', KEYS[3])
end
return { epoch, string.format('%d', offset), status, pubs, state }
