"""The Lua scripts the counters run in Redis, and how they are sent.

Scripts are sent by SHA1 (``EVALSHA``) and loaded only after Redis answers ``NOSCRIPT``:
redis-py's own ``Script`` objects would send ``SCRIPT EXISTS`` before every pipeline,
doubling the round trips of each write.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis


class Script:
    """A Lua script known by its SHA1, loaded into Redis on first NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# Lua: whether transaction ``txid`` (decimal text) had committed for ``snapshot``, PostgreSQL's
# ``pg_current_snapshot()`` as text, ``xmin:xmax:xip,xip...``: below xmin, or below xmax
# and not listed as in progress. Transaction ids fit Lua's doubles exactly (below 2^53).
_VISIBLE = """
local function visible(snapshot, txid)
  local xmin, xmax, xip = string.match(snapshot, '^(%d+):(%d+):(.*)$')
  local x = tonumber(txid)
  if x < tonumber(xmin) then return true end
  if x >= tonumber(xmax) then return false end
  return string.find(',' .. xip .. ',', ',' .. txid .. ',', 1, true) == nil
end
local function add(key, value, delta)
  if redis.call('HINCRBY', key, value, delta) == 0 then redis.call('HDEL', key, value) end
end
"""

# KEYS: values, meta, journal_on, journal, missed, pending of each counter, six by six (the
# counter's ``hot_keys``). ARGV: the writing transaction's id ('' where the database has
# none to give), then for each counter its number of values, then value, delta, value,
# delta... All the counters of one committed transaction in one command, so a write costs
# one round trip and no pipeline.
# Deltas are applied only to a built counter (meta has a state), and not when the snapshot the
# counter was built from (meta 'snapshot') already saw the transaction: a write that reaches
# Redis after a rebuild that counted it is not counted twice, however late it comes. A
# count that reaches 0 is removed; a negative one is kept, since the matching increment of
# a transaction that committed earlier may still be on its way.
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
    + """
local txid = ARGV[1]
local at = 2
for k = 1, #KEYS, 6 do
  local meta = redis.call('HMGET', KEYS[k + 1], 'state', 'snapshot')
  local apply = meta[1] ~= false
  if apply and txid ~= '' and meta[2] and visible(meta[2], txid) then apply = false end
  local mode = redis.call('GET', KEYS[k + 2])
  local recount = mode and (txid == '' or mode == '*')
  local building = mode and not recount and mode ~= '?' and mode ~= ''
    and not visible(mode, txid)
  local now
  if recount then
    local t = redis.call('TIME')
    now = t[1] .. '.' .. string.format('%06d', t[2])
  end
  local last = at + 2 * tonumber(ARGV[at])
  for i = at + 1, last, 2 do
    if apply then add(KEYS[k], ARGV[i], ARGV[i + 1]) end
    if recount then redis.call('ZADD', KEYS[k + 3], 'NX', now, ARGV[i])
    elseif mode == '' then redis.call('RPUSH', KEYS[k + 5], txid, ARGV[i], ARGV[i + 1])
    elseif building then add(KEYS[k + 4], ARGV[i], ARGV[i + 1]) end
  end
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
  if not visible(ARGV[1], pending[i]) then add(KEYS[3], pending[i + 1], pending[i + 2]) end
end
redis.call('DEL', KEYS[2])
return 0
"""
)

# KEYS: tmp, values, meta, journal_on, missed. ARGV: built_at, rows, the scan's snapshot
# ('' when it has none). The atomic swap at the end of a rebuild: the scan's counts (tmp),
# plus the deltas it missed, replace the live counter.
SWAP = Script(
    _VISIBLE
    + """
local missed = redis.call('HGETALL', KEYS[5])
for i = 1, #missed, 2 do add(KEYS[1], missed[i], missed[i + 1]) end
redis.call('DEL', KEYS[5])
redis.call('UNLINK', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
redis.call('HSET', KEYS[3], 'state', 'ok', 'built_at', ARGV[1], 'rows', ARGV[2])
redis.call('HDEL', KEYS[3], 'stale_since')
if ARGV[3] == '' then redis.call('HDEL', KEYS[3], 'snapshot')
else
  redis.call('HSET', KEYS[3], 'snapshot', ARGV[3])
  redis.call('SET', KEYS[4], '?', 'XX', 'KEEPTTL')
end
return redis.call('TIME')
"""
)

# KEYS: values. ARGV: value, count... Absolute counts from the database's recount.
# Returns the server time at which they were set.
SET_COUNTS = Script("""
for i = 1, #ARGV, 2 do
  if tonumber(ARGV[i + 1]) == 0 then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return redis.call('TIME')
""")

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

SCRIPTS = [APPLY, PUBLISH, SWAP, SET_COUNTS, MARK_STALE, RELEASE]


def run_script(client: Any, script: Script, keys: list[str], args: list[Any]) -> Any:
    """Queue ``script`` on a pipeline, or run it on a client (EVALSHA, then EVAL on NOSCRIPT)."""
    if isinstance(client, redis.client.Pipeline):
        return client.evalsha(script.sha, len(keys), *keys, *args)
    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except redis.exceptions.NoScriptError:
        return client.eval(script.source, len(keys), *keys, *args)


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
