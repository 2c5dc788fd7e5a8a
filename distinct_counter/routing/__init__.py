"""The primary/replica database router: ``router`` (where each query goes), ``context`` (the
per-request and per-task state it reads), ``health`` (which replicas are usable),
``middleware`` (pinning a client after it wrote), ``conf`` and ``checks``."""
