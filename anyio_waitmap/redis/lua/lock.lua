-- The reaping lock of an owner, which a reaper and the owner itself (taking
-- its lease again) hold while they work on what the owner has in Redis.
-- KEYS: the owner's lease, its reaping lock
-- ARGV: (common, empty), 'reap' (take the lock if the lease ran out), 'renew'
--   (take it whatever the lease) or 'unlock' (give it back if still held),
--   who takes it, and for how long (milliseconds)
-- Returns: 1 if it was done
local alive, lock = KEYS[1], KEYS[2]
local mode, holder, ms = ARGV[4], ARGV[5], ARGV[6]
if mode == 'unlock' then
  if redis.call('GET', lock) == holder then
    redis.call('DEL', lock)
    return 1
  end
  return 0
end
if mode == 'reap' and redis.call('EXISTS', alive) == 1 then
  return 0
end
if redis.call('SET', lock, holder, 'NX', 'PX', ms) then
  return 1
end
return 0
