-- Apply one admin change to one token atomically; the entry limit is enforced here, inside
-- Redis, so concurrent writers can never leave more than `limit` entries in a list.
--
-- KEYS: meta (hash: d, i = switches "0"/"1"; v = version; r = mode "enforce"/"report",
--       absent meaning enforce), domains (set), ips (set),
--       history (list of JSON entries, newest first, capped at HISTORY_LENGTH)
-- ARGV[1] = op, ARGV[2] = limit, then per op:
--   add | remove | set   ARGV[3] = "d" or "i", ARGV[4..] = normalised entries
--   switch               ARGV[3] = "d" or "i", ARGV[4] = "0" or "1"
--   mode                 ARGV[3] = "enforce" or "report"
--   put                  ARGV[3] = d switch, ARGV[4] = i switch, ARGV[5] = mode,
--                        ARGV[6] = number of domains, then the domains, then the ips
--                        (a whole record, as import writes it)
--   delete
-- Returns {"ok", changed (0/1), meta, domains, ips} after the change,
-- or {"limit", "d" or "i", members now stored} when the limit would be exceeded (nothing written).
--
-- Every call that changes something pushes one history entry in the same atomic step, so the
-- history never misses or invents a change: {"at": ms since the epoch (server clock), "op",
-- "version" (after the change), and per op "restriction" ("domain"/"ip"), "entries" (those
-- actually added or removed; the whole new list for set), "domain_enabled", "ip_enabled",
-- "domains", "ips" (put: the new record)}. Empty lists are left out, because Lua cannot tell
-- cjson an empty array from an empty object. A call that changes nothing leaves the history
-- alone, so re-running an import adds nothing. Delete removes the history with everything else.

local HISTORY_LENGTH = 50

local op, limit = ARGV[1], tonumber(ARGV[2])
local meta_key, history_key = KEYS[1], KEYS[4]
local set_key = {d = KEYS[2], i = KEYS[3]}
local list_name = {d = 'domain', i = 'ip'}

local function state(changed)
  return {'ok', changed, redis.call('HGETALL', meta_key),
          redis.call('SMEMBERS', KEYS[2]), redis.call('SMEMBERS', KEYS[3])}
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
  redis.call('LPUSH', history_key, cjson.encode(entry))
  redis.call('LTRIM', history_key, 0, HISTORY_LENGTH - 1)
end

-- Delete forgets the token completely, its history included: nothing stays behind in Redis.
if op == 'delete' then
  local removed = redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], history_key)
  return {'ok', removed > 0 and 1 or 0, {}, {}, {}}
end

local changed = false
if redis.call('EXISTS', meta_key) == 0 then
  redis.call('HSET', meta_key, 'd', '0', 'i', '0', 'v', '0')
  changed = true
end

local entry = {op = op}
if op == 'add' or op == 'remove' or op == 'set' then
  local list = ARGV[3]
  local key = set_key[list]
  local entries = slice(4, #ARGV)
  entry.restriction = list_name[list]
  if op == 'add' then
    local new = {}
    for _, member in ipairs(entries) do
      if redis.call('SISMEMBER', key, member) == 0 then
        new[#new + 1] = member
      end
    end
    if #new > 0 then
      if redis.call('SCARD', key) + #new > limit then
        return {'limit', list, redis.call('SMEMBERS', key)}
      end
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
    if not same_members(key, entries) then
      replace(key, entries)
      changed = true
    end
    if #entries > 0 then
      entry.entries = entries
    end
  end
elseif op == 'switch' then
  entry.op = ARGV[4] == '1' and 'enable' or 'disable'
  entry.restriction = list_name[ARGV[3]]
  if redis.call('HGET', meta_key, ARGV[3]) ~= ARGV[4] then
    redis.call('HSET', meta_key, ARGV[3], ARGV[4])
    changed = true
  end
elseif op == 'mode' then
  entry.mode = ARGV[3]
  if (redis.call('HGET', meta_key, 'r') or 'enforce') ~= ARGV[3] then
    redis.call('HSET', meta_key, 'r', ARGV[3])
    changed = true
  end
elseif op == 'put' then
  local n = tonumber(ARGV[6])
  local domains = slice(7, 6 + n)
  local ips = slice(7 + n, #ARGV)
  if #domains > limit then
    return {'limit', 'd', redis.call('SMEMBERS', KEYS[2])}
  end
  if #ips > limit then
    return {'limit', 'i', redis.call('SMEMBERS', KEYS[3])}
  end
  for list, value in pairs({d = ARGV[3], i = ARGV[4]}) do
    if redis.call('HGET', meta_key, list) ~= value then
      redis.call('HSET', meta_key, list, value)
      changed = true
    end
  end
  if (redis.call('HGET', meta_key, 'r') or 'enforce') ~= ARGV[5] then
    redis.call('HSET', meta_key, 'r', ARGV[5])
    changed = true
  end
  entry.mode = ARGV[5]
  for list, entries in pairs({d = domains, i = ips}) do
    if not same_members(set_key[list], entries) then
      replace(set_key[list], entries)
      changed = true
    end
  end
  entry.domain_enabled = ARGV[3] == '1'
  entry.ip_enabled = ARGV[4] == '1'
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
