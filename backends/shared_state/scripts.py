"""The Lua scripts that make slot accounting atomic across replicas.

Each slot set is a sorted set per (box, model): members are lease ids, scores their
expiry in milliseconds of the Redis server's clock (``TIME``), so replicas never compare
their own clocks. Every script first drops the expired members of the sets it reads:
a count is never stale, and a replica that died frees its slots once its leases expire.
Scripts run atomically in Redis, so "re-check the true counts and take the first with
room" is one step no other replica can interleave with.
"""

from __future__ import annotations

# KEYS: the candidates' slot sets, best first, the index of slot sets, the model's
# waiting room (a sorted set of tickets) and the tickets' expiries.
# ARGV: lease id, ttl (ms), ticket ('' for a request that has not waited), its score
# (priority, then fair share; arrival breaks ties by name), each candidate's slots, then
# the channel, the user, the request's cost and the replica, and each candidate's box:
# the placement is announced to every replica (fair share, rate windows) from here, which
# spares a round trip.
# The waiting room's global order: a request takes a slot only while the candidates
# have more free slots than there are tickets ahead of it, wherever those wait.
# Returns {picked (1-based; 0: none), {count per candidate after the script}, ahead}.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS - 3
local room, tickets = KEYS[n + 2], KEYS[n + 3]
local counts = {}
local free = 0
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  counts[i] = redis.call('ZCARD', KEYS[i])
  local slots = tonumber(ARGV[i + 4])
  if counts[i] < slots then
    free = free + slots - counts[i]
  end
end
local ahead = false
if ARGV[3] ~= '' then
  ahead = redis.call('ZRANK', room, ARGV[3])
end
if not ahead then
  ahead = redis.call('ZCOUNT', room, '-inf', ARGV[4])
end
local picked = 0
if free > ahead then
  for i = 1, n do
    if counts[i] < tonumber(ARGV[i + 4]) then
      redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), ARGV[1])
      redis.call('SADD', KEYS[n + 1], KEYS[i])
      counts[i] = counts[i] + 1
      picked = i
      redis.call('PUBLISH', ARGV[n + 5], cjson.encode({
        e = 'placed', b = ARGV[n + 8 + i], u = ARGV[n + 6], c = tonumber(ARGV[n + 7]),
        r = ARGV[n + 8]}))
      break
    end
  end
  if ARGV[3] ~= '' then
    redis.call('ZREM', room, ARGV[3])
    redis.call('ZREM', tickets, room .. '\\n' .. ARGV[3])
  end
end
return {picked, counts, ahead}
"""

# KEYS: the model's waiting room, the tickets' expiries, the index of waiting rooms.
# ARGV: ticket, score, ttl (ms).
ENQUEUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], tonumber(ARGV[2]), ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), KEYS[1] .. '\\n' .. ARGV[1])
redis.call('SADD', KEYS[3], KEYS[1])
return redis.call('ZRANK', KEYS[1], ARGV[1])
"""

# KEYS: the model's waiting room, the tickets' expiries. ARGV: ticket, channel.
# A ticket that leaves without a slot (timed out, client gone): those behind it move up.
DEQUEUE = """
local gone = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], KEYS[1] .. '\\n' .. ARGV[1])
if gone == 1 then
  redis.call('PUBLISH', ARGV[2], cjson.encode({e = 'moved'}))
end
return gone
"""

# KEYS: the lease's slot set. ARGV: lease id, channel, box, model, replica.
# Idempotent: only a lease that was still there is announced as freed.
RELEASE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local c = redis.call('ZCARD', KEYS[1])
if removed == 1 then
  redis.call('PUBLISH', ARGV[2],
    cjson.encode({e = 'free', b = ARGV[3], m = ARGV[4], n = c, r = ARGV[5]}))
end
return c
"""

# KEYS: the index of slot sets, the replica registry, the tickets' expiries, then one
# slot set per live lease. ARGV: ttl (ms), replica name, its record (JSON), the number of
# waiting tickets, those tickets (room \n ticket, as in the expiries), then one lease id
# per slot set.
# Puts every live lease back with a fresh expiry (ZADD without XX: a lease lost to a
# Redis restart or an expiry during a partition is registered again, since its request
# still runs), records the replica as seen, and returns the server time and the registry.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local waiting = tonumber(ARGV[4])
for i = 1, waiting do
  redis.call('ZADD', KEYS[3], 'XX', expiry, ARGV[4 + i])
end
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], expiry, ARGV[i + 1 + waiting])
  redis.call('SADD', KEYS[1], KEYS[i])
end
redis.call('HSET', KEYS[2], ARGV[2], now .. ' ' .. ARGV[3])
return {now, redis.call('HGETALL', KEYS[2])}
"""

# KEYS: the index of slot sets, the tickets' expiries, the index of waiting rooms.
# ARGV: channel.
# Drops expired leases and tickets everywhere (a dead replica's), announces it if it
# dropped any (waiters may fit now) and returns {{set, count, ...}, {room, count, ...}}
# for the fleet-wide view.
SWEEP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local freed = false
for _, key in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local gone = redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local c = redis.call('ZCARD', key)
  if c == 0 then
    redis.call('SREM', KEYS[1], key)
  end
  if gone > 0 then
    freed = true
  end
  out[#out + 1] = key
  out[#out + 1] = c
end
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  local cut = string.find(entry, '\\n', 1, true)
  redis.call('ZREM', string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1))
  freed = true
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local rooms = {}
for _, key in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local c = redis.call('ZCARD', key)
  if c == 0 then
    redis.call('SREM', KEYS[3], key)
  else
    rooms[#rooms + 1] = key
    rooms[#rooms + 1] = c
  end
end
if freed then
  redis.call('PUBLISH', ARGV[1], cjson.encode({e = 'sweep'}))
end
return {out, rooms}
"""
