-- One token's restrictions in one round trip, as one consistent snapshot.
-- Used by redis-py's reads only (no multiplexed connection, a redirected read, a slot migration's
-- target: validator/store/migration.py); the multiplexed connection reads the same snapshot in a
-- MULTI/EXEC transaction (Store._read_transaction), for a fifth of the Redis CPU.
-- KEYS: meta (hash), domains (set), ips (set), all under one hash tag; or the meta key alone, on a
-- Redis Cluster slot's migration target after ASKING once none of the three is left on the source
-- (validator/store/migration.py): the sets are then named from it (`...:m` -> `...:d`, `...:i`).
-- Returns nil for an unknown token, else {meta as a flat list, domains, ips}.
local base = string.sub(KEYS[1], 1, -2)
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then
  return nil
end
return {meta, redis.call('SMEMBERS', KEYS[2] or base .. 'd'), redis.call('SMEMBERS', KEYS[3] or base .. 'i')}
