-- A registration whose task has left (or returned what it received, for an
-- acknowledgement): unregister it, and pass on a value it took and did not
-- receive, as if it had been given back.
-- KEYS: V, T, W, D, and O of the registration's owner (see common.lua)
-- ARGV: (common), the registration, and 'ack' if its task received what it
--   holds (then nothing is passed on)
-- Returns: 1 if it was still waiting, 2 if it held an outcome, 0 if neither
local v, t, w, d, o = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local reg, ack = ARGV[4], ARGV[5]
if redis.call('ZREM', t, reg) + redis.call('ZREM', w, reg) > 0 then
  count(o, EK, -1)
  return 1
end
local held
if ack == 'ack' then
  held = redis.call('HDEL', d, reg)
else
  held = drop_delivery(v, t, w, d, reg, EK)
end
if held > 0 then
  count(o, EK, -1)
  return 2
end
return 0
