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
-- "expires_at" / "expires_in" (add, set: the entries stop matching at this instant, in ms since
-- the epoch as digits, or this many ms after the server's clock now; neither: permanent),
-- "expiry" (put: {"d": {entry: ms as digits}, "i": {...}}, the entries that expire),
-- "history_max_age_ms" (entries older than this are dropped when the next one is recorded),
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
-- or {"past", ms now} when an add or set gives an expiry not after the server's clock (nothing written),
-- or {"absent"} when the op only takes away (remove, set with no entries, switch off, mode) and
-- the token has no record: such an op creates nothing, because an empty record with both
-- switches off would turn a token that validators deny as unknown into an unrestricted one.
--
-- Every call that changes something pushes one history entry in the same atomic step, so the
-- history never misses or invents a change: {"at": ms since the epoch (server clock), "op",
-- "version" (after the change), "actor" (when the options name one), and per op "restriction"
-- ("domain"/"ip"), "entries" (those actually added or removed; the whole new list for set),
-- "domain_enabled", "ip_enabled", "domains", "ips" (put: the new record)}. Empty lists are left
-- out, because Lua cannot tell cjson an empty array from an empty object. A call that changes
-- nothing leaves the history alone, so re-running an import adds nothing. Delete removes the
-- history with everything else. The history is trimmed to "history_length" entries and, with
-- "history_max_age_ms", to those recorded since then, in the same step (`record`).
--
-- Entries that expire: the meta hash's field `x:d:<entry>` (`x:i:<entry>`) holds the instant a
-- domain (IP) entry stops matching, in ms since the epoch. Validators stop matching it at that
-- instant by their own clock, with no write and no sweep; here, every call that may change the
-- token first takes the entries lapsed by the server's clock out of their set and deletes their
-- field, so that they free their slot before the limit is checked, and records them (op
-- "expire", "entries", "restriction"). Adding an entry again with another expiry changes its
-- expiry; without one, makes it permanent. No field outlives its entry (remove, set, put).

local op, limit = ARGV[1], tonumber(ARGV[2])
local options = cjson.decode(ARGV[4])
-- tonumber: a JSON null decodes as cjson.null, which is no number, so it means the default.
local history_length = math.max(1, math.floor(tonumber(options.history_length) or 50))
local history_max_age = tonumber(options.history_max_age_ms)
if history_max_age and history_max_age <= 0 then
  history_max_age = nil
end
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

local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local function expiry_field(list, member)
  return 'x:' .. list .. ':' .. member
end

-- An instant from the options as stored (digits), or nil; false if it is not a number.
local function instant(value, base)
  local ms = tonumber(value)
  if value == nil then
    return nil
  elseif ms == nil or ms ~= math.floor(ms) or ms < 0 then
    return false
  end
  return string.format('%d', base + ms)
end

local function record(entry)
  local now = redis.call('TIME')
  entry.at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if type(options.actor) == 'string' then
    entry.actor = options.actor
  end
  redis.call('LPUSH', history_key, cjson.encode(entry))
  redis.call('LTRIM', history_key, 0, history_length - 1)
  if history_max_age then
    -- Retention by age, in the same atomic step: the list is newest first, so drop from the tail
    -- while the oldest entry is older than the cutoff. Bounded by the count just kept, and the
    -- entry just pushed is never older. An entry that cannot be read has no age: not history.
    local cutoff = entry.at - history_max_age
    for _ = 2, history_length do
      local ok, oldest = pcall(cjson.decode, redis.call('LINDEX', history_key, -1))
      local at = ok and type(oldest) == 'table' and tonumber(oldest.at)
      if at and at >= cutoff then
        break
      end
      redis.call('RPOP', history_key)
    end
  end
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

-- A call that `Store.write` makes again, after an error that left the outcome of its first try
-- unknown (a failover cutting the connection, a timeout), carries the first try's "op_id": if
-- that try changed the token, it must not be applied again (the history would show the change
-- twice, and a change another admin made in between would be undone). A call that changes
-- something keeps its id in the list `<base>w`, the token's last 16 such ids, for 60 s after the
-- last (far longer than any retry). A try that changed nothing left nothing to find and is simply
-- made again. Delete is made again as is: it changes nothing the second time.
local op_id = options.op_id
if type(op_id) ~= 'string' or op_id == '' then
  op_id = nil
end
local op_key = base .. 'w'
if op_id and op ~= 'delete' and redis.call('LPOS', op_key, op_id) then
  return state(1)
end

-- Delete forgets the token completely, its history included: nothing stays behind in Redis.
if op == 'delete' then
  -- One key at a time: on a migration's target, one DEL of several keys fails if one is missing.
  local removed = 0
  for _, key in ipairs({meta_key, set_key.d, set_key.i, history_key}) do
    removed = removed + redis.call('DEL', key)
  end
  redis.call('DEL', op_key)
  return {'ok', removed > 0 and 1 or 0, {}, {}, {}}
end

local changed = false
local exists = redis.call('EXISTS', meta_key) == 1
local creates = op == 'add' or op == 'put' or (op == 'set' and #ARGV > 5)
  or (op == 'switch' and ARGV[6] == '1')
if not exists and not creates then
  return {'absent'}
end

local now = now_ms()
local expires = nil
if op == 'add' or op == 'set' then
  if options.expires_in ~= nil then
    expires = instant(options.expires_in, now)
  else
    expires = instant(options.expires_at, 0)
  end
  if expires == false then
    return redis.error_reply('expires_at / expires_in must be a number of milliseconds')
  end
  if expires ~= nil and tonumber(expires) <= now then
    return {'past', now}
  end
end

local swept = false
if exists then
  -- Lapsed entries leave first (an unreadable instant counts as lapsed: fail closed), and a
  -- field whose entry is not in its set goes too.
  local meta = redis.call('HGETALL', meta_key)
  local lapsed = {d = {}, i = {}}
  for n = 1, #meta, 2 do
    local list = string.match(meta[n], '^x:([di]):')
    if list then
      local member = string.sub(meta[n], 5)
      local at = tonumber(meta[n + 1])
      if at == nil or at <= now then
        redis.call('HDEL', meta_key, meta[n])
        if redis.call('SREM', set_key[list], member) == 1 then
          lapsed[list][#lapsed[list] + 1] = member
        end
      elseif redis.call('SISMEMBER', set_key[list], member) == 0 then
        redis.call('HDEL', meta_key, meta[n])
      end
    end
  end
  for _, list in ipairs({'d', 'i'}) do
    if #lapsed[list] > 0 then
      record({op = 'expire', restriction = list_name[list], entries = lapsed[list],
              version = redis.call('HINCRBY', meta_key, 'v', 1)})
      swept = true
    end
  end
end

-- Makes the expiry fields of `list` those of `expiry` (member -> ms as digits), for its members
-- in `entries` only; whether any changed.
local function set_expiries(list, entries, expiry)
  local changed_any = false
  local wanted = {}
  for _, member in ipairs(entries) do
    wanted[member] = expiry[member]
  end
  local meta = redis.call('HGETALL', meta_key)
  local prefix = 'x:' .. list .. ':'
  for n = 1, #meta, 2 do
    if string.sub(meta[n], 1, 4) == prefix and wanted[string.sub(meta[n], 5)] == nil then
      redis.call('HDEL', meta_key, meta[n])
      changed_any = true
    end
  end
  for member, at in pairs(wanted) do
    if redis.call('HGET', meta_key, expiry_field(list, member)) ~= at then
      redis.call('HSET', meta_key, expiry_field(list, member), at)
      changed_any = true
    end
  end
  return changed_any
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
    local new, touched = {}, {}
    for _, member in ipairs(entries) do
      if redis.call('SISMEMBER', key, member) == 0 then
        new[#new + 1] = member
        touched[#touched + 1] = member
      elseif redis.call('HGET', meta_key, expiry_field(list, member)) ~= (expires or false) then
        touched[#touched + 1] = member  -- its expiry changes, or it becomes permanent
      end
    end
    if #new > 0 and redis.call('SCARD', key) + #new > limit then
      return {'limit', list, redis.call('SMEMBERS', key)}
    end
    create_if_absent()
    if #new > 0 then
      redis.call('SADD', key, unpack(new))
    end
    for _, member in ipairs(touched) do
      if expires then
        redis.call('HSET', meta_key, expiry_field(list, member), expires)
      else
        redis.call('HDEL', meta_key, expiry_field(list, member))
      end
    end
    if #touched > 0 then
      entry.entries = touched
      entry.expires_at = expires and tonumber(expires) or nil
      changed = true
    end
  elseif op == 'remove' then
    local gone = {}
    for _, member in ipairs(entries) do
      if redis.call('SREM', key, member) == 1 then
        gone[#gone + 1] = member
      end
      redis.call('HDEL', meta_key, expiry_field(list, member))
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
    local expiry = {}
    for _, member in ipairs(entries) do
      expiry[member] = expires or nil
    end
    if set_expiries(list, entries, expiry) then
      changed = true
    end
    if #entries > 0 then
      entry.entries = entries
      entry.expires_at = expires and tonumber(expires) or nil
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
  local expiry = {d = {}, i = {}}
  local given = type(options.expiry) == 'table' and options.expiry or {}
  -- Entries already lapsed by the server's clock are left out (import drops those it sees).
  local function unexpired(list, entries)
    local kept = {}
    local of = type(given[list]) == 'table' and given[list] or {}
    for _, member in ipairs(entries) do
      local at = instant(of[member], 0)
      if at == false then
        return nil
      end
      if at == nil or tonumber(at) > now then
        kept[#kept + 1] = member
        expiry[list][member] = at
      end
    end
    return kept
  end
  local domains = unexpired('d', slice(9, 8 + n))
  local ips = unexpired('i', slice(9 + n, #ARGV))
  if domains == nil or ips == nil then
    return redis.error_reply('expiry instants must be numbers of milliseconds')
  end
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
    if set_expiries(list, entries, expiry[list]) then
      changed = true
    end
  end
  entry.domain_enabled = ARGV[5] == '1'
  entry.ip_enabled = ARGV[6] == '1'
  entry.domains = #domains > 0 and domains or nil
  entry.ips = #ips > 0 and ips or nil
  for list, name in pairs({d = 'domain_expiry', i = 'ip_expiry'}) do
    if next(expiry[list]) ~= nil then
      entry[name] = {}
      for member, at in pairs(expiry[list]) do
        entry[name][member] = tonumber(at)
      end
    end
  end
else
  return redis.error_reply('unknown op ' .. tostring(op))
end

if changed then
  entry.version = redis.call('HINCRBY', meta_key, 'v', 1)
  record(entry)
end
-- Not on a migration's target (the meta key alone declared): a key made there could also be
-- left on the source, and the resharding's MIGRATE of it would then fail (BUSYKEY).
if op_id and (changed or swept) and #KEYS >= 4 then
  redis.call('LPUSH', op_key, op_id)
  redis.call('LTRIM', op_key, 0, 15)
  redis.call('PEXPIRE', op_key, 60000)
end
return state((changed or swept) and 1 or 0)
