-- Helpers shared by every Herald script (prepended to each one).
--
-- Keys of one channel: meta (HASH epoch/offset/bytes), hist (LIST of "offset:ms:json", offsets
-- contiguous, oldest first), state (HASH record key -> "offset:json").

-- Redis server time in milliseconds: one clock for every node.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- RFC 3339 UTC with milliseconds, from Unix milliseconds (civil-from-days, H. Hinnant).
local function iso(ms)
  local secs = math.floor(ms / 1000)
  local days = math.floor(secs / 86400)
  local rem = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', y, m, d,
    math.floor(rem / 3600), math.floor((rem % 3600) / 60), rem % 60, ms % 1000)
end

-- The channel's epoch and offset; a missing meta key means the stream is lost (or new): start a
-- new epoch and drop whatever history or state is left over.
local function ensure_meta(meta, hist, state, new_epoch, meta_ttl)
  local m = redis.call('HMGET', meta, 'epoch', 'offset')
  local existed = true
  if not m[1] then
    redis.call('DEL', hist, state)
    redis.call('HSET', meta, 'epoch', new_epoch, 'offset', '0', 'bytes', '0')
    m = { new_epoch, '0' }
    existed = false
  end
  if meta_ttl > 0 then
    redis.call('PEXPIRE', meta, meta_ttl)
  end
  return m[1], tonumber(m[2]), existed
end

-- Offset and time (ms) of a history entry.
local function entry_parts(e)
  local a = string.find(e, ':', 1, true)
  local b = string.find(e, ':', a + 1, true)
  return tonumber(string.sub(e, 1, a - 1)), tonumber(string.sub(e, a + 1, b - 1))
end

-- Applies the count and age bounds.
local function trim(hist, size, ttl, now)
  if size <= 0 then
    redis.call('DEL', hist)
    return
  end
  redis.call('LTRIM', hist, -size, -1)
  while true do
    local first = redis.call('LINDEX', hist, 0)
    if not first then break end
    local _, t = entry_parts(first)
    if now - t > ttl then
      redis.call('LPOP', hist)
    else
      break
    end
  end
end

