"""The Lua scripts the counters run in Redis, and how they are sent.

Scripts are sent by SHA1 (``EVALSHA``) and loaded only after Redis answers ``NOSCRIPT``:
redis-py's own ``Script`` objects would send ``SCRIPT EXISTS`` before every pipeline,
doubling the round trips of each write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis

from distinct_counter.connection import round_trip
from distinct_counter.counting import buckets


class Script:
    """A Lua script known by its SHA1, loaded into Redis on first NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# Lua: whether transaction ``txid`` (decimal text) had committed for ``snapshot``, PostgreSQL's
# ``pg_current_snapshot()`` as text, ``xmin:xmax:xip,xip...``: below xmin, or below xmax
# and not listed as in progress. Transaction ids fit Lua's doubles exactly (below 2^53).
# ``hadd`` adds to a plain hash field (the journal's), removing a count that reaches 0.
_VISIBLE = """
local function visible(snapshot, txid)
  local xmin, xmax, xip = string.match(snapshot, '^(%d+):(%d+):(.*)$')
  local x = tonumber(txid)
  if x < tonumber(xmin) then return true end
  if x >= tonumber(xmax) then return false end
  return string.find(',' .. xip .. ',', ',' .. txid .. ',', 1, true) == nil
end
local function hadd(key, field, delta)
  if redis.call('HINCRBY', key, field, delta) == 0 then redis.call('HDEL', key, field) end
end
"""

# Lua: a counter's counts (value -> rows), as ``buckets`` lays them out (its documentation
# says why): a header hash (``gen``, ``n`` buckets, ``len`` values) and the buckets
# ``<counter>:b:<gen>:<i>``. A value's bucket comes from its CRC-32 (``zlib.crc32`` of its
# UTF-8 text, sent by the caller where it can, computed here where it cannot) by linear
# hashing, so the map grows one bucket at a time: ``save`` splits a bucket whenever the
# values outnumber ``LOAD`` per bucket.
_MAP = (
    f"local LOAD = {buckets.LOAD}"
    + """
local CRC
local function crc32(s)
  if not CRC then
    CRC = {}
    for i = 0, 255 do
      local c = i
      for _ = 1, 8 do
        if bit.band(c, 1) == 1 then c = bit.bxor(bit.rshift(c, 1), bit.tobit(0xEDB88320))
        else c = bit.rshift(c, 1) end
      end
      CRC[i] = c
    end
  end
  local c = -1
  for i = 1, #s do
    c = bit.bxor(CRC[bit.band(bit.bxor(c, string.byte(s, i)), 255)], bit.rshift(c, 8))
  end
  c = bit.bnot(c)
  if c < 0 then c = c + 4294967296 end
  return c
end
local function map(header, gen, n, len)
  local m = {header = header, gen = gen, n = tonumber(n), len = tonumber(len) or 0}
  m.base = string.match(header, '^(.*:)') .. 'b:' .. gen .. ':'
  m.saved = m.n .. ':' .. m.len
  m.level = 1
  while m.level * 2 <= m.n do m.level = m.level * 2 end
  return m
end
local function open(header)
  local f = redis.call('HMGET', header, 'gen', 'n', 'len')
  if not f[1] then return nil end
  return map(header, f[1], f[2], f[3])
end
local function bucket(m, value, h)
  h = tonumber(h) or crc32(value)
  local b = h % m.level
  if b < m.n - m.level then b = h % (m.level * 2) end
  return m.base .. b
end
local function split(m)
  local level = m.level
  local s = m.n - level
  local from, to = m.base .. s, m.base .. m.n
  local entries = redis.call('HGETALL', from)
  local kept, moved = {}, {}
  for i = 1, #entries, 2 do
    local into = kept
    if crc32(entries[i]) % (level * 2) ~= s then into = moved end
    into[#into + 1] = entries[i]
    into[#into + 1] = entries[i + 1]
  end
  -- Both written afresh: a hash Redis once converted from a listpack stays converted.
  redis.call('DEL', from)
  for _, part in ipairs({{from, kept}, {to, moved}}) do
    for i = 1, #part[2], 1000 do
      redis.call('HSET', part[1], unpack(part[2], i, math.min(i + 999, #part[2])))
    end
  end
  m.n = m.n + 1
  if m.n == level * 2 then m.level = m.n end
end
local function grow(m)
  while m.len > m.n * LOAD do split(m) end
end
local function add(m, value, delta, h)
  local key = bucket(m, value, h)
  -- The delta as sent: a Lua number would be formatted back to text for the command.
  local new = redis.call('HINCRBY', key, value, delta)
  delta = tonumber(delta)
  if new == delta then
    m.len = m.len + 1
    grow(m)
  end
  if new == 0 then
    redis.call('HDEL', key, value)
    m.len = m.len - 1
  end
end
local function put(m, value, count, h)
  local key = bucket(m, value, h)
  if tonumber(count) == 0 then m.len = m.len - redis.call('HDEL', key, value)
  else
    m.len = m.len + redis.call('HSET', key, value, count)
    grow(m)
  end
end
local function save(m)
  grow(m)
  if m.n .. ':' .. m.len ~= m.saved then redis.call('HSET', m.header, 'n', m.n, 'len', m.len) end
end
"""
)

# KEYS: meta, journal_on, journal, missed, pending of each counter, five by five (the
# counter's ``hot_keys``). ARGV: the writing transaction's id ('' where the database has
# none to give), then for each counter its number of values, then value, hash, delta,
# value, hash, delta... All the counters of one committed transaction in one command, so a
# write costs one round trip and no pipeline.
# Deltas are applied only to a built counter (meta has a state and a map), and not when the
# snapshot the counter was built from (meta 'snapshot') already saw the transaction: a
# write that reaches Redis after a rebuild that counted it is not counted twice, however
# late it comes. A count that reaches 0 is removed; a negative one is kept, since the
# matching increment of a transaction that committed earlier may still be on its way.
# While a rebuild runs, journal_on says what it needs of a write:
#   '*'       the values touched, with the server time of their first touch since the
#             rebuild last took them (ZADD NX), for its recount (no snapshot to go by);
#   ''        its scan's snapshot is not known yet: the write itself, in 'pending';
#   snapshot  the deltas its scan did not see, kept in 'missed' until the swap adds them
#             to the counts the scan stored (SWAP);
#   '?'       after its swap: nothing, but for writes with no transaction id.
# A write with no transaction id is journaled for the recount whatever the mode.
APPLY = Script(
    _VISIBLE
    + _MAP
    + """
local txid = ARGV[1]
local at = 2
for k = 1, #KEYS, 5 do
  local meta = redis.call('HMGET', KEYS[k], 'state', 'snapshot', 'gen', 'n', 'len')
  local m = meta[1] and meta[3] and map(KEYS[k], meta[3], meta[4], meta[5])
  if m and txid ~= '' and meta[2] and visible(meta[2], txid) then m = nil end
  local mode = redis.call('GET', KEYS[k + 1])
  local recount = mode and (txid == '' or mode == '*')
  local building = mode and not recount and mode ~= '?' and mode ~= ''
    and not visible(mode, txid)
  local now
  if recount then
    local t = redis.call('TIME')
    now = t[1] .. '.' .. string.format('%06d', t[2])
  end
  local last = at + 3 * tonumber(ARGV[at])
  for i = at + 1, last, 3 do
    if m then add(m, ARGV[i], ARGV[i + 2], ARGV[i + 1]) end
    if recount then redis.call('ZADD', KEYS[k + 2], 'NX', now, ARGV[i])
    elseif mode == '' then redis.call('RPUSH', KEYS[k + 4], txid, ARGV[i], ARGV[i + 2])
    elseif building then hadd(KEYS[k + 3], ARGV[i], ARGV[i + 2]) end
  end
  if m then save(m) end
  at = last + 1
end
return 0
"""
)

# KEYS: journal_on, pending, missed. ARGV: the scan's snapshot. Makes it the rebuild's mode
# (see APPLY) and keeps in 'missed' the deltas of the pending writes it did not see.
PUBLISH = Script(
    _VISIBLE
    + """
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
local pending = redis.call('LRANGE', KEYS[2], 0, -1)
for i = 1, #pending, 3 do
  if not visible(ARGV[1], pending[i]) then hadd(KEYS[3], pending[i + 1], pending[i + 2]) end
end
redis.call('DEL', KEYS[2])
return 0
"""
)

# KEYS: tmp, meta, journal_on, missed, old. ARGV: built_at, rows, the scan's snapshot ('' when
# it has none). The atomic swap at the end of a rebuild: the scan's map (tmp's), plus the
# deltas it missed, becomes the counter's; the map it replaces is named by 'old', for the
# rebuild to drop (``buckets.drop``) out of this atomic step.
SWAP = Script(
    _VISIBLE
    + _MAP
    + """
local m = open(KEYS[1])
local missed = redis.call('HGETALL', KEYS[4])
for i = 1, #missed, 2 do add(m, missed[i], missed[i + 1]) end
redis.call('DEL', KEYS[4])
save(m)
local live = redis.call('HMGET', KEYS[2], 'gen', 'n', 'len')
if live[1] then redis.call('HSET', KEYS[5], 'gen', live[1], 'n', live[2], 'len', live[3]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], 'gen', m.gen, 'n', m.n, 'len', m.len,
  'state', 'ok', 'built_at', ARGV[1], 'rows', ARGV[2])
redis.call('HDEL', KEYS[2], 'stale_since')
if ARGV[3] == '' then redis.call('HDEL', KEYS[2], 'snapshot')
else
  redis.call('HSET', KEYS[2], 'snapshot', ARGV[3])
  redis.call('SET', KEYS[3], '?', 'XX', 'KEEPTTL')
end
return redis.call('TIME')
"""
)

# KEYS: meta. ARGV: value, hash, count... Absolute counts from the database's recount, in
# the counter's map. Returns the server time at which they were set.
SET_COUNTS = Script(
    _MAP
    + """
local m = open(KEYS[1])
if m then
  for i = 1, #ARGV, 3 do put(m, ARGV[i], ARGV[i + 2], ARGV[i + 1]) end
  save(m)
end
return redis.call('TIME')
"""
)

# KEYS: a map's header (meta, or a rebuild's tmp). ARGV: value, hash... Reads nothing but
# the map. Returns its state (meta's; false for tmp), its number of values (false when the
# key holds no map) and the count of each value (false where it has none).
READ = Script(
    _MAP
    + """
local f = redis.call('HMGET', KEYS[1], 'state', 'gen', 'n', 'len')
local out = {f[1], f[2] and f[4]}
local m = f[2] and map(KEYS[1], f[2], f[3], f[4])
for i = 1, #ARGV, 2 do
  out[#out + 1] = m and redis.call('HGET', bucket(m, ARGV[i], ARGV[i + 1]), ARGV[i])
end
return out
"""
)

# KEYS: a rebuild's tmp header. ARGV: the most splits to make, the values the map holds,
# the buckets to reach (0: as many as those values need). Grows a map a slice of splits at
# a time, so no call blocks Redis for long; returns the buckets it has then.
GROW = Script(
    _MAP
    + """
local m = open(KEYS[1])
m.len = tonumber(ARGV[2])
local target = math.max(tonumber(ARGV[3]), math.ceil(m.len / LOAD))
for _ = 1, math.min(tonumber(ARGV[1]), target - m.n) do split(m) end
redis.call('HSET', m.header, 'n', m.n, 'len', m.len)
return m.n
"""
)

# KEYS: meta. ARGV: time of the missed write. Marks a built counter stale unless it was
# rebuilt after the miss.
MARK_STALE = Script("""
local built_at = tonumber(redis.call('HGET', KEYS[1], 'built_at') or '0')
if redis.call('EXISTS', KEYS[1]) == 1 and built_at < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'stale', 'stale_since', ARGV[1])
  return 1
end
return 0
""")

# KEYS: lock. ARGV: token. Releases a rebuild's lock only if this rebuild still holds it.
RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

SCRIPTS = [APPLY, PUBLISH, SWAP, SET_COUNTS, READ, GROW, MARK_STALE, RELEASE]


def run_script(client: Any, script: Script, keys: list[str], args: list[Any]) -> Any:
    """Queue ``script`` on a pipeline, or run it on a client (EVALSHA, then EVAL on NOSCRIPT)."""
    if isinstance(client, redis.client.Pipeline):
        return client.evalsha(script.sha, len(keys), *keys, *args)
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(script.source, len(keys), *keys, *args)


def run_all(client: Any, calls: Sequence[tuple[Script, list[str], list[Any]]]) -> list[Any]:
    """Run ``(script, keys, args)`` calls in one round trip (``connection.round_trip``: the
    hot paths' way), each by SHA1; those Redis answers NOSCRIPT are sent again with their
    source, and only those, so none runs twice. Returns the replies in order, an error reply
    in its place."""
    replies = round_trip(
        client,
        *(("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args in calls),
        raise_on_error=False,
    )
    again = [i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)]
    if again:
        retried = round_trip(
            client,
            *(
                ("EVAL", calls[i][0].source, len(calls[i][1]), *calls[i][1], *calls[i][2])
                for i in again
            ),
            raise_on_error=False,
        )
        for i, reply in zip(again, retried, strict=True):
            replies[i] = reply
    return replies


def execute(pipe: Any) -> list[Any]:
    """Execute a pipeline of EVALSHAs in one round trip; load the scripts after a NOSCRIPT.

    Only the commands that met NOSCRIPT are sent again, so no script runs twice.
    """
    commands = list(pipe.command_stack)
    results = list(pipe.execute(raise_on_error=False))
    missing = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
    if missing:
        for script in SCRIPTS:
            pipe.script_load(script.source)
        for i in missing:
            args, options = commands[i]
            pipe.execute_command(*args, **options)
        retried = list(pipe.execute(raise_on_error=False))[len(SCRIPTS) :]
        for i, result in zip(missing, retried, strict=True):
            results[i] = result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results
