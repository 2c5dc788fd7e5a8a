"""The counters: which fields are counted, how writes reach Redis, reads, rebuilds, checks.

Layers, each importing only from those above it in this list:

1. ``conf`` (settings), ``values`` (how a value is written down), ``registry`` (which fields
   are counted, and their Redis keys), ``scripts`` (the Lua run in Redis);
2. ``state`` (the ``CounterState`` table) and ``stale`` (counters known to have missed writes);
3. the write path: ``deltas``, ``commit``, ``rows``, ``handlers``, ``queryset``; and the read
   path: ``reads``;
4. ``scan`` (``GROUP BY`` streamed from the database), ``rebuild`` and ``drift``;
5. ``checks``.
"""
