-- One publication, atomically: idempotency check, keyed-state checks and update, offset, history
-- append and trim, fan-out message.
-- KEYS: meta, hist, state, idem, epoch seed
-- ARGV: new_epoch (seed candidate), pubsub channel, head, mid, tail, history_size, history_ttl_ms, meta_ttl_ms,
--       idempotency_window_ms (0: no key), record key, op ('' | upsert | merge | delete),
--       new value, expected stored record ('' no check, '-' absent), max_records, max_bytes,
--       views ('1': keep the record change with the publication, '0': not), witnessed epoch
--       ('' none) and offset (see lost_writes), publish command (PUBLISH | SPUBLISH on a cluster)
-- Returns {'ok', epoch, offset, time, lost} | {'dup', 'epoch:offset:time'} | {'retry'}
--       | {'records'} | {'bytes'}; lost is the stored offset when this publish found writes lost
--       and started a new epoch, else ''
local hsize, httl, mttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local iwin = tonumber(ARGV[9])
local rkey, op, value, expected = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local views = ARGV[16] == '1'
local now = now_ms()
-- Before anything reads the position: no publication may take a reused one.
local lost = lost_writes(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], ARGV[17], tonumber(ARGV[18]))
local epoch, offset = ensure_meta(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], mttl)
if iwin > 0 then
  local prior = redis.call('GET', KEYS[4])
  if prior and string.sub(prior, 1, #epoch + 1) == epoch .. ':' then
    return { 'dup', prior }
  end
end
local old_len, new_len = 0, 0
local old = nil
if op ~= '' then
  old = redis.call('HGET', KEYS[3], rkey)
  if expected ~= '' and expected ~= (old or '-') then
    return { 'retry' }
  end
  -- A record counts its key and its value (record_bytes in engine/mod.rs).
  if old then
    old_len = #rkey + #old - string.find(old, ':', 1, true)
  end
  if op ~= 'delete' then
    new_len = #rkey + #value
    if not old and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[14]) then
      return { 'records' }
    end
  end
  -- Never below 0: a counter written before keys counted may under-count.
  local bytes = math.max(0, tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0'))
  if bytes - old_len + new_len > tonumber(ARGV[15]) then
    return { 'bytes' }
  end
end
offset = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local off = string.format('%d', offset)
local time = iso(now)
local json = ARGV[3] .. ',"epoch":"' .. epoch .. '","offset":' .. off .. ',"id":"' .. epoch
  .. '-' .. off .. '"' .. ARGV[4] .. ',"time":"' .. time .. '"' .. ARGV[5]
-- The record change, before the JSON of the history entry and the message (format in stored.rs):
-- 'R' klen ',' blen ',' alen ':' key before after, lengths in bytes, -1 for no record.
local change = ''
if op ~= '' then
  if views then
    local before, blen = '', -1
    if old then
      before = string.sub(old, string.find(old, ':', 1, true) + 1)
      blen = #before
    end
    local after, alen = '', -1
    if op ~= 'delete' then
      after, alen = value, #value
    end
    change = string.format('R%d,%d,%d:', #rkey, blen, alen) .. rkey .. before .. after
  end
  if op == 'delete' then
    redis.call('HDEL', KEYS[3], rkey)
  else
    redis.call('HSET', KEYS[3], rkey, off .. ':' .. value)
  end
  redis.call('HINCRBY', KEYS[1], 'bytes', new_len - old_len)
end
if hsize > 0 then
  redis.call('RPUSH', KEYS[2], off .. ':' .. string.format('%d', now) .. ':' .. change .. json)
  redis.call('PEXPIRE', KEYS[2], math.max(httl, 1))
end
trim(KEYS[2], hsize, httl, now)
local result = epoch .. ':' .. off .. ':' .. time
if iwin > 0 then
  redis.call('SET', KEYS[4], result, 'PX', iwin)
end
redis.call(ARGV[19], ARGV[2], epoch .. ':' .. off .. ':' .. change .. json)
return { 'ok', epoch, off, time, lost and string.format('%d', lost) or '' }
