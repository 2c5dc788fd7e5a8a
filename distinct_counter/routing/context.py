"""The routing state of the current request or task, kept in ``ContextVar`` objects so it
follows a request through async views and ``sync_to_async`` and each thread has its own."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = [
    "Scope",
    "mark_written",
    "routing_scope",
    "use_primary",
    "use_replica",
    "wrote",
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

PRIMARY, REPLICA = "primary", "replica"


@dataclass
class Scope:
    """One request or task: whether it wrote, and whether its client arrived pinned."""

    wrote: bool = False
    pinned: bool = False


# A mutable Scope rather than a bool: a write made in a copied context (an asyncio task the
# view spawned, a sync_to_async thread) must still pin the request it belongs to.
scope_var: ContextVar[Scope | None] = ContextVar("distinct_counter_routing_scope", default=None)
mode_var: ContextVar[str | None] = ContextVar("distinct_counter_routing_mode", default=None)


class _ContextSetting(Generic[T]):
    """Set a ContextVar for a ``with`` block or a decorated (sync or async) function, and
    put the previous value back after, so blocks nest."""

    def __init__(self, var: ContextVar[T], make: Callable[[], T]) -> None:
        self._var = var
        self._make = make
        self._tokens: list[Token[T]] = []

    def __enter__(self) -> T:
        value = self._make()
        self._tokens.append(self._var.set(value))
        return value

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._var.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        # A fresh instance per call: one decorated function may run in many threads at once.
        var, make = self._var, self._make
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with _ContextSetting(var, make):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with _ContextSetting(var, make):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]


def use_primary() -> _ContextSetting[str | None]:
    """Read from the primary inside this block or decorated function (sync or async).

    Nestable: leaving the block restores whatever routing was in force before it.
    """
    return _ContextSetting(mode_var, lambda: PRIMARY)


def use_replica() -> _ContextSetting[str | None]:
    """Read from a replica inside this block, even after a write or in a transaction.

    For reads that may be stale by design (reports, exports). Falls back to the primary
    when no replica is usable. Nestable like :func:`use_primary`.
    """
    return _ContextSetting(mode_var, lambda: REPLICA)


def routing_scope(*, pinned: bool = False) -> _ContextSetting[Scope | None]:
    """A unit of work (a request, a task) whose writes pin its later reads to the primary.

    The middleware opens one per request. Wrap each background task in one
    (``@routing_scope()``): otherwise a worker's first write pins every later read of its
    thread to the primary. ``pinned=True`` starts pinned (the client wrote recently). The
    block yields the :class:`Scope`, whose ``wrote`` says whether it wrote.
    """
    return _ContextSetting(scope_var, lambda: Scope(pinned=pinned))


def mark_written() -> None:
    """Record that the current request or task wrote: its next reads go to the primary.

    The router calls it from ``db_for_write``; call it after writes the router does not see
    (raw SQL on ``connections[...]``).
    """
    scope = scope_var.get()
    if scope is None:  # Outside any scope: the write pins the rest of this context.
        scope = Scope()
        scope_var.set(scope)
    scope.wrote = True


def wrote() -> bool:
    """Whether the current request or task wrote."""
    scope = scope_var.get()
    return scope is not None and scope.wrote
