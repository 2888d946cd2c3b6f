-- Reclaim what an owner whose lease ran out had on a key: its registrations go,
-- and values handed to its takers are passed on as if given back.
-- KEYS: V, T, W, D (see common.lua)
-- ARGV: the owner, the doorbell channels' prefix, the encoded key
-- Returns: how many registrations and outcomes were reclaimed
local v, t, w, d = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local owner, prefix, ek = ARGV[1], ARGV[2], ARGV[3]
local reclaimed = 0
for _, queue in ipairs({t, w}) do
  for _, reg in ipairs(redis.call('ZRANGE', queue, 0, -1)) do
    if owner_of(reg) == owner then
      redis.call('ZREM', queue, reg)
      reclaimed = reclaimed + 1
    end
  end
end
for _, reg in ipairs(redis.call('HKEYS', d)) do
  if owner_of(reg) == owner then
    reclaimed = reclaimed + drop_delivery(v, t, w, d, reg, prefix, ek)
  end
end
return reclaimed
