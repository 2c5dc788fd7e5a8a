"""Pin a client to the primary database for a while after it wrote.

Without it, the request that follows a write (the redirect after a POST, the next click)
could read from a replica that has not replayed the write yet, and the user would not see
what they just saved. Add it near the top of ``MIDDLEWARE``, before anything that reads::

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "distinct_counter.routing.middleware.PinPrimaryMiddleware",
        ...
    ]
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from distinct_counter.routing.conf import conf
from distinct_counter.routing.context import Scope, routing_scope

__all__ = ["PinPrimaryMiddleware"]


class PinPrimaryMiddleware:
    """Route each request's reads with the
    :class:`~distinct_counter.routing.router.PrimaryReplicaRouter` consistently with the
    client's recent writes.

    Every request runs in its own :func:`~distinct_counter.routing.context.routing_scope`: once it
    writes, its later reads go to the primary. A response to a request that wrote carries the
    cookie ``PIN_COOKIE`` (lifetime ``PIN_SECONDS``; attributes ``PIN_COOKIE_SECURE``,
    ``PIN_COOKIE_HTTPONLY``, ``PIN_COOKIE_SAMESITE``), and requests bearing it read from the
    primary until it expires. The cookie holds the time it ends; a client forging one only
    sends its own reads to the primary. Sync and async capable, like Django's middlewares.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        with routing_scope(pinned=_pinned(request)) as scope:
            response = self.get_response(request)
        return _remember(scope, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        with routing_scope(pinned=_pinned(request)) as scope:
            response = await get_response(request)
        return _remember(scope, response)


def _pinned(request: HttpRequest) -> bool:
    try:
        until = float(request.COOKIES[conf.PIN_COOKIE])
    except (KeyError, ValueError):
        return False
    return until > time.time()


def _remember(scope: Scope | None, response: HttpResponseBase) -> HttpResponseBase:
    if scope is not None and scope.wrote:
        seconds = conf.PIN_SECONDS
        samesite = conf.PIN_COOKIE_SAMESITE
        response.set_cookie(
            conf.PIN_COOKIE,
            f"{time.time() + seconds:.3f}",
            # Whole seconds in the Max-Age attribute: never shorter than asked.
            max_age=max(1, math.ceil(seconds)),
            secure=conf.PIN_COOKIE_SECURE,
            httponly=conf.PIN_COOKIE_HTTPONLY,
            samesite=samesite,  # type: ignore[arg-type]
        )
    return response
