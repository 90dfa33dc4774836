-- One token's restrictions in one round trip, as one consistent snapshot.
-- KEYS: meta (hash), domains (set), ips (set), all under one hash tag.
-- Returns nil for an unknown token, else {meta as a flat list, domains, ips}.
local meta = redis.call('HGETALL', KEYS[1])
if #meta == 0 then
  return nil
end
return {meta, redis.call('SMEMBERS', KEYS[2]), redis.call('SMEMBERS', KEYS[3])}
