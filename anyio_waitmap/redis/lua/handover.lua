-- Hand a value to the waiters of a key (wake, set), storing it for 'set'.
-- KEYS: V, T, W, D (see common.lua)
-- ARGV: (common), the mode ('wake' or 'set'), the encoded value, its TTL in
--   milliseconds (0 for none)
-- Returns: {how many registrations received it, 1 if a taker did}
return hand_over(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[5], ARGV[4],
  tonumber(ARGV[6]), EK)
