-- The denial summary of one stored token (validator.store.denial_streams: `append_denials`), a HASH
-- beside its capped stream: what a flood of distinct values from one client cannot push out.
--
-- KEYS[1]: the summary. ARGV: cap (most pairs kept), expiry (ms), then per pair of the batch
-- 7 values: client, source, seen, origin, requests, first ms, last ms; then per client of the
-- batch whose pairs the writer left out (it passes at most `cap` pairs a call) 2 values: client,
-- how many pairs of it were left out, after the marker "-evicted-".
--
-- Fields: "p" .. client .. US .. source .. US .. seen .. US .. origin -> "requests first last";
-- "c" .. client -> "kept evicted" (pairs of the client kept here, and pairs of it let go).
-- When the summary holds `cap` pairs, a new pair takes the place of a pair of the client that
-- holds the most (ties: the newcomer's own client), the one of that client with the fewest
-- requests (then the oldest): a client spraying distinct values only ever replaces its own once
-- it holds the most, so the pairs of every other client stay (max-min fairness).
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2])
local US = "\31"

local requests, first, last, owner = {}, {}, {}, {}
local kept, evicted = {}, {}
local count = 0
local flat = redis.call("HGETALL", key)
for i = 1, #flat, 2 do
  local field, value = flat[i], flat[i + 1]
  local kind = string.sub(field, 1, 1)
  if kind == "p" then
    local n, a, b = string.match(value, "^(%d+) (%d+) (%d+)$")
    local client = string.match(field, "^p([^\31]*)\31")
    if n and client then
      requests[field], first[field], last[field], owner[field] = tonumber(n), tonumber(a), tonumber(b), client
      count = count + 1
    end
  elseif kind == "c" then
    local k, e = string.match(value, "^(%d+) (%d+)$")
    if e then
      evicted[string.sub(field, 2)] = tonumber(e)
    end
  end
end
for field, client in pairs(owner) do
  kept[client] = (kept[client] or 0) + 1
end
local touched, removed, clients = {}, {}, {}

local function victim(newcomer)
  -- The client holding the most pairs (the newcomer's own when it holds as many).
  local most, who = kept[newcomer] or 0, newcomer
  for client, n in pairs(kept) do
    if n > most then
      most, who = n, client
    end
  end
  if most == 0 then
    return nil
  end
  local chosen = nil
  for field, client in pairs(owner) do
    if client == who then
      if chosen == nil or requests[field] < requests[chosen]
        or (requests[field] == requests[chosen] and last[field] < last[chosen]) then
        chosen = field
      end
    end
  end
  return chosen
end

local i = 3
while i + 6 <= #ARGV and ARGV[i] ~= "-evicted-" do
  local client = ARGV[i]
  local field = "p" .. client .. US .. ARGV[i + 1] .. US .. ARGV[i + 2] .. US .. ARGV[i + 3]
  local n, a, b = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  if requests[field] then
    requests[field] = requests[field] + n
    first[field] = math.min(first[field], a)
    last[field] = math.max(last[field], b)
  else
    if count >= cap then
      local out = victim(client)
      if out ~= nil then
        local who = owner[out]
        requests[out], first[out], last[out], owner[out] = nil, nil, nil, nil
        kept[who] = kept[who] - 1
        evicted[who] = (evicted[who] or 0) + 1
        clients[who] = true
        removed[out] = true
        touched[out] = nil
        count = count - 1
      end
    end
    requests[field], first[field], last[field], owner[field] = n, a, b, client
    kept[client] = (kept[client] or 0) + 1
    count = count + 1
    removed[field] = nil
  end
  touched[field] = true
  clients[client] = true
  i = i + 7
end
if ARGV[i] == "-evicted-" then
  i = i + 1
  while i + 1 <= #ARGV do
    local client = ARGV[i]
    evicted[client] = (evicted[client] or 0) + tonumber(ARGV[i + 1])
    clients[client] = true
    i = i + 2
  end
end

local set = {}
for field in pairs(touched) do
  set[#set + 1] = field
  set[#set + 1] = requests[field] .. " " .. first[field] .. " " .. last[field]
end
local gone = {}
for field in pairs(removed) do
  gone[#gone + 1] = field
end
for client in pairs(clients) do
  if (kept[client] or 0) > 0 then
    set[#set + 1] = "c" .. client
    set[#set + 1] = kept[client] .. " " .. (evicted[client] or 0)
  else
    -- A client with no pair kept is forgotten: at most `cap` clients are ever named.
    gone[#gone + 1] = "c" .. client
  end
end
if #gone > 0 then
  redis.call("HDEL", key, unpack(gone))
end
if #set > 0 then
  redis.call("HSET", key, unpack(set))
end
redis.call("PEXPIRE", key, expiry)
return count
