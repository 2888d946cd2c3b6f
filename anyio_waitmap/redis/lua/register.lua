-- Register a waiter on a key, or take (or read) its stored value at once.
-- KEYS: V, T, W, D, and O of the registration's owner (see common.lua)
-- ARGV: (common), the registration
-- Returns: 0 if it is registered (or was, by an earlier run of this call);
--   'v' followed by the value if a value was stored. A value taken is kept in D
--   for the registration until its process acknowledges it (a later run of
--   this call returns it again).
local v, t, w, d, o = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local reg = ARGV[4]
local held = redis.call('HGET', d, reg)
if held then
  return held
end
local queue = w
if string.sub(reg, 1, 1) == 't' then
  queue = t
end
if redis.call('ZSCORE', queue, reg) then
  return 0
end
local value = redis.call('GET', v)
if value then
  if queue == t then
    redis.call('DEL', v)
    redis.call('HSET', d, reg, 'v' .. value)
    count(o, EK, 1)
  end
  return 'v' .. value
end
local last = redis.call('ZRANGE', queue, -1, -1, 'WITHSCORES')
local score = 0
if last[2] then
  score = tonumber(last[2]) + 1
end
redis.call('ZADD', queue, score, reg)
count(o, EK, 1)
return 0
