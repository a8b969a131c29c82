-- Helpers shared by every Herald script (prepended to each one).
--
-- Keys of one channel: meta (HASH epoch/offset/bytes), hist (LIST of "offset:ms:[change]json", offsets
-- contiguous, oldest first), state (HASH record key -> "offset:json"); and the hub-wide epoch
-- seed (STRING).

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

-- How long one epoch seed lives (1 day). It must stay well below the 30-day idle expiry of meta:
-- a stream whose meta expired gets another seed's epoch when it is created again.
local SEED_TTL_MS = 86400000

-- The epoch of a channel without a stream (no meta key): derived from the hub-wide seed and the
-- meta key name, so every node answers a read of an unused channel with the same epoch without
-- writing anything for the channel, and its first publish adopts that epoch. The seed (one key
-- for the prefix) is created with `candidate` when missing: a FLUSHALL, a restart without
-- persistence or its daily expiry gives later streams new epochs, so an epoch whose positions
-- were handed out is never reused.
local function empty_epoch(seed_key, meta, candidate)
  local seed = redis.call('GET', seed_key)
  if not seed then
    seed = candidate
    redis.call('SET', seed_key, seed, 'PX', SEED_TTL_MS)
  end
  return string.sub(redis.sha1hex(seed .. '\n' .. meta), 1, 12)
end

-- For reads: the channel's epoch and offset, and whether it has a stream. A channel without one
-- is at its empty epoch, offset 0, and nothing is written for it.
local function read_meta(meta, seed_key, candidate, meta_ttl)
  local m = redis.call('HMGET', meta, 'epoch', 'offset')
  if not m[1] then
    return empty_epoch(seed_key, meta, candidate), 0, false
  end
  if meta_ttl > 0 then
    redis.call('PEXPIRE', meta, meta_ttl)
  end
  return m[1], tonumber(m[2]), true
end

-- For publishes: the channel's epoch and offset; a missing meta key means the stream is lost (or
-- new): start it at the empty epoch and drop whatever history or state is left over.
local function ensure_meta(meta, hist, state, seed_key, candidate, meta_ttl)
  local m = redis.call('HMGET', meta, 'epoch', 'offset')
  if not m[1] then
    local epoch = empty_epoch(seed_key, meta, candidate)
    redis.call('DEL', hist, state)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', '0', 'bytes', '0')
    m = { epoch, '0' }
  end
  if meta_ttl > 0 then
    redis.call('PEXPIRE', meta, meta_ttl)
  end
  return m[1], tonumber(m[2])
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


-- Lost writes. `w_epoch`/`w_offset` are what the node running the script witnessed of this
-- channel (the epoch '' when nothing): a stored offset below it in the same epoch means Redis
-- came back with older data (a restored copy, a promoted asynchronous replica, `everysec` and a
-- crash), and the offsets after it would name publications a second time. Then a new epoch
-- (`candidate`) starts here, in the same step as what follows it: the offset continues from the
-- stored one (the kept records' offsets stay at or below it), the history goes (its entries carry
-- the old epoch), the records stay (the restored state is self-consistent). A lost stream (no
-- meta) whose empty epoch is the witnessed one is started at `candidate` instead, empty.
-- Returns the stored offset when it started a new epoch, else nil.
local function lost_writes(meta, hist, state, seed_key, candidate, w_epoch, w_offset)
  if w_epoch == '' or w_offset <= 0 then
    return nil
  end
  local m = redis.call('HMGET', meta, 'epoch', 'offset')
  if not m[1] then
    if empty_epoch(seed_key, meta, candidate) ~= w_epoch then
      return nil
    end
    redis.call('DEL', hist, state)
    redis.call('HSET', meta, 'epoch', candidate, 'offset', '0', 'bytes', '0')
    return 0
  end
  local offset = tonumber(m[2])
  if m[1] ~= w_epoch or offset >= w_offset then
    return nil
  end
  redis.call('DEL', hist)
  redis.call('HSET', meta, 'epoch', candidate)
  return offset
end
