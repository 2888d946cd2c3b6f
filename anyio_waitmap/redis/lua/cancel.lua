-- Cancel the waiters of a key: each receives 'k'.
-- KEYS: V, T, W, D (see common.lua; V is not used)
-- ARGV: (common)
-- Returns: how many registrations were cancelled
local t, w, d = KEYS[2], KEYS[3], KEYS[4]
local cancelled = 0
for _, queue in ipairs({w, t}) do
  for _, reg in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
    deliver(d, reg, 'k', EK)
    cancelled = cancelled + 1
  end
  redis.call('DEL', queue)
end
return cancelled
