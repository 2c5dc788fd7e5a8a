"""What the master/replica client needs to know of a Redis command: whether it reads, which
keys it names, and how it is journaled while the master is down.

Commands are redis-py's ``execute_command`` arguments: ``("SET", key, value, "PX", 300)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.commands import READ_COMMANDS

__all__ = ["READS", "deferred", "is_read", "key_positions", "keys_of", "name_of", "normalize"]

#: redis-py's list of the commands that only read (the ones Redis Cluster may send to a
#: replica), and the read-only administrative commands a cache client sends.
READS = frozenset(READ_COMMANDS) | {"PING", "INFO", "ECHO", "TIME", "LASTSAVE", "ROLE"}

#: Commands that list what the database holds without naming a key.
LISTINGS = frozenset({"KEYS", "SCAN", "RANDOMKEY", "DBSIZE"})
#: Commands that name no key at all.
KEYLESS = LISTINGS | {
    "PING",
    "INFO",
    "ECHO",
    "TIME",
    "LASTSAVE",
    "ROLE",
    "FLUSHDB",
    "FLUSHALL",
    "SCRIPT",
    "CONFIG",
    "CLIENT",
    "COMMAND",
    "WAIT",
    "SELECT",
    "MULTI",
    "EXEC",
    "DISCARD",
    "UNWATCH",
}
#: Commands whose every argument is a key.
ALL_KEYS = frozenset(
    {
        "MGET",
        "EXISTS",
        "DEL",
        "UNLINK",
        "TOUCH",
        "WATCH",
        "SDIFF",
        "SINTER",
        "SUNION",
        "SDIFFSTORE",
        "SINTERSTORE",
        "SUNIONSTORE",
        "PFCOUNT",
        "PFMERGE",
    }
)
#: Commands whose first two arguments are keys.
TWO_KEYS = frozenset({"SMOVE", "RENAME", "RENAMENX", "COPY", "LMOVE", "RPOPLPUSH", "BLMOVE"})
#: Commands with ``numkeys`` as their second argument, the keys after it.
NUMKEYS_AT_2 = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})
#: Commands with ``numkeys`` as their first argument, the keys after it.
NUMKEYS_AT_1 = frozenset({"ZUNION", "ZINTER", "ZDIFF", "SINTERCARD", "ZINTERCARD"})
#: Commands with a destination key, then ``numkeys``, then the keys.
DEST_NUMKEYS = frozenset({"ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE"})

#: Writes journaled while the master is down, answered as the master would have answered
#: had it taken them: their effect is certain (a value stored, a key gone, a deadline set),
#: not a reply that only the master knows (``INCRBY``'s new value, ``SET NX``'s outcome).
SETS = frozenset({"SET", "SETEX", "PSETEX", "MSET"})
DELETES = frozenset({"DEL", "UNLINK"})
FLUSHES = frozenset({"FLUSHDB", "FLUSHALL"})
EXPIRES = frozenset({"EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "PERSIST"})
#: ``SET`` options that make its reply depend on what the master holds.
CONDITIONAL = frozenset({b"NX", b"XX", b"GET"})


def name_of(args: Sequence[Any]) -> str:
    """The command's name, upper case (``"SCRIPT"`` for ``"SCRIPT LOAD"``)."""
    name = args[0]
    if isinstance(name, bytes):
        name = name.decode()
    return str(name).split(" ", 1)[0].upper()


def is_read(name: str) -> bool:
    return name in READS


def normalize(key: Any) -> bytes:
    """A key as Redis receives it (redis-py sends ``str`` as UTF-8)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, memoryview):
        return key.tobytes()
    return str(key).encode()


def key_positions(name: str, args: Sequence[Any]) -> range | list[int]:
    """Where the command ``args`` (named ``name``) names its keys.

    Commands not listed above name one key, their first argument: true of every command the
    cache API sends (``GET``, ``SET``, ``HSET``, ``ZADD``, ``EXPIRE``...).
    """
    n = len(args)
    if name in KEYLESS or n < 2:
        return []
    if name in ALL_KEYS:
        return range(1, n)
    if name == "MSET" or name == "MSETNX":
        return range(1, n, 2)
    if name in TWO_KEYS:
        return range(1, min(n, 3))
    if name in NUMKEYS_AT_2:
        return range(3, min(n, 3 + int(args[2])))
    if name in NUMKEYS_AT_1:
        return range(2, min(n, 2 + int(args[1])))
    if name in DEST_NUMKEYS:
        return [1, *range(3, min(n, 3 + int(args[2])))]
    return [1]


def keys_of(name: str, args: Sequence[Any]) -> list[Any]:
    """The keys the command ``args`` names, as given."""
    return [args[i] for i in key_positions(name, args)]


def deferred(name: str, args: Sequence[Any]) -> bool:
    """Whether the write ``args`` may be journaled and answered while the master is down."""
    if name == "SET":
        return not any(_upper(a) in CONDITIONAL for a in args[3:])
    return name in SETS or name in DELETES or name in FLUSHES or name in EXPIRES


def set_ttl_ms(args: Sequence[Any]) -> int | None:
    """The milliseconds a ``SET``/``SETEX``/``PSETEX`` gives its key (None: no expiry)."""
    name = name_of(args)
    if name == "SETEX":
        return int(args[2]) * 1000
    if name == "PSETEX":
        return int(args[2])
    options = [_upper(a) for a in args[3:]]
    for unit, factor in ((b"EX", 1000), (b"PX", 1)):
        if unit in options:
            return int(args[3 + options.index(unit) + 1]) * factor
    return None


def _upper(arg: Any) -> bytes:
    if isinstance(arg, str):
        return arg.upper().encode()
    if isinstance(arg, bytes):
        return arg.upper()
    return b""
