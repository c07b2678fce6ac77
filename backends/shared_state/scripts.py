"""The Lua scripts that make slot accounting atomic across replicas.

Each slot set is a sorted set per (box, model): members are lease ids, scores their
expiry in milliseconds of the Redis server's clock (``TIME``), so replicas never compare
their own clocks. Every script first drops the expired members of the sets it reads:
a count is never stale, and a replica that died frees its slots once its leases expire.
Scripts run atomically in Redis, so "re-check the true counts and take the first with
room" is one step no other replica can interleave with.
"""

from __future__ import annotations

# KEYS: the candidates' slot sets, best first, then the index of slot sets.
# ARGV: lease id, ttl (ms), then each candidate's slots.
# Returns {picked (1-based; 0: none had room), {count per candidate after the script}}.
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS - 1
local counts = {}
local picked = 0
for i = 1, n do
  local key = KEYS[i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local c = redis.call('ZCARD', key)
  if picked == 0 and c < tonumber(ARGV[i + 2]) then
    redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
    redis.call('SADD', KEYS[n + 1], key)
    c = c + 1
    picked = i
  end
  counts[i] = c
end
return {picked, counts}
"""

# KEYS: the lease's slot set. ARGV: lease id, channel, box, model.
# Idempotent: only a lease that was still there is announced as freed.
RELEASE = """
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local c = redis.call('ZCARD', KEYS[1])
if removed == 1 then
  redis.call('PUBLISH', ARGV[2], cjson.encode({e = 'free', b = ARGV[3], m = ARGV[4], n = c}))
end
return c
"""

# KEYS: the index of slot sets, the replica registry, then one slot set per live lease.
# ARGV: ttl (ms), replica name, its record (JSON), then one lease id per slot set.
# Puts every live lease back with a fresh expiry (ZADD without XX: a lease lost to a
# Redis restart or an expiry during a partition is registered again, since its request
# still runs), records the replica as seen, and returns the server time and the registry.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
for i = 3, #KEYS do
  redis.call('ZADD', KEYS[i], expiry, ARGV[i + 1])
  redis.call('SADD', KEYS[1], KEYS[i])
end
redis.call('HSET', KEYS[2], ARGV[2], now .. ' ' .. ARGV[3])
return {now, redis.call('HGETALL', KEYS[2])}
"""

# KEYS: the index of slot sets. ARGV: channel.
# Drops expired leases everywhere, announces each set that lost some (its waiters may fit
# now) and returns {set, count, set, count, ...} for the fleet-wide view.
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
if freed then
  redis.call('PUBLISH', ARGV[1], cjson.encode({e = 'sweep'}))
end
return out
"""
