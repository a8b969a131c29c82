-- Takes or renews a lease: held by ARGV[1] for ARGV[2] ms from now, unless another holder has
-- it. KEYS: the lease key. Returns 1 when ARGV[1] holds it, 0 otherwise.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
