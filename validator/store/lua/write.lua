-- Apply one admin change to one token atomically; the entry limit is enforced here, inside
-- Redis, so concurrent writers can never leave more than `limit` entries in a list.
--
-- KEYS: meta (hash: d, i = switches "0"/"1"; v = version; r = mode "enforce"/"report",
--       absent meaning enforce), domains (set), ips (set),
--       history (list of JSON entries, newest first, capped at HISTORY_LENGTH),
--       and optionally the store's marker (not on a Redis Cluster: it lives in another slot);
--       or the meta key alone, on a Redis Cluster slot's migration target after ASKING once the
--       token's other keys were moved there (validator/store/migration.py): the others are then
--       named from it (`...:m` -> `...:d`, `:i`, `:h`), and looked for before anything is written
-- ARGV[1] = op, ARGV[2] = limit, ARGV[3] = the marker's expected value when KEYS[5] is given,
-- ARGV[4] = options, a JSON object (at least "{}"): "actor" (who made the change, recorded in the
-- history entry), "history_length" (how many history entries to keep, default 50),
-- then per op:
--   add | remove | set   ARGV[5] = "d" or "i", ARGV[6..] = normalised entries
--   switch               ARGV[5] = "d" or "i", ARGV[6] = "0" or "1"
--   mode                 ARGV[5] = "enforce" or "report"
--   put                  ARGV[5] = d switch, ARGV[6] = i switch, ARGV[7] = mode,
--                        ARGV[8] = number of domains, then the domains, then the ips
--                        (a whole record, as import writes it)
--   delete
-- Returns {"ok", changed (0/1), meta, domains, ips} after the change,
-- or {"limit", "d" or "i", members now stored} when the limit would be exceeded (nothing written),
-- or {"marker", "missing" or "mismatch"} when KEYS[5] is given and does not hold ARGV[3]: the
-- store was wiped, never initialised, or initialised for another secret (nothing written),
-- or {"moving"} on a Redis Cluster slot's migration source, or when only the meta key is declared
-- and another of the token's keys is on another node (nothing written),
-- or {"absent"} when the op only takes away (remove, set with no entries, switch off, mode) and
-- the token has no record: such an op creates nothing, because an empty record with both
-- switches off would turn a token that validators deny as unknown into an unrestricted one.
--
-- Every call that changes something pushes one history entry in the same atomic step, so the
-- history never misses or invents a change: {"at": ms since the epoch (server clock), "op",
-- "version" (after the change), and per op "restriction" ("domain"/"ip"), "entries" (those
-- actually added or removed; the whole new list for set), "domain_enabled", "ip_enabled",
-- "domains", "ips" (put: the new record)}. Empty lists are left out, because Lua cannot tell
-- cjson an empty array from an empty object. A call that changes nothing leaves the history
-- alone, so re-running an import adds nothing. Delete removes the history with everything else.

local op, limit = ARGV[1], tonumber(ARGV[2])
local options = cjson.decode(ARGV[4])
local history_length = tonumber(options.history_length) or 50
local meta_key = KEYS[1]
local base = string.sub(meta_key, 1, -2)
local history_key = KEYS[4] or base .. 'h'
local set_key = {d = KEYS[2] or base .. 'd', i = KEYS[3] or base .. 'i'}
local list_name = {d = 'domain', i = 'ip'}

local function state(changed)
  return {'ok', changed, redis.call('HGETALL', meta_key),
          redis.call('SMEMBERS', set_key.d), redis.call('SMEMBERS', set_key.i)}
end

local function same_members(key, wanted)
  if redis.call('SCARD', key) ~= #wanted then
    return false
  end
  for _, member in ipairs(wanted) do
    if redis.call('SISMEMBER', key, member) == 0 then
      return false
    end
  end
  return true
end

local function replace(key, entries)
  redis.call('DEL', key)
  if #entries > 0 then
    redis.call('SADD', key, unpack(entries))
  end
end

local function slice(from, to)
  local out = {}
  for n = from, to do
    out[#out + 1] = ARGV[n]
  end
  return out
end

local function record(entry)
  local now = redis.call('TIME')
  entry.at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if type(options.actor) == 'string' then
    entry.actor = options.actor
  end
  redis.call('LPUSH', history_key, cjson.encode(entry))
  redis.call('LTRIM', history_key, 0, history_length - 1)
end

-- On a Redis Cluster (no marker key given) the slot may be migrating. Inside a script too, Redis
-- checks each command's key as it runs: on the migration's source, one that is missing -- a set
-- the change empties, or one it deletes then writes, or one on the target -- fails the script there
-- and then, after what it wrote so far. So: nothing is written on a migrating source (a key that
-- never exists is missing there, which `redis.pcall` tells without failing); the caller moves the
-- token's keys and writes on the target (validator/store/migration.py). There, after ASKING, a
-- single-key command runs whether its key exists or not; multi-key ones are avoided below.
if #KEYS < 5 then
  local probes = {base .. 'migrating?'}
  if #KEYS == 1 then
    probes = {base .. 'migrating?', set_key.d, set_key.i, history_key}
  end
  for _, key in ipairs(probes) do
    if type(redis.pcall('EXISTS', key)) == 'table' then
      return {'moving'}
    end
  end
end

if #KEYS >= 5 then
  local marker = redis.call('GET', KEYS[5])
  if marker ~= ARGV[3] then
    return {'marker', marker and 'mismatch' or 'missing'}
  end
end

-- Delete forgets the token completely, its history included: nothing stays behind in Redis.
if op == 'delete' then
  -- One key at a time: on a migration's target, one DEL of several keys fails if one is missing.
  local removed = 0
  for _, key in ipairs({meta_key, set_key.d, set_key.i, history_key}) do
    removed = removed + redis.call('DEL', key)
  end
  return {'ok', removed > 0 and 1 or 0, {}, {}, {}}
end

local changed = false
local exists = redis.call('EXISTS', meta_key) == 1
local creates = op == 'add' or op == 'put' or (op == 'set' and #ARGV > 5)
  or (op == 'switch' and ARGV[6] == '1')
if not exists and not creates then
  return {'absent'}
end

-- Called once a change is known to be allowed (limits checked), before writing it.
local function create_if_absent()
  if not exists then
    redis.call('HSET', meta_key, 'd', '0', 'i', '0', 'v', '0')
    exists = true
    changed = true
  end
end

local entry = {op = op}
if op == 'add' or op == 'remove' or op == 'set' then
  local list = ARGV[5]
  local key = set_key[list]
  local entries = slice(6, #ARGV)
  entry.restriction = list_name[list]
  if op == 'add' then
    local new = {}
    for _, member in ipairs(entries) do
      if redis.call('SISMEMBER', key, member) == 0 then
        new[#new + 1] = member
      end
    end
    if #new > 0 and redis.call('SCARD', key) + #new > limit then
      return {'limit', list, redis.call('SMEMBERS', key)}
    end
    create_if_absent()
    if #new > 0 then
      redis.call('SADD', key, unpack(new))
      entry.entries = new
      changed = true
    end
  elseif op == 'remove' then
    local gone = {}
    for _, member in ipairs(entries) do
      if redis.call('SREM', key, member) == 1 then
        gone[#gone + 1] = member
      end
    end
    if #gone > 0 then
      entry.entries = gone
      changed = true
    end
  else
    if #entries > limit then
      return {'limit', list, redis.call('SMEMBERS', key)}
    end
    create_if_absent()
    if not same_members(key, entries) then
      replace(key, entries)
      changed = true
    end
    if #entries > 0 then
      entry.entries = entries
    end
  end
elseif op == 'switch' then
  entry.op = ARGV[6] == '1' and 'enable' or 'disable'
  entry.restriction = list_name[ARGV[5]]
  create_if_absent()
  if redis.call('HGET', meta_key, ARGV[5]) ~= ARGV[6] then
    redis.call('HSET', meta_key, ARGV[5], ARGV[6])
    changed = true
  end
elseif op == 'mode' then
  entry.mode = ARGV[5]
  if (redis.call('HGET', meta_key, 'r') or 'enforce') ~= ARGV[5] then
    redis.call('HSET', meta_key, 'r', ARGV[5])
    changed = true
  end
elseif op == 'put' then
  local n = tonumber(ARGV[8])
  local domains = slice(9, 8 + n)
  local ips = slice(9 + n, #ARGV)
  if #domains > limit then
    return {'limit', 'd', redis.call('SMEMBERS', set_key.d)}
  end
  if #ips > limit then
    return {'limit', 'i', redis.call('SMEMBERS', set_key.i)}
  end
  create_if_absent()
  for list, value in pairs({d = ARGV[5], i = ARGV[6]}) do
    if redis.call('HGET', meta_key, list) ~= value then
      redis.call('HSET', meta_key, list, value)
      changed = true
    end
  end
  if (redis.call('HGET', meta_key, 'r') or 'enforce') ~= ARGV[7] then
    redis.call('HSET', meta_key, 'r', ARGV[7])
    changed = true
  end
  entry.mode = ARGV[7]
  for list, entries in pairs({d = domains, i = ips}) do
    if not same_members(set_key[list], entries) then
      replace(set_key[list], entries)
      changed = true
    end
  end
  entry.domain_enabled = ARGV[5] == '1'
  entry.ip_enabled = ARGV[6] == '1'
  entry.domains = #domains > 0 and domains or nil
  entry.ips = #ips > 0 and ips or nil
else
  return redis.error_reply('unknown op ' .. tostring(op))
end

if changed then
  entry.version = redis.call('HINCRBY', meta_key, 'v', 1)
  record(entry)
end
return state(changed and 1 or 0)
