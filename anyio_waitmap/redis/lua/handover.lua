-- Hand a value to the waiters of a key (wake, set), storing it for 'set'.
-- KEYS: V, T, W, D (see common.lua)
-- ARGV: the mode ('wake' or 'set'), the encoded value, its TTL in milliseconds
--   (0 for none), the doorbell channels' prefix, the encoded key
-- Returns: {how many registrations received it, 1 if a taker did}
return hand_over(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[1],
  tonumber(ARGV[3]), ARGV[4], ARGV[5])
