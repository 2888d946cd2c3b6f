#!lua
-- Shared by every script below (prepended to each when it is loaded).
--
-- The keys of one map key, all in one hash slot: V the stored value (a string),
-- T the takers and W the other waiters (sorted sets of registrations, scored in
-- the order they registered), D what was handed to a registration and not yet
-- acknowledged by its process (a hash: registration -> outcome). O, in the same
-- slot, counts what one owner holds on each key of the partition (a hash:
-- key -> registrations and outcomes), so that what a dead owner held can be
-- found there.
-- A registration is its kind ('t' take, 'w' wait), its owner (the instance of
-- the map in one process) and a number: 't' .. owner .. '/' .. n. An outcome is
-- 'v' followed by the encoded value, or 'k' for "the key was cancelled".
--
-- ARGV of every script starts with: the doorbell channels' prefix (the owner
-- follows it), the command that rings them (PUBLISH, or SPUBLISH on a Cluster),
-- and the encoded key (empty for reclaim).

local BELL, RING, EK = ARGV[1], ARGV[2], ARGV[3]

local function owner_of(reg)
  return string.match(reg, '^.(.-)/')
end

-- Record `outcome` for `reg`, and ring its owner's doorbell with a copy of it:
-- the key, the registration and the outcome, one per line.
local function deliver(d, reg, outcome, ek)
  redis.call('HSET', d, reg, outcome)
  redis.call(RING, BELL .. owner_of(reg), ek .. '\n' .. reg .. '\n' .. outcome)
end

-- Hand `value` to every waiter and to the first taker, and store it unless a
-- taker took it (mode 'set'), or unless a taker took it or a value is stored
-- already (mode 'back': a value given back). Returns {woken, taken}.
local function hand_over(v, t, w, d, value, mode, ttl, ek)
  if mode == 'back' and redis.call('EXISTS', v) == 1 then
    return {0, 0}
  end
  local outcome = 'v' .. value
  local woken = 0
  for _, reg in ipairs(redis.call('ZRANGE', w, 0, -1)) do
    deliver(d, reg, outcome, ek)
    woken = woken + 1
  end
  redis.call('DEL', w)
  local taken = 0
  local first = redis.call('ZPOPMIN', t)
  if first[1] then
    deliver(d, first[1], outcome, ek)
    woken = woken + 1
    taken = 1
  elseif mode ~= 'wake' then
    if ttl > 0 then
      redis.call('SET', v, value, 'PX', ttl)
    else
      redis.call('SET', v, value)
    end
  end
  return {woken, taken}
end

-- Forget what `reg` still holds (an outcome handed to it): pass a value it took
-- on as if given back. Returns 1 if it held something.
local function drop_delivery(v, t, w, d, reg, ek)
  local outcome = redis.call('HGET', d, reg)
  if not outcome then
    return 0
  end
  redis.call('HDEL', d, reg)
  if string.sub(reg, 1, 1) == 't' and string.sub(outcome, 1, 1) == 'v' then
    hand_over(v, t, w, d, string.sub(outcome, 2), 'back', 0, ek)
  end
  return 1
end

-- Add `by` to the owner's count on key `ek`; a count down to 0 goes.
local function count(o, ek, by)
  if redis.call('HINCRBY', o, ek, by) <= 0 then
    redis.call('HDEL', o, ek)
  end
end
