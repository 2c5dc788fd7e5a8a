"""The Lua scripts the counters run in Redis, and how they are sent.

Scripts are sent by SHA1 (``EVALSHA``) and loaded only after Redis answers ``NOSCRIPT``:
redis-py's own ``Script`` objects would send ``SCRIPT EXISTS`` before every pipeline,
doubling the round trips of each write.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis

from distinct_counter.connection import round_trip


class Script:
    """A Lua script known by its SHA1, loaded into Redis on first NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


# KEYS: values, meta, journal_on, journal of each counter, four by four. ARGV: for each
# counter, its number of values, then value, delta, value, delta... All the counters of one
# committed transaction in one command, so a write costs one round trip and no pipeline.
# Deltas are applied only to a built counter (meta exists), so a counter never built does not
# fill up with partial data. A count that reaches 0 is removed; a negative one is kept, since
# the matching increment of a transaction that committed earlier may still be on its way.
# While a rebuild runs (journal_on), the values touched are journaled for its recount, with
# the server time of their first touch since the rebuild last took them (ZADD NX).
APPLY = Script("""
local at = 1
for k = 1, #KEYS, 4 do
  local built = redis.call('EXISTS', KEYS[k + 1]) == 1
  local journal = redis.call('EXISTS', KEYS[k + 2]) == 1
  local now
  if journal then
    local t = redis.call('TIME')
    now = t[1] .. '.' .. string.format('%06d', t[2])
  end
  local last = at + 2 * tonumber(ARGV[at])
  for i = at + 1, last, 2 do
    if built then
      if redis.call('HINCRBY', KEYS[k], ARGV[i], ARGV[i + 1]) == 0 then
        redis.call('HDEL', KEYS[k], ARGV[i])
      end
    end
    if journal then redis.call('ZADD', KEYS[k + 3], 'NX', now, ARGV[i]) end
  end
  at = last + 1
end
return 0
""")

# KEYS: tmp, values, meta. ARGV: built_at, rows. The atomic swap at the end of a rebuild.
SWAP = Script("""
redis.call('UNLINK', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
redis.call('HSET', KEYS[3], 'state', 'ok', 'built_at', ARGV[1], 'rows', ARGV[2])
redis.call('HDEL', KEYS[3], 'stale_since')
return redis.call('TIME')
""")

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

SCRIPTS = [APPLY, SWAP, SET_COUNTS, MARK_STALE, RELEASE]


def call(client: redis.Redis, script: Script, keys: list[str], args: list[Any]) -> Any:
    """Run ``script`` in one round trip (``connection.round_trip``): EVALSHA, then EVAL on
    NOSCRIPT."""
    try:
        return round_trip(client, ("EVALSHA", script.sha, len(keys), *keys, *args))[0]
    except redis.exceptions.NoScriptError:
        return round_trip(client, ("EVAL", script.source, len(keys), *keys, *args))[0]


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
