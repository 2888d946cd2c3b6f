-- A registration whose task has left (or returned what it received, for an
-- acknowledgement): unregister it, and pass on a value it took and did not
-- receive, as if it had been given back.
-- KEYS: V, T, W, D (see common.lua), the owner's count of its keys
-- ARGV: the registration, the encoded key, the doorbell channels' prefix, and
--   'ack' if its task received what it holds (then nothing is passed on)
-- Returns: 1 if it was still waiting, 2 if it held an outcome, 0 if neither
local v, t, w, d, owned = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local reg, ek, prefix, ack = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('ZREM', t, reg) + redis.call('ZREM', w, reg) > 0 then
  count(owned, ek, -1)
  return 1
end
local held
if ack == 'ack' then
  held = redis.call('HDEL', d, reg)
else
  held = drop_delivery(v, t, w, d, reg, prefix, ek)
end
if held > 0 then
  count(owned, ek, -1)
  return 2
end
return 0
