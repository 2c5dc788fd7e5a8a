"""A per-process sender thread: what ``DISTINCT_COUNTER["SEND"] = "background"`` sends.

By default (``"wait"``) a committed transaction's deltas are applied in Redis before the
write returns: one round trip per transaction, in the request. With ``"background"`` the
commit hook only queues them (:meth:`Sender.put`, microseconds), and a daemon thread sends
everything queued since its last send in one round trip (one ``APPLY`` per transaction,
pipelined), then reads the answers. Counts stay exact through concurrent writers and
rebuilds: deltas commute, and each still carries its transaction's id.

What it gives up, and why it is an opt-in:

* Deltas queued and not yet sent when the process dies without exiting (SIGKILL, an
  out-of-memory kill, a power cut) are lost: the counters they belonged to are off, with no
  stale mark, until the next ``rebuild_counts``. A normal exit sends the queue first
  (``atexit``); the window is otherwise the time the thread takes to send, about a round trip.
* A failure is found by the thread, after the write returned: it marks the counters stale
  as a failed send does, but cannot refuse the write, so ``ON_ERROR = "raise"`` does not go
  with it (check ``distinct_counter.E034``).

A read of a count in this process first sends what is queued (:meth:`Sender.flush`), so a
request reads its own writes, and so does the end of each request (``request_finished``,
after the response), so that a server that runs no thread (uWSGI without
``--enable-threads``) still sends. A forked child starts with an empty queue: its parent
sends what it had queued.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

logger = logging.getLogger("distinct_counter")

T = TypeVar("T")


class Sender(Generic[T]):
    """Items queued by any thread of the process and handed to ``deliver`` in batches by one
    daemon thread, started on the first :meth:`put` (and again in a forked child)."""

    def __init__(self, deliver: Callable[[Sequence[T]], Any]) -> None:
        self.deliver = deliver
        self._reset()
        if hasattr(os, "register_at_fork"):  # not on Windows, which does not fork
            os.register_at_fork(after_in_child=self._reset)
        atexit.register(self.flush)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[T] = []
        #: Batches taken off the queue and not yet delivered.
        self._sending = 0
        self._thread: threading.Thread | None = None

    def put(self, item: T) -> None:
        """Queue ``item``; the thread delivers it with whatever else is queued by then."""
        with self._cond:
            self._queue.append(item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="distinct_counter-sender", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def flush(self) -> None:
        """Deliver what is queued now, from the calling thread, and wait for the batch the
        thread may be delivering: once this returns, every item queued before the call has
        been delivered."""
        if not self._queue and not self._sending:  # the common case, without the lock
            return
        with self._cond:
            batch = self._take()
        self._deliver(batch)
        with self._cond:
            self._cond.wait_for(lambda: not self._sending)

    def _take(self) -> list[T]:
        # Counted as sending before the queue is emptied: flush's check without the lock
        # never sees an empty queue and nothing sending while a batch is on its way.
        self._sending += 1
        batch, self._queue = self._queue, []
        return batch

    def _deliver(self, batch: list[T]) -> None:
        try:
            if batch:
                self.deliver(batch)
        except Exception:  # the thread must live on; deliver marks what it could not send
            logger.exception("distinct_counter's sender thread failed to deliver %d", len(batch))
        finally:
            with self._cond:
                self._sending -= 1
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue)
                batch = self._take()
            self._deliver(batch)
