-- Reclaim what an owner whose lease ran out held in one partition: its
-- registrations go, and values handed to its takers are passed on as if given
-- back. The keys it reads are named from O, in the same hash slot.
-- KEYS: O of the dead owner in the partition (see common.lua)
-- ARGV: (common, with no key), the owner, the partition's prefix
-- Returns: how many registrations and outcomes were reclaimed
local o = KEYS[1]
local owner, base = ARGV[4], ARGV[5]
local reclaimed = 0
for _, ek in ipairs(redis.call('HKEYS', o)) do
  local head = base .. ek
  local v, t, w, d = head .. ':v', head .. ':t', head .. ':w', head .. ':d'
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
      reclaimed = reclaimed + drop_delivery(v, t, w, d, reg, ek)
    end
  end
end
redis.call('DEL', o)
return reclaimed
