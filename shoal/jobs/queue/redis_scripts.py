"""Lua scripts of the Redis queue: each state change is one atomic script.

Layout under a prefix P: ``P:job:ID`` (hash: the record's fields, plus ``owner`` and
``entry``), ``P:stream:MODEL`` (stream of ``job=ID`` entries, consumer group
``workers``), ``P:delayed`` (sorted set of retries by due time), ``P:backlog`` (hash
model -> jobs queued or running), ``P:notify`` (set of finished jobs whose webhooks are
unconfirmed). A finished entry is acknowledged *and deleted*, so a stream's length is
its backlog (what the KEDA ``redis-streams`` trigger reads to scale from zero).
Scripts touch keys derived from the prefix, so this targets a single Redis, not Cluster.
"""

# KEYS: job, stream, backlog. ARGV: model, job id, field, value, ...
SUBMIT = """
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[2])
redis.call('HSET', KEYS[1], 'entry', entry)
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return entry
"""

# A delivered entry becomes a running job, unless it is stale (cancelled, finished, re-queued).
# KEYS: job, stream. ARGV: group, entry, token, now. Returns the record as one JSON string, or false
# (one bulk reply: parsing dozens of small replies per job in Python cost more than the job's queue work).
START = """
local st = redis.call('HGET', KEYS[1], 'state')
if (st == 'queued' or st == 'running') and redis.call('HGET', KEYS[1], 'entry') == ARGV[2] then
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSET', KEYS[1], 'state', 'running', 'owner', ARGV[3], 'started_at', ARGV[4])
  local flat = redis.call('HGETALL', KEYS[1])
  local rec = {}
  for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
  return cjson.encode(rec)
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return false
"""

# KEYS: job, stream, backlog, notify. ARGV: group, token, state, finished_at, error, dead_letter,
# notify (1/0), model, retention seconds, job id
FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
local entry = redis.call('HGET', KEYS[1], 'entry')
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'finished_at', ARGV[4], 'dead_letter', ARGV[6])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) else redis.call('HDEL', KEYS[1], 'error') end
redis.call('HDEL', KEYS[1], 'owner', 'entry')
redis.call('HINCRBY', KEYS[3], ARGV[8], -1)
redis.call('XACK', KEYS[2], ARGV[1], entry)
redis.call('XDEL', KEYS[2], entry)
if ARGV[7] == '1' then
  redis.call('SADD', KEYS[4], ARGV[10])
else
  redis.call('EXPIRE', KEYS[1], ARGV[9])
end
return 1
"""

# KEYS: job, stream, delayed. ARGV: group, token, due time, error, count (1/0), job id
RETRY = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[2] then
  return 0
end
local entry = redis.call('HGET', KEYS[1], 'entry')
redis.call('HSET', KEYS[1], 'state', 'queued', 'entry', '')
redis.call('HDEL', KEYS[1], 'owner')
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
if ARGV[5] == '0' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
redis.call('XACK', KEYS[2], ARGV[1], entry)
redis.call('XDEL', KEYS[2], entry)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
return 1
"""

# Move due retries back into their model's stream. KEYS: delayed. ARGV: now, prefix, limit
PROMOTE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[2] .. ':job:' .. id
  local model = redis.call('HGET', key, 'model_id')
  if model and redis.call('HGET', key, 'state') == 'queued' then
    local entry = redis.call('XADD', ARGV[2] .. ':stream:' .. model, '*', 'job', id)
    redis.call('HSET', key, 'entry', entry)
  end
end
return #ids
"""

# KEYS: job, backlog, delayed. ARGV: now, retention seconds, job id, prefix
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return false end
if st == 'queued' then
  local model = redis.call('HGET', KEYS[1], 'model_id')
  local entry = redis.call('HGET', KEYS[1], 'entry')
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished_at', ARGV[1])
  redis.call('HINCRBY', KEYS[2], model, -1)
  redis.call('ZREM', KEYS[3], ARGV[3])
  if entry and entry ~= '' then redis.call('XDEL', ARGV[4] .. ':stream:' .. model, entry) end
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: job, notify. ARGV: job id, retention seconds
NOTIFIED = """
redis.call('SREM', KEYS[2], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'notify_done', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

# Renew a claim: reset the entry's idle time, only while this delivery still owns the job.
# KEYS: job, stream. ARGV: group, consumer, entry, token
RENEW = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[4] then
  redis.call('XCLAIM', KEYS[2], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
  return 1
end
return 0
"""
